"""Collection KPIs per period and service area (DOMAIN.md §4, from the source paper).

Per account, over the period [start, end):
- C  charges: consumption + standing charges posted in the period;
- P  payments: top-ups net of reversals, plus installment payments;
- A0, A1 arrears at start and end: own outstanding debts + the negative part of the
  balance (debts are reconstructed at an instant from their recoveries);
- old arrears collected O: debt recoveries in the period on debts that existed at
  start, plus the part of a negative balance at start that payments repaid
  (min(-balance at start, P));
- current collected K = P - O - (prepaid credit at end - prepaid credit at start),
  clipped to [0, C] (what paid for this period's charges).
KPIs (summed per area): current-year collection rate K/C; collection coefficient
(K+O)/C; old-arrears recovery rate O/A0; year-end arrears A1. Plus self-disconnection
episodes (``credit_exhausted`` events in the period) and accounts with 3 or more of
them in the 30 days before ``end`` (flagged as self-disconnecting).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from psycopg import AsyncConnection

from prepaid.errors import InvalidRequest
from prepaid.models import AreaKpis


def ratio(num: int, den: int) -> Decimal | None:
    if den <= 0:
        return None
    return (Decimal(num) / Decimal(den)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


async def _per_account(conn: AsyncConnection[Any], sql: str, params: tuple[Any, ...]) -> dict[str, int]:
    cur = await conn.execute(sql, params)
    return {a: int(v or 0) for a, v in await cur.fetchall()}


async def _balances_at(conn: AsyncConnection[Any], at: datetime) -> dict[str, int]:
    return await _per_account(
        conn,
        "select distinct on (account_id) account_id, balance_after_minor from ledger_entries"
        " where posted_at < %s order by account_id, id desc",
        (at,),
    )


async def _debts_at(conn: AsyncConnection[Any], at: datetime) -> dict[str, int]:
    return await _per_account(
        conn,
        "select d.account_id, sum(d.original_minor + coalesce(("
        "  select sum(l.amount_minor) from ledger_entries l where l.account_id = d.account_id"
        "  and l.kind in ('debt_recovery', 'adjustment') and (l.detail->>'debt_id')::bigint = d.id"
        "  and l.posted_at < %s), 0))"
        " from debts d where d.created_at < %s and d.kind <> 'previous_occupant' group by d.account_id",
        (at, at),
    )


async def kpis(
    conn: AsyncConnection[Any], *, start: datetime, end: datetime, area: str | None = None
) -> list[AreaKpis]:
    """KPIs per service area for [start, end) (one area when ``area`` is given)."""
    if end <= start:
        raise InvalidRequest("end must be after start")
    cur = await conn.execute(
        "select a.id, sp.area from accounts a join service_points sp on sp.id = a.service_point_id"
        " where (%s::text is null or sp.area = %s)",
        (area, area),
    )
    area_of = {a: ar for a, ar in await cur.fetchall()}
    charges = await _per_account(
        conn,
        "select account_id, -sum(amount_minor) from ledger_entries where kind in ('consumption', 'standing_charge')"
        " and posted_at >= %s and posted_at < %s group by account_id",
        (start, end),
    )
    payments = await _per_account(
        conn,
        "select account_id, sum(amount_minor) from ledger_entries"
        " where kind in ('topup', 'topup_reversal', 'installment_payment')"
        " and posted_at >= %s and posted_at < %s group by account_id",
        (start, end),
    )
    old_recovered = await _per_account(
        conn,
        "select l.account_id, -sum(l.amount_minor) from ledger_entries l join debts d"
        " on d.id = (l.detail->>'debt_id')::bigint where l.kind = 'debt_recovery'"
        " and l.posted_at >= %s and l.posted_at < %s and d.created_at < %s group by l.account_id",
        (start, end, start),
    )
    bal0, bal1 = await _balances_at(conn, start), await _balances_at(conn, end)
    debt0, debt1 = await _debts_at(conn, start), await _debts_at(conn, end)
    episodes = await _per_account(
        conn,
        "select account_id, count(*) from account_events where kind = 'credit_exhausted'"
        " and at >= %s and at < %s group by account_id",
        (start, end),
    )
    recent = await _per_account(
        conn,
        "select account_id, count(*) from account_events where kind = 'credit_exhausted'"
        " and at >= %s and at < %s group by account_id",
        (end - timedelta(days=30), end),
    )
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for acc, ar in area_of.items():
        c, p = charges.get(acc, 0), payments.get(acc, 0)
        b0, b1 = bal0.get(acc, 0), bal1.get(acc, 0)
        a0 = debt0.get(acc, 0) + max(0, -b0)
        a1 = debt1.get(acc, 0) + max(0, -b1)
        old = old_recovered.get(acc, 0) + min(max(0, -b0), max(0, p))
        current = min(c, max(0, p - old - (max(0, b1) - max(0, b0))))
        s = sums[ar]
        s["charges"] += c
        s["payments"] += p
        s["a0"] += a0
        s["a1"] += a1
        s["old"] += old
        s["current"] += current
        s["episodes"] += episodes.get(acc, 0)
        s["flagged"] += 1 if recent.get(acc, 0) >= 3 else 0
    return [
        AreaKpis(
            area=ar,
            start=start,
            end=end,
            charges_minor=s["charges"],
            payments_minor=s["payments"],
            arrears_start_minor=s["a0"],
            arrears_end_minor=s["a1"],
            current_collected_minor=s["current"],
            old_arrears_collected_minor=s["old"],
            collection_rate=ratio(s["current"], s["charges"]),
            collection_coefficient=ratio(s["current"] + s["old"], s["charges"]),
            old_arrears_recovery_rate=ratio(s["old"], s["a0"]),
            self_disconnection_episodes=s["episodes"],
            self_disconnecting_accounts=s["flagged"],
        )
        for ar, s in sorted(sums.items())
    ]
