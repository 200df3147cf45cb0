"""Credit rules: warnings with hysteresis, emergency/friendly credit, days left, purity."""

from __future__ import annotations

import ast
import itertools
import pathlib
from datetime import UTC, datetime

import pytest

from prepaid.credit import (
    CreditEvent,
    CreditPolicy,
    CreditState,
    CreditStateName,
    UnknownTransition,
    daily_use,
    days_left,
    in_friendly_hours,
    on_balance,
    transition,
)
from prepaid.localtime import LocalCalendar

POLICY = CreditPolicy(days_left_warning=0)
CAL = LocalCalendar("Asia/Shanghai", "CN")


def run(balances: list[int], policy: CreditPolicy = POLICY, friendly: bool = False) -> tuple[CreditState, list[str]]:
    state, events = CreditState(), []
    for before, after in itertools.pairwise(balances):
        out = on_balance(state, before, after, policy, friendly=friendly)
        state = out.state
        events += out.events
    return state, events


def test_scenario_1_warning_hysteresis_gives_exactly_one_warning() -> None:
    _, events = run([3100, 2950, 3050, 2980])
    assert events.count("low_credit") == 1


def test_threshold_rearms_above_hysteresis() -> None:
    _, events = run([3100, 2950, 3500, 2990])
    assert events.count("low_credit") == 2


def test_drop_past_both_thresholds_is_one_warning() -> None:
    _, events = run([5000, 500, 400])
    assert events.count("low_credit") == 1


def test_ladder_emergency_then_exhausted_then_restored() -> None:
    st, events = run([3100, 100, -200, -1000, 600], CreditPolicy(days_left_warning=0, low_credit_thresholds_minor=()))
    assert events == ["emergency_credit_started", "credit_exhausted", "credit_restored"]
    assert st.state is CreditStateName.NORMAL


def test_friendly_hours_defer_exhaustion_until_they_end() -> None:
    policy = CreditPolicy(days_left_warning=0, low_credit_thresholds_minor=())
    out = on_balance(CreditState(CreditStateName.EMERGENCY), -900, -1500, policy, friendly=True)
    assert out.state.state is CreditStateName.FRIENDLY and out.events == []
    tick = on_balance(out.state, -1500, -1500, policy, friendly=False)
    assert tick.state.state is CreditStateName.EXHAUSTED and tick.events == ["credit_exhausted"]


def test_no_emergency_credit_goes_straight_to_exhausted() -> None:
    policy = CreditPolicy(emergency_credit_minor=0, days_left_warning=0, low_credit_thresholds_minor=())
    _, events = run([100, 0], policy)
    assert events == ["credit_exhausted"]


def test_small_topup_while_exhausted_does_not_restore() -> None:
    policy = CreditPolicy(days_left_warning=0, low_credit_thresholds_minor=())
    out = on_balance(CreditState(CreditStateName.EXHAUSTED), -1000, 200, policy, friendly=False)
    assert out.state.state is CreditStateName.EXHAUSTED and out.events == []


def test_unknown_transition_raises() -> None:
    with pytest.raises(UnknownTransition):
        transition(CreditStateName.EXHAUSTED, CreditEvent.BELOW_ZERO)


def test_days_left_warning_fires_once() -> None:
    policy = CreditPolicy(low_credit_thresholds_minor=())
    state = CreditState(daily_use_minor=1000)
    a = on_balance(state, 3000, 1500, policy, friendly=False)  # (1500+1000)/1000 = 2.5 days
    b = on_balance(a.state, 1500, 1400, policy, friendly=False)
    assert a.events == ["low_credit"] and a.warnings[0].reason == "days_left" and b.events == []
    assert str(a.warnings[0].days_left) == "2.5"


def test_days_left_and_daily_use() -> None:
    assert days_left(2500, 1000) is not None and str(days_left(2500, 1000)) == "2.5"
    assert days_left(2500, 0) is None
    assert daily_use([100, 200, 301]) == 200


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        pytest.param(datetime(2026, 12, 1, 10, 0), False, id="tuesday-10"),
        pytest.param(datetime(2026, 12, 1, 19, 0), True, id="tuesday-19"),
        pytest.param(datetime(2026, 12, 1, 7, 59), True, id="tuesday-0759"),
        pytest.param(datetime(2026, 12, 5, 12, 0), True, id="saturday"),
        pytest.param(datetime(2026, 10, 1, 12, 0), True, id="national-day"),
    ],
)
def test_friendly_hours(local: datetime, expected: bool) -> None:
    from zoneinfo import ZoneInfo

    at = local.replace(tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)
    assert in_friendly_hours(CreditPolicy(), CAL, at) is expected


PURE = ["money", "tariffs", "pricing", "billing", "ledger", "credit", "topups", "localtime"]


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_io(module: str) -> None:
    path = pathlib.Path(__file__).resolve().parents[3] / "prepaid" / f"{module}.py"
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr == "now":
            pytest.fail(f"{module} calls .now()")
    assert not names & {"asyncio", "psycopg", "psycopg_pool", "paho", "pymodbus", "fastapi", "httpx"}


def test_topup_below_a_threshold_does_not_warn_but_the_next_lower_one_does() -> None:
    _, events = run([-1000, 2500, 2400, 900])
    assert events.count("low_credit") == 1  # only at 1000; 3000 was "told" by the top-up
