"""Splitting a top-up (pure).

Order of use of a top-up of A minor units, balance B before:
1. Friendly-credit use below the emergency-credit floor (B < -ec) is moved to a debt
   first (entry ``friendly_credit_transfer``, +(-ec - B)), so the balance starts at
   -ec at worst and the accrued use is recovered like any other arrears.
2. Emergency credit in use (a negative balance) is repaid by the top-up landing on
   it: ``emergency_repaid = min(A, max(0, -B'))``.
3. Debt recovery: at most ``share%`` of A (rounded down), at most the recoverable
   debt (outstanding minus any disputed part; a previous occupant's debt lives on
   the previous account and is never offered here), and never so much that the
   balance after falls below ``restore_min`` when the top-up alone would reach it.
   Oldest debt first.
4. The rest stays on the balance.
When supply is off or about to be (state exhausted or friendly) and the balance
after is below ``restore_min``, the top-up is "too small" and ``still_needed_minor``
is exactly what one more top-up must bring (the recovery rule takes nothing from a
top-up until restoration is reached, so paying exactly that amount restores).
"""

from __future__ import annotations

from dataclasses import dataclass

from prepaid.credit import CreditPolicy, CreditStateName


@dataclass(frozen=True)
class Debt:
    id: int
    outstanding_minor: int
    disputed_minor: int = 0

    @property
    def recoverable_minor(self) -> int:
        return max(0, self.outstanding_minor - self.disputed_minor)


@dataclass(frozen=True)
class TopupSplit:
    amount_minor: int
    friendly_to_debt_minor: int
    emergency_repaid_minor: int
    debt_recovered: tuple[tuple[int, int], ...]  # (debt id, minor units)
    to_balance_minor: int
    balance_after_minor: int
    still_needed_minor: int  # 0 when supply can be restored

    @property
    def debt_recovered_minor(self) -> int:
        return sum(a for _, a in self.debt_recovered)


def recovery_cap(amount_minor: int, share_pct: int) -> int:
    return amount_minor * share_pct // 100


def split_topup(
    amount_minor: int,
    balance_minor: int,
    state: CreditStateName,
    debts: list[Debt],
    policy: CreditPolicy,
) -> TopupSplit:
    if amount_minor <= 0:
        raise ValueError("a top-up amount must be positive")
    ec = policy.emergency_credit_minor
    friendly = max(0, -ec - balance_minor)
    base = balance_minor + friendly
    emergency_repaid = min(amount_minor, max(0, -base))
    headroom = max(0, base + amount_minor - policy.restore_min_minor)
    budget = min(recovery_cap(amount_minor, policy.debt_recovery_share_pct), headroom)
    recovered: list[tuple[int, int]] = []
    for debt in debts:  # caller passes them oldest first
        if budget <= 0:
            break
        take = min(budget, debt.recoverable_minor)
        if take > 0:
            recovered.append((debt.id, take))
            budget -= take
    total_recovered = sum(a for _, a in recovered)
    after = base + amount_minor - total_recovered
    off_supply = state in (CreditStateName.EXHAUSTED, CreditStateName.FRIENDLY) or friendly > 0
    still_needed = max(0, policy.restore_min_minor - after) if off_supply else 0
    return TopupSplit(
        amount_minor=amount_minor,
        friendly_to_debt_minor=friendly,
        emergency_repaid_minor=emergency_repaid,
        debt_recovered=tuple(recovered),
        to_balance_minor=amount_minor - emergency_repaid - total_recovered,
        balance_after_minor=after,
        still_needed_minor=still_needed,
    )
