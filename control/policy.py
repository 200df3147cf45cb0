"""Disconnect policy as data: the rules of DOMAIN.md §6, versioned, in three layers.

Layers (DOMAIN.md §5.3):

1. a **jurisdiction floor** (``floor:`` in a profile file) sets what the regulator requires;
2. **company policy** (``company:``, a partial document merged over the floor) may only be
   *stricter*: :func:`looser_than` lists every rule where it is not, and
   :func:`effective_policy` refuses such a document;
3. **customer protections** (protections, disputes, plans: facts, not policy) go on top and
   are applied by the guard.

Profiles live in ``control/policies/*.yaml``; the version in force is stored in the
``policy_versions`` table (migration 0300) so a plan records the version it was made under
and the dispatcher re-checks under the version in force at dispatch.

Time values carry their unit in their name; temperatures are Decimal degrees Celsius;
money is integer minor units. Weekdays are ISO (1 = Monday ... 7 = Sunday).
"""

from __future__ import annotations

import copy
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from control.errors import PolicyError

POLICY_DIR = Path(__file__).resolve().parent / "policies"

AccountClass = Literal["residential", "non_residential", "large_commercial", "important"]
ProtectionKind = Literal["medical_certificate", "life_support", "vulnerable", "elderly_living_alone", "child_under_2"]


class _Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Window(_Rules):
    """Disconnects may execute on these ISO weekdays between start (incl.) and end (excl.), local time."""

    weekdays: tuple[int, ...] = Field(min_length=1)
    start: time
    end: time

    @model_validator(mode="after")
    def _check(self) -> Window:
        if any(d < 1 or d > 7 for d in self.weekdays):
            raise ValueError("weekdays are ISO 1..7")
        if self.start >= self.end:
            raise ValueError("window start must be before its end (no windows across midnight)")
        return self


class Calendar(_Rules):
    block_public_holidays: bool = True
    block_day_before_holiday: bool = True


class NoticeRule(_Rules):
    lead_h: Decimal = Field(ge=0)  # pending-disconnection notice delivered at least this long before
    require_delivery: bool = True
    final_reminder_min: int = Field(ge=0)  # final reminder sent at least this long before


class WeatherRule(_Rules):
    min_c: Decimal  # forecast at or below blocks
    max_c: Decimal  # forecast at or above blocks
    horizon_h: int = Field(ge=1)
    max_age_h: Decimal = Field(gt=0)  # an older forecast is unknown


class GridRule(_Rules):
    disconnects_per_feeder: int = Field(ge=0)
    disconnect_period_min: int = Field(gt=0)
    reconnects_per_feeder: int = Field(ge=1)
    reconnect_period_min: int = Field(gt=0)
    reconnect_jitter_max_s: int = Field(ge=0)


class ApprovalRule(_Rules):
    manual_disconnect: bool = True
    batch_threshold: int = Field(ge=1)  # a batch with more meters than this needs approval
    approver_role: str = "approver"
    important_user_authority_copy: bool = True  # a manual stop of an important user needs the copy


class LoadLimitRule(_Rules):
    enabled: bool
    limit_w: int = Field(ge=0)
    duration_h: int = Field(ge=0)


class CommandRule(_Rules):
    disconnect_expiry_min: int = Field(gt=0)
    readback_s: int = Field(gt=0)
    max_attempts: int = Field(ge=1)


class ReconnectRule(_Rules):
    mode: Literal["arm", "direct"] = "arm"
    min_credit_minor: int = Field(ge=0)
    target_s: int = Field(gt=0)
    armed_timeout_h: int = Field(gt=0)


class WarningRule(_Rules):
    thresholds_minor: tuple[int, ...]
    hysteresis_minor: int = Field(ge=0)
    days_left: int = Field(ge=0)


class SelfDisconnectionRule(_Rules):
    episodes: int = Field(ge=1)
    period_days: int = Field(ge=1)


class Policy(_Rules):
    """One effective policy document (floor merged with company policy)."""

    profile: str
    version: int = Field(ge=1)
    country: str = Field(min_length=2, max_length=2)
    subdivision: str | None = None
    account_classes: tuple[AccountClass, ...]
    windows: tuple[Window, ...] = Field(min_length=1)
    calendar: Calendar
    notice: NoticeRule
    protected_kinds: tuple[ProtectionKind, ...]
    never_automatic_classes: tuple[AccountClass, ...]
    installment_plan_blocks: bool = True
    dispute_blocks: bool = True
    previous_occupant_debt_blocks: bool = True
    weather: WeatherRule
    channels_healthy_for_h: Decimal = Field(ge=0)
    reading_max_age_h: Decimal = Field(gt=0)
    load_limit: LoadLimitRule
    grid: GridRule
    approvals: ApprovalRule
    command: CommandRule
    reconnect: ReconnectRule
    warnings: WarningRule
    self_disconnection: SelfDisconnectionRule


def _within(inner: Window, outers: tuple[Window, ...]) -> bool:
    return any(set(inner.weekdays) <= set(o.weekdays) and o.start <= inner.start and inner.end <= o.end for o in outers)


