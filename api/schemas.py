"""Request and response bodies of the HTTP API (pydantic; they define the OpenAPI schema).

Request bodies forbid unknown fields, so a misspelt field is a 422 that names it.
Money is integer minor units (``*_minor``), energy Wh, timestamps RFC 3339 with a zone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from api.errors import Unprocessable
from prepaid.models import AreaKpis, CreditFacts, DaysLeft

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
Id = Annotated[str, Field(pattern=ID_PATTERN, examples=["M-0001"])]
OBIS_PATTERN = r"^\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}$"


def _valid_timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


TimeZone = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_valid_timezone)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of items; pass ``next`` back as the cursor parameter named in the route."""

    items: list[T]
    next: str | None = Field(None, description="cursor of the next page, null on the last page")


EARLIEST = datetime(1, 1, 2, tzinfo=UTC)


def period(
    start: datetime | None, end: datetime | None, now: datetime, default_start: Callable[[datetime], datetime]
) -> tuple[datetime, datetime]:
    """A query's half-open range [start, end): end defaults to now, start to ``default_start(end)``
    (EARLIEST where that would fall before year 1); start must come before end (422)."""
    end = end or now
    try:
        start = start or default_start(end)
    except OverflowError:
        start = EARLIEST
    if start >= end:
        raise Unprocessable(
            "start must be before end",
            code="validation",
            errors=[{"field": "query.start", "message": "must be before end"}],
        )
    return start, end


def page(rows: list[dict[str, Any]], limit: int, key: str = "id") -> dict[str, Any]:
    """A keyset page as a Page: a full page's last ``key`` is the cursor of the next one."""
    return {"items": rows, "next": str(rows[-1][key]) if len(rows) == limit else None}


# --- service points and meters ---------------------------------------------------------


class AccountClass(StrEnum):
    residential = "residential"
    non_residential = "non_residential"
    large_commercial = "large_commercial"
    important = "important"


class ServicePointIn(Request):
    id: Id
    feeder: Annotated[str, Field(min_length=1, max_length=64)]
    area: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    timezone: TimeZone = "Asia/Shanghai"
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "CN"
    subdivision: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    account_class: AccountClass = AccountClass.residential


class ServicePointOut(BaseModel):
    id: str
    feeder: str
    area: str
    timezone: str
    country: str
    subdivision: str | None
    account_class: str
    created_at: datetime


class Protocol(StrEnum):
    mqtt = "mqtt"
    modbus = "modbus"


class MeterIn(Request):
    id: Id
    service_point_id: Id | None = None
    protocol: Protocol = Protocol.mqtt
    model: Annotated[str, Field(min_length=1, max_length=64)] = "native"
    mqtt_topic: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    modbus_host: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    modbus_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    modbus_unit: Annotated[int, Field(ge=0, le=255)] | None = None
    modbus_map: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    poll_interval_s: Annotated[int, Field(ge=1, le=86400)] = 900
    rated_current_a: Annotated[int, Field(ge=1, le=10000)] = 60
    nominal_voltage_v: Annotated[int, Field(ge=1, le=100000)] = 230
    phases: Literal[1, 3] = 1
    register_max_wh: Annotated[int, Field(ge=1, le=10**15)] = 99_999_900
    supports_load_limit: bool = False


class MeterPatch(Request):
    """Fields to change on a registered meter (absent fields stay as they are)."""

    service_point_id: Id | None = None
    model: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    mqtt_topic: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    modbus_host: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    modbus_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    modbus_unit: Annotated[int, Field(ge=0, le=255)] | None = None
    modbus_map: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    poll_interval_s: Annotated[int, Field(ge=1, le=86400)] | None = None
    rated_current_a: Annotated[int, Field(ge=1, le=10000)] | None = None
    nominal_voltage_v: Annotated[int, Field(ge=1, le=100000)] | None = None
    phases: Literal[1, 3] | None = None
    register_max_wh: Annotated[int, Field(ge=1, le=10**15)] | None = None
    supports_load_limit: bool | None = None


class LastReading(BaseModel):
    ts: datetime
    values: dict[str, float] = Field(description="OBIS code -> value at ts")


class MeterOut(BaseModel):
    id: str
    service_point_id: str | None
    protocol: str
    model: str
    mqtt_topic: str | None
    modbus_host: str | None
    modbus_port: int | None
    modbus_unit: int | None
    poll_interval_s: int
    supports_load_limit: bool
    relay_state: str
    relay_state_at: datetime | None
    comms_state: str
    last_seen_at: datetime | None
    billing_hold: str | None
    created_at: datetime
    last_reading: LastReading | None = None


