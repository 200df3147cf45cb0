"""The operations the api (and control) call. Each takes a psycopg AsyncConnection
and runs its own transaction; domain errors come from prepaid/errors.py.

Money moves only through posting.post_entries (ledger entry + balance + credit
state + events in one transaction). Signatures are documented in docs/prepaid.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from prepaid import credit, ledger
from prepaid.credit import CreditPolicy, CreditStateName
from prepaid.errors import AlreadyReversed, Conflict, InvalidRequest, NotFound, TariffError, TopupConflict
from prepaid.models import (
    CreditFacts,
    DaysLeft,
    HoldResolution,
    Installment,
    InstallmentPlan,
    LedgerLine,
    ReversalResult,
    Statement,
    StatementColumns,
    StatementLine,
    TariffVersionInfo,
    TopupResult,
)
from prepaid.posting import Posting, append_events, load_policies, lock_accounts, post_entries
from prepaid.tariffs import compile_version
from prepaid.topups import Debt, split_topup

CHANNELS = ("counter", "bank", "pos", "atm", "app", "mobile_money")
CHARGE_KINDS = ("consumption", "standing_charge")
PAYMENT_KINDS = ("topup", "topup_reversal", "installment_payment")

# Re-exported so that the api finds them here.
from prepaid.kpis import kpis  # noqa: E402

__all__ = [
    "add_debt",
    "add_tariff_version",
    "create_installment_plan",
    "credit_facts",
    "days_of_credit_left",
    "kpis",
    "ledger_page",
    "list_installment_plans",
    "list_tariff_versions",
    "pay_installment",
    "resolve_billing_hold",
    "reverse_topup",
    "statement",
    "statement_columns",
    "statement_json",
    "topup",
    "verify_ledger",
]


def _policy(policies: dict[str, CreditPolicy], name: str) -> CreditPolicy:
    return policies.get(name) or CreditPolicy()


async def _debts(conn: AsyncConnection[Any], account_id: str) -> list[Debt]:
    """Own outstanding debts, oldest first, with open disputes set against the newest."""
    cur = await conn.execute(
        "select id, outstanding_minor from debts where account_id = %s and outstanding_minor > 0"
        " and kind <> 'previous_occupant' order by id for update",
        (account_id,),
    )
    rows = [(int(i), int(o)) for i, o in await cur.fetchall()]
    cur = await conn.execute(
        "select coalesce(sum(amount_minor), 0) from disputes where account_id = %s and closed_at is null",
        (account_id,),
    )
    row = await cur.fetchone()
    disputed = int(row[0]) if row else 0
    out: list[Debt] = []
    for debt_id, outstanding in reversed(rows):
        d = min(disputed, outstanding)
        disputed -= d
        out.append(Debt(debt_id, outstanding, d))
    return list(reversed(out))


def _topup_result(row: tuple[Any, ...], duplicate: bool) -> TopupResult:
    tid, account_id, channel, reference, amount, received_at, split, entry_id = row
    return TopupResult(
        topup_id=int(tid),
        account_id=account_id,
        channel=channel,
        reference=reference,
        amount_minor=int(amount),
        duplicate=duplicate,
        received_at=received_at,
        friendly_to_debt_minor=int(split["friendly_to_debt_minor"]),
        emergency_repaid_minor=int(split["emergency_repaid_minor"]),
        debt_recovered_minor=int(split["debt_recovered_minor"]),
        to_balance_minor=int(split["to_balance_minor"]),
        balance_after_minor=int(split["balance_after_minor"]),
        restored=bool(split["restored"]),
        still_needed_minor=int(split["still_needed_minor"]),
        ledger_entry_id=int(entry_id),
    )


async def topup(
    conn: AsyncConnection[Any], *, account_id: str, channel: str, reference: str, amount_minor: int, now: datetime
) -> TopupResult:
    """Credit an account. Idempotent on (channel, reference): a repeat returns the first
    result with ``duplicate=True``; the same reference with another account or amount
    raises TopupConflict."""
    if channel not in CHANNELS:
        raise InvalidRequest(f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}")
    if amount_minor <= 0:
        raise InvalidRequest("amount_minor must be positive")
    if not reference or len(reference) > 128:
        raise InvalidRequest("reference must be 1-128 characters")
    select = (
        "select id, account_id, channel, reference, amount_minor, received_at, split, ledger_entry_id"
        " from topups where channel = %s and reference = %s"
    )
    async with conn.transaction():
        cur = await conn.execute(select, (channel, reference))
        row = await cur.fetchone()
        if row is None:
            accounts = await lock_accounts(conn, [account_id])
            if account_id not in accounts:
                raise NotFound(f"account {account_id} not found")
            # a concurrent first delivery of the same reference may have committed meanwhile
            cur = await conn.execute(select, (channel, reference))
            row = await cur.fetchone()
        if row is not None:
            if row[1] != account_id or int(row[4]) != amount_minor:
                raise TopupConflict(
                    f"{channel} reference {reference} was already used for account {row[1]}, amount {row[4]}"
                )
            return _topup_result(tuple(row), duplicate=True)
        acc = accounts[account_id]
        if acc.status != "open":
            raise Conflict(f"account {account_id} is closed")
        policies = await load_policies(conn)
        policy = _policy(policies, acc.policy_name)
        debts = await _debts(conn, account_id)
        split = split_topup(amount_minor, acc.balance_minor, acc.credit.state, debts, policy)
        ref = f"{channel}:{reference}"
        postings: list[Posting] = []
        if split.friendly_to_debt_minor:
            postings.append(Posting(account_id, "friendly_credit_transfer", split.friendly_to_debt_minor, ref))
        postings.append(Posting(account_id, "topup", amount_minor, ref, detail={"channel": channel}))
        for debt_id, amount in split.debt_recovered:
            postings.append(
                Posting(account_id, "debt_recovery", -amount, f"{ref}:{debt_id}", detail={"debt_id": debt_id})
            )
        state_before = acc.credit.state
        posted = await post_entries(conn, postings, now, accounts=accounts, policies=policies)
        topup_entry = posted.entry_ids[1 if split.friendly_to_debt_minor else 0]
        assert topup_entry is not None
        if split.friendly_to_debt_minor:
            await conn.execute(
                "insert into debts (account_id, kind, original_minor, outstanding_minor, created_at, reference)"
                " values (%s, 'friendly_credit', %s, %s, %s, %s)",
                (account_id, split.friendly_to_debt_minor, split.friendly_to_debt_minor, now, ref),
            )
        for debt_id, amount in split.debt_recovered:
            await conn.execute(
                "update debts set outstanding_minor = outstanding_minor - %s where id = %s", (amount, debt_id)
            )
        now_normal = posted.credit[account_id].state is CreditStateName.NORMAL
        restored = state_before is not CreditStateName.NORMAL and now_normal
        body = {
            "friendly_to_debt_minor": split.friendly_to_debt_minor,
            "emergency_repaid_minor": split.emergency_repaid_minor,
            "debt_recovered_minor": split.debt_recovered_minor,
            "debt_recovered": [list(d) for d in split.debt_recovered],
            "to_balance_minor": split.to_balance_minor,
            "balance_after_minor": split.balance_after_minor,
            "restored": restored,
            "still_needed_minor": split.still_needed_minor,
        }
        cur = await conn.execute(
            "insert into topups (channel, reference, account_id, amount_minor, received_at, split, ledger_entry_id)"
            " values (%s, %s, %s, %s, %s, %s, %s)"
            " returning id, account_id, channel, reference, amount_minor, received_at, split, ledger_entry_id",
            (channel, reference, account_id, amount_minor, now, Jsonb(body), topup_entry),
        )
        created = await cur.fetchone()
        assert created is not None
        detail = json.dumps({"topup_id": int(created[0]), "amount_minor": amount_minor, "channel": channel, **body})
        await append_events(conn, [account_id], ["topup"], [detail], [f"topup:{ref}"], now)
        if split.still_needed_minor:
            await conn.execute(
                "insert into notices (account_id, kind, dedupe_key, body, created_at, next_attempt_at)"
                " values (%s, 'topup_too_small', %s, %s, %s, %s) on conflict (dedupe_key) do nothing",
                (
                    account_id,
                    f"topup_too_small:{ref}",
                    Jsonb(
                        {
                            "still_needed_minor": split.still_needed_minor,
                            "amount_minor": amount_minor,
                            "balance_minor": split.balance_after_minor,
                        }
                    ),
                    now,
                    now,
                ),
            )
        return _topup_result(tuple(created), duplicate=False)


async def reverse_topup(
    conn: AsyncConnection[Any], *, channel: str, reference: str, reason: str, now: datetime
) -> ReversalResult:
    """Reverse a top-up: its amount leaves the balance and any debt it recovered is owed again."""
    async with conn.transaction():
        cur = await conn.execute(
            "select id, account_id, amount_minor, split, reversed_at from topups"
            " where channel = %s and reference = %s for update",
            (channel, reference),
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no top-up {channel}:{reference}")
        tid, account_id, amount, split, reversed_at = row
        if reversed_at is not None:
            raise AlreadyReversed(f"top-up {channel}:{reference} was reversed at {reversed_at.isoformat()}")
        ref = f"{channel}:{reference}"
        recovered = [(int(d), int(a)) for d, a in split.get("debt_recovered", [])]
        postings = [Posting(account_id, "topup_reversal", -int(amount), ref, detail={"reason": reason})]
        for debt_id, a in recovered:
            postings.append(
                Posting(
                    account_id,
                    "adjustment",
                    a,
                    f"reversal:{ref}:{debt_id}",
                    detail={"debt_id": debt_id, "reason": "debt recovery of a reversed top-up"},
                )
            )
            await conn.execute(
                "update debts set outstanding_minor = outstanding_minor + %s where id = %s", (a, debt_id)
            )
        posted = await post_entries(conn, postings, now)
        await conn.execute("update topups set reversed_at = %s, reversal_reason = %s where id = %s", (now, reason, tid))
        after = posted.balances[account_id][1]
        detail = json.dumps(
            {"topup_id": int(tid), "amount_minor": int(amount), "reason": reason, "balance_minor": after}
        )
        await append_events(conn, [account_id], ["topup_reversed"], [detail], [f"topup_reversed:{ref}"], now)
        return ReversalResult(
            topup_id=int(tid),
            account_id=account_id,
            channel=channel,
            reference=reference,
            reversed_minor=int(amount),
            debt_restored_minor=sum(a for _, a in recovered),
            balance_after_minor=after,
            reversed_at=now,
            reason=reason,
        )


async def _account(conn: AsyncConnection[Any], account_id: str) -> tuple[Any, ...]:
    cur = await conn.execute(
        "select a.id, a.currency, a.balance_minor, a.status, a.service_point_id,"
        " coalesce(cs.state, 'normal'), cs.state_since, coalesce(cs.policy, 'default')"
        " from accounts a left join credit_state cs on cs.account_id = a.id where a.id = %s",
        (account_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"account {account_id} not found")
    return tuple(row)


def _line(r: tuple[Any, ...]) -> LedgerLine:
    return LedgerLine(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], r[7], r[8], r[9])


_LEDGER_COLS = (
    "id, posted_at, kind, amount_minor, balance_after_minor, reference, meter_id, period_start, period_end, detail"
)


# The rows travel as one bytea (fetched in binary): per row the binary send form of each
# column, concatenated by string_agg; numpy reads it in one go (a year is 35,040 rows).
# interval_start is timestamptz_send (µs since 2000-01-01); meter and label are codes.
_LINE_DTYPE = np.dtype(
    [
        ("start_us", ">i8"),
        ("energy", ">i8"),
        ("rate", ">i8"),
        ("amount", ">i8"),
        ("balance", ">i8"),
        ("entry", ">i8"),
        ("block", ">i2"),
        ("meter", ">i2"),
        ("label", ">i2"),
    ]
)
_COLUMNS = ("energy", "rate", "amount", "balance", "entry", "block", "meter", "label")
_PG_EPOCH_S = 946_684_800  # 2000-01-01 in Unix seconds


def _codes(column: str, names: list[str]) -> sql.Composable:
    """``case <column> when name1 then 1 ... else 0 end`` (cheaper per row than array_position)."""
    if not names:
        return sql.SQL("0")
    whens = sql.SQL(" ").join(
        sql.SQL("when {} then {}").format(sql.Literal(n), sql.Literal(i)) for i, n in enumerate(names, 1)
    )
    return sql.SQL("case {} {} else 0 end").format(sql.SQL(column), whens)


async def _statement_rows(
    conn: AsyncConnection[Any], account_id: str, start: datetime, end: datetime
) -> tuple[dict[str, np.ndarray[Any, Any]], list[str], list[str]]:
    """The account's interval charges in [start, end) as int64 numpy columns (``start_s`` in
    epoch seconds), ordered by (interval_start, meter, block), plus the meter and label
    names the ``meter`` and ``label`` codes index (0 = "?").

    One aggregate over an index-only scan (0202's covering index), fetched in binary; no
    ORDER BY in the aggregate (its sort spilled to disk): numpy sorts. JIT is off for the
    transaction: PostgreSQL's cost estimate used to cross jit_above_cost and compiling
    took ~240 ms of a ~400 ms query.
    """
    await conn.execute("set local jit = off")
    cur = await conn.execute(
        "select coalesce(array_agg(distinct meter_id order by meter_id), '{}') from ledger_entries"
        " where account_id = %s and kind = 'consumption' and meter_id is not null",
        (account_id,),
    )
    meters: list[str] = list((await cur.fetchone() or ([],))[0])
    cur = await conn.execute("select effective_from, definition from tariff_versions")
    labels: list[str] = ["flat"]
    for effective_from, definition in await cur.fetchall():
        try:
            labels += [x for x in compile_version(effective_from, definition).labels if x not in labels]
        except TariffError:
            continue
    query = sql.SQL(
        "select coalesce(string_agg(timestamptz_send(c.interval_start) || int8send(c.energy_wh)"
        " || int8send(c.rate_micro) || int8send(c.amount_micro) || int8send(c.balance_after_minor)"
        " || int8send(c.ledger_entry_id) || int2send(c.block) || int2send(({})::smallint)"
        " || int2send(({})::smallint), ''::bytea), ''::bytea)"
        " from interval_charges c"
        " where c.account_id = %s and c.interval_start >= %s and c.interval_start < %s"
    ).format(_codes("c.meter_id", meters), _codes("c.label", labels))
    cur = await conn.execute(query, (account_id, start, end), binary=True)
    buf = bytes((await cur.fetchone() or (b"",))[0])
    raw = np.frombuffer(buf, _LINE_DTYPE)
    cols = {"start_s": raw["start_us"] // 1_000_000 + _PG_EPOCH_S}
    for name in _COLUMNS:
        cols[name] = raw[name].astype(np.int64)
    # ORDER BY interval_start, meter_id, block (meter codes follow name order); the index
    # order over time-ordered chunks usually is that already, so check before sorting
    key = (cols["start_s"] << 24) | (cols["meter"] << 12) | cols["block"]
    if key.size > 1 and not bool((key[1:] >= key[:-1]).all()):
        order = np.argsort(key, kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
    return cols, ["?", *meters], ["?", *labels]


async def _statement_head(
    conn: AsyncConnection[Any], account_id: str, start: datetime, end: datetime
) -> tuple[str, int, int, list[LedgerLine]]:
    """currency, opening and closing balance, ledger entries posted in [start, end)."""
    acc = await _account(conn, account_id)
    cur = await conn.execute(
        f"select {_LEDGER_COLS} from ledger_entries where account_id = %s and posted_at >= %s and posted_at < %s"
        " order by id",
        (account_id, start, end),
    )
    entries = [_line(tuple(r)) for r in await cur.fetchall()]
    cur = await conn.execute(
        "select balance_after_minor from ledger_entries where account_id = %s and posted_at < %s"
        " order by id desc limit 1",
        (account_id, start),
    )
    row = await cur.fetchone()
    opening = int(row[0]) if row else 0
    closing = entries[-1].balance_after_minor if entries else opening
    return str(acc[1]), opening, closing, entries


async def statement(conn: AsyncConnection[Any], account_id: str, start: datetime, end: datetime) -> Statement:
    """Every interval charged in [start, end) with energy, band/block, rate, exact amount and
    the balance after its posting, plus every ledger entry posted in [start, end).

    For long ranges prefer ``statement_columns`` (same content as columns) or
    ``statement_json`` (the columnar document as JSON bytes)."""
    if end <= start:
        raise InvalidRequest("end must be after start")
    async with conn.transaction():
        currency, opening, closing, entries = await _statement_head(conn, account_id, start, end)
        rows, meter_names, label_names = await _statement_rows(conn, account_id, start, end)
    starts = [datetime.fromtimestamp(t, UTC) for t in rows["start_s"].tolist()]
    lines = [
        StatementLine(t, meter_names[m], e, label_names[lab], b, r, a, bal, le)
        for t, m, e, lab, b, r, a, bal, le in zip(
            starts,
            rows["meter"].tolist(),
            rows["energy"].tolist(),
            rows["label"].tolist(),
            rows["block"].tolist(),
            rows["rate"].tolist(),
            rows["amount"].tolist(),
            rows["balance"].tolist(),
            rows["entry"].tolist(),
            strict=True,
        )
    ]
    return Statement(
        account_id=account_id,
        currency=currency,
        start=start,
        end=end,
        opening_balance_minor=opening,
        closing_balance_minor=closing,
        energy_wh=int(rows["energy"].sum()),
        charges_micro=int(rows["amount"].sum()),
        intervals=lines,
        entries=entries,
    )


async def statement_columns(
    conn: AsyncConnection[Any], account_id: str, start: datetime, end: datetime
) -> StatementColumns:
    """``statement`` as columns: the same intervals and entries, no per-interval object
    (a one-year statement of 35,040 intervals in tens of ms). Same errors as ``statement``."""
    if end <= start:
        raise InvalidRequest("end must be after start")
    async with conn.transaction():
        currency, opening, closing, entries = await _statement_head(conn, account_id, start, end)
        rows, meter_names, label_names = await _statement_rows(conn, account_id, start, end)
    names_m = np.array(meter_names, dtype=object)
    names_l = np.array(label_names, dtype=object)
    cols: dict[str, Any] = {
        "interval_start_s": rows["start_s"],
        "meter_id": names_m[rows["meter"]].tolist(),
        "energy_wh": rows["energy"],
        "label": names_l[rows["label"]].tolist(),
        "block": rows["block"],
        "rate_micro": rows["rate"],
        "amount_micro": rows["amount"],
        "balance_after_minor": rows["balance"],
        "ledger_entry_id": rows["entry"],
    }
    return StatementColumns(
        account_id=account_id,
        currency=currency,
        start=start,
        end=end,
        opening_balance_minor=opening,
        closing_balance_minor=closing,
        energy_wh=int(rows["energy"].sum()),
        charges_micro=int(rows["amount"].sum()),
        intervals=cols,
        entries=entries,
    )


async def statement_json(conn: AsyncConnection[Any], account_id: str, start: datetime, end: datetime) -> bytes:
    """``statement_columns(...).to_json()``: the columnar statement document as UTF-8 JSON,
    for the api to send as is (``Response(content=..., media_type="application/json")``)."""
    return (await statement_columns(conn, account_id, start, end)).to_json()


async def ledger_page(
    conn: AsyncConnection[Any], account_id: str, after_id: int = 0, limit: int = 100
) -> list[LedgerLine]:
    """Ledger entries of an account with id > after_id, oldest first (keyset pagination)."""
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be 1..1000")
    await _account(conn, account_id)
    cur = await conn.execute(
        f"select {_LEDGER_COLS} from ledger_entries where account_id = %s and id > %s order by id limit %s",
        (account_id, after_id, limit),
    )
    return [_line(tuple(r)) for r in await cur.fetchall()]


async def _recent_daily_use(conn: AsyncConnection[Any], account_id: str, now: datetime, days: int) -> int:
    cur = await conn.execute(
        "select coalesce(-sum(amount_minor), 0) from ledger_entries where account_id = %s"
        " and kind = any(%s) and coalesce(period_end, posted_at) >= %s and coalesce(period_end, posted_at) < %s",
        (account_id, list(CHARGE_KINDS), now - timedelta(days=days), now),
    )
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    return credit.daily_use([total // days] * days) if total > 0 else 0


async def days_of_credit_left(conn: AsyncConnection[Any], account_id: str, now: datetime) -> DaysLeft:
    """Predicted days of credit left from the average daily use of the recent days."""
    acc = await _account(conn, account_id)
    policy = _policy(await load_policies(conn), acc[7])
    use = await _recent_daily_use(conn, account_id, now, policy.recent_days)
    available = credit.available_minor(int(acc[2]), policy)
    return DaysLeft(account_id, available, use, credit.days_left(available, use), policy.days_left_warning)


async def credit_facts(conn: AsyncConnection[Any], account_id: str, now: datetime) -> CreditFacts:
    """The credit facts control's guard reads (one consistent snapshot)."""
    acc = await _account(conn, account_id)
    _, _, balance, status, sp_id, state, since, policy_name = acc
    policy = _policy(await load_policies(conn), policy_name)
    balance = int(balance)
    ec = policy.emergency_credit_minor
    cur = await conn.execute(
        "select coalesce(sum(outstanding_minor), 0) from debts where account_id = %s and kind <> 'previous_occupant'",
        (account_id,),
    )
    debt = int((await cur.fetchone() or (0,))[0])
    cur = await conn.execute(
        "select coalesce(sum(amount_minor), 0) from disputes where account_id = %s and closed_at is null",
        (account_id,),
    )
    disputed = int((await cur.fetchone() or (0,))[0])
    cur = await conn.execute(
        "select coalesce(sum(greatest(-a.balance_minor, 0)), 0)"
        " + coalesce((select sum(d.outstanding_minor) from debts d join accounts a2 on a2.id = d.account_id"
        "   where a2.service_point_id = %s and a2.id <> %s), 0)"
        " + coalesce((select sum(d.outstanding_minor) from debts d where d.account_id = %s"
        "   and d.kind = 'previous_occupant'), 0)"
        " from accounts a where a.service_point_id = %s and a.id <> %s and a.status = 'closed'",
        (sp_id, account_id, account_id, sp_id, account_id),
    )
    previous = int((await cur.fetchone() or (0,))[0])
    plans = await list_installment_plans(conn, account_id, now)
    active = [p for p in plans if p.state in ("good_standing", "missed")]
    plan_state = None
    if active:
        plan_state = "missed" if any(p.state == "missed" for p in active) else "good_standing"
    cur = await conn.execute("select max(received_at) from topups where account_id = %s", (account_id,))
    last_topup = (await cur.fetchone() or (None,))[0]
    use = await _recent_daily_use(conn, account_id, now, policy.recent_days)
    available = credit.available_minor(balance, policy)
    own_debt = debt + max(0, -balance)
    return CreditFacts(
        account_id=account_id,
        status=status,
        balance_minor=balance,
        available_minor=available,
        credit_state=state,
        state_since=since,
        emergency_credit_minor=ec,
        emergency_in_use_minor=min(ec, max(0, -balance)),
        friendly_debt_minor=max(0, -ec - balance),
        debt_minor=debt,
        disputed_minor=disputed,
        recoverable_debt_minor=max(0, debt - disputed),
        previous_occupant_debt_minor=previous,
        only_previous_occupant_debt=previous > 0 and own_debt == 0,
        installment_plan_state=plan_state,
        restore_min_minor=policy.restore_min_minor,
        days_left=credit.days_left(available, use),
        last_topup_at=last_topup,
    )


async def verify_ledger(conn: AsyncConnection[Any]) -> list[ledger.Problem]:
    """Accounts whose balance != sum of entries, or whose balance_after chain breaks."""
    cur = await conn.execute("select id, balance_minor from accounts")
    balances = {a: int(b) for a, b in await cur.fetchall()}
    cur = await conn.execute("select account_id, sum(amount_minor) from ledger_entries group by account_id")
    sums = {a: int(s) for a, s in await cur.fetchall()}
    cur = await conn.execute(
        "select account_id, count(*) filter (where balance_after_minor <> running) from ("
        " select account_id, balance_after_minor,"
        " sum(amount_minor) over (partition by account_id order by id) as running from ledger_entries) x"
        " group by account_id"
    )
    breaks = {a: int(n) for a, n in await cur.fetchall() if n}
    return ledger.verify(balances, sums, breaks)


async def resolve_billing_hold(
    conn: AsyncConnection[Any], meter_id: str, resolved_by: str, now: datetime
) -> HoldResolution:
    """Clear a meter's billing hold. After a reset or spike, billing resumes from the reading
    that caused it (it becomes the new baseline); the energy across it is not billed."""
    async with conn.transaction():
        cur = await conn.execute("select billing_hold from meters where id = %s for update", (meter_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"meter {meter_id} not found")
        hold = row[0]
        if hold is None:
            return HoldResolution(meter_id, None, None, resolved_by)
        rebaseline: datetime | None = None
        if hold in ("register_reset", "energy_spike"):
            cur = await conn.execute(
                "select max(ts) from meter_events where meter_id = %s and kind = %s", (meter_id, hold)
            )
            found = (await cur.fetchone() or (None,))[0]
            cur = await conn.execute("select last_ts from billing_state where meter_id = %s", (meter_id,))
            last = (await cur.fetchone() or (None,))[0]
            rebaseline = found or (last + timedelta(seconds=1) if last else now)
            await conn.execute(
                "insert into billing_state (meter_id, rebaseline_at) values (%s, %s)"
                " on conflict (meter_id) do update set rebaseline_at = excluded.rebaseline_at",
                (meter_id, rebaseline),
            )
        await conn.execute("update meters set billing_hold = null where id = %s", (meter_id,))
        await conn.execute(
            "insert into meter_events (meter_id, ts, kind, detail, source)"
            " values (%s, %s, 'billing_hold_resolved', %s, 'prepaid') on conflict do nothing",
            (
                meter_id,
                now,
                Jsonb(
                    {
                        "previous_hold": hold,
                        "resolved_by": resolved_by,
                        "rebaseline_at": rebaseline.isoformat() if rebaseline else None,
                    }
                ),
            ),
        )
        await conn.execute("select pg_notify('billing', %s)", (meter_id,))
        return HoldResolution(meter_id, hold, rebaseline, resolved_by)


async def add_tariff_version(
    conn: AsyncConnection[Any],
    *,
    tariff_id: str,
    effective_from: datetime,
    definition: dict[str, Any],
    created_by: str | None,
    now: datetime,
) -> TariffVersionInfo:
    """Add a validated tariff version. Refused (Conflict) when intervals at or after its date
    were already billed under this tariff: a new price never re-rates posted consumption."""
    try:
        version = compile_version(effective_from, definition)
    except TariffError:
        raise
    async with conn.transaction():
        cur = await conn.execute("select currency from tariffs where id = %s for update", (tariff_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"tariff {tariff_id} not found")
        if version.definition.currency != row[0].strip():
            raise TariffError(f"tariff {tariff_id} is in {row[0]}, the version in {version.definition.currency}")
        cur = await conn.execute(
            "select max(c.interval_start) from interval_charges c join accounts a on a.id = c.account_id"
            " where a.tariff_id = %s and c.interval_start >= %s",
            (tariff_id, effective_from),
        )
        billed = (await cur.fetchone() or (None,))[0]
        if billed is not None:
            raise Conflict(
                f"consumption up to {billed.isoformat()} is already billed under {tariff_id}; "
                f"a version effective {effective_from.isoformat()} would re-rate it"
            )
        cur = await conn.execute(
            "insert into tariff_versions (tariff_id, effective_from, definition, created_at, created_by)"
            " values (%s, %s, %s, %s, %s) on conflict (tariff_id, effective_from) do nothing returning created_at",
            (tariff_id, effective_from, Jsonb(version.definition.model_dump(mode="json")), now, created_by),
        )
        if await cur.fetchone() is None:
            raise Conflict(f"tariff {tariff_id} already has a version effective {effective_from.isoformat()}")
    return TariffVersionInfo(tariff_id, effective_from, version.definition.model_dump(mode="json"), created_by, now)


async def list_tariff_versions(conn: AsyncConnection[Any], tariff_id: str) -> list[TariffVersionInfo]:
    cur = await conn.execute(
        "select tariff_id, effective_from, definition, created_by, created_at from tariff_versions"
        " where tariff_id = %s order by effective_from",
        (tariff_id,),
    )
    return [TariffVersionInfo(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]


async def add_debt(
    conn: AsyncConnection[Any],
    *,
    account_id: str,
    kind: str,
    amount_minor: int,
    reference: str | None,
    now: datetime,
) -> int:
    """Record arrears on an account (e.g. migrated arrears, previous occupant's debt)."""
    if amount_minor <= 0:
        raise InvalidRequest("amount_minor must be positive")
    if kind not in ("arrears", "previous_occupant", "adjustment", "friendly_credit"):
        raise InvalidRequest(f"unknown debt kind {kind!r}")
    await _account(conn, account_id)
    async with conn.transaction():
        cur = await conn.execute(
            "insert into debts (account_id, kind, original_minor, outstanding_minor, created_at, reference)"
            " values (%s, %s, %s, %s, %s, %s) returning id",
            (account_id, kind, amount_minor, amount_minor, now, reference),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


# --- installment plans -------------------------------------------------------------


def split_installments(total_minor: int, count: int) -> list[int]:
    """Equal parts in whole minor units; the first ``total % count`` carry one more."""
    base, extra = divmod(total_minor, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


async def create_installment_plan(
    conn: AsyncConnection[Any],
    *,
    account_id: str,
    period_start: datetime,
    period_end: datetime,
    count: int,
    first_due: datetime,
    every_days: int = 30,
    created_by: str | None,
    now: datetime,
) -> InstallmentPlan:
    """Split the account's charges of [period_start, period_end) into ``count`` dated installments."""
    if not 1 <= count <= 60:
        raise InvalidRequest("count must be 1..60")
    if period_end <= period_start:
        raise InvalidRequest("period_end must be after period_start")
    await _account(conn, account_id)
    async with conn.transaction():
        cur = await conn.execute(
            "select coalesce(-sum(amount_minor), 0) from ledger_entries where account_id = %s and kind = any(%s)"
            " and coalesce(period_start, posted_at) >= %s and coalesce(period_start, posted_at) < %s",
            (account_id, list(CHARGE_KINDS), period_start, period_end),
        )
        total = int((await cur.fetchone() or (0,))[0])
        if total <= 0:
            raise InvalidRequest("no charges in that period")
        cur = await conn.execute(
            "insert into installment_plans (account_id, period_start, period_end, total_minor, created_at, created_by)"
            " values (%s, %s, %s, %s, %s, %s) on conflict (account_id, period_start, period_end) do nothing"
            " returning id",
            (account_id, period_start, period_end, total, now, created_by),
        )
        row = await cur.fetchone()
        if row is None:
            raise Conflict(f"account {account_id} already has a plan for that period")
        plan_id = int(row[0])
        parts = split_installments(total, count)
        await conn.execute(
            "insert into installments (plan_id, seq, due_at, amount_minor)"
            " select %s, u.s, u.d, u.a from unnest(%s::int[], %s::timestamptz[], %s::bigint[]) u(s, d, a)",
            (
                plan_id,
                list(range(1, count + 1)),
                [first_due + timedelta(days=every_days * i) for i in range(count)],
                parts,
            ),
        )
    plans = await list_installment_plans(conn, account_id, now)
    return next(p for p in plans if p.id == plan_id)


def plan_state(stored: str, installments: list[Installment], now: datetime) -> str:
    if stored in ("completed", "cancelled"):
        return stored
    if all(i.paid_minor >= i.amount_minor for i in installments):
        return "completed"
    if any(i.due_at < now and i.paid_minor < i.amount_minor for i in installments):
        return "missed"
    return "good_standing"


async def list_installment_plans(conn: AsyncConnection[Any], account_id: str, now: datetime) -> list[InstallmentPlan]:
    """The account's plans; ``missed`` when an installment is past due and unpaid at ``now``."""
    cur = await conn.execute(
        "select p.id, p.account_id, p.period_start, p.period_end, p.total_minor, p.state,"
        " i.seq, i.due_at, i.amount_minor, i.paid_minor, i.paid_at"
        " from installment_plans p join installments i on i.plan_id = p.id"
        " where p.account_id = %s order by p.id, i.seq",
        (account_id,),
    )
    grouped: dict[int, tuple[tuple[Any, ...], list[Installment]]] = {}
    for r in await cur.fetchall():
        head, items = grouped.setdefault(int(r[0]), (tuple(r[:6]), []))
        items.append(Installment(int(r[6]), r[7], int(r[8]), int(r[9]), r[10]))
    out = []
    for plan_id, (head, items) in grouped.items():
        out.append(
            InstallmentPlan(
                id=plan_id,
                account_id=head[1],
                period_start=head[2],
                period_end=head[3],
                total_minor=int(head[4]),
                paid_minor=sum(i.paid_minor for i in items),
                state=plan_state(head[5], items, now),
                installments=items,
            )
        )
    return out


async def pay_installment(
    conn: AsyncConnection[Any], *, plan_id: int, channel: str, reference: str, amount_minor: int, now: datetime
) -> InstallmentPlan:
    """Pay towards a plan (credits the balance; applied to installments in due order).
    Idempotent on (channel, reference)."""
    if amount_minor <= 0:
        raise InvalidRequest("amount_minor must be positive")
    if channel not in CHANNELS:
        raise InvalidRequest(f"unknown channel {channel!r}")
    async with conn.transaction():
        cur = await conn.execute("select account_id from installment_plans where id = %s for update", (plan_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"installment plan {plan_id} not found")
        account_id = row[0]
        ref = f"{channel}:{reference}"
        posted = await post_entries(
            conn, [Posting(account_id, "installment_payment", amount_minor, ref, detail={"plan_id": plan_id})], now
        )
        if posted.entry_ids[0] is not None:
            cur = await conn.execute(
                "select seq, amount_minor - paid_minor from installments where plan_id = %s"
                " and paid_minor < amount_minor order by seq",
                (plan_id,),
            )
            left = amount_minor
            for seq, due in await cur.fetchall():
                if left <= 0:
                    break
                pay = min(left, int(due))
                left -= pay
                await conn.execute(
                    "update installments set paid_minor = paid_minor + %s,"
                    " paid_at = case when paid_minor + %s >= amount_minor then %s else paid_at end"
                    " where plan_id = %s and seq = %s",
                    (pay, pay, now, plan_id, seq),
                )
            await conn.execute(
                "update installment_plans p set state = 'completed' where id = %s and not exists"
                " (select 1 from installments i where i.plan_id = p.id and i.paid_minor < i.amount_minor)",
                (plan_id,),
            )
    plans = await list_installment_plans(conn, account_id, now)
    return next(p for p in plans if p.id == plan_id)
