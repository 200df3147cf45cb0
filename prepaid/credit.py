"""Credit rules (pure): emergency and friendly credit, low-credit warnings, days left.

Model: the balance may go negative down to ``-emergency_credit_minor`` while
emergency credit is in use; the next top-up repays it first simply by landing on
the negative balance. Below that, credit is exhausted, except inside friendly-credit
hours where supply stays on and use accrues (moved to a debt at the next top-up).

Credit state machine (transition table; an unknown transition raises)::

    normal     --balance<=0-------------> emergency   (emergency_credit_started)
    normal     --balance<=-ec-----------> exhausted   (credit_exhausted)      [ec = 0]
    emergency  --balance<=-ec-----------> exhausted   (credit_exhausted)
    emergency  --balance<=-ec, friendly-> friendly
    friendly   --friendly hours over----> exhausted   (credit_exhausted)
    any        --balance>=restore_min---> normal      (credit_restored if not normal)
    emergency  --balance>0--------------> normal

Low-credit warnings: each threshold (default 3000 and 1000 fen) fires once when a
debit takes the balance below it (a top-up that leaves the balance below a threshold
does not warn, it marks the threshold as told) and re-arms only when the balance is back at or above
threshold + hysteresis (default 500). A drop past several thresholds at once gives
one warning (the lowest). A second warning fires when the predicted days of credit
left fall below ``days_left_warning`` (re-armed one day above).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from prepaid.localtime import LocalCalendar


class FriendlyHours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = time(18, 0)  # local; the period wraps midnight when end <= start
    end: time = time(8, 0)
    weekends: bool = True
    holidays: bool = True


class CreditPolicy(BaseModel):
    """Prepaid credit policy; every value is configuration (stored in prepaid_policies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    emergency_credit_minor: int = Field(1000, ge=0)
    restore_min_minor: int = Field(500, ge=0)
    low_credit_thresholds_minor: tuple[int, ...] = (3000, 1000)
    low_credit_hysteresis_minor: int = Field(500, ge=0)
    days_left_warning: int = Field(3, ge=0)
    debt_recovery_share_pct: int = Field(30, ge=0, le=100)
    debt_recovery_per_day_minor: int = Field(0, ge=0)
    friendly_hours: FriendlyHours | None = FriendlyHours()
    pause_standing_charge_while_disconnected: bool = True
    recent_days: int = Field(7, ge=1)


class CreditStateName(StrEnum):
    NORMAL = "normal"
    EMERGENCY = "emergency"
    FRIENDLY = "friendly"
    EXHAUSTED = "exhausted"


class CreditEvent(StrEnum):
    BELOW_ZERO = "below_zero"
    BELOW_EMERGENCY = "below_emergency"
    BELOW_EMERGENCY_FRIENDLY = "below_emergency_friendly"
    FRIENDLY_OVER = "friendly_over"
    RESTORED = "restored"
    ABOVE_ZERO = "above_zero"


S, E = CreditStateName, CreditEvent
TRANSITIONS: dict[tuple[CreditStateName, CreditEvent], tuple[CreditStateName, str | None]] = {
    (S.NORMAL, E.BELOW_ZERO): (S.EMERGENCY, "emergency_credit_started"),
    (S.NORMAL, E.BELOW_EMERGENCY): (S.EXHAUSTED, "credit_exhausted"),
    (S.NORMAL, E.BELOW_EMERGENCY_FRIENDLY): (S.FRIENDLY, None),
    (S.EMERGENCY, E.BELOW_EMERGENCY): (S.EXHAUSTED, "credit_exhausted"),
    (S.EMERGENCY, E.BELOW_EMERGENCY_FRIENDLY): (S.FRIENDLY, None),
    (S.EMERGENCY, E.ABOVE_ZERO): (S.NORMAL, None),
    (S.EMERGENCY, E.RESTORED): (S.NORMAL, "credit_restored"),
    (S.FRIENDLY, E.FRIENDLY_OVER): (S.EXHAUSTED, "credit_exhausted"),
    (S.FRIENDLY, E.RESTORED): (S.NORMAL, "credit_restored"),
    (S.EXHAUSTED, E.RESTORED): (S.NORMAL, "credit_restored"),
}


class UnknownTransition(ValueError):
    pass


def transition(state: CreditStateName, event: CreditEvent) -> tuple[CreditStateName, str | None]:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise UnknownTransition(f"no transition from {state} on {event}") from None


@dataclass(frozen=True)
class CreditState:
    state: CreditStateName = CreditStateName.NORMAL
    low_fired: frozenset[int] = frozenset()
    days_warned: bool = False
    daily_use_minor: int = 0


@dataclass(frozen=True)
class Warning_:
    reason: str  # "threshold" or "days_left"
    threshold_minor: int | None = None
    days_left: Decimal | None = None


@dataclass(frozen=True)
class CreditOutcome:
    state: CreditState
    events: list[str] = field(default_factory=list)  # account_events kinds, in order
    warnings: list[Warning_] = field(default_factory=list)


def in_friendly_hours(policy: CreditPolicy, calendar: LocalCalendar, now: datetime) -> bool:
    fh = policy.friendly_hours
    if fh is None:
        return False
    local = calendar.local(now)
    if fh.holidays and calendar.is_holiday(local.date()):
        return True
    if fh.weekends and local.weekday() >= 5:
        return True
    t = local.time()
    if fh.start <= fh.end:
        return fh.start <= t < fh.end
    return t >= fh.start or t < fh.end


def available_minor(balance_minor: int, policy: CreditPolicy) -> int:
    """Credit the customer can still use: balance plus unused emergency credit."""
    return max(0, balance_minor + policy.emergency_credit_minor)


def days_left(available: int, daily_use_minor: int) -> Decimal | None:
    """Predicted days of credit left (one decimal, rounded down); None without recent use."""
    if daily_use_minor <= 0:
        return None
    return (Decimal(available) / Decimal(daily_use_minor)).quantize(Decimal("0.1"), rounding=ROUND_FLOOR)


def daily_use(day_totals_minor: list[int]) -> int:
    """Average daily use (minor units, rounded half up) over the recent full days given."""
    if not day_totals_minor:
        return 0
    n = len(day_totals_minor)
    return (2 * sum(day_totals_minor) + n) // (2 * n)


def _state_events(
    st: CreditStateName, balance: int, policy: CreditPolicy, friendly: bool, rising: bool
) -> tuple[CreditStateName, list[str]]:
    events: list[str] = []
    ec = policy.emergency_credit_minor
    if rising:
        if st is not S.NORMAL and balance >= policy.restore_min_minor:
            st, ev = transition(st, E.RESTORED)
            events.append(ev or "")
        elif st is S.EMERGENCY and balance > 0:
            st, _ = transition(st, E.ABOVE_ZERO)
        return st, [e for e in events if e]
    if st is S.NORMAL and balance <= 0 and ec > 0:
        st, ev = transition(st, E.BELOW_ZERO)
        events.append(ev or "")
    if st in (S.NORMAL, S.EMERGENCY) and balance <= -ec:
        st, ev = transition(st, E.BELOW_EMERGENCY_FRIENDLY if friendly else E.BELOW_EMERGENCY)
        if ev:
            events.append(ev)
    if st is S.FRIENDLY and not friendly and balance <= -ec:
        st, ev = transition(st, E.FRIENDLY_OVER)
        events.append(ev or "")
    return st, [e for e in events if e]


def _warnings(
    state: CreditState, balance: int, policy: CreditPolicy, rising: bool
) -> tuple[CreditState, list[Warning_]]:
    """A falling balance may warn; a rising or unchanged one (a top-up, a tick) only
    re-arms, and thresholds it stays below count as already told."""
    warnings: list[Warning_] = []
    hyst = policy.low_credit_hysteresis_minor
    fired = {t for t in state.low_fired if balance < t + hyst}
    crossed = [t for t in policy.low_credit_thresholds_minor if balance < t and t not in fired]
    if crossed and not rising:
        warnings.append(Warning_("threshold", threshold_minor=min(crossed)))
    fired |= set(crossed)
    days_warned = state.days_warned
    left = days_left(available_minor(balance, policy), state.daily_use_minor)
    if left is not None:
        if days_warned and left >= policy.days_left_warning + 1:
            days_warned = False
        elif not days_warned and left < policy.days_left_warning:
            days_warned = True
            if not rising:
                warnings.append(Warning_("days_left", days_left=left))
    return CreditState(state.state, frozenset(fired), days_warned, state.daily_use_minor), warnings


def on_balance(
    state: CreditState,
    balance_before: int,
    balance_after: int,
    policy: CreditPolicy,
    *,
    friendly: bool,
) -> CreditOutcome:
    """The credit state, events and warnings after a balance change (or a tick when equal)."""
    rising = balance_after > balance_before
    st, events = _state_events(state.state, balance_after, policy, friendly, rising)
    moved = CreditState(st, state.low_fired, state.days_warned, state.daily_use_minor)
    new, warnings = _warnings(moved, balance_after, policy, balance_after >= balance_before)
    if warnings:
        events.append("low_credit")
    return CreditOutcome(new, events, warnings)
