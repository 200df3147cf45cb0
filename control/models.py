"""Plain data of the control package: the facts a decision reads and the decision it returns.

Every fact that can be *unknown* is ``None`` when unknown; the guard treats ``None`` as
"keep power on" (DOMAIN.md §5.1). Times are aware UTC. Money is integer minor units.

A decision is a value (never an exception):

* :class:`Allowed` (``action`` may differ from the requested one: the load-limit stage
  replaces a first disconnect; ``notes`` say why),
* :class:`Deferred` (``until``: the earliest time a re-check can pass, or None when it
  depends on something unknown; every reason listed),
* :class:`Refused` (a person must act; ``open_case`` when a case is to be opened).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

Action = Literal["disconnect", "arm", "reconnect", "load_limit", "clear_load_limit", "read_now", "status"]
RelayState = Literal["connected", "disconnected", "armed", "load_limited", "unknown"]
RELAY_STATES: tuple[str, ...] = ("connected", "disconnected", "armed", "load_limited", "unknown")
SUPPLY_OFF_ACTIONS: frozenset[str] = frozenset({"disconnect", "load_limit"})
SUPPLY_ON_ACTIONS: frozenset[str] = frozenset({"arm", "reconnect", "clear_load_limit"})


class Reason(StrEnum):
    """Why a command may not go now. The value is the stable code stored and shown."""

    # refusals: a person must act
    PROTECTED = "protected_customer"
    NEVER_AUTOMATIC_CLASS = "never_automatic_account_class"
    INSTALLMENT_PLAN = "installment_plan_in_good_standing"
    DISPUTE_OPEN = "dispute_open"
    PREVIOUS_OCCUPANT_DEBT = "previous_occupant_debt_only"
    AUTHORITY_COPY_MISSING = "authority_copy_missing"
    SELF_APPROVAL = "approver_is_requester"
    APPROVER_ROLE_MISSING = "approver_role_missing"
    NOT_EXHAUSTED = "credit_not_exhausted"
    ALREADY_OFF = "relay_already_disconnected"
    NO_POLICY = "no_policy_for_service_point"
    INSUFFICIENT_CREDIT = "credit_below_reconnect_minimum"
    # deferrals: time or knowledge will tell
    OUTSIDE_WINDOW = "outside_execution_window"
    HOLIDAY = "public_holiday"
    DAY_BEFORE_HOLIDAY = "day_before_public_holiday"
    CALENDAR_UNKNOWN = "holiday_calendar_unknown"
    NOTICE_MISSING = "notice_not_sent"
    NOTICE_UNDELIVERED = "notice_not_delivered"
    NOTICE_FAILED = "notice_delivery_failed"
    NOTICE_LEAD = "notice_lead_time_not_reached"
    REMINDER_PENDING = "final_reminder_not_sent"
    REMINDER_FAILED = "final_reminder_failed"
    REMINDER_LEAD = "final_reminder_lead_not_reached"
    WEATHER_UNKNOWN = "weather_unknown"
    WEATHER_STALE = "weather_forecast_stale"
    WEATHER_COLD = "weather_cold"
    WEATHER_HOT = "weather_hot"
    CHANNELS_UNKNOWN = "payment_channels_unknown"
    CHANNELS_DEGRADED = "payment_channels_degraded"
    CHANNELS_RECOVERING = "payment_channels_recovering"
    READING_UNKNOWN = "reading_unknown"
    READING_STALE = "reading_stale"
    BALANCE_UNKNOWN = "balance_unknown"
    RELAY_UNKNOWN = "relay_state_unknown"
    PROTECTIONS_UNKNOWN = "protections_unknown"
    DISPUTES_UNKNOWN = "disputes_unknown"
    PLAN_UNKNOWN = "installment_plan_unknown"
    DEBT_ORIGIN_UNKNOWN = "debt_origin_unknown"
    LOAD_LIMIT_UNKNOWN = "load_limit_start_unknown"
    FEEDER_RATE = "feeder_rate_limit"
    KILL_SWITCH = "kill_switch"
    APPROVAL_REQUIRED = "approval_required"
    LOAD_LIMIT_STAGE = "load_limit_stage_running"


# Reasons after which only a person can move things on (the shell opens a case).
CASE_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.PROTECTED,
        Reason.NEVER_AUTOMATIC_CLASS,
        Reason.INSTALLMENT_PLAN,
        Reason.DISPUTE_OPEN,
        Reason.PREVIOUS_OCCUPANT_DEBT,
    }
)


@dataclass(frozen=True)
class Weather:
    forecast_at: datetime  # when the forecast was issued
    min_c: Decimal  # forecast minimum over the horizon
    max_c: Decimal  # forecast maximum over the horizon


@dataclass(frozen=True)
class Notice:
    """The state of one notice row (pending_disconnection or final_reminder)."""

    status: Literal["pending", "sent", "delivered", "failed"]
    sent_at: datetime | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True)
class Request:
    """Who asks: the engine (automatic) or a person (manual), and any approval."""

    manual: bool = False
    requested_by: str = "control"
    approved_by: str | None = None
    approver_roles: frozenset[str] = frozenset()
    batch_size: int = 1
    authority_copy: bool = False  # copy of a manual stop of an important user sent to the authority
    erroneous_disconnect: bool = False  # a reconnect correcting a wrong disconnect


@dataclass(frozen=True)
class Facts:
    """Everything a decision reads. ``None`` = unknown."""

    account_id: str
    meter_id: str
    feeder: str
    timezone: str
    account_class: str
    available_credit_minor: int | None  # balance + emergency credit left, after debt recovery
    credit_exhausted: bool | None
    protections: frozenset[str] | None  # active protection kinds (lapsed-but-unreviewed count as active)
    dispute_open: bool | None
    previous_occupant_debt_only: bool | None
    installment_plan_good_standing: bool | None
    notice: Notice | None  # the pending-disconnection notice
    final_reminder: Notice | None
    weather: Weather | None
    channels_degraded: bool | None
    channels_healthy_since: datetime | None
    last_reading_at: datetime | None
    relay_state: str
    supports_load_limit: bool
    load_limited_since: datetime | None
    feeder_recent_disconnects: tuple[datetime, ...] = ()
    feeder_recent_reconnects: tuple[datetime, ...] = ()
    kill_switch: bool | None = False
    holidays_known: bool = True
    request: Request = field(default_factory=Request)


@dataclass(frozen=True)
class Allowed:
    action: str
    notes: tuple[str, ...] = ()
    kind: Literal["allowed"] = "allowed"


@dataclass(frozen=True)
class Deferred:
    until: datetime | None
    reasons: tuple[Reason, ...]
    kind: Literal["deferred"] = "deferred"


@dataclass(frozen=True)
class Refused:
    reasons: tuple[Reason, ...]
    open_case: bool = False
    kind: Literal["refused"] = "refused"


Decision = Allowed | Deferred | Refused
