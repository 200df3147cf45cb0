"""The tick clock: fixed simulated steps, paced against the shared headend clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from headend.clock import AcceleratedClock, Clock
from simulators.clock import TickClock, align, from_headend_clock

ORIGIN = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def test_ticks_are_fixed_steps() -> None:
    c = TickClock(ORIGIN, 60.0, 1440.0, 1000.0)
    assert c.at(0) == ORIGIN and c.at(15) == ORIGIN + timedelta(minutes=15)


def test_pacing_one_day_per_minute() -> None:
    c = TickClock(ORIGIN, 60.0, 1440.0, 1000.0)
    assert c.due_wall(1440) == pytest.approx(1060.0)  # one simulated day after one real minute
    assert c.ticks_due(1000.0) == 1
    assert c.ticks_due(1000.0 + 60.0 / 1440 * 10) == 11
    assert c.sim_now(1060.0) == ORIGIN + timedelta(days=1)


def test_unpaced_runs_everything_now() -> None:
    c = TickClock(ORIGIN, 60.0, 0.0, 5.0)
    assert not c.paced and c.ticks_due(5.0) > 10**9 and c.due_wall(10**6) == 5.0


def test_agrees_with_the_shared_accelerated_clock() -> None:
    hc = AcceleratedClock(origin=ORIGIN, speed=1440.0, real_start=500.0, wall=lambda: 560.0)
    c = from_headend_clock(hc, 60.0, 560.0)
    assert c.sim_now(560.0) == hc.now()


def test_system_clock_starts_aligned() -> None:
    wall = datetime(2026, 11, 30, 8, 7, 30, tzinfo=UTC).timestamp()
    c = from_headend_clock(Clock(), 60.0, wall)
    assert c.origin == datetime(2026, 11, 30, 8, 7, tzinfo=UTC)
    assert c.sim_now(wall) == datetime(2026, 11, 30, 8, 7, 30, tzinfo=UTC)
    assert align(datetime(2026, 1, 1, 0, 14, 59, tzinfo=UTC), 900) == datetime(2026, 1, 1, tzinfo=UTC)


def test_origin_needs_a_zone() -> None:
    with pytest.raises(ValueError):
        TickClock(datetime(2026, 1, 1), 60.0, 1.0, 0.0)


def test_simulation_follows_the_shared_clock_over_the_scenario() -> None:
    from simulators.runner import Simulation
    from simulators.scenario import parse_scenario

    raw = {"seed": 1, "speed": 60, "start": "2026-01-01T00:00:00+00:00", "groups": [{"name": "A", "count": 1}]}
    shared = AcceleratedClock(origin=ORIGIN, speed=1440.0, real_start=100.0, wall=lambda: 100.0)
    sim = Simulation(parse_scenario(raw), clock=shared, wall=lambda: 100.0)
    assert (sim.clock.origin, sim.clock.speed, sim.clock.real_start) == (ORIGIN, 1440.0, 100.0)
    sim = Simulation(parse_scenario(raw), clock=Clock(), wall=lambda: 100.0)
    assert (sim.clock.origin, sim.clock.speed) == (datetime(2026, 1, 1, tzinfo=UTC), 60.0)
    sim = Simulation(parse_scenario({**raw, "speed": 0}), clock=shared, wall=lambda: 100.0)
    assert not sim.clock.paced and sim.clock.origin == datetime(2026, 1, 1, tzinfo=UTC)