class HoldResolveIn(Request):
    note: Annotated[str, Field(max_length=500)] | None = None


# --- readings and events ---------------------------------------------------------------


class Bucket(StrEnum):
    m15 = "15min"
    hour = "hour"
    day = "day"
    month = "month"


BUCKET_INTERVAL = {Bucket.m15: "15 minutes", Bucket.hour: "1 hour", Bucket.day: "1 day", Bucket.month: "1 month"}


class ReadingOut(BaseModel):
    meter_id: str
    obis: str
    ts: datetime
    value: float
    received_at: datetime
    source: str


class AggregateRow(BaseModel):
    bucket: datetime = Field(description="start of the bucket (in the requested time zone)")
    count: int
    min: float
    max: float
    avg: float
    first: float
    last: float
    delta: float | None = Field(
        description="increase of a cumulative register over the bucket, from the last value of the previous "
        "bucket (or the first value in the bucket); null when the register went down"
    )


class AggregateOut(BaseModel):
    meter_id: str | None = None
    area: str | None = None
    obis: str
    bucket: Bucket
    timezone: str
    rows: list[AggregateRow]


class AreaAggregateRow(BaseModel):
    bucket: datetime
    meters: int = Field(description="meters with readings in the bucket")
    delta: float = Field(description="sum over meters of each meter's register increase in the bucket")


class AreaAggregateOut(BaseModel):
    area: str
    obis: str
    bucket: Bucket
    timezone: str
    rows: list[AreaAggregateRow]


class EventOut(BaseModel):
    meter_id: str
    ts: datetime
    kind: str
    detail: dict[str, Any]
    received_at: datetime
    source: str


# --- accounts ----------------------------------------------------------------------------


class AccountOut(BaseModel):
    id: str
    service_point_id: str
    customer_name: str | None
    currency: str
    tariff_id: str | None
    balance_minor: int
    status: str
    opened_at: datetime
    closed_at: datetime | None


class LedgerEntryOut(BaseModel):
    id: int
    account_id: str
    posted_at: datetime
    kind: str
    amount_minor: int
    balance_after_minor: int
    reference: str | None
    meter_id: str | None
    period_start: datetime | None
    period_end: datetime | None
    detail: dict[str, Any]


class AccountEventOut(BaseModel):
    id: int
    account_id: str
    kind: str
    at: datetime
    detail: dict[str, Any]


class CreditOut(BaseModel):
    account_id: str
    balance_minor: int
    days_of_credit_left: DaysLeft
    facts: CreditFacts


class KpisOut(BaseModel):
    start: datetime
    end: datetime
    area: str | None
    areas: list[AreaKpis]


# --- top-ups -----------------------------------------------------------------------------


class Channel(StrEnum):
    counter = "counter"
    bank = "bank"
    pos = "pos"
    atm = "atm"
    app = "app"
    mobile_money = "mobile_money"


class TopupIn(Request):
    account_id: Id
    channel: Channel
    reference: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    amount_minor: Annotated[int, Field(gt=0, le=100_000_000, description="minor units (fen), > 0")]


class TopupReversalIn(Request):
    channel: Channel
    reference: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


# --- tariffs and policy ------------------------------------------------------------------


class TariffVersionOut(BaseModel):
    tariff_id: str
    effective_from: datetime
    definition: dict[str, Any]
    created_at: datetime
    created_by: str | None


class TariffOut(BaseModel):
    id: str
    name: str
    currency: str
    created_at: datetime
    versions: list[TariffVersionOut] = []


class TariffVersionIn(Request):
    effective_from: AwareDatetime
    definition: dict[str, Any] = Field(
        description="tariff document (prepaid/tariffs.py), e.g. "
        '{"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"}; decimal strings, never floats'
    )


class PolicyVersionIn(Request):
    effective_from: AwareDatetime | None = None
    document: dict[str, Any] = Field(description="policy document (control/policy.py)")


# --- commands ----------------------------------------------------------------------------


class Action(StrEnum):
    disconnect = "disconnect"
    arm = "arm"
    reconnect = "reconnect"
    load_limit = "load_limit"
    clear_load_limit = "clear_load_limit"
    read_now = "read_now"
    status = "status"


class CommandIn(Request):
    meter_id: Id
    action: Action
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    authority_copy: bool = Field(False, description="the copy to the authority was sent (important users)")
    erroneous: bool = Field(False, description="reconnect after an erroneous disconnect (priority)")


