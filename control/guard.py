"""The guard: may this command go now? A pure function of facts, policy and ``now``.

``decide(facts, policy, now, action)`` returns :class:`Allowed`, :class:`Deferred` or
:class:`Refused` and never raises. Every reason that applies is listed, not only the first.

Rules (DOMAIN.md §5-§6):

* **Unknown means keep power on.** Any ``None`` fact a disconnect depends on defers it.
* **Windows block disconnects only.** Supply-on actions (arm, reconnect, clear load limit)
  are limited only by the per-feeder reconnect rate; they need a trigger (credit at the
  reconnect minimum, a protection, an open dispute, an erroneous disconnect or a person).
* Supply-off actions (disconnect and the load-limit stage) need: no protection, an account
  class that may be cut automatically (or a person with the authority copy for important
  users), no plan in good standing (automatic), no open dispute, a debt that is the
  customer's own, credit exhausted (automatic), a known relay that is not already off, a
  window on an allowed local day, the pending-disconnection notice delivered ``lead_h``
  before and the final reminder sent ``final_reminder_min`` before, a fresh forecast within
  the thresholds, payment channels healthy for ``channels_healthy_for_h``, a fresh reading,
  no kill switch, the feeder under its rate, and the approvals a manual or large request needs.
* **Load-limit stage**: where the policy enables it and the meter supports it, the first
  allowed disconnect becomes ``load_limit``; the disconnect follows after ``duration_h``.
  A meter without limiting skips the stage (``notes`` says so, for the log).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from control.models import (
    CASE_REASONS,
    SUPPLY_ON_ACTIONS,
    Allowed,
    Decision,
    Deferred,
    Facts,
    Reason,
    Refused,
)
from control.policy import Policy
from control.windows import HolidayCalendar, blocks, calendar_for, next_allowed, start_of_next_local_day, zone

REFUSALS: frozenset[Reason] = frozenset(
    {
        *CASE_REASONS,
        Reason.AUTHORITY_COPY_MISSING,
        Reason.SELF_APPROVAL,
        Reason.APPROVER_ROLE_MISSING,
        Reason.NOT_EXHAUSTED,
        Reason.ALREADY_OFF,
        Reason.NO_POLICY,
        Reason.INSUFFICIENT_CREDIT,
    }
)


def decide(
    facts: Facts,
    policy: Policy | None,
    now: datetime,
    action: str = "disconnect",
    calendar: HolidayCalendar | None = None,
) -> Decision:
    """The decision for ``action`` on ``facts`` at ``now`` (never raises on facts)."""
    if policy is None:
        return Refused((Reason.NO_POLICY,), open_case=False)
    if action in ("read_now", "status"):
        return Allowed(action)
    if action in SUPPLY_ON_ACTIONS:
        return _supply_on(facts, policy, now, action)
    return _supply_off(facts, policy, now, action, calendar)


def _rate_until(recent: tuple[datetime, ...], limit: int, period: timedelta, now: datetime) -> datetime | None:
    """None when under the limit, else the instant the oldest counted operation leaves the period."""
    inside = sorted(t for t in recent if now - period < t <= now)
    if len(inside) < limit:
        return None
    if limit == 0:
        return now + period
    return inside[len(inside) - limit] + period


def _supply_on(facts: Facts, policy: Policy, now: datetime, action: str) -> Decision:
    req = facts.request
    triggers = [
        req.manual,
        req.erroneous_disconnect,
        bool(facts.protections and set(facts.protections) & set(policy.protected_kinds)),
        facts.dispute_open is True,
    ]
    deferrals: list[tuple[Reason, datetime | None]] = []
    if not any(triggers):
        # Credit is the trigger: prepaid says credit is no longer exhausted (its restore rule)
        # and the available credit reaches the policy's reconnect minimum.
        if facts.available_credit_minor is None or facts.credit_exhausted is None:
            deferrals.append((Reason.BALANCE_UNKNOWN, None))
        elif facts.credit_exhausted or facts.available_credit_minor < policy.reconnect.min_credit_minor:
            return Refused((Reason.INSUFFICIENT_CREDIT,))
    rate_until = _rate_until(
        facts.feeder_recent_reconnects,
        policy.grid.reconnects_per_feeder,
        timedelta(minutes=policy.grid.reconnect_period_min),
        now,
    )
    if rate_until is not None:
        deferrals.append((Reason.FEEDER_RATE, rate_until))
    if deferrals:
        return _deferred(deferrals, None)
    return Allowed(action)


def _supply_off(facts: Facts, policy: Policy, now: datetime, action: str, calendar: HolidayCalendar | None) -> Decision:
    req = facts.request
    refusals: list[Reason] = []
    deferrals: list[tuple[Reason, datetime | None]] = []

    def defer(reason: Reason, until: datetime | None = None) -> None:
        deferrals.append((reason, until))

    # Customer protections and account facts (the top layer).
    if facts.protections is None:
        defer(Reason.PROTECTIONS_UNKNOWN)
    elif set(facts.protections) & set(policy.protected_kinds):
        refusals.append(Reason.PROTECTED)
    if facts.account_class in policy.never_automatic_classes:
        if not req.manual:
            refusals.append(Reason.NEVER_AUTOMATIC_CLASS)
        elif (
            facts.account_class == "important"
            and policy.approvals.important_user_authority_copy
            and not req.authority_copy
        ):
            refusals.append(Reason.AUTHORITY_COPY_MISSING)
    if policy.installment_plan_blocks and not req.manual:
        if facts.installment_plan_good_standing is None:
            defer(Reason.PLAN_UNKNOWN)
        elif facts.installment_plan_good_standing:
            refusals.append(Reason.INSTALLMENT_PLAN)
    if policy.dispute_blocks:
        if facts.dispute_open is None:
            defer(Reason.DISPUTES_UNKNOWN)
        elif facts.dispute_open:
            refusals.append(Reason.DISPUTE_OPEN)
    if policy.previous_occupant_debt_blocks:
        if facts.previous_occupant_debt_only is None:
            defer(Reason.DEBT_ORIGIN_UNKNOWN)
        elif facts.previous_occupant_debt_only:
            refusals.append(Reason.PREVIOUS_OCCUPANT_DEBT)
    if not req.manual:
        if facts.credit_exhausted is None:
            defer(Reason.BALANCE_UNKNOWN)
        elif not facts.credit_exhausted:
            refusals.append(Reason.NOT_EXHAUSTED)

    # The meter.
    if facts.relay_state not in ("connected", "disconnected", "armed", "load_limited"):
        defer(Reason.RELAY_UNKNOWN)
    elif facts.relay_state == "disconnected":
        refusals.append(Reason.ALREADY_OFF)

    # Calendar and window, in the service point's local time.
    try:
        tz = zone(facts.timezone)
        tz_known = True
    except (ZoneInfoNotFoundError, ValueError):
        tz, tz_known = zone("UTC"), False
    cal = calendar or calendar_for(policy.country, policy.subdivision)
    calendar_known = tz_known and facts.holidays_known and cal.known
    if not calendar_known:
        defer(Reason.CALENDAR_UNKNOWN)
    else:
        for reason in blocks(now, policy, tz, cal):
            defer(reason, next_allowed(now, policy, tz, cal))

    # Notices.
    notice = facts.notice
    if policy.notice.require_delivery:
        if notice is None:
            defer(Reason.NOTICE_MISSING)
        elif notice.status == "failed":
            defer(Reason.NOTICE_FAILED)
        elif notice.delivered_at is None:
            defer(Reason.NOTICE_UNDELIVERED)
        elif notice.delivered_at + timedelta(hours=float(policy.notice.lead_h)) > now:
            defer(Reason.NOTICE_LEAD, notice.delivered_at + timedelta(hours=float(policy.notice.lead_h)))
    if policy.notice.final_reminder_min > 0:
        reminder = facts.final_reminder
        lead = timedelta(minutes=policy.notice.final_reminder_min)
        if reminder is None or (reminder.status == "pending" and reminder.sent_at is None):
            defer(Reason.REMINDER_PENDING)
        elif reminder.status == "failed":
            defer(Reason.REMINDER_FAILED)
        elif reminder.sent_at is None:
            defer(Reason.REMINDER_PENDING)
        elif reminder.sent_at + lead > now:
            defer(Reason.REMINDER_LEAD, reminder.sent_at + lead)

    # Weather over the horizon.
    weather = facts.weather
    if weather is None:
        defer(Reason.WEATHER_UNKNOWN)
    elif now - weather.forecast_at > timedelta(hours=float(policy.weather.max_age_h)) or weather.forecast_at > now:
        defer(Reason.WEATHER_STALE)
    else:
        if weather.min_c <= policy.weather.min_c:
            defer(Reason.WEATHER_COLD, start_of_next_local_day(now, tz))
        if weather.max_c >= policy.weather.max_c:
            defer(Reason.WEATHER_HOT, start_of_next_local_day(now, tz))

    # Payment channels.
    if facts.channels_degraded is None:
        defer(Reason.CHANNELS_UNKNOWN)
    elif facts.channels_degraded:
        defer(Reason.CHANNELS_DEGRADED)
    elif facts.channels_healthy_since is None:
        defer(Reason.CHANNELS_UNKNOWN)
    else:
        healthy_at = facts.channels_healthy_since + timedelta(hours=float(policy.channels_healthy_for_h))
        if healthy_at > now:
            defer(Reason.CHANNELS_RECOVERING, healthy_at)

    # Reading freshness: an old reading makes the balance an estimate.
    if facts.last_reading_at is None:
        defer(Reason.READING_UNKNOWN)
    elif now - facts.last_reading_at > timedelta(hours=float(policy.reading_max_age_h)):
        defer(Reason.READING_STALE)

    # Grid safety.
    if facts.kill_switch is None or facts.kill_switch:
        defer(Reason.KILL_SWITCH)
    rate_until = _rate_until(
        facts.feeder_recent_disconnects,
        policy.grid.disconnects_per_feeder,
        timedelta(minutes=policy.grid.disconnect_period_min),
        now,
    )
    if rate_until is not None:
        defer(Reason.FEEDER_RATE, rate_until)

    # Approvals: manual disconnects and large batches need a second person.
    if (req.manual and policy.approvals.manual_disconnect) or req.batch_size > policy.approvals.batch_threshold:
        if req.approved_by is None:
            defer(Reason.APPROVAL_REQUIRED)
        else:
            if req.approved_by == req.requested_by:
                refusals.append(Reason.SELF_APPROVAL)
            if policy.approvals.approver_role not in req.approver_roles:
                refusals.append(Reason.APPROVER_ROLE_MISSING)

    # Load-limit stage (automatic disconnects only).
    chosen = action
    notes: tuple[str, ...] = ()
    if action == "disconnect" and policy.load_limit.enabled and not req.manual:
        if not facts.supports_load_limit:
            notes = ("load_limit_skipped_unsupported",)
        elif facts.relay_state != "load_limited":
            chosen = "load_limit"
        elif facts.load_limited_since is None:
            defer(Reason.LOAD_LIMIT_UNKNOWN)
        else:
            ends = facts.load_limited_since + timedelta(hours=policy.load_limit.duration_h)
            if ends > now:
                defer(Reason.LOAD_LIMIT_STAGE, ends)

    if refusals:
        all_reasons = tuple(dict.fromkeys([*refusals, *(r for r, _ in deferrals)]))
        return Refused(all_reasons, open_case=any(r in CASE_REASONS for r in refusals))
    if deferrals:
        return _deferred(deferrals, (policy, tz, cal) if calendar_known else None)
    return Allowed(chosen, notes)


def _deferred(
    deferrals: list[tuple[Reason, datetime | None]],
    window: tuple[Policy, ZoneInfo, HolidayCalendar] | None,
) -> Deferred:
    """Every reason; ``until`` = the latest known release, snapped to an allowed instant.

    ``until`` is None when some reason has no known end (an unknown fact, a failed notice):
    the engine re-checks on its next change or poll.
    """
    reasons = tuple(dict.fromkeys(r for r, _ in deferrals))
    untils = [u for _, u in deferrals]
    if any(u is None for u in untils):
        return Deferred(None, reasons)
    until = max(u for u in untils if u is not None)
    if window is not None:
        policy, tz, cal = window
        snapped = next_allowed(until, policy, tz, cal)
        return Deferred(snapped, reasons)
    return Deferred(until, reasons)
