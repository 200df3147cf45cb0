"""The accelerated clock is the same in every process given the same settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from headend.clock import AcceleratedClock, Clock, clock_env, clock_from_env


def test_accelerated_clock_runs_at_its_speed() -> None:
    wall = [1000.0]
    origin = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    clock = AcceleratedClock(origin=origin, speed=1440, real_start=1000.0, wall=lambda: wall[0])
    assert clock.now() == origin
    wall[0] += 60  # one real minute = one simulated day
    assert clock.now() == origin + timedelta(days=1)
    assert clock.sleep_s(86400) == pytest.approx(60)


def test_env_round_trip_gives_the_same_clock() -> None:
    origin = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    env = clock_env(origin, 1440, real_start=1000.0)
    clock = clock_from_env(env)
    assert isinstance(clock, AcceleratedClock)
    assert (clock.origin, clock.speed, clock.real_start) == (origin, 1440.0, 1000.0)


def test_no_origin_means_system_clock() -> None:
    clock = clock_from_env({})
    assert type(clock) is Clock
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 5


def test_naive_origin_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        AcceleratedClock(origin=datetime(2026, 1, 1), speed=2)
