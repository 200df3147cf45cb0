"""The customer-side steps of the disconnect ladder that are pure rules (DOMAIN.md §6).

* :class:`WarningLadder`: low-credit warnings at thresholds with hysteresis: a threshold
  warns once when the balance falls below it and re-arms only when the balance comes back
  ``hysteresis_minor`` above it.
* :func:`effective_protections`: which protections are in force. A lapsed protection
  (``valid_until`` passed) stays in force until a person has reviewed it; only a revoked
  one ends at once.
* :func:`self_disconnecting`: a customer off supply ``episodes`` times within
  ``period_days`` is flagged so that support is offered.
* :func:`execution_plan`: the earliest instant a planned disconnect may execute, and when
  its final reminder is due.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from control.policy import Policy, WarningRule
from control.windows import HolidayCalendar, next_allowed


@dataclass
class WarningLadder:
    rule: WarningRule
    armed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.armed:
            self.armed = set(self.rule.thresholds_minor)

    def observe(self, balance_minor: int) -> list[int]:
        """The thresholds that warn now (each at most once until re-armed)."""
        fired: list[int] = []
        for threshold in sorted(self.rule.thresholds_minor, reverse=True):
            if threshold in self.armed and balance_minor < threshold:
                self.armed.discard(threshold)
                fired.append(threshold)
            elif threshold not in self.armed and balance_minor >= threshold + self.rule.hysteresis_minor:
                self.armed.add(threshold)
        return fired


@dataclass(frozen=True)
class ProtectionRow:
    kind: str
    valid_until: datetime | None
    revoked_at: datetime | None
    reviewed_by: str | None


def effective_protections(rows: Iterable[ProtectionRow], now: datetime) -> frozenset[str]:
    active: set[str] = set()
    for row in rows:
        if row.revoked_at is not None and row.revoked_at <= now:
            continue
        lapsed = row.valid_until is not None and row.valid_until <= now
        if not lapsed or row.reviewed_by is None:
            active.add(row.kind)
    return frozenset(active)


def protections_needing_review(rows: Iterable[ProtectionRow], now: datetime) -> list[ProtectionRow]:
    return [
        r
        for r in rows
        if r.revoked_at is None and r.valid_until is not None and r.valid_until <= now and r.reviewed_by is None
    ]


def self_disconnecting(off_supply_at: Sequence[datetime], now: datetime, episodes: int, period_days: int) -> bool:
    since = now - timedelta(days=period_days)
    return sum(1 for t in off_supply_at if since < t <= now) >= episodes


@dataclass(frozen=True)
class ExecutionPlan:
    execute_at: datetime
    final_reminder_at: datetime


def execution_plan(
    notice_delivered_at: datetime | None,
    now: datetime,
    policy: Policy,
    tz: ZoneInfo,
    calendar: HolidayCalendar,
) -> ExecutionPlan | None:
    """Earliest execution time: notice lead from delivery (or from now, when not yet
    delivered: the notice states the earliest possible time), the final reminder's lead, then
    the next allowed instant on the local calendar. None if the calendar is unknown."""
    base = notice_delivered_at or now
    earliest = max(
        base + timedelta(hours=float(policy.notice.lead_h)),
        now + timedelta(minutes=policy.notice.final_reminder_min),
    )
    execute_at = next_allowed(earliest, policy, tz, calendar)
    if execute_at is None:
        return None
    return ExecutionPlan(execute_at, execute_at - timedelta(minutes=policy.notice.final_reminder_min))
