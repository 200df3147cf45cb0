"""Cumulative register arithmetic: rollover, decrease, spikes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.registers import AdvanceKind, advance_wh, is_spike, max_physical_wh

MAX = 99_999_900.0  # 99,999.9 kWh in Wh


@pytest.mark.parametrize(
    ("prev", "nxt", "kind", "energy"),
    [
        pytest.param(1000.0, 1500.0, AdvanceKind.NORMAL, 500.0, id="normal"),
        pytest.param(1000.0, 1000.0, AdvanceKind.NORMAL, 0.0, id="flat"),
        pytest.param(MAX - 100.0, 50.0, AdvanceKind.ROLLOVER, 150.0, id="rollover"),
        pytest.param(5_000_000.0, 20.0, AdvanceKind.DECREASE, 0.0, id="reset-to-near-zero"),
        pytest.param(MAX - 100.0, 50_000_000.0, AdvanceKind.DECREASE, 0.0, id="decrease-not-near-zero"),
        pytest.param(1500.0, 1499.0, AdvanceKind.DECREASE, 0.0, id="small-decrease"),
    ],
)
def test_advance(prev: float, nxt: float, kind: AdvanceKind, energy: float) -> None:
    adv = advance_wh(prev, nxt, MAX)
    assert adv.kind is kind
    assert adv.energy_wh == pytest.approx(energy)
    assert adv.billable is (kind is not AdvanceKind.DECREASE)


@given(st.floats(0, MAX), st.floats(0, MAX))
def test_advance_is_never_negative(prev: float, nxt: float) -> None:
    assert advance_wh(prev, nxt, MAX).energy_wh >= 0


def test_physical_maximum() -> None:
    # 60 A x 230 V x 1 phase x 1.2 margin for one hour = 16,560 Wh
    assert max_physical_wh(60, 230, 1, 3600) == pytest.approx(16_560.0)
    assert max_physical_wh(60, 230, 3, 3600) == pytest.approx(49_680.0)


def test_spike_flags_only_impossible_advances() -> None:
    honest = advance_wh(0.0, 3_000.0, MAX)  # 3 kWh in 15 min = 12 kW: possible on 60 A
    assert not is_spike(honest, 60, 230, 1, 900)
    impossible = advance_wh(0.0, 50_000.0, MAX)  # 50 kWh in 15 min = 200 kW
    assert is_spike(impossible, 60, 230, 1, 900)
    # two readings a second apart: the window widens to a minute, so 100 Wh is not a spike
    assert not is_spike(advance_wh(0.0, 100.0, MAX), 60, 230, 1, 1)
    assert not is_spike(advance_wh(10.0, 5.0, MAX), 60, 230, 1, 1)
