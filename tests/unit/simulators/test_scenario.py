"""Scenario files: validation with clear errors, deterministic expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.errors import ScenarioError
from simulators.models import Reporting, WireFormat
from simulators.runner import Simulation
from simulators.scenario import load_scenario, parse_duration_s, parse_scenario

SCENARIOS = Path(__file__).parents[3] / "scenarios"


def base(**kw):
    raw = {"seed": 3, "speed": 0, "start": "2026-12-01T00:00:00+08:00", "groups": [{"name": "A", "count": 5}]}
    raw.update(kw)
    return raw


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_scenarios_are_valid(path: Path) -> None:
    s = load_scenario(path)
    assert s.fault_plan()
    if sum(g.count for g in s.groups) <= 5000:  # large.yaml's 100k meters are expanded by the bench
        assert s.meters()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(base(colour="red"), "colour", id="unknown-key"),
        pytest.param(base(groups=[{"name": "A", "count": 1, "profile": "h9"}]), "unknown profile", id="profile"),
        pytest.param(
            base(groups=[{"name": "A", "count": 1, "wire": "tasmota", "reporting": "block"}]),
            "native",
            id="block-tasmota",
        ),
        pytest.param(base(start="2026-12-01T00:00:00"), "time zone", id="naive-start"),
        pytest.param(base(duration="soon"), "duration", id="duration"),
        pytest.param(base(groups=[]), "groups", id="no-groups"),
        pytest.param(base(groups=[{"name": "A", "count": 2, "id_format": "X"}]), "repeat", id="duplicate-ids"),
        pytest.param(base(faults={"fleet": {"explode": 0.1}}), "unknown fault", id="unknown-fault"),
        pytest.param(base(faults={"fleet": {"drop": 2}}), "probability", id="bad-rate"),
        pytest.param(base(faults={"meters": {"NOPE": {"drop": 1}}}), "unknown meters", id="fault-unknown-meter"),
    ],
)
def test_invalid_scenarios_say_why(raw, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        s = parse_scenario(raw)
        s.fault_plan()
        s.meters()


def test_durations() -> None:
    assert parse_duration_s("15m") == 900 and parse_duration_s("2d") == 172800 and parse_duration_s(90) == 90
    assert parse_duration_s(None) is None


def test_expansion_is_deterministic_and_mixes() -> None:
    raw = base(
        groups=[
            {
                "name": "H",
                "count": 300,
                "profile": {"h0": 0.7, "g0": 0.3},
                "pv_share": 0.2,
                "reporting": "concentrator",
                "concentrator_size": 100,
            },
            {"name": "S", "count": 250, "wire": "sunspec", "id_format": "S{n}"},
        ]
    )
    a, b = parse_scenario(raw).meters(), parse_scenario(raw).meters()
    assert a == b
    c = parse_scenario({**raw, "seed": 4}).meters()
    assert a != c
    homes = a[:300]
    assert 150 < sum(s.profile == "h0" for s in homes) < 260
    assert 20 < sum(s.pv_kwp > 0 for s in homes) < 100
    assert {s.concentrator for s in homes} == {"H-DC0001", "H-DC0002", "H-DC0003"}
    assert all(s.reporting is Reporting.CONCENTRATOR for s in homes)
    modbus = a[300:]
    assert all(s.wire is WireFormat.SUNSPEC for s in modbus)
    assert (modbus[0].modbus_server, modbus[0].modbus_unit) == (0, 1)
    assert (modbus[200].modbus_server, modbus[200].modbus_unit) == (1, 1)
    assert (modbus[-1].modbus_server, modbus[-1].modbus_unit) == (1, 50)


def test_a_whole_run_is_deterministic_for_a_seed() -> None:
    raw = base(
        groups=[{"name": "A", "count": 40, "interval_s": 300}],
        faults={"fleet": {"drop": 0.1, "duplicate": 0.1, "clock_skew": 0.2, "offline": 5, "spike": 1}},
    )

    def payloads(seed: int) -> list[bytes]:
        sim = Simulation(parse_scenario({**raw, "seed": seed}))
        return [m.payload for k in range(200) for m in sim.driver.tick(k)]

    assert payloads(3) == payloads(3)
    assert payloads(3) != payloads(4)
