"""The debit engine's batch: claim queued readings, bill them, post, delete — one transaction.

``bill_batch(conn, limit=..., now=...)`` is one transaction:

1. claim up to ``limit`` billing_queue rows ``FOR UPDATE SKIP LOCKED`` whose meter
   has no billing hold (several engines can run side by side);
2. lock the meters' billing_state rows (id order), re-check holds;
3. bill each meter with the pure ``billing.bill_meter`` (numpy pricing over its
   complete intervals, versions by effective date, the service point's calendar);
4. post one ``consumption`` entry per meter and everything that follows
   (posting.post_entries: balances with one UPDATE, credit state, events, notices);
5. insert the interval charges, update billing_state, delete the claimed rows.

A crash before commit loses nothing (the rows stay queued); after commit nothing
is posted twice (the rows are gone and the watermark moved). A meter that shows a
register decrease or an impossible advance gets ``meters.billing_hold`` set; its
rows from that reading on stay queued until ``operations.resolve_billing_hold``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from prepaid import billing, store
from prepaid.credit import CreditPolicy
from prepaid.errors import TariffError
from prepaid.posting import Posting, calendar_for, post_entries
from prepaid.pricing import INTERVAL_S, Priced, TierState
from prepaid.tariffs import Version, compile_version

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_ACCOUNT_TARIFF = [compile_version(_EPOCH, {"kind": "flat", "price_per_kwh": "0"})]


class VersionCache:
    """Compiled tariff versions; a version is never edited, so (tariff, effective_from) is a key."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, datetime], Version] = {}

    async def load(self, conn: AsyncConnection[Any], tariff_ids: list[str]) -> dict[str, list[Version]]:
        out: dict[str, list[Version]] = {t: [] for t in tariff_ids}
        if not tariff_ids:
            return out
        cur = await conn.execute(
            "select tariff_id, effective_from, definition from tariff_versions"
            " where tariff_id = any(%s) order by tariff_id, effective_from",
            (tariff_ids,),
        )
        return self.from_rows(await cur.fetchall(), tariff_ids)

    def from_rows(self, rows: list[tuple[Any, ...]], tariff_ids: list[str]) -> dict[str, list[Version]]:
        """The versions of ``tariff_ids`` from tariff_versions rows ordered by (tariff, effective_from)."""
        out: dict[str, list[Version]] = {t: [] for t in tariff_ids}
        for tariff_id, effective_from, definition in rows:
            if tariff_id not in out:
                continue
            key = (tariff_id, effective_from)
            if key not in self._compiled:
                self._compiled[key] = compile_version(effective_from, definition)
            out[tariff_id].append(self._compiled[key])
        return out


@dataclass(frozen=True)
class _Item:
    meter_id: str
    account_id: str | None
    state: billing.MeterState
    readings: list[tuple[int, float]]
    spec: billing.MeterSpec


@dataclass
class BatchResult:
    claimed_ids: list[int] = field(default_factory=list)
    deleted: int = 0
    meters: int = 0
    intervals: int = 0
    debit_minor: int = 0
    holds: dict[str, str] = field(default_factory=dict)
    event_ids: list[int] = field(default_factory=list)
    late: int = 0  # rows at or before the meter's billed watermark: ignored (deleted), energy already covered


# advisory lock namespace of prepaid's per-meter billing locks (two-key form: (namespace, hashtext(meter_id)))
METER_LOCK_NS = 0x5052_4550  # "PREP"

_CLAIM_SQL = """
with cand as materialized (
    select w.meter_id, min(w.id) as first_id from (
        select q.id, q.meter_id from billing_queue q
        where not exists (select 1 from meters m where m.id = q.meter_id and m.billing_hold is not null)
          and (%(n)s = 1 or (hashtext(q.meter_id) & 2147483647) %% %(n)s = %(i)s)
        order by q.id limit %(limit)s
    ) w group by w.meter_id
), mine as materialized (
    select c.meter_id from cand c where pg_try_advisory_xact_lock(%(ns)s, hashtext(c.meter_id))
)
select q.id, q.meter_id, floor(extract(epoch from q.ts))::bigint, q.energy_wh
from billing_queue q join mine using (meter_id)
order by q.meter_id, q.ts, q.id
limit %(cap)s
for update of q
"""


