"""The 28 scenarios of DOMAIN.md §7, one test each, at the layer where the behaviour lives.

Pure scenarios call :func:`control.guard.decide` and the ladder rules. Scenarios about the
lifecycle and the shell (plans, notices, commands, cases, audit) run the real engine against a
fresh TimescaleDB database with a recording transport in place of the meter network (the MQTT
and Modbus transports themselves are tested in tests/integration/control).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from control import operations
from control.errors import ApprovalError
from control.guard import decide
from control.ladder import ProtectionRow, WarningLadder, effective_protections, execution_plan, self_disconnecting
from control.models import Allowed, Deferred, Notice, Reason, Refused, Request, Weather
from control.policy import load_profile
from control.windows import calendar_for, next_allowed, zone
from tests.integration.control.harness import (
    RecordingTransport,
    Rig,
    SettableClock,
    account_event,
    good_conditions,
    pool,
    register_site,
)
from tests.unit.control.factories import TUESDAY_10, cn_residential, local, passing_facts

POLICY = cn_residential()
SH = zone("Asia/Shanghai")
CN = calendar_for("CN", None)
db = pytest.mark.integration


@pytest.fixture
async def rig(db_url: str) -> Any:
    async with pool(db_url) as p:
        yield Rig(db_url, p, SettableClock(TUESDAY_10), RecordingTransport())


def site(rig: Rig, **kw: Any) -> tuple[str, str]:
    ((account, meter),) = register_site(rig.db_url, now=rig.clock.at, **kw)
    good_conditions(rig.db_url, rig.clock.at)
    return account, meter


# 1 ---------------------------------------------------------------------------------------
def test_scenario_01_warning_hysteresis() -> None:
    ladder = WarningLadder(POLICY.warnings)
    fired = [t for balance in (3100, 2950, 3050, 2980) for t in ladder.observe(balance)]
    assert fired == [3000]  # 31 -> 29.5 warns; 30.5 is not 35, so 29.8 stays quiet
    assert ladder.observe(3500) == [] and ladder.observe(2900) == [3000]  # re-armed 5 CNY above


# 2 ---------------------------------------------------------------------------------------
@db
async def test_scenario_02_zero_balance_starts_emergency_credit_and_notice_no_command(rig: Rig) -> None:
    account, _ = site(rig)
    account_event(rig.db_url, account, "emergency_credit_started", TUESDAY_10)
    assert await rig.engine.process_events() == 1
    ((kind, earliest),) = rig.rows("select kind, body->>'earliest_execution_at' from notices")
    assert kind == "pending_disconnection"
    assert datetime.fromisoformat(earliest) == local(2026, 11, 25, 10)  # 24 h notice, Wednesday in the window
    assert rig.rows("select count(*) from commands") == [(0,)]
    assert rig.transport.sent == []


# 3 ---------------------------------------------------------------------------------------
def test_scenario_03_exhausted_friday_evening_waits_for_monday() -> None:
    friday_17 = local(2026, 11, 27, 17)
    plan = execution_plan(friday_17 - timedelta(days=2), friday_17, POLICY, SH, CN)
    assert plan is not None and plan.execute_at == local(2026, 11, 30, 9)
    t = friday_17
    while t < local(2026, 11, 30, 9):
        decision = decide(passing_facts(t), POLICY, t)
        assert isinstance(decision, Deferred) and decision.until == local(2026, 11, 30, 9), t
        t += timedelta(minutes=37)
    assert isinstance(decide(passing_facts(plan.execute_at), POLICY, plan.execute_at), Allowed)


# 4 ---------------------------------------------------------------------------------------
def test_scenario_04_day_before_holiday_moves_to_after_the_holiday() -> None:
    eve = local(2026, 9, 30, 10)  # Wednesday before National Day (1-7 October)
    decision = decide(passing_facts(eve), POLICY, eve)
    assert isinstance(decision, Deferred)
    assert Reason.DAY_BEFORE_HOLIDAY in decision.reasons
    assert decision.until == local(2026, 10, 8, 9)
    assert next_allowed(eve, POLICY, SH, CN) == local(2026, 10, 8, 9)


# 5 ---------------------------------------------------------------------------------------
@db
async def test_scenario_05_notice_failed_everywhere_no_disconnect_retry_other_channels(rig: Rig) -> None:
    account, _ = site(rig)
    cmd = await rig.at_execution_time(account)
    rig.sql("update notices set status = 'failed', delivered_at = null where kind = 'pending_disconnection'")
    await rig.engine.dispatch_due()
    assert rig.transport.sent == []
    assert rig.rows("select state from commands where id = %s", cmd) == [("scheduled",)]
    retry = rig.rows("select body->>'retry_other_channels' from notices where dedupe_key like '%%notice:2'")
    assert retry == [("true",)]
    facts = passing_facts(notice=Notice("failed"))
    d = decide(facts, POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and d.reasons == (Reason.NOTICE_FAILED,)


# 6 ---------------------------------------------------------------------------------------
def test_scenario_06_final_reminder_failed_blocks_with_reason() -> None:
    d = decide(passing_facts(final_reminder=Notice("failed")), POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and d.reasons == (Reason.REMINDER_FAILED,)


# 7 ---------------------------------------------------------------------------------------
@db
async def test_scenario_07_topup_one_second_before_cancels_queued_disconnect(rig: Rig) -> None:
    a1, _ = site(rig, prefix="a")
    cmd = await rig.at_execution_time(a1)
    # The top-up lands one second before; even before its event is handled, the re-check sees it.
    rig.sql("update credit_state set state = 'normal' where account_id = %s", a1)
    rig.clock.advance(seconds=1)
    await rig.engine.dispatch_due()
    assert rig.transport.sent == []
    ((state, err),) = rig.rows("select state, last_error from commands where id = %s", cmd)
    assert state == "cancelled" and "credit_not_exhausted" in err
    # And the event path: credit_restored handled first cancels the plan and its command.
    a2, _ = site(rig, prefix="b")
    cmd2 = await rig.at_execution_time(a2)
    account_event(rig.db_url, a2, "credit_restored", rig.clock.at - timedelta(seconds=1))
    await rig.engine.process_events()
    await rig.engine.dispatch_due()
    assert rig.rows("select state from commands where id = %s", cmd2) == [("cancelled",)]
    assert rig.transport.sent == []


# 8 ---------------------------------------------------------------------------------------
@db
async def test_scenario_08_reconnect_saturday_night_goes_at_once(rig: Rig) -> None:
    account, meter = site(rig)
    rig.sql("update meters set relay_state = 'disconnected'")
    rig.clock.at = local(2026, 11, 28, 23)
    account_event(rig.db_url, account, "credit_restored", rig.clock.at)
    await rig.engine.process_events()
    await rig.engine.dispatch_due()
    assert rig.transport.sent == [(meter, "arm")]
    assert rig.rows("select state, sent_at from commands") == [("confirmed", rig.clock.at)]


# 9 ---------------------------------------------------------------------------------------
@db
async def test_scenario_09_armed_unacknowledged_24h_escalates(rig: Rig) -> None:
    _, meter = site(rig)
    rig.sql("update meters set relay_state = 'armed', relay_state_at = %s", TUESDAY_10)
    rig.clock.at = TUESDAY_10 + timedelta(hours=23, minutes=59)
    assert await rig.engine.check_timers() == 0
    rig.clock.at = TUESDAY_10 + timedelta(hours=24)
    assert await rig.engine.check_timers() == 1
    assert rig.rows("select kind, meter_id, detail->>'sla_breach' from cases") == [("armed_timeout", meter, "true")]
    await rig.engine.check_timers()
    assert rig.rows("select count(*) from cases") == [(1,)]  # counted once


# 10 --------------------------------------------------------------------------------------
@db
async def test_scenario_10_life_support_no_command_case_opens(rig: Rig) -> None:
    account, _ = site(rig)
    rig.sql(
        "insert into protections (account_id, kind, valid_from) values (%s, 'life_support', %s)", account, TUESDAY_10
    )
    account_event(rig.db_url, account, "credit_exhausted", TUESDAY_10)
    await rig.engine.process_events()
    assert rig.rows("select count(*) from commands") == [(0,)]
    ((kind, reasons),) = rig.rows("select kind, detail->'reasons' from cases")
    assert kind == "automatic_disconnect_blocked" and "protected_customer" in reasons
    assert rig.transport.sent == []


# 11 --------------------------------------------------------------------------------------
def test_scenario_11_lapsed_certificate_stays_until_reviewed() -> None:
    now = TUESDAY_10
    lapses = [ProtectionRow("medical_certificate", now - timedelta(days=d), None, "rev") for d in (300, 200, 100)]
    fourth = ProtectionRow("medical_certificate", now - timedelta(days=1), None, None)
    assert effective_protections([*lapses, fourth], now) == frozenset({"medical_certificate"})
    d = decide(passing_facts(protections=effective_protections([*lapses, fourth], now)), POLICY, now)
    assert isinstance(d, Refused) and Reason.PROTECTED in d.reasons and d.open_case
    reviewed = replace(fourth, reviewed_by="alice")
    assert effective_protections([*lapses, reviewed], now) == frozenset()


# 12 --------------------------------------------------------------------------------------
@db
async def test_scenario_12_protection_added_while_disconnected_reconnects_with_priority(rig: Rig) -> None:
    account, meter = site(rig, balance_minor=-5000)
    rig.sql("update meters set relay_state = 'disconnected'")
    rig.clock.at = local(2026, 11, 28, 3)  # Saturday night, no payment
    async with rig.pool.connection() as conn:
        await operations.add_protection(conn, account_id=account, kind="life_support", by="nurse", now=rig.clock.at)
    await rig.engine.process_events()
    assert rig.rows("select action, priority, reason from commands") == [("arm", 10, "protection_added")]
    await rig.engine.dispatch_due()
    assert rig.transport.sent == [(meter, "arm")]


# 13 --------------------------------------------------------------------------------------
def test_scenario_13_cold_forecast_blocks_and_re_evaluates_next_day() -> None:
    cold = Weather(TUESDAY_10 - timedelta(hours=2), Decimal("-2"), Decimal("6"))
    d = decide(passing_facts(weather=cold), POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and d.reasons == (Reason.WEATHER_COLD,)
    assert d.until == local(2026, 11, 25, 9)  # the next day's window


# 14 --------------------------------------------------------------------------------------
@db
async def test_scenario_14_stale_forecast_blocks_as_unknown_with_alert(rig: Rig) -> None:
    stale = Weather(TUESDAY_10 - timedelta(hours=20), Decimal("5"), Decimal("10"))
    d = decide(passing_facts(weather=stale), POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and d.reasons == (Reason.WEATHER_STALE,) and d.until is None
    account, _ = site(rig)
    await rig.at_execution_time(account)
    rig.sql("delete from weather_forecasts")
    rig.sql(
        "insert into weather_forecasts (area, issued_at, horizon_start, horizon_end, min_c, max_c)"
        " values ('default', %s, %s, %s, 5, 10)",
        rig.clock.at - timedelta(hours=20),
        rig.clock.at - timedelta(hours=20),
        rig.clock.at + timedelta(days=2),
    )
    await rig.engine.dispatch_due()
    assert rig.transport.sent == []
    assert any("weather_forecast_stale" in a for a in rig.engine.settings.alerts)


# 15 --------------------------------------------------------------------------------------
def test_scenario_15_open_dispute_blocks_disconnect() -> None:
    d = decide(passing_facts(dispute_open=True, available_credit_minor=-50000), POLICY, TUESDAY_10)
    assert isinstance(d, Refused) and d.reasons == (Reason.DISPUTE_OPEN,) and d.open_case
    # A dispute is also a reconnect trigger, whatever the credit.
    assert decide(passing_facts(dispute_open=True, available_credit_minor=-50000), POLICY, TUESDAY_10, "arm") == (
        Allowed("arm")
    )


# 16 --------------------------------------------------------------------------------------
def test_scenario_16_previous_occupant_debt_no_disconnect() -> None:
    d = decide(passing_facts(previous_occupant_debt_only=True), POLICY, TUESDAY_10)
    assert isinstance(d, Refused) and Reason.PREVIOUS_OCCUPANT_DEBT in d.reasons and d.open_case
    # Unknown origin of the debt is unknown: keep power on.
    d2 = decide(passing_facts(previous_occupant_debt_only=None), POLICY, TUESDAY_10)
    assert isinstance(d2, Deferred) and Reason.DEBT_ORIGIN_UNKNOWN in d2.reasons


def non_residential_notices() -> dict[str, Any]:
    """Written notice 3 days before and the 1 h reminder, both done."""
    return {
        "notice": Notice("delivered", TUESDAY_10 - timedelta(hours=80), TUESDAY_10 - timedelta(hours=79)),
        "final_reminder": Notice("sent", TUESDAY_10 - timedelta(minutes=61)),
    }


# 17 --------------------------------------------------------------------------------------
def test_scenario_17_large_customer_plan_no_automatic_cut_missed_goes_manual() -> None:
    nonres = load_profile("cn-non-residential")
    big = passing_facts(
        account_class="large_commercial", installment_plan_good_standing=True, **non_residential_notices()
    )
    d = decide(big, nonres, TUESDAY_10)
    assert isinstance(d, Refused) and {Reason.INSTALLMENT_PLAN, Reason.NEVER_AUTOMATIC_CLASS} <= set(d.reasons)
    missed = replace(big, installment_plan_good_standing=False)
    d2 = decide(missed, nonres, TUESDAY_10)
    assert isinstance(d2, Refused) and d2.reasons == (Reason.NEVER_AUTOMATIC_CLASS,) and d2.open_case
    manual = replace(
        missed, request=Request(manual=True, requested_by="a", approved_by="b", approver_roles=frozenset({"approver"}))
    )
    assert isinstance(decide(manual, nonres, TUESDAY_10), Allowed)


# 18 --------------------------------------------------------------------------------------
def test_scenario_18_important_user_manual_stop_needs_authority_copy() -> None:
    nonres = load_profile("cn-non-residential")
    req = Request(manual=True, requested_by="a", approved_by="b", approver_roles=frozenset({"approver"}))
    facts = passing_facts(account_class="important", request=req, **non_residential_notices())
    short_notice = decide(passing_facts(account_class="important", request=req), nonres, TUESDAY_10)
    assert isinstance(short_notice, Refused) and Reason.NOTICE_LEAD in short_notice.reasons  # 72 h, not 24 h
    d = decide(facts, nonres, TUESDAY_10)
    assert isinstance(d, Refused) and d.reasons == (Reason.AUTHORITY_COPY_MISSING,)
    ok = replace(facts, request=replace(req, authority_copy=True))
    assert isinstance(decide(ok, nonres, TUESDAY_10), Allowed)


# 19 --------------------------------------------------------------------------------------
@db
async def test_scenario_19_requester_cannot_approve_own_disconnect(rig: Rig) -> None:
    _, meter = site(rig)
    async with rig.pool.connection() as conn:
        await operations.set_operator(conn, "alice", ["approver"])
        cmd = await operations.request_command(
            conn,
            meter_id=meter,
            action="disconnect",
            requested_by="alice",
            reason="r",
            idempotency_key="k",
            now=TUESDAY_10,
        )
        with pytest.raises(ApprovalError):
            await operations.approve_command(conn, cmd.id, "alice", TUESDAY_10)
        with pytest.raises(ApprovalError):
            await operations.approve_command(conn, cmd.id, "bob", TUESDAY_10)  # no approver role
    assert rig.rows("select state, approved_by from commands") == [("awaiting_approval", None)]
    d = decide(
        passing_facts(
            request=Request(
                manual=True, requested_by="alice", approved_by="alice", approver_roles=frozenset({"approver"})
            )
        ),
        POLICY,
        TUESDAY_10,
    )
    assert isinstance(d, Refused) and d.reasons == (Reason.SELF_APPROVAL,)


# 20 --------------------------------------------------------------------------------------
@db
async def test_scenario_20_batch_of_500_needs_approval_and_feeder_rate(rig: Rig) -> None:
    sites = register_site(rig.db_url, n=500, now=TUESDAY_10)
    async with rig.pool.connection() as conn:
        cmds = await operations.bulk_request(
            conn,
            meter_ids=[m for _, m in sites],
            action="reconnect",
            requested_by="ops",
            reason="storm",
            idempotency_key="batch-1",
            now=TUESDAY_10,
        )
    assert len(cmds) == 500 and {c.state for c in cmds} == {"awaiting_approval"}
    # Disconnect pacing: simulate the dispatcher minute by minute over 45 minutes.
    sent: list[datetime] = []
    pending = 500
    t = TUESDAY_10
    while t < TUESDAY_10 + timedelta(minutes=45):
        for _ in range(pending):
            facts = passing_facts(
                t,
                feeder_recent_disconnects=tuple(sent),
                request=Request(batch_size=500, approved_by="boss", approver_roles=frozenset({"approver"})),
            )
            d = decide(facts, POLICY, t)
            if not isinstance(d, Allowed):
                assert isinstance(d, Deferred) and d.reasons == (Reason.FEEDER_RATE,)
                break
            sent.append(t)
            pending -= 1
        t += timedelta(minutes=1)
    for start in sent:
        assert sum(1 for s in sent if start <= s < start + timedelta(minutes=15)) <= 20
    assert len(sent) == 60  # 20 per 15 min
    unapproved = passing_facts(request=Request(batch_size=500))
    d = decide(unapproved, POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and Reason.APPROVAL_REQUIRED in d.reasons


# 21 --------------------------------------------------------------------------------------
@db
async def test_scenario_21_same_event_twice_one_plan_one_command(rig: Rig) -> None:
    account, _ = site(rig)
    account_event(rig.db_url, account, "credit_exhausted", TUESDAY_10, key="bal<0:1")
    with pytest.raises(psycopg.errors.UniqueViolation):
        account_event(rig.db_url, account, "credit_exhausted", TUESDAY_10, key="bal<0:1")
    account_event(rig.db_url, account, "credit_exhausted", TUESDAY_10 + timedelta(seconds=1))  # redelivered
    await asyncio.gather(rig.engine.process_events(), rig.engine.process_events())
    await rig.engine.process_events()
    assert rig.rows("select count(*) from disconnect_plans") == [(1,)]
    assert rig.rows("select count(*) from commands") == [(1,)]


# 22 --------------------------------------------------------------------------------------
@db
async def test_scenario_22_load_side_voltage_keeps_reconnect_pending_clock_runs(rig: Rig) -> None:
    account, meter = site(rig)
    rig.sql("update meters set relay_state = 'disconnected'")
    rig.transport.relay[meter] = "disconnected"
    rig.transport.reject["arm"] = "load_side_voltage"
    account_event(rig.db_url, account, "credit_restored", TUESDAY_10)
    await rig.engine.process_events()
    ((deadline,),) = rig.rows("select deadline_at from commands")
    await rig.engine.dispatch_due()
    assert rig.rows("select state, last_error, deadline_at from commands") == [
        ("scheduled", "load_side_voltage", deadline)
    ]
    assert rig.rows("select kind from notices") == [("reconnect_pending",)]
    del rig.transport.reject["arm"]
    rig.clock.advance(minutes=2)
    await rig.engine.dispatch_due()
    assert rig.rows("select state from commands") == [("confirmed",)]
    assert deadline == TUESDAY_10 + timedelta(hours=24)


# 23 --------------------------------------------------------------------------------------
@db
async def test_scenario_23_keep_power_mode_rejects_trip_no_override_case(rig: Rig) -> None:
    account, meter = site(rig)
    cmd = await rig.at_execution_time(account)
    rig.transport.reject["disconnect"] = "keep_power_mode"
    await rig.engine.dispatch_due()
    rig.clock.advance(minutes=20)
    await rig.engine.dispatch_due()
    assert rig.transport.sent == [(meter, "disconnect")]  # once, never overridden
    assert rig.rows("select state from commands where id = %s", cmd) == [("failed",)]
    assert rig.rows("select kind, detail->>'reason' from cases") == [("meter_rejected_command", "keep_power_mode")]


# 24 --------------------------------------------------------------------------------------
@db
async def test_scenario_24_old_reading_no_disconnect_read_requested(rig: Rig) -> None:
    account, meter = site(rig)
    cmd = await rig.at_execution_time(account)
    rig.sql("update meters set last_seen_at = %s", rig.clock.at - timedelta(hours=30))
    await rig.engine.dispatch_due()
    assert rig.rows("select state from commands where id = %s", cmd) == [("scheduled",)]
    await rig.engine.dispatch_due()
    assert (meter, "read_now") in rig.transport.sent
    assert (meter, "disconnect") not in rig.transport.sent


# 25 --------------------------------------------------------------------------------------
@db
async def test_scenario_25_load_limit_stage(rig: Rig) -> None:
    supports = passing_facts(supports_load_limit=True)
    assert decide(supports, POLICY, TUESDAY_10) == Allowed("load_limit")
    limited = replace(supports, relay_state="load_limited", load_limited_since=TUESDAY_10 - timedelta(hours=10))
    d = decide(limited, POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and d.reasons == (Reason.LOAD_LIMIT_STAGE,)
    over = replace(limited, load_limited_since=TUESDAY_10 - timedelta(hours=25))
    assert decide(over, POLICY, TUESDAY_10) == Allowed("disconnect")
    assert decide(passing_facts(), POLICY, TUESDAY_10) == Allowed("disconnect", ("load_limit_skipped_unsupported",))
    # The engine: first the 1 kW limit, then a top-up lifts it.
    account, meter = site(rig, supports_load_limit=True)
    await rig.at_execution_time(account)
    await rig.engine.dispatch_due()
    assert rig.transport.sent == [(meter, "load_limit")]
    assert rig.rows("select relay_state from meters") == [("load_limited",)]
    assert rig.rows("select action, state from commands where state = 'scheduled'") == [("disconnect", "scheduled")]
    account_event(rig.db_url, account, "credit_restored", rig.clock.advance(hours=1))
    await rig.engine.process_events()
    await rig.engine.dispatch_due()
    assert rig.transport.sent[-1] == (meter, "clear_load_limit")
    assert rig.rows("select relay_state from meters") == [("connected",)]
    assert rig.rows("select count(*) from commands where action = 'disconnect' and state = 'scheduled'") == [(0,)]


# 26 --------------------------------------------------------------------------------------
@db
async def test_scenario_26_three_times_off_supply_in_30_days_flagged(rig: Rig) -> None:
    now = TUESDAY_10
    assert self_disconnecting([now - timedelta(days=d) for d in (1, 10, 29)], now, 3, 30)
    assert not self_disconnecting([now - timedelta(days=d) for d in (1, 10, 31)], now, 3, 30)
    account, _ = site(rig)
    for days in (20, 10, 0):
        at = now - timedelta(days=days)
        rig.clock.at = at
        account_event(rig.db_url, account, "credit_exhausted", at)
        await rig.engine.process_events()
        account_event(rig.db_url, account, "credit_restored", at + timedelta(hours=1))
        await rig.engine.process_events()
    assert rig.rows("select kind, detail->>'offer' from cases") == [("self_disconnecting", "support")]


# 27 --------------------------------------------------------------------------------------
@db
async def test_scenario_27_payment_gateway_failing_suspends_until_2h_healthy(rig: Rig) -> None:
    d = decide(passing_facts(channels_degraded=True), POLICY, TUESDAY_10)
    assert isinstance(d, Deferred) and d.reasons == (Reason.CHANNELS_DEGRADED,)
    since = TUESDAY_10 - timedelta(minutes=90)
    d2 = decide(passing_facts(channels_healthy_since=since), POLICY, TUESDAY_10)
    assert isinstance(d2, Deferred) and d2.until == since + timedelta(hours=2)
    async with rig.pool.connection() as conn:
        await operations.set_channel_health(conn, channel="gateway", healthy=False, at=TUESDAY_10)
        await operations.set_channel_health(conn, channel="gateway", healthy=True, at=since)
        await operations.set_channel_health(conn, channel="gateway", healthy=True, at=TUESDAY_10)  # no reset
    assert rig.rows("select healthy, changed_at from payment_channel_health") == [(True, since)]


# 28 --------------------------------------------------------------------------------------
@db
async def test_scenario_28_audit_unavailable_command_not_sent_alert(rig: Rig) -> None:
    account, _ = site(rig)
    cmd = await rig.at_execution_time(account)
    with psycopg.connect(rig.db_url) as blocker:
        blocker.execute("lock table audit_log in access exclusive mode")  # held until the block ends
        await rig.engine.dispatch_due()
        blocker.rollback()
    assert rig.transport.sent == []
    ((state, err),) = rig.rows("select state, last_error from commands where id = %s", cmd)
    assert state == "scheduled" and err == "audit unavailable"
    assert any("audit unavailable" in a for a in rig.engine.settings.alerts)
    rig.clock.advance(minutes=1)
    await rig.engine.dispatch_due()
    assert [a for _, a in rig.transport.sent] == ["disconnect"]
