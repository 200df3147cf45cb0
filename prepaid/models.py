"""Plain data returned by prepaid's operations (the api serialises them as they are)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TopupResult:
    topup_id: int
    account_id: str
    channel: str
    reference: str
    amount_minor: int
    duplicate: bool
    received_at: datetime
    friendly_to_debt_minor: int
    emergency_repaid_minor: int
    debt_recovered_minor: int
    to_balance_minor: int
    balance_after_minor: int
    restored: bool  # available credit reached the restore minimum (credit_restored event)
    still_needed_minor: int  # > 0: "top-up too small", the exact amount still needed
    ledger_entry_id: int


@dataclass(frozen=True)
class ReversalResult:
    topup_id: int
    account_id: str
    channel: str
    reference: str
    reversed_minor: int
    debt_restored_minor: int
    balance_after_minor: int
    reversed_at: datetime
    reason: str


@dataclass(slots=True)  # not frozen: a year is 35,040 of them and frozen __init__ is slower
class StatementLine:
    interval_start: datetime
    meter_id: str
    energy_wh: int
    label: str  # TOU band, tier block ("block2") or "flat"
    block: int  # 1-based tier block, 0 when not tiered
    rate_micro: int  # 1e-6 minor units per Wh
    amount_micro: int  # exact charge, 1e-6 minor units
    balance_after_minor: int  # balance after the ledger entry that posted this interval
    ledger_entry_id: int


@dataclass(frozen=True)
class LedgerLine:
    id: int
    posted_at: datetime
    kind: str
    amount_minor: int
    balance_after_minor: int
    reference: str | None
    meter_id: str | None
    period_start: datetime | None
    period_end: datetime | None
    detail: dict[str, object]


@dataclass(frozen=True)
class Statement:
    account_id: str
    currency: str
    start: datetime
    end: datetime
    opening_balance_minor: int
    closing_balance_minor: int
    energy_wh: int
    charges_micro: int
    intervals: list[StatementLine]
    entries: list[LedgerLine]  # every ledger entry posted in [start, end)


@dataclass(frozen=True, eq=False)
class StatementColumns:
    """A statement as columns (the fast path: no per-interval Python object).

    ``intervals`` maps each StatementLine field to one column, ordered by
    (interval_start, meter_id, block): ``interval_start_s`` is epoch seconds (UTC),
    ``meter_id`` and ``label`` are lists of str, the others int64 numpy arrays.
    ``to_json()`` is the whole document as UTF-8 JSON bytes, ready to send.
    """

    account_id: str
    currency: str
    start: datetime
    end: datetime
    opening_balance_minor: int
    closing_balance_minor: int
    energy_wh: int
    charges_micro: int
    intervals: dict[str, Any]
    entries: list[LedgerLine]

    def __len__(self) -> int:
        return len(self.intervals["meter_id"])

    def to_json(self) -> bytes:
        """Columnar JSON: {"account_id", ..., "intervals": {"interval_start": ["...Z", ...],
        "meter_id": [...], "energy_wh": [...], ...}, "entries": [{...}, ...]}; times ISO 8601 UTC."""
        cols = self.intervals
        starts = np.datetime_as_string(cols["interval_start_s"].astype("datetime64[s]"), unit="s", timezone="UTC")
        doc = {
            "account_id": self.account_id,
            "currency": self.currency,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "opening_balance_minor": self.opening_balance_minor,
            "closing_balance_minor": self.closing_balance_minor,
            "energy_wh": self.energy_wh,
            "charges_micro": self.charges_micro,
            "intervals": {
                "interval_start": starts.tolist(),
                **{
                    k: (v.tolist() if isinstance(v, np.ndarray) else v)
                    for k, v in cols.items()
                    if k != "interval_start_s"
                },
            },
            "entries": [
                {
                    "id": e.id,
                    "posted_at": _iso(e.posted_at),
                    "kind": e.kind,
                    "amount_minor": e.amount_minor,
                    "balance_after_minor": e.balance_after_minor,
                    "reference": e.reference,
                    "meter_id": e.meter_id,
                    "period_start": _iso(e.period_start),
                    "period_end": _iso(e.period_end),
                    "detail": e.detail,
                }
                for e in self.entries
            ],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class DaysLeft:
    account_id: str
    available_minor: int
    daily_use_minor: int
    days: Decimal | None  # None without recent use
    warning_below_days: int


@dataclass(frozen=True)
class CreditFacts:
    """What control's guard needs to know about an account's credit."""

    account_id: str
    status: str  # open / closed
    balance_minor: int
    available_minor: int
    credit_state: str  # normal / emergency / friendly / exhausted
    state_since: datetime | None
    emergency_credit_minor: int
    emergency_in_use_minor: int
    friendly_debt_minor: int  # use below the emergency floor during friendly hours
    debt_minor: int  # own outstanding debts
    disputed_minor: int  # open disputes
    recoverable_debt_minor: int
    previous_occupant_debt_minor: int  # on earlier accounts of the service point
    only_previous_occupant_debt: bool
    installment_plan_state: str | None  # good_standing / missed / None
    restore_min_minor: int
    days_left: Decimal | None
    last_topup_at: datetime | None


@dataclass(frozen=True)
class Installment:
    seq: int
    due_at: datetime
    amount_minor: int
    paid_minor: int
    paid_at: datetime | None


@dataclass(frozen=True)
class InstallmentPlan:
    id: int
    account_id: str
    period_start: datetime
    period_end: datetime
    total_minor: int
    paid_minor: int
    state: str  # good_standing / missed / completed / cancelled
    installments: list[Installment] = field(default_factory=list)


@dataclass(frozen=True)
class HoldResolution:
    meter_id: str
    previous_hold: str | None
    rebaseline_at: datetime | None
    resolved_by: str


@dataclass(frozen=True)
class TariffVersionInfo:
    tariff_id: str
    effective_from: datetime
    definition: dict[str, object]
    created_by: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class AreaKpis:
    area: str
    start: datetime
    end: datetime
    charges_minor: int
    payments_minor: int
    arrears_start_minor: int
    arrears_end_minor: int
    current_collected_minor: int
    old_arrears_collected_minor: int
    collection_rate: Decimal | None  # current-year collection rate
    collection_coefficient: Decimal | None
    old_arrears_recovery_rate: Decimal | None
    self_disconnection_episodes: int
    self_disconnecting_accounts: int  # >= 3 episodes within 30 days before end
