"""Posting ledger entries with their balance, credit state, events and notices.

The one place that changes ``accounts.balance_minor``. ``post_entries`` runs inside
the caller's transaction and, set-wise for the whole batch:

1. locks the accounts concerned (``FOR UPDATE``, in id order: no deadlocks);
2. drops entries whose (account, kind, reference) was posted before (idempotency);
3. applies the pure posting rules (prepaid/ledger.py) to get each balance after;
4. inserts the entries (ids pre-allocated from the sequence, one INSERT ... unnest),
   updates all balances with one UPDATE;
5. runs the credit rules (prepaid/credit.py) once per account on (balance before,
   balance after) and writes the credit state, the ``account_events`` rows (with
   ``pg_notify('account_events', id)``, delivered at commit) and ``low_credit``
   notices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from prepaid import ledger, store
from prepaid.credit import CreditPolicy, CreditState, CreditStateName, in_friendly_hours, on_balance
from prepaid.errors import NotFound
from prepaid.localtime import LocalCalendar

_CALENDARS: dict[tuple[str, str, str | None], LocalCalendar] = {}


def calendar_for(timezone: str, country: str, subdivision: str | None) -> LocalCalendar:
    key = (timezone, country, subdivision)
    if key not in _CALENDARS:
        _CALENDARS[key] = LocalCalendar(timezone, country, subdivision)
    return _CALENDARS[key]


@dataclass
class Posting:
    account_id: str
    kind: str
    amount_minor: int
    reference: str | None = None
    meter_id: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class AccountRow:
    account_id: str
    balance_minor: int
    currency: str
    calendar: LocalCalendar
    credit: CreditState
    policy_name: str
    area: str
    status: str


@dataclass
class PostResult:
    entry_ids: list[int | None]  # per posting; None = already posted (skipped)
    balances_after: list[int | None]  # per posting: the entry's balance_after_minor
    balances: dict[str, tuple[int, int]]  # account -> (before, after)
    event_ids: list[int]
    credit: dict[str, CreditState]


async def load_policies(conn: AsyncConnection[Any]) -> dict[str, CreditPolicy]:
    cur = await conn.execute("select name, definition from prepaid_policies")
    return {name: CreditPolicy.model_validate(definition) for name, definition in await cur.fetchall()}


async def lock_accounts(conn: AsyncConnection[Any], account_ids: Sequence[str]) -> dict[str, AccountRow]:
    cur = await conn.execute(
        "select a.id, a.balance_minor, a.currency, sp.timezone, sp.country, sp.subdivision,"
        " coalesce(cs.state, 'normal'), coalesce(cs.low_fired, '{}'), coalesce(cs.days_warned, false),"
        " coalesce(cs.daily_use_minor, 0), coalesce(cs.policy, 'default'), sp.area, a.status"
        " from accounts a join service_points sp on sp.id = a.service_point_id"
        " left join credit_state cs on cs.account_id = a.id"
        " where a.id = any(%s) order by a.id for update of a",
        (sorted(set(account_ids)),),
    )
    out: dict[str, AccountRow] = {}
    for r in await cur.fetchall():
        out[r[0]] = AccountRow(
            account_id=r[0],
            balance_minor=int(r[1]),
            currency=r[2],
            calendar=calendar_for(r[3], r[4], r[5]),
            credit=CreditState(CreditStateName(r[6]), frozenset(r[7]), bool(r[8]), int(r[9])),
            policy_name=r[10],
            area=r[11],
            status=r[12],
        )
    return out


async def post_entries(
    conn: AsyncConnection[Any],
    postings: Sequence[Posting],
    now: datetime,
    *,
    accounts: dict[str, AccountRow] | None = None,
    policies: dict[str, CreditPolicy] | None = None,
    credit_ticks: Sequence[str] = (),
) -> PostResult:
    """Post entries (in order) and everything that follows from the balance changes.

    ``credit_ticks``: accounts to re-evaluate with an unchanged balance (friendly
    hours ended, daily use changed).
    """
    ids = [p.account_id for p in postings] + list(credit_ticks)
    if accounts is None:
        accounts = await lock_accounts(conn, ids)
    missing = set(ids) - set(accounts)
    if missing:
        raise NotFound(f"unknown account(s): {sorted(missing)}")
    if policies is None:
        policies = await load_policies(conn)

    seen: set[tuple[str, str, str]] = set()
    refs = [(p.account_id, p.kind, p.reference) for p in postings if p.reference is not None]
    if refs:
        cur = await conn.execute(
            "select l.account_id, l.kind, l.reference from ledger_entries l"
            " join unnest(%b::text[], %b::text[], %b::text[]) u(a, k, r)"
            " on l.account_id = u.a and l.kind = u.k and l.reference = u.r",
            ([r[0] for r in refs], [r[1] for r in refs], [r[2] for r in refs]),
        )
        seen = {(a, k, r) for a, k, r in await cur.fetchall()}

    balances: dict[str, tuple[int, int]] = {}
    rows: list[tuple[int, Posting, int]] = []  # (index, posting, balance after)
    for i, p in enumerate(postings):
        if p.reference is not None:
            key = (p.account_id, p.kind, p.reference)
            if key in seen:
                continue
            seen.add(key)
        acc = accounts[p.account_id]
        before = balances.get(p.account_id, (acc.balance_minor, acc.balance_minor))[0]
        after, _ = ledger.post(acc.balance_minor, [ledger.Entry(p.kind, p.amount_minor, p.reference)])
        acc.balance_minor = after
        balances[p.account_id] = (before, after)
        rows.append((i, p, after))

    entry_ids: list[int | None] = [None] * len(postings)
    balances_after: list[int | None] = [None] * len(postings)
    for i, _, bal in rows:
        balances_after[i] = bal
    if rows:
        cur = await conn.execute(
            "select nextval(pg_get_serial_sequence('ledger_entries', 'id')) from generate_series(1, %s)",
            (len(rows),),
        )
        new_ids = [int(r[0]) for r in await cur.fetchall()]
        for (i, _, _), eid in zip(rows, new_ids, strict=True):
            entry_ids[i] = eid
        async with conn.pipeline():  # the entries and the balances: one round trip
            await conn.execute(
                "insert into ledger_entries (id, account_id, posted_at, kind, amount_minor, balance_after_minor,"
                " reference, meter_id, period_start, period_end, detail)"
                " select u.id, u.a, %s, u.k, u.amt, u.bal, u.ref, u.m, to_timestamp(u.ps), to_timestamp(u.pe),"
                " u.d::jsonb"
                " from unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[],"
                " %s::text[], %s::float8[], %s::float8[], %s::text[]) u(id, a, k, amt, bal, ref, m, ps, pe, d)",
                (
                    now,
                    store.ints(new_ids),
                    store.texts(p.account_id for _, p, _ in rows),
                    store.texts(p.kind for _, p, _ in rows),
                    store.ints(p.amount_minor for _, p, _ in rows),
                    store.ints(bal for _, _, bal in rows),
                    store.texts(p.reference for _, p, _ in rows),
                    store.texts(p.meter_id for _, p, _ in rows),
                    store.floats(p.period_start.timestamp() if p.period_start else None for _, p, _ in rows),
                    store.floats(p.period_end.timestamp() if p.period_end else None for _, p, _ in rows),
                    store.texts(json.dumps(p.detail) if p.detail else "{}" for _, p, _ in rows),
                ),
            )
            await conn.execute(
                "update accounts a set balance_minor = u.b from unnest(%s::text[], %s::bigint[]) u(id, b)"
                " where a.id = u.id",
                (store.texts(balances), store.ints(b[1] for b in balances.values())),
            )

    # credit rules, once per account
    last_entry: dict[str, int] = {}
    for (_, p, _), eid in zip(rows, [e for e in entry_ids if e is not None], strict=True):
        last_entry[p.account_id] = eid
    for acc_id in credit_ticks:
        if acc_id not in balances:
            bal = accounts[acc_id].balance_minor
            balances[acc_id] = (bal, bal)
    ev_accounts: list[str] = []
    ev_kinds: list[str] = []
    ev_details: list[str] = []
    ev_keys: list[str] = []
    notice_rows: list[tuple[str, str, str, str]] = []
    credit_out: dict[str, CreditState] = {}
    for acc_id, (before, after) in balances.items():
        acc = accounts[acc_id]
        policy = policies.get(acc.policy_name) or CreditPolicy()
        friendly = in_friendly_hours(policy, acc.calendar, now)
        outcome = on_balance(acc.credit, before, after, policy, friendly=friendly)
        if outcome.state != acc.credit:
            credit_out[acc_id] = outcome.state
        tag = str(last_entry.get(acc_id, f"tick:{now.isoformat()}"))
        for kind in outcome.events:
            detail: dict[str, Any] = {"balance_minor": after, "balance_before_minor": before, "entry": tag}
            if kind == "low_credit":
                w = outcome.warnings[0]
                detail |= {"reason": w.reason, "threshold_minor": w.threshold_minor}
                if w.days_left is not None:
                    detail["days_left"] = str(w.days_left)
                notice_rows.append((acc_id, "low_credit", f"low_credit:{acc_id}:{tag}", json.dumps(detail)))
            ev_accounts.append(acc_id)
            ev_kinds.append(kind)
            ev_details.append(json.dumps(detail))
            ev_keys.append(f"{kind}:{acc_id}:{tag}")
        acc.credit = outcome.state
    if credit_out:
        await conn.execute(
            "insert into credit_state (account_id, state, low_fired, days_warned, daily_use_minor, updated_at)"
            " select u.a, u.s, coalesce(string_to_array(nullif(u.f, ''), ',')::int[], '{}'), u.w, u.d, %s"
            " from unnest(%b::text[], %b::text[], %b::text[], %b::boolean[], %b::bigint[]) u(a, s, f, w, d)"
            " on conflict (account_id) do update set"
            " state_since = case when credit_state.state = excluded.state then credit_state.state_since"
            " else excluded.updated_at end,"
            " state = excluded.state, low_fired = excluded.low_fired, days_warned = excluded.days_warned,"
            " daily_use_minor = excluded.daily_use_minor, updated_at = excluded.updated_at",
            (
                now,
                list(credit_out),
                [c.state.value for c in credit_out.values()],
                [",".join(str(t) for t in sorted(c.low_fired)) for c in credit_out.values()],
                [c.days_warned for c in credit_out.values()],
                [c.daily_use_minor for c in credit_out.values()],
            ),
        )
    event_ids: list[int] = []
    if ev_kinds:
        event_ids = await append_events(conn, ev_accounts, ev_kinds, ev_details, ev_keys, now)
    if notice_rows:
        await conn.execute(
            "insert into notices (account_id, kind, dedupe_key, body, created_at, next_attempt_at)"
            " select u.a, u.k, u.key, u.b::jsonb, %s, %s from unnest(%b::text[], %b::text[], %b::text[], %b::text[])"
            " u(a, k, key, b) on conflict (dedupe_key) do nothing",
            (now, now, *[list(col) for col in zip(*notice_rows, strict=True)]),
        )
    credit_all = {a: accounts[a].credit for a in balances}
    return PostResult(entry_ids, balances_after, {a: balances[a] for a in balances}, event_ids, credit_all)


async def append_events(
    conn: AsyncConnection[Any],
    accounts: list[str],
    kinds: list[str],
    details: list[str],
    keys: list[str],
    now: datetime,
) -> list[int]:
    """Insert account_events (deduplicated by key) and NOTIFY their ids at commit."""
    cur = await conn.execute(
        "with ins as (insert into account_events (account_id, kind, at, detail, dedupe_key)"
        " select u.a, u.k, %s, u.d::jsonb, u.key from unnest(%b::text[], %b::text[], %b::text[], %b::text[])"
        " u(a, k, d, key) on conflict (dedupe_key) do nothing returning id)"
        " select id, pg_notify('account_events', id::text) from ins",
        (now, accounts, kinds, details, keys),
    )
    return [int(r[0]) for r in await cur.fetchall()]
