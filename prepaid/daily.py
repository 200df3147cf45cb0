"""The periodic (daily-rule) jobs, idempotent so they can run every minute.

- standing charges: one ``standing_charge`` entry per open account per local day
  (reference = the local date), for today and yesterday (catch-up after downtime),
  from the tariff version in force at the local day's start; paused while the
  service point's meter is disconnected when the policy says so;
- recent daily use per account (feeds the days-left warning);
- friendly-hours tick: accounts in ``friendly`` whose friendly hours are over become
  ``exhausted`` (``credit_exhausted`` event);
- daily debt recovery when the policy sets ``debt_recovery_per_day_minor``, never
  taking the balance below the restore minimum (reference = date and debt);
- installment plans with an installment past due and unpaid become ``missed``
  (``installment_missed`` event: control opens the manual procedure).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from prepaid.credit import CreditPolicy
from prepaid.engine import VersionCache
from prepaid.posting import Posting, append_events, calendar_for, load_policies, post_entries

logger = logging.getLogger(__name__)


@dataclass
class DailyResult:
    standing_posted: int = 0
    friendly_ticked: int = 0
    debt_recovered_minor: int = 0
    plans_missed: int = 0


async def standing_charges(
    conn: AsyncConnection[Any], now: datetime, versions: VersionCache, policies: dict[str, CreditPolicy]
) -> int:
    cur = await conn.execute(
        "select a.id, a.tariff_id, sp.timezone, sp.country, sp.subdivision, a.opened_at,"
        " exists(select 1 from meters m where m.service_point_id = a.service_point_id"
        "        and m.relay_state = 'disconnected'),"
        " coalesce(cs.policy, 'default')"
        " from accounts a join service_points sp on sp.id = a.service_point_id"
        " left join credit_state cs on cs.account_id = a.id"
        " where a.status = 'open' and a.tariff_id is not null"
    )
    accounts = await cur.fetchall()
    if not accounts:
        return 0
    cur = await conn.execute(
        "select account_id, reference from ledger_entries where kind = 'standing_charge' and posted_at >= %s",
        (now - timedelta(days=3),),
    )
    done = {(a, r) for a, r in await cur.fetchall()}
    tariffs = await versions.load(conn, sorted({r[1] for r in accounts}))
    postings: list[Posting] = []
    for acc_id, tariff_id, tz, country, subdiv, opened_at, disconnected, policy_name in accounts:
        policy = policies.get(policy_name) or CreditPolicy()
        if disconnected and policy.pause_standing_charge_while_disconnected:
            continue
        cal = calendar_for(tz, country, subdiv)
        today = cal.local_date(now)
        for day in (today - timedelta(days=1), today):
            if (acc_id, day.isoformat()) in done:
                continue
            start, end = cal.day_bounds(day)
            if end <= opened_at <= now:  # (an opened_at after `now` is an accelerated demo clock)
                continue
            in_force = [v for v in tariffs.get(tariff_id, []) if v.effective_from <= start]
            if not in_force or in_force[-1].standing_minor_per_day <= 0:
                continue
            v = in_force[-1]
            postings.append(
                Posting(
                    acc_id,
                    "standing_charge",
                    -v.standing_minor_per_day,
                    day.isoformat(),
                    period_start=start,
                    period_end=end,
                    detail={"tariff_id": tariff_id, "tariff_from": v.effective_from.isoformat()},
                )
            )
    if not postings:
        return 0
    posted = await post_entries(conn, postings, now, policies=policies)
    return sum(1 for e in posted.entry_ids if e is not None)


async def update_daily_use(conn: AsyncConnection[Any], now: datetime, days: int) -> None:
    await conn.execute(
        "insert into credit_state (account_id, daily_use_minor, updated_at)"
        " select account_id, ((-sum(amount_minor))::bigint * 2 + %s) / (2 * %s), %s from ledger_entries"
        " where kind in ('consumption', 'standing_charge')"
        " and coalesce(period_end, posted_at) >= %s and coalesce(period_end, posted_at) < %s"
        " group by account_id"
        " on conflict (account_id) do update set daily_use_minor = excluded.daily_use_minor",
        (days, days, now, now - timedelta(days=days), now),
    )


async def friendly_tick(conn: AsyncConnection[Any], now: datetime, policies: dict[str, CreditPolicy]) -> int:
    cur = await conn.execute("select account_id from credit_state where state = 'friendly'")
    ids = [r[0] for r in await cur.fetchall()]
    if ids:
        await post_entries(conn, [], now, policies=policies, credit_ticks=ids)
    return len(ids)


async def daily_debt_recovery(conn: AsyncConnection[Any], now: datetime, policies: dict[str, CreditPolicy]) -> int:
    named = {n: p for n, p in policies.items() if p.debt_recovery_per_day_minor > 0}
    if not named:
        return 0
    cur = await conn.execute(
        "select d.id, d.account_id, d.outstanding_minor, a.balance_minor, coalesce(cs.policy, 'default'),"
        " sp.timezone, sp.country, sp.subdivision"
        " from debts d join accounts a on a.id = d.account_id join service_points sp on sp.id = a.service_point_id"
        " left join credit_state cs on cs.account_id = a.id"
        " where d.outstanding_minor > 0 and d.kind <> 'previous_occupant' and a.status = 'open'"
        " and coalesce(cs.policy, 'default') = any(%s)"
        " and not exists (select 1 from disputes x where x.account_id = a.id and x.closed_at is null)"
        " order by d.account_id, d.id",
        (list(named),),
    )
    postings: list[Posting] = []
    budget: dict[str, int] = {}
    for debt_id, acc_id, outstanding, balance, policy_name, tz, country, subdiv in await cur.fetchall():
        p = named[policy_name]
        if acc_id not in budget:
            budget[acc_id] = min(p.debt_recovery_per_day_minor, max(0, int(balance) - p.restore_min_minor))
        take = min(budget[acc_id], int(outstanding))
        if take <= 0:
            continue
        budget[acc_id] -= take
        day: date = calendar_for(tz, country, subdiv).local_date(now)
        postings.append(
            Posting(acc_id, "debt_recovery", -take, f"daily:{day.isoformat()}:{debt_id}", detail={"debt_id": debt_id})
        )
    if not postings:
        return 0
    posted = await post_entries(conn, postings, now, policies=policies)
    total = 0
    for posting, entry in zip(postings, posted.entry_ids, strict=True):
        if entry is not None:
            await conn.execute(
                "update debts set outstanding_minor = outstanding_minor + %s where id = %s",
                (posting.amount_minor, posting.detail["debt_id"]),
            )
            total -= posting.amount_minor
    return total


async def missed_plans(conn: AsyncConnection[Any], now: datetime) -> int:
    cur = await conn.execute(
        "update installment_plans p set state = 'missed' where p.state = 'good_standing' and exists"
        " (select 1 from installments i where i.plan_id = p.id and i.due_at < %s and i.paid_minor < i.amount_minor)"
        " returning p.id, p.account_id",
        (now,),
    )
    rows = await cur.fetchall()
    if rows:
        await append_events(
            conn,
            [r[1] for r in rows],
            ["installment_missed"] * len(rows),
            [json.dumps({"plan_id": int(r[0])}) for r in rows],
            [f"installment_missed:{r[0]}" for r in rows],
            now,
        )
    return len(rows)


async def daily_tick(conn: AsyncConnection[Any], now: datetime, versions: VersionCache | None = None) -> DailyResult:
    """All daily rules, each in its own transaction."""
    versions = versions or VersionCache()
    out = DailyResult()
    policies = await load_policies(conn)
    await conn.commit()
    async with conn.transaction():
        out.standing_posted = await standing_charges(conn, now, versions, policies)
    async with conn.transaction():
        days = max(p.recent_days for p in policies.values()) if policies else 7
        await update_daily_use(conn, now, days)
    async with conn.transaction():
        out.friendly_ticked = await friendly_tick(conn, now, policies)
    async with conn.transaction():
        out.debt_recovered_minor = await daily_debt_recovery(conn, now, policies)
    async with conn.transaction():
        out.plans_missed = await missed_plans(conn, now)
    return out
