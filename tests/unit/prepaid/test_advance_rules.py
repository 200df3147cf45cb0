"""billing.advance_meter's fast path decides exactly as the shared register rules
(headend.registers): normal advances, the spike limit at its boundary, rollover, reset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from headend.registers import AdvanceKind, advance_wh, is_spike
from prepaid.billing import MeterSpec, MeterState, advance_meter

SPEC = MeterSpec(register_max_wh=99_999_900, rated_current_a=60.0, nominal_voltage_v=230.0, phases=1)
# 60 A x 230 V x 1.2 margin = 16,560 W: 4,140 Wh in 15 minutes; windows under 60 s count as 60 s (276 Wh)
T = 1_772_323_200  # 2026-03-01 00:00 UTC


def first(reg: int, dt: int, prev: int = 1_000_000) -> tuple[str | None, int]:
    adv = advance_meter(MeterState(last_ts_s=T, last_register_wh=prev), [(T + dt, float(reg))], SPEC)
    return adv.hold, adv.energy_wh


def test_spike_limit_boundary() -> None:
    assert first(1_000_000 + 4140, 900) == (None, 4140)
    assert first(1_000_000 + 4141, 900) == ("energy_spike", 0)
    assert first(1_000_000 + 276, 10) == (None, 276)
    assert first(1_000_000 + 277, 10) == ("energy_spike", 0)


def test_rollover_and_reset() -> None:
    assert first(500, 900, prev=99_999_000) == (None, 1400)
    assert first(500, 900, prev=50_000_000) == ("register_reset", 0)


@given(
    prev=st.integers(0, 99_999_899),
    delta=st.integers(-99_999_899, 99_999_899),
    dt=st.integers(1, 7 * 86_400),
)
def test_same_decision_as_the_shared_rules(prev: int, delta: int, dt: int) -> None:
    reg = (prev + delta) % 99_999_900
    adv = advance_wh(prev, reg, SPEC.register_max_wh)
    if adv.kind is AdvanceKind.DECREASE:
        expected: tuple[str | None, int] = ("register_reset", 0)
    elif is_spike(adv, SPEC.rated_current_a, SPEC.nominal_voltage_v, SPEC.phases, dt):
        expected = ("energy_spike", 0)
    else:
        expected = (None, round(adv.energy_wh))
    assert first(reg, dt, prev=prev) == expected
