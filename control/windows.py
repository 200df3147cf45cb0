"""Execution windows and holiday calendars, in the service point's local time (pure).

A disconnect may execute at instant ``t`` only when ``t`` seen on the service point's wall
clock (zoneinfo) falls inside a window of the policy and the local date is neither a public
holiday nor the day before one. Rules are checked on the *actual* wall time of the instant,
so a DST gap (a wall time that never happens) or a repeated hour can never put an instant
outside a window inside it. :func:`next_allowed` finds the earliest allowed instant at or
after a given one; it checks every candidate with :func:`blocks` and steps minute by minute
across a transition, so what it returns always passes the same check.

Calendars come from the ``holidays`` package; a country or year it does not know makes the
calendar *unknown*, which blocks (DOMAIN.md §5.1).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from control.models import Reason
from control.policy import Policy

SEARCH_DAYS = 400


class HolidayCalendar:
    """Public holidays of one country (and subdivision); ``known`` is False when unsupported."""

    def __init__(self, country: str, subdivision: str | None = None) -> None:
        self.country = country
        self.subdivision = subdivision
        try:
            self._days: holidays.HolidayBase | None = holidays.country_holidays(country, subdiv=subdivision)
        except NotImplementedError:
            self._days = None

    @property
    def known(self) -> bool:
        return self._days is not None

    def is_holiday(self, day: date) -> bool | None:
        if self._days is None:
            return None
        return day in self._days


@lru_cache(maxsize=64)
def calendar_for(country: str, subdivision: str | None) -> HolidayCalendar:
    return HolidayCalendar(country, subdivision)


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def blocks(at: datetime, policy: Policy, tz: ZoneInfo, calendar: HolidayCalendar) -> tuple[Reason, ...]:
    """Why a disconnect may not execute at ``at`` (empty: inside a window on an allowed day)."""
    local = at.astimezone(tz)
    reasons: list[Reason] = []
    wall = local.time().replace(tzinfo=None)
    iso_day = local.isoweekday()
    if not any(iso_day in w.weekdays and w.start <= wall < w.end for w in policy.windows):
        reasons.append(Reason.OUTSIDE_WINDOW)
    today = calendar.is_holiday(local.date())
    tomorrow = calendar.is_holiday(local.date() + timedelta(days=1))
    if today is None or tomorrow is None:
        reasons.append(Reason.CALENDAR_UNKNOWN)
    else:
        if today and policy.calendar.block_public_holidays:
            reasons.append(Reason.HOLIDAY)
        if tomorrow and policy.calendar.block_day_before_holiday:
            reasons.append(Reason.DAY_BEFORE_HOLIDAY)
    return tuple(reasons)


def _localize(day: date, wall: datetime, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, wall.time(), tzinfo=tz)


def next_allowed(after: datetime, policy: Policy, tz: ZoneInfo, calendar: HolidayCalendar) -> datetime | None:
    """The earliest instant >= ``after`` at which :func:`blocks` is empty (None: none in ~a year)."""
    if not calendar.known:
        return None
    after = after.astimezone(UTC)
    if not blocks(after, policy, tz, calendar):
        return after
    start_day = after.astimezone(tz).date()
    for offset in range(SEARCH_DAYS):
        day = start_day + timedelta(days=offset)
        if (policy.calendar.block_public_holidays and calendar.is_holiday(day)) or (
            policy.calendar.block_day_before_holiday and calendar.is_holiday(day + timedelta(days=1))
        ):
            continue
        for w in sorted(policy.windows, key=lambda w: w.start):
            if day.isoweekday() not in w.weekdays:
                continue
            probe = max(after.astimezone(UTC), datetime.combine(day, w.start, tzinfo=tz).astimezone(UTC))
            # A window edge may fall in a DST gap or fold: walk minute by minute until the
            # wall clock is really inside the window (checked by the same ``blocks``).
            stop = datetime.combine(day, w.end, tzinfo=tz).astimezone(UTC) + timedelta(hours=2)
            while probe < stop:
                if not blocks(probe, policy, tz, calendar):
                    return probe
                probe = probe.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return None


def start_of_next_local_day(at: datetime, tz: ZoneInfo) -> datetime:
    local = at.astimezone(tz)
    return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz).astimezone(UTC)