async def _claim(
    conn: AsyncConnection[Any], limit: int, partition: tuple[int, int] | None
) -> list[tuple[int, str, int, float]]:
    """Claim whole meters, not rows: the meters of the oldest ``limit`` queued rows (of this
    partition) that no other transaction holds (pg_try_advisory_xact_lock, never waits), and
    all their queued rows in ts order (at most 2 x limit; a cut leaves a meter's newest rows).

    One statement, one round trip. Rows another batch deleted after this statement's snapshot
    are skipped by FOR UPDATE (read committed re-check), and billing_state is read by the next
    statement, after the meter lock is held, so it always sees the committed watermark.
    """
    i, n = partition if partition is not None else (0, 1)
    cur = await conn.execute(_CLAIM_SQL, {"n": n, "i": i, "limit": limit, "ns": METER_LOCK_NS, "cap": 2 * limit})
    return [(int(r[0]), r[1], int(r[2]), float(r[3])) for r in await cur.fetchall()]


def _ts(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


_STATES_SQL = (
    "select bs.meter_id, m.register_max_wh, m.rated_current_a::float8, m.nominal_voltage_v::float8, m.phases,"
    " m.billing_hold, a.id, a.tariff_id, sp.timezone, sp.country, sp.subdivision,"
    " floor(extract(epoch from bs.last_ts))::bigint, bs.last_register_wh,"
    " floor(extract(epoch from bs.pending_start))::bigint, bs.pending_wh, bs.residual_micro,"
    " bs.tier_period, bs.tier_used_wh, floor(extract(epoch from bs.rebaseline_at))::bigint"
    " from billing_state bs join meters m on m.id = bs.meter_id"
    " left join service_points sp on sp.id = m.service_point_id"
    " left join accounts a on a.service_point_id = m.service_point_id and a.status = 'open'"
    " where bs.meter_id = any(%s) order by bs.meter_id for update of bs"
)


async def _states(conn: AsyncConnection[Any], meter_ids: list[str]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(_STATES_SQL, (meter_ids,))
    return [tuple(r) for r in await cur.fetchall()]


async def bill_batch(
    conn: AsyncConnection[Any],
    *,
    now: datetime,
    limit: int = 2000,
    versions: VersionCache | None = None,
    interval_s: int = INTERVAL_S,
    partition: tuple[int, int] | None = None,
) -> BatchResult:
    """Bill one batch; ``partition=(i, n)`` takes only meters whose hash is i modulo n.

    Per-meter order holds across workers and processes: a batch owns its meters (an
    advisory lock per meter, held to commit) and takes their queued rows in ``ts`` order.
    """
    versions = versions or VersionCache()
    result = BatchResult()
    async with conn.transaction():
        claimed = await _claim(conn, limit, partition)
        if not claimed:
            return result
        result.claimed_ids = [int(r[0]) for r in claimed]
        by_meter: dict[str, list[tuple[int, int, float]]] = {}
        for qid, meter_id, ts, energy in claimed:
            by_meter.setdefault(meter_id, []).append((qid, ts, energy))
        meter_ids = sorted(by_meter)
        # billing_state rows: read and lock them (meter-id order); create the missing ones
        # (a meter's first reading) only when there are any, then read those too
        # one round trip (pipeline): the meters' states, every tariff version, the credit policies
        async with conn.pipeline():
            c_states = await conn.execute(_STATES_SQL, (meter_ids,))
            c_versions = await conn.execute(
                "select tariff_id, effective_from, definition from tariff_versions order by tariff_id, effective_from"
            )
            c_policies = await conn.execute("select name, definition from prepaid_policies")
        rows = [tuple(r) for r in await c_states.fetchall()]
        version_rows = await c_versions.fetchall()
        policies = {name: CreditPolicy.model_validate(d) for name, d in await c_policies.fetchall()}
        missing = sorted(set(meter_ids) - {r[0] for r in rows})
        if missing:
            await conn.execute(
                "insert into billing_state (meter_id) select m.id from meters m where m.id = any(%s)"
                " on conflict (meter_id) do nothing",
                (missing,),
            )
            rows = sorted(rows + await _states(conn, missing), key=lambda r: str(r[0]))
        unknown = set(meter_ids) - {r[0] for r in rows}
        tariffs = versions.from_rows(version_rows, sorted({r[7] for r in rows if r[7]}))

        # rows of a meter that does not exist go to quarantine (with reason), not silently away
        delete_ids: list[int] = [qid for m in unknown for qid, _, _ in by_meter[m]]
        if unknown:
            logger.warning("billing_queue rows for unknown meters quarantined: %s", sorted(unknown))
            await conn.execute(
                "insert into quarantine (source, meter_id, payload, reason)"
                " select 'prepaid', q.meter_id, convert_to(json_build_object('billing_queue_id', q.id, 'ts', q.ts,"
                " 'energy_wh', q.energy_wh)::text, 'UTF8'), 'billing: unknown meter'"
                " from billing_queue q where q.id = any(%s)",
                (delete_ids,),
            )
        # group meters by (tariff, calendar): each group is priced in one numpy pass
        groups: dict[tuple[str, str, str, str | None], list[_Item]] = {}
        for r in rows:
            meter_id, account_id, tariff_id = r[0], r[6], r[7]
            if r[5] is not None:
                continue  # hold set after the claim: leave the rows queued
            if account_id is not None and not tariff_id:
                result.holds[meter_id] = "no_tariff"
                continue
            state = billing.MeterState(
                last_ts_s=r[11],
                last_register_wh=r[12],
                pending_start_s=r[13],
                pending_wh=int(r[14]),
                residual_micro=int(r[15]),
                tier=TierState(r[16], int(r[17])),
                rebaseline_at_s=r[18],
            )
            spec = billing.MeterSpec(r[1], r[2], r[3], r[4])
            readings = [(ts, value) for _, ts, value in by_meter[meter_id]]
            if state.last_ts_s is not None:
                result.late += sum(1 for ts, _ in readings if ts <= state.last_ts_s)
            key = (tariff_id if account_id is not None else "", r[8] or "UTC", r[9] or "CN", r[10])
            groups.setdefault(key, []).append(_Item(meter_id, account_id, state, readings, spec))

        bills: list[tuple[str, str | None, billing.MeterBill]] = []
        for (tariff_id, tz, country, subdiv), items in groups.items():
            calendar = calendar_for(tz, country, subdiv)
            vs = tariffs.get(tariff_id, []) if tariff_id else NO_ACCOUNT_TARIFF
            try:
                group_bills = billing.bill_many(
                    [(i.state, i.readings, i.spec) for i in items], vs, calendar, interval_s
                )[0]
                billed = list(zip(items, group_bills, strict=True))
            except TariffError:
                billed = []
                for item in items:  # find the meters the tariff cannot price; the others go on
                    try:
                        one = billing.bill_meter(item.state, item.readings, vs, calendar, item.spec, interval_s)
                    except TariffError as exc:
                        logger.warning("meter %s: %s; billing held", item.meter_id, exc)
                        result.holds[item.meter_id] = "tariff_error"
                        continue
                    billed.append((item, one))
            for item, bill in billed:
                if bill.hold is not None:
                    result.holds[item.meter_id] = bill.hold
                cutoff = bill.hold_ts_s
                delete_ids += [qid for qid, ts, _ in by_meter[item.meter_id] if cutoff is None or ts < cutoff]
                bills.append((item.meter_id, item.account_id, bill))

        writes: list[tuple[str, Any]] = []  # executed together at the end
        postings: list[Posting] = []
        posting_of: list[int] = []
        for i, (meter_id, account_id, bill) in enumerate(bills):
            if account_id is None or bill.rows == 0:
                continue
            postings.append(
                Posting(
                    account_id=account_id,
                    kind="consumption",
                    amount_minor=-bill.debit_minor,
                    meter_id=meter_id,
                    period_start=_ts(bill.period_start_s),
                    period_end=_ts(bill.period_end_s),
                    detail={"energy_wh": int(bill.group.energy_wh[bill.lo : bill.hi].sum()), "intervals": bill.rows},
                )
            )
            posting_of.append(i)
        if postings:
            posted = await post_entries(conn, postings, now, policies=policies)
            result.event_ids = posted.event_ids
            # the charge rows are taken straight from each group's arrays: per group, every
            # row gets its meter's ledger entry (or -1 when the meter posted nothing)
            entry_of = [-1] * len(bills)
            after_of = [0] * len(bills)
            for i, entry_id, after in zip(posting_of, posted.entry_ids, posted.balances_after, strict=True):
                entry_of[i] = entry_id if entry_id is not None else -1
                after_of[i] = after if after is not None else 0
            by_group: dict[int, tuple[Priced, list[int]]] = {}
            for i, (_, _, bill) in enumerate(bills):
                by_group.setdefault(id(bill.group), (bill.group, []))[1].append(i)
            cols: list[list[Any]] = [[] for _ in range(11)]
            for group, members in by_group.values():
                counts = [bills[i][2].rows for i in members]
                entry_row = np.repeat(np.array([entry_of[i] for i in members], np.int64), counts)
                keep = entry_row >= 0
                if not keep.any():
                    continue
                cols[0] += np.repeat(np.array([bills[i][0] for i in members], dtype=object), counts)[keep].tolist()
                cols[1] += np.repeat(np.array([bills[i][1] for i in members], dtype=object), counts)[keep].tolist()
                cols[2] += group.start_s[keep].tolist()
                cols[3] += group.block[keep].tolist()
                cols[4] += np.array(group.label, dtype=object)[keep].tolist()
                cols[5] += group.energy_wh[keep].tolist()
                cols[6] += group.rate_micro[keep].tolist()
                cols[7] += group.amount_micro[keep].tolist()
                cols[8] += group.version_from_s[keep].tolist()
                cols[9] += entry_row[keep].tolist()
                cols[10] += np.repeat(np.array([after_of[i] for i in members], np.int64), counts)[keep].tolist()
            result.intervals = len(cols[0])
            result.debit_minor = sum(bills[i][2].debit_minor for i in posting_of)
            charges = cols
            writes.append(
                (
                    "insert into interval_charges (meter_id, account_id, interval_start, block, label, energy_wh,"
                    " rate_micro, amount_micro, tariff_from, ledger_entry_id, balance_after_minor)"
                    " select u.m, u.a, to_timestamp(u.s), u.b, u.l, u.e, u.r, u.amt, to_timestamp(u.f), u.le, u.ba"
                    " from unnest(%s::text[], %s::text[], %s::float8[], %s::smallint[], %s::text[], %s::bigint[],"
                    " %s::bigint[], %s::bigint[], %s::float8[], %s::bigint[], %s::bigint[])"
                    " u(m, a, s, b, l, e, r, amt, f, le, ba)",
                    [
                        store.texts(charges[0]),
                        store.texts(charges[1]),
                        store.ints(charges[2]),
                        store.ints(charges[3]),
                        store.texts(charges[4]),
                        store.ints(charges[5]),
                        store.ints(charges[6]),
                        store.ints(charges[7]),
                        store.ints(charges[8]),
                        store.ints(charges[9]),
                        store.ints(charges[10]),
                    ],
                )
            )
        if bills:
            st = [b.state for _, _, b in bills]
            writes.append(
                (
                    "update billing_state bs set last_ts = to_timestamp(u.lt), last_register_wh = u.lr,"
                    " pending_start = to_timestamp(u.ps), pending_wh = u.pw, residual_micro = u.rm,"
                    " tier_period = u.tp, tier_used_wh = u.tu, rebaseline_at = to_timestamp(u.rb), updated_at = %s"
                    " from unnest(%s::text[], %s::float8[], %s::bigint[], %s::float8[], %s::bigint[],"
                    " %s::bigint[], %s::integer[], %s::bigint[], %s::float8[]) u(m, lt, lr, ps, pw, rm, tp, tu, rb)"
                    " where bs.meter_id = u.m",
                    (
                        now,
                        store.texts(m for m, _, _ in bills),
                        store.ints(s.last_ts_s for s in st),
                        store.ints(s.last_register_wh for s in st),
                        store.ints(s.pending_start_s for s in st),
                        store.ints(s.pending_wh for s in st),
                        store.ints(s.residual_micro for s in st),
                        store.ints(s.tier.period for s in st),
                        store.ints(s.tier.used_wh for s in st),
                        store.ints(s.rebaseline_at_s for s in st),
                    ),
                )
            )
        if result.holds:
            writes += _hold(result.holds, {m: b.hold_ts_s for m, _, b in bills}, now)
        if delete_ids:
            writes.append(("delete from billing_queue where id = any(%s)", (delete_ids,)))
        # the batch's writes go in one round trip (pipeline); errors surface at its end
        async with conn.pipeline():
            curs = [await conn.execute(q, params) for q, params in writes]
        if delete_ids:
            result.deleted = curs[-1].rowcount
        result.meters = len(bills)
    return result


def _hold(holds: dict[str, str], hold_ts: dict[str, int | None], now: datetime) -> list[tuple[str, Any]]:
    """The statements that set the holds and record them as meter events."""
    for meter_id, reason in holds.items():
        logger.warning("billing held for meter %s: %s", meter_id, reason)
    return [
        (
            "update meters m set billing_hold = u.r from unnest(%b::text[], %b::text[]) u(id, r)"
            " where m.id = u.id and m.billing_hold is null",
            (list(holds), list(holds.values())),
        ),
        (
            "insert into meter_events (meter_id, ts, kind, detail, source)"
            " select u.id, u.ts, u.r, %s, 'prepaid' from unnest(%b::text[], %b::timestamptz[], %b::text[]) u(id, ts, r)"
            " on conflict do nothing",
            (
                Jsonb({"detected_by": "prepaid billing"}),
                list(holds),
                [_ts(hold_ts.get(m)) or now for m in holds],
                list(holds.values()),
            ),
        ),
    ]
