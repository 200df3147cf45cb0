"""The guard over every combination of its boolean inputs, and properties (Hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.guard import decide
from control.models import Allowed, Deferred, Facts, Notice, Reason, Refused, Request, Weather
from control.windows import blocks, calendar_for, zone
from tests.unit.control.factories import TUESDAY_10, cn_residential, passing_facts

POLICY = cn_residential()
TUESDAY_16 = TUESDAY_10 + timedelta(hours=6)  # outside the window

# flag -> (change applied when the flag is "bad", the reason it must produce)
FLAGS: dict[str, tuple[dict[str, object], Reason]] = {
    "protected": ({"protections": frozenset({"life_support"})}, Reason.PROTECTED),
    "protections_unknown": ({"protections": None}, Reason.PROTECTIONS_UNKNOWN),
    "dispute": ({"dispute_open": True}, Reason.DISPUTE_OPEN),
    "prev_debt": ({"previous_occupant_debt_only": True}, Reason.PREVIOUS_OCCUPANT_DEBT),
    "plan": ({"installment_plan_good_standing": True}, Reason.INSTALLMENT_PLAN),
    "not_exhausted": ({"credit_exhausted": False}, Reason.NOT_EXHAUSTED),
    "notice_undelivered": ({"notice": Notice("sent", sent_at=TUESDAY_10)}, Reason.NOTICE_UNDELIVERED),
    "reminder_failed": ({"final_reminder": Notice("failed")}, Reason.REMINDER_FAILED),
    "weather_unknown": ({"weather": None}, Reason.WEATHER_UNKNOWN),
    "weather_cold": (
        {"weather": Weather(TUESDAY_10 - timedelta(hours=1), Decimal("-2"), Decimal("5"))},
        Reason.WEATHER_COLD,
    ),
    "channels_degraded": ({"channels_degraded": True}, Reason.CHANNELS_DEGRADED),
    "reading_stale": ({"last_reading_at": TUESDAY_10 - timedelta(hours=30)}, Reason.READING_STALE),
    "relay_unknown": ({"relay_state": "unknown"}, Reason.RELAY_UNKNOWN),
    "holidays_unknown": ({"holidays_known": False}, Reason.CALENDAR_UNKNOWN),
    "kill_switch": ({"kill_switch": True}, Reason.KILL_SWITCH),
    "feeder_full": ({"feeder_recent_disconnects": (TUESDAY_10 - timedelta(minutes=1),) * 20}, Reason.FEEDER_RATE),
}
# weather_unknown and weather_cold touch the same fact: the cold case is dropped when unknown wins.
EXCLUSIVE = {("weather_unknown", "weather_cold"), ("protected", "protections_unknown")}
REFUSING = {"protected", "dispute", "prev_debt", "plan", "not_exhausted"}


def _combos() -> list[tuple[str, ...]]:
    names = list(FLAGS)
    out = []
    for bits in itertools.product((False, True), repeat=len(names)):
        on = tuple(n for n, b in zip(names, bits, strict=True) if b)
        if any(a in on and b in on for a, b in EXCLUSIVE):
            continue
        out.append(on)
    return out


def test_every_combination_of_boolean_inputs() -> None:
    """65k-ish combinations: allowed iff nothing is bad; every bad input is named; refusal iff a refusing input."""
    base = passing_facts()
    count = 0
    for on in _combos():
        changes: dict[str, object] = {}
        for name in on:
            changes.update(FLAGS[name][0])
        facts = replace(base, **changes)  # type: ignore[arg-type]
        decision = decide(facts, POLICY, TUESDAY_10)
        expected = {FLAGS[n][1] for n in on}
        if not on:
            assert decision == Allowed("disconnect", ("load_limit_skipped_unsupported",)) or isinstance(
                decision, Allowed
            )
            continue
        assert not isinstance(decision, Allowed), on
        assert expected <= set(decision.reasons), (on, decision)
        if REFUSING & set(on):
            assert isinstance(decision, Refused), on
        else:
            assert isinstance(decision, Deferred), on
        count += 1
    assert count > 10_000


def test_outside_window_defers_to_next_window_start() -> None:
    decision = decide(passing_facts(TUESDAY_16), POLICY, TUESDAY_16)
    assert isinstance(decision, Deferred)
    assert decision.reasons == (Reason.OUTSIDE_WINDOW,)
    assert decision.until == TUESDAY_10 + timedelta(days=1) - timedelta(hours=1)  # Wednesday 09:00 local


def test_decide_never_raises_on_bad_timezone() -> None:
    decision = decide(passing_facts(timezone="Nowhere/Atlantis"), POLICY, TUESDAY_10)
    assert isinstance(decision, Deferred)
    assert Reason.CALENDAR_UNKNOWN in decision.reasons


def test_reconnect_ignores_windows_and_kill_switch() -> None:
    facts = passing_facts(
        TUESDAY_16, available_credit_minor=600, credit_exhausted=False, kill_switch=True, relay_state="disconnected"
    )
    assert decide(facts, POLICY, TUESDAY_16, "arm") == Allowed("arm")


def test_reconnect_needs_a_trigger() -> None:
    facts = passing_facts(available_credit_minor=499, credit_exhausted=False, relay_state="disconnected")
    assert decide(facts, POLICY, TUESDAY_10, "arm") == Refused((Reason.INSUFFICIENT_CREDIT,))
    still_exhausted = replace(facts, available_credit_minor=900, credit_exhausted=True)  # emergency credit only
    assert decide(still_exhausted, POLICY, TUESDAY_10, "arm") == Refused((Reason.INSUFFICIENT_CREDIT,))
    assert decide(replace(facts, available_credit_minor=500), POLICY, TUESDAY_10, "arm") == Allowed("arm")
    assert decide(replace(facts, dispute_open=True), POLICY, TUESDAY_10, "arm") == Allowed("arm")


def test_reconnect_rate_per_feeder() -> None:
    recent = tuple(TUESDAY_10 - timedelta(seconds=i) for i in range(30))
    facts = passing_facts(available_credit_minor=600, credit_exhausted=False, feeder_recent_reconnects=recent)
    decision = decide(facts, POLICY, TUESDAY_10, "arm")
    assert isinstance(decision, Deferred)
    assert decision.reasons == (Reason.FEEDER_RATE,)
    assert decision.until == TUESDAY_10 - timedelta(seconds=29) + timedelta(minutes=5)  # oldest leaves the period


def test_no_policy_refuses() -> None:
    assert decide(passing_facts(), None, TUESDAY_10) == Refused((Reason.NO_POLICY,))


# --- properties ---------------------------------------------------------------------------

instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC))
maybe_bool = st.one_of(st.none(), st.booleans())


@st.composite
def any_facts(draw: st.DrawFn) -> tuple[Facts, datetime]:
    now = draw(instants)
    hours = st.floats(min_value=-1, max_value=200, allow_nan=False)

    def ago(h: float) -> datetime:
        return now - timedelta(hours=h)

    notice = draw(
        st.one_of(
            st.none(),
            st.builds(
                Notice,
                st.sampled_from(["pending", "sent", "delivered", "failed"]),
                st.one_of(st.none(), hours.map(ago)),
                st.one_of(st.none(), hours.map(ago)),
            ),
        )
    )
    reminder_status = st.sampled_from(["pending", "sent", "failed"])
    reminder = draw(st.one_of(st.none(), st.builds(Notice, reminder_status, st.one_of(st.none(), hours.map(ago)))))
    weather = draw(
        st.one_of(
            st.none(),
            st.builds(
                Weather,
                hours.map(ago),
                st.decimals(min_value=-20, max_value=45, places=1),
                st.decimals(min_value=-20, max_value=45, places=1),
            ),
        )
    )
    kinds = st.sampled_from(list(POLICY.protected_kinds))
    facts = passing_facts(
        now,
        timezone=draw(st.sampled_from(["Asia/Shanghai", "Europe/London", "America/New_York", "Australia/Lord_Howe"])),
        account_class=draw(st.sampled_from(["residential", "non_residential", "large_commercial", "important"])),
        credit_exhausted=draw(maybe_bool),
        protections=draw(st.one_of(st.none(), st.frozensets(kinds, max_size=2))),
        dispute_open=draw(maybe_bool),
        previous_occupant_debt_only=draw(maybe_bool),
        installment_plan_good_standing=draw(maybe_bool),
        notice=notice,
        final_reminder=reminder,
        weather=weather,
        channels_degraded=draw(maybe_bool),
        channels_healthy_since=draw(st.one_of(st.none(), hours.map(ago))),
        last_reading_at=draw(st.one_of(st.none(), hours.map(ago))),
        relay_state=draw(st.sampled_from(["connected", "disconnected", "armed", "load_limited", "unknown", "?"])),
        supports_load_limit=draw(st.booleans()),
        load_limited_since=draw(st.one_of(st.none(), hours.map(ago))),
        kill_switch=draw(maybe_bool),
        holidays_known=draw(st.booleans()),
        request=Request(
            manual=draw(st.booleans()),
            requested_by="alice",
            approved_by=draw(st.sampled_from([None, "alice", "bob"])),
            approver_roles=draw(st.sampled_from([frozenset(), frozenset({"approver"})])),
            authority_copy=draw(st.booleans()),
            batch_size=draw(st.integers(1, 500)),
        ),
    )
    return facts, now


@settings(max_examples=200, deadline=None)
@given(any_facts(), st.sampled_from(["disconnect", "load_limit"]))
def test_property_never_cuts_protected_outside_window_or_unknown(case: tuple[Facts, datetime], action: str) -> None:
    facts, now = case
    decision = decide(facts, POLICY, now, action)
    if not isinstance(decision, Allowed):
        assert decision.reasons, "a refusal or deferral always names its reasons"
        return
    assert not (facts.protections or set()) & set(POLICY.protected_kinds)
    assert facts.protections is not None
    assert blocks(now, POLICY, zone(facts.timezone), calendar_for("CN", None)) == ()
    for value in (
        facts.credit_exhausted if not facts.request.manual else True,
        facts.dispute_open,
        facts.previous_occupant_debt_only,
        facts.notice,
        facts.final_reminder,
        facts.weather,
        facts.channels_degraded,
        facts.channels_healthy_since,
        facts.last_reading_at,
        facts.kill_switch,
    ):
        assert value is not None
    assert facts.relay_state in ("connected", "armed", "load_limited")
    assert facts.holidays_known
    assert facts.dispute_open is False and facts.kill_switch is False


@settings(max_examples=200, deadline=None)
@given(any_facts())
def test_property_deferred_until_is_an_allowed_instant(case: tuple[Facts, datetime]) -> None:
    facts, now = case
    decision = decide(facts, POLICY, now)
    if isinstance(decision, Deferred) and decision.until is not None:
        assert decision.until >= now
        assert blocks(decision.until, POLICY, zone(facts.timezone), calendar_for("CN", None)) == ()


@pytest.mark.parametrize("action", ["arm", "reconnect", "clear_load_limit"])
@settings(max_examples=100, deadline=None)
@given(case=any_facts())
def test_property_supply_on_never_blocked_by_window_or_unknowns(action: str, case: tuple[Facts, datetime]) -> None:
    facts, now = case
    facts = replace(facts, available_credit_minor=10_000, credit_exhausted=False, feeder_recent_reconnects=())
    assert decide(facts, POLICY, now, action) == Allowed(action)


@settings(max_examples=300, deadline=None)
@given(instants, st.sampled_from(["Asia/Shanghai", "Europe/London", "America/New_York"]))
def test_property_passing_facts_allowed_exactly_inside_window(now: datetime, tz: str) -> None:
    decision = decide(passing_facts(now, timezone=tz), POLICY, now)
    inside = blocks(now, POLICY, zone(tz), calendar_for("CN", None)) == ()
    assert isinstance(decision, Allowed) == inside
    if not inside:
        assert isinstance(decision, Deferred) and decision.until is not None and decision.until > now
