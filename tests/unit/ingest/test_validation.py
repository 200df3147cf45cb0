"""Validation: future timestamps, rollover, reset, spike and gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ingest.models import MeterInfo, Reading
from ingest.validation import Pair, assess, split_future

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
METER = MeterInfo(
    "M-1", register_max_wh=99_999_900, rated_current_a=60, nominal_voltage_v=230, phases=1, interval_s=900
)


def pair(prev_wh: float, wh: float, seconds: float = 900) -> Pair:
    return Pair("M-1", T0, prev_wh, T0 + timedelta(seconds=seconds), wh)


def kinds(p: Pair) -> list[str]:
    return [f.kind for f in assess(p, METER)]


def test_future_tolerance() -> None:
    rs = [Reading("M", "1-0:1.8.0", T0 + timedelta(seconds=s), 1.0) for s in (0, 299, 300, 301, 86400)]
    ok, bad = split_future(rs, T0, 300)
    assert [r.ts for r in ok] == [T0, T0 + timedelta(seconds=299), T0 + timedelta(seconds=300)]
    assert len(bad) == 2


def test_normal_advance_finds_nothing() -> None:
    assert kinds(pair(1000, 2000)) == []


def test_rollover_is_an_event_without_hold() -> None:
    found = assess(pair(99_999_000, 500), METER)
    assert [(f.kind, f.hold) for f in found] == [("register_rollover", False)]
    assert found[0].detail["advance_wh"] == 1400


def test_reset_holds_billing() -> None:
    found = assess(pair(5_000_000, 12), METER)
    assert [(f.kind, f.hold) for f in found] == [("register_reset", True)]
    assert found[0].ts == T0 + timedelta(seconds=900)
    assert found[0].detail["prev_wh"] == 5_000_000


def test_spike_holds_billing() -> None:
    # 60 A x 230 V x 1.2 margin for 15 min = 4140 Wh at most
    assert kinds(pair(0, 4100)) == []
    found = assess(pair(0, 4200), METER)
    assert [(f.kind, f.hold) for f in found] == [("energy_spike", True)]


def test_gap_requests_reread_and_is_dated_at_its_start() -> None:
    found = assess(pair(1000, 1200, seconds=3600), METER)
    assert [(f.kind, f.reread) for f in found] == [("gap", True)]
    assert found[0].ts == T0 and found[0].detail["missing"] == 3


def test_one_interval_late_is_not_a_gap() -> None:
    assert kinds(pair(1000, 1200, seconds=1300)) == []


@given(
    start=st.floats(min_value=0, max_value=90_000_000),
    steps=st.lists(st.floats(min_value=0, max_value=4000), min_size=1, max_size=30),
)
def test_monotone_plausible_series_is_clean(start: float, steps: list[float]) -> None:
    prev = start
    for i, step in enumerate(steps):
        nxt = prev + step
        p = Pair("M-1", T0 + timedelta(seconds=900 * i), prev, T0 + timedelta(seconds=900 * (i + 1)), nxt)
        assert assess(p, METER) == []
        prev = nxt


@given(prev=st.floats(min_value=1, max_value=80_000_000), drop=st.floats(min_value=0.001, max_value=1.0))
def test_any_decrease_outside_the_wrap_band_holds(prev: float, drop: float) -> None:
    nxt = prev * (1 - drop) if drop < 1 else 0.0
    if nxt >= prev:
        return
    found = assess(pair(prev, nxt), METER)
    assert any(f.hold for f in found)
