"""Posting rules of the append-only ledger (pure).

Every change of a balance is an entry; the balance always equals the sum of its
entries. Entries are never edited: a correction is a new ``reversal`` or
``adjustment`` entry. Amounts are signed integer minor units (+ credits the
customer, - charges).

| kind                     | sign | posted by                                  |
|--------------------------|------|--------------------------------------------|
| opening_balance          | any  | registry.open_account                      |
| consumption              | <= 0 | engine, one entry per meter batch          |
| standing_charge          | <= 0 | daily job, reference = local date          |
| topup                    | > 0  | operations.topup, reference = channel:ref  |
| topup_reversal           | < 0  | operations.reverse_topup                   |
| debt_recovery            | <= 0 | top-up split or daily recovery             |
| friendly_credit_transfer | >= 0 | top-up: use below emergency credit -> debt |
| installment_payment      | > 0  | operations.pay_installment                 |
| adjustment               | any  | operator                                   |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SIGN_RULES: dict[str, str] = {
    "opening_balance": "any",
    "consumption": "le0",
    "standing_charge": "le0",
    "topup": "gt0",
    "topup_reversal": "lt0",
    "debt_recovery": "le0",
    "friendly_credit_transfer": "ge0",
    "installment_payment": "gt0",
    "adjustment": "any",
}


def _sign_ok(rule: str, amount: int) -> bool:
    if rule == "le0":
        return amount <= 0
    if rule == "lt0":
        return amount < 0
    if rule == "ge0":
        return amount >= 0
    if rule == "gt0":
        return amount > 0
    return rule == "any"


class PostingError(ValueError):
    """An entry breaks the posting rules (unknown kind or wrong sign)."""


@dataclass(frozen=True)
class Entry:
    kind: str
    amount_minor: int
    reference: str | None = None


@dataclass(frozen=True)
class Posted:
    kind: str
    amount_minor: int
    balance_after_minor: int
    reference: str | None


def check(entry: Entry) -> None:
    rule = SIGN_RULES.get(entry.kind)
    if rule is None:
        raise PostingError(f"unknown ledger entry kind {entry.kind!r}")
    if not _sign_ok(rule, entry.amount_minor):
        raise PostingError(f"{entry.kind} amount {entry.amount_minor} breaks the sign rule {rule}")


def post(balance_minor: int, entries: Iterable[Entry]) -> tuple[int, list[Posted]]:
    """Apply entries in order; return the new balance and the entries with balance after."""
    out: list[Posted] = []
    for e in entries:
        check(e)
        balance_minor += e.amount_minor
        out.append(Posted(e.kind, e.amount_minor, balance_minor, e.reference))
    return balance_minor, out


@dataclass(frozen=True)
class Problem:
    account_id: str
    balance_minor: int
    sum_minor: int
    detail: str


def verify(balances: dict[str, int], sums: dict[str, int], chain_breaks: dict[str, int] | None = None) -> list[Problem]:
    """Accounts whose balance differs from the sum of entries, or whose running balances break."""
    problems: list[Problem] = []
    for account_id in sorted(set(balances) | set(sums)):
        bal, total = balances.get(account_id, 0), sums.get(account_id, 0)
        if bal != total:
            problems.append(Problem(account_id, bal, total, f"balance {bal} != sum of entries {total}"))
        elif chain_breaks and chain_breaks.get(account_id):
            n = chain_breaks[account_id]
            problems.append(Problem(account_id, bal, total, f"{n} entries whose balance_after breaks the chain"))
    return problems