class BulkCommandIn(Request):
    meter_ids: Annotated[list[Id], Field(min_length=1, max_length=10_000)]
    action: Action
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class CancelIn(Request):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class CommandOut(BaseModel):
    id: int
    idempotency_key: str
    meter_id: str
    account_id: str | None
    action: str
    state: str
    reason: str | None
    requested_by: str | None
    approved_by: str | None
    created_at: datetime
    updated_at: datetime
    not_before: datetime | None
    expires_at: datetime | None
    attempts: int
    detail: dict[str, Any]
    manual: bool
    batch_id: str | None
    batch_size: int
    priority: int
    policy_profile: str | None
    policy_version_planned: int | None
    policy_version_dispatched: int | None
    sent_at: datetime | None
    confirmed_at: datetime | None
    deadline_at: datetime | None
    relay_read_back: str | None


class BulkOut(BaseModel):
    batch_id: str
    count: int
    commands: list[CommandOut]


class BatchApprovalOut(BaseModel):
    batch_id: str
    approved: int
    states: dict[str, int] = Field(description="state -> number of the batch's commands in it")


# --- notices and quarantine --------------------------------------------------------------


class NoticeOut(BaseModel):
    id: int
    account_id: str
    kind: str
    body: dict[str, Any]
    created_at: datetime
    channel: str | None
    status: str
    attempts: int
    sent_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None


class DeliveryReceiptIn(Request):
    delivered_at: AwareDatetime | None = Field(None, description="when the gateway confirmed delivery (default now)")
    channel: Annotated[str, Field(min_length=1, max_length=32)] | None = None


class QuarantineOut(BaseModel):
    id: int
    received_at: datetime
    source: str
    topic: str | None
    meter_id: str | None
    reason: str
    replayed_at: datetime | None
    replay_result: str | None
    size: int


class QuarantineDetailOut(QuarantineOut):
    payload_base64: str
    payload_text: str | None = Field(description="the payload as UTF-8 text, null if it is not valid UTF-8")


class ReplayManyIn(Request):
    meter_id: Id | None = None
    reason_prefix: Annotated[str, Field(min_length=1, max_length=100, examples=["unknown_device"])] | None = None
    include_replayed: bool = Field(False, description="also items replayed before")
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class ReplayOut(BaseModel):
    id: int
    accepted: bool
    result: str
    replayed_at: datetime


# --- customer facts, cases, operating conditions -----------------------------------------


class ProtectionKind(StrEnum):
    medical_certificate = "medical_certificate"
    life_support = "life_support"
    vulnerable = "vulnerable"
    elderly_alone = "elderly_alone"
    child_under_2 = "child_under_2"


class ProtectionIn(Request):
    kind: ProtectionKind
    valid_until: AwareDatetime | None = Field(None, description="null: until revoked")
    detail: dict[str, Any] = {}


class ReviewIn(Request):
    keep: bool = Field(description="true: keep (renew) the lapsed protection; false: let it end")


class DisputeIn(Request):
    amount_minor: Annotated[int, Field(ge=0, le=10**12, description="disputed amount; not recovered while open")]
    detail: dict[str, Any] = {}


class CreatedOut(BaseModel):
    id: int


class CaseOut(BaseModel):
    id: int
    kind: str
    account_id: str | None
    meter_id: str | None
    command_id: int | None
    status: str
    opened_at: datetime
    detail: dict[str, Any]


class WeatherIn(Request):
    area: Annotated[str, Field(min_length=1, max_length=64)]
    issued_at: AwareDatetime
    horizon_start: AwareDatetime
    horizon_end: AwareDatetime
    min_c: Annotated[Decimal, Field(ge=-90, le=60, max_digits=5, decimal_places=1)]
    max_c: Annotated[Decimal, Field(ge=-90, le=60, max_digits=5, decimal_places=1)]
    source: Annotated[str, Field(min_length=1, max_length=64)] = "api"


class ChannelHealthIn(Request):
    healthy: bool
    detail: Annotated[str, Field(max_length=500)] = ""


class KillSwitchIn(Request):
    on: bool
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class InstallmentPlanIn(Request):
    period_start: AwareDatetime
    period_end: AwareDatetime
    count: Annotated[int, Field(ge=1, le=60)]
    first_due: AwareDatetime
    every_days: Annotated[int, Field(ge=1, le=366)] = 30


class InstallmentPaymentIn(Request):
    channel: Channel
    reference: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    amount_minor: Annotated[int, Field(gt=0, le=100_000_000)]


class ReplayManyOut(BaseModel):
    replayed: int
    accepted: int
    items: list[ReplayOut]