def looser_than(floor: Policy, company: Policy) -> list[str]:
    """Every rule where ``company`` is less protective than ``floor`` (empty = acceptable)."""
    bad: list[str] = []

    def need(cond: bool, what: str) -> None:
        if not cond:
            bad.append(what)

    need(all(_within(w, floor.windows) for w in company.windows), "windows must lie inside the floor's windows")
    need(company.calendar.block_public_holidays or not floor.calendar.block_public_holidays, "holidays must block")
    need(
        company.calendar.block_day_before_holiday or not floor.calendar.block_day_before_holiday,
        "the day before a holiday must block",
    )
    need(company.notice.lead_h >= floor.notice.lead_h, "notice lead may not be shorter")
    need(company.notice.require_delivery or not floor.notice.require_delivery, "notice delivery must be required")
    need(company.notice.final_reminder_min >= floor.notice.final_reminder_min, "final reminder may not be later")
    need(set(floor.protected_kinds) <= set(company.protected_kinds), "protected kinds may not be dropped")
    need(
        set(floor.never_automatic_classes) <= set(company.never_automatic_classes),
        "never-automatic classes may not be dropped",
    )
    for flag in ("installment_plan_blocks", "dispute_blocks", "previous_occupant_debt_blocks"):
        need(getattr(company, flag) or not getattr(floor, flag), f"{flag} may not be switched off")
    need(company.weather.min_c >= floor.weather.min_c, "cold threshold may not be lower")
    need(company.weather.max_c <= floor.weather.max_c, "heat threshold may not be higher")
    need(company.weather.horizon_h >= floor.weather.horizon_h, "weather horizon may not be shorter")
    need(company.weather.max_age_h <= floor.weather.max_age_h, "forecast may not be older")
    need(company.channels_healthy_for_h >= floor.channels_healthy_for_h, "channel health period may not be shorter")
    need(company.reading_max_age_h <= floor.reading_max_age_h, "reading may not be older")
    need(company.grid.disconnects_per_feeder <= floor.grid.disconnects_per_feeder, "more disconnects per feeder")
    need(company.grid.disconnect_period_min >= floor.grid.disconnect_period_min, "shorter disconnect rate period")
    need(company.grid.reconnects_per_feeder <= floor.grid.reconnects_per_feeder, "more reconnects per feeder")
    need(company.grid.reconnect_period_min >= floor.grid.reconnect_period_min, "shorter reconnect rate period")
    need(company.approvals.manual_disconnect or not floor.approvals.manual_disconnect, "manual approval required")
    need(company.approvals.batch_threshold <= floor.approvals.batch_threshold, "batch approval threshold higher")
    need(
        company.approvals.important_user_authority_copy or not floor.approvals.important_user_authority_copy,
        "authority copy required",
    )
    need(company.load_limit.enabled or not floor.load_limit.enabled, "load-limit stage may not be skipped")
    need(company.load_limit.duration_h >= floor.load_limit.duration_h, "load-limit stage may not be shorter")
    need(company.command.disconnect_expiry_min <= floor.command.disconnect_expiry_min, "longer command expiry")
    need(company.command.readback_s <= floor.command.readback_s, "slower read-back")
    need(company.reconnect.min_credit_minor <= floor.reconnect.min_credit_minor, "higher reconnect credit minimum")
    need(company.reconnect.target_s <= floor.reconnect.target_s, "slower reconnect target")
    need(company.reconnect.armed_timeout_h <= floor.reconnect.armed_timeout_h, "longer armed timeout")
    return bad


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_policy(document: dict[str, Any]) -> Policy:
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(f"invalid policy: {exc}") from exc


def effective_policy(profile_document: dict[str, Any]) -> Policy:
    """Merge ``company`` over ``floor`` and refuse a company policy looser than the floor."""
    if "floor" not in profile_document:
        raise PolicyError("a profile document needs a 'floor' (the jurisdiction's rules)")
    floor_doc = profile_document["floor"]
    company_doc = profile_document.get("company") or {}
    if not isinstance(floor_doc, dict) or not isinstance(company_doc, dict):
        raise PolicyError("'floor' and 'company' must be mappings")
    for fixed in ("profile", "country", "subdivision", "account_classes"):
        if fixed in company_doc:
            raise PolicyError(f"company policy may not change '{fixed}'")
    floor = parse_policy(floor_doc)
    effective = parse_policy(_merge(floor_doc, company_doc))
    problems = looser_than(floor, effective)
    if problems:
        raise PolicyError("company policy is looser than the jurisdiction floor: " + "; ".join(problems))
    return effective


def load_profile_document(name: str, folder: Path | None = None) -> dict[str, Any]:
    path = (folder or POLICY_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise PolicyError(f"no policy profile {name!r} in {path.parent}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise PolicyError(f"{path.name}: a profile is a mapping")
    return data


def profile_names(folder: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (folder or POLICY_DIR).glob("*.yaml"))


def load_profile(name: str, folder: Path | None = None) -> Policy:
    return effective_policy(load_profile_document(name, folder))


def profile_for(policies: dict[str, Policy], country: str, account_class: str) -> Policy | None:
    """The policy applying to a service point (country + account class); None when there is none."""
    for policy in policies.values():
        if policy.country == country and account_class in policy.account_classes:
            return policy
    return None
