"""The fleet model: registers advance by the integral of supplied power, and only then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.fleet import FleetModel
from simulators.meter import AckStatus, Action, RelayState
from simulators.models import MeterSpec
from simulators.profiles import load_profiles, pv_factor

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)


def run(model: FleetModel, steps: int, dt_s: float, t0: datetime = T0) -> list[np.ndarray]:
    powers = []
    for k in range(steps):
        model.step(t0 + timedelta(seconds=k * dt_s), dt_s)
        powers.append(model.power_w.copy())
    return powers


def test_constant_profile_advances_exactly() -> None:
    m = FleetModel([MeterSpec("A", profile="constant", annual_kwh=8760.0)], seed=1, noise_sigma=0.0)
    run(m, 96, 900.0)  # one day, 1 kW
    assert m.import_wh[0] == pytest.approx(24_000.0, rel=1e-12)
    assert m.export_wh[0] == 0.0


def test_household_year_consumes_its_annual_energy() -> None:
    m = FleetModel([MeterSpec("A", profile="h0", annual_kwh=3500.0)], seed=1, noise_sigma=0.0, timezone="UTC")
    run(m, 96 * 365, 900.0, datetime(2023, 1, 1, tzinfo=UTC))
    assert m.import_wh[0] / 1000 == pytest.approx(3500.0, rel=1e-6)


def test_register_advance_is_the_integral_of_reported_power() -> None:
    specs = [MeterSpec(f"M{i}", profile=p, annual_kwh=3000 + 500 * i) for i, p in enumerate(["h0", "g1", "l0"])]
    m = FleetModel(specs, seed=7)
    powers = run(m, 500, 60.0)
    integral = np.sum(powers, axis=0) * 60.0 / 3600.0
    np.testing.assert_allclose(m.import_wh, integral, rtol=1e-9)
    assert np.all(integral > 0)


def test_nothing_while_open_and_limited_under_load_limit() -> None:
    specs = [
        MeterSpec("on", annual_kwh=30000.0),
        MeterSpec("off", annual_kwh=30000.0),
        MeterSpec("armed", annual_kwh=30000.0),
        MeterSpec("lim", annual_kwh=30000.0, supports_load_limit=True),
    ]
    m = FleetModel(specs, seed=3)
    m.command(1, Action.DISCONNECT, None, T0)
    m.command(2, Action.DISCONNECT, None, T0)
    m.command(2, Action.ARM, None, T0)
    assert m.command(3, Action.LOAD_LIMIT, {"limit_w": 1000}, T0).status is AckStatus.OK
    powers = np.array(run(m, 24 * 60, 60.0))
    assert m.import_wh[1] == 0.0 and m.import_wh[2] == 0.0
    assert powers[:, 3].max() <= 1000.0
    assert m.import_wh[3] <= 1000.0 * 24 + 1e-6
    assert m.import_wh[0] > m.import_wh[3] > 0  # the limit really bit (30 MWh/a ~ 3.4 kW mean)
    m.press_button(2, T0)
    assert m.relay_state(2) is RelayState.CONNECTED
    before = m.import_wh[2]
    run(m, 10, 60.0)
    assert m.import_wh[2] > before
    kinds = [(e.meter_id, e.kind, e.detail.get("relay")) for e in m.drain_events()]
    assert ("armed", "button_press", None) in kinds and ("armed", "relay_change", "connected") in kinds


def test_power_failure_stops_consumption_and_reports() -> None:
    m = FleetModel([MeterSpec("A")], seed=1)
    m.power_fail(0, T0)
    run(m, 60, 60.0)
    assert m.import_wh[0] == 0.0
    m.power_restore(0, T0 + timedelta(hours=1))
    run(m, 60, 60.0)
    assert m.import_wh[0] > 0
    assert [e.kind for e in m.drain_events()] == ["power_fail", "power_restore"]


def test_rollover_at_register_max() -> None:
    m = FleetModel(
        [MeterSpec("A", profile="constant", annual_kwh=8760.0, register_max_wh=100_000.0, initial_import_wh=99_500.0)],
        seed=1,
        noise_sigma=0.0,
    )
    run(m, 1, 3600.0)  # +1000 Wh
    assert m.import_wh[0] == pytest.approx(500.0)


def test_pv_exports_around_noon_only() -> None:
    m = FleetModel([MeterSpec("A", profile="h0", annual_kwh=2000.0, pv_kwp=6.0)], seed=1, timezone="UTC")
    run(m, 24 * 4, 900.0, datetime(2026, 6, 21, tzinfo=UTC))
    assert m.export_wh[0] > 5000  # a sunny June day
    assert pv_factor(datetime(2026, 6, 21, 1, 0, tzinfo=UTC)) == 0.0
    m.command(0, Action.DISCONNECT, None, T0)
    exported = m.export_wh[0]
    run(m, 24 * 4, 900.0, datetime(2026, 6, 22, tzinfo=UTC))
    assert m.export_wh[0] == exported  # an open relay exports nothing either


def test_same_seed_same_fleet() -> None:
    specs = [MeterSpec(f"M{i}") for i in range(50)]
    a, b, c = FleetModel(specs, seed=5), FleetModel(specs, seed=5), FleetModel(specs, seed=6)
    for m in (a, b, c):
        run(m, 100, 60.0)
    np.testing.assert_array_equal(a.import_wh, b.import_wh)
    assert not np.array_equal(a.import_wh, c.import_wh)


def test_household_shape_peaks_in_the_evening_and_in_winter() -> None:
    table = load_profiles()
    h0 = table.index("h0")
    winter_evening = table.factors(datetime(2026, 1, 14, 19, 0))[h0]
    winter_night = table.factors(datetime(2026, 1, 14, 3, 0))[h0]
    summer_evening = table.factors(datetime(2026, 7, 15, 19, 0))[h0]
    assert winter_evening > 2 * winter_night
    assert winter_evening > summer_evening


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(Action)), st.integers(min_value=1, max_value=30)),
        min_size=1,
        max_size=15,
    )
)
def test_registers_only_move_while_supplied(plan) -> None:
    m = FleetModel([MeterSpec("A", supports_load_limit=True, annual_kwh=20000.0)], seed=11)
    t = T0
    for action, minutes in plan:
        m.command(0, action, {"limit_w": 800}, t)
        state = m.relay_state(0)
        before = m.import_wh[0]
        for _ in range(minutes):
            m.step(t, 60.0)
            t += timedelta(minutes=1)
        advance = m.import_wh[0] - before
        if state in (RelayState.DISCONNECTED, RelayState.ARMED):
            assert advance == 0.0
        elif state is RelayState.LOAD_LIMITED:
            assert 0.0 <= advance <= 800.0 * minutes / 60 + 1e-9
        else:
            assert advance > 0.0
