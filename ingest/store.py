"""The batch writer: one transaction per batch, set-wise, never a round trip per row.

For a batch of items (decoded messages or Modbus polls):

1. readings are COPYed (binary) into a temp staging table, then
   ``INSERT INTO readings SELECT ... ON CONFLICT DO NOTHING RETURNING``: the
   rows that were really new come back. In the same statement the new
   ``1-0:1.8.0`` rows go into ``billing_queue`` (CONTRACTS: ingest -> prepaid),
   so each reading is billed exactly once across crashes and redelivery;
2. every newly adjacent pair of import-register readings (found with one
   windowed query per batch) is judged by ``ingest.validation``: rollover, reset,
   spike (event + ``meters.billing_hold``) and gap (event + re-read request);
   gaps that later readings filled get ``filled_at`` in their detail;
3. events (decoded + findings) are COPYed and inserted ``ON CONFLICT DO NOTHING``;
4. anything not accepted goes to ``quarantine`` with its raw bytes, topic and reason;
5. ``meters.last_seen_at`` / ``comms_state`` are refreshed (at most once a minute
   per meter), and ``pg_notify('billing')`` is issued inside the transaction, so
   it is delivered at commit and only if the rows were committed.

The caller acknowledges the batch's messages only after :meth:`BatchWriter.write` returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from headend.backoff import delays
from ingest.models import Event, Item, MeterDirectory, MeterInfo, Reading
from ingest.validation import Finding, Pair, assess_all, split_future, split_future_events

logger = logging.getLogger(__name__)

_STAGE = """
create temp table if not exists ingest_stage (
    meter_id text, obis text, ts timestamptz, value double precision, source text) on commit delete rows;
create temp table if not exists ingest_new (meter_id text, ts timestamptz, value double precision)
    on commit delete rows;
create temp table if not exists ingest_stage_events (
    meter_id text, ts timestamptz, kind text, detail jsonb, source text) on commit delete rows;
"""

_INSERT_READINGS = """
with ins as (
    insert into readings (meter_id, obis, ts, value, source)
    select meter_id, obis, ts, value, source from ingest_stage
    on conflict do nothing
    returning meter_id, obis, ts, value
), imp as (
    insert into ingest_new (meter_id, ts, value)
    select meter_id, ts, value from ins where obis = '1-0:1.8.0'
), bq as (
    insert into billing_queue (meter_id, ts, energy_wh)
    select meter_id, ts, value from ins where obis = '1-0:1.8.0'
)
select count(*), count(*) filter (where obis = '1-0:1.8.0') from ins
"""

# Every adjacent pair of import readings that involves at least one new row. Per meter
# with new rows: the window from the reading before its earliest new row to the reading
# after its latest one, read with one index range scan (lateral), then lag() over it.
_PAIRS = """
with b as materialized (
    select meter_id, min(ts) as lo, max(ts) as hi from ingest_new group by meter_id
), w as materialized (
    select b.meter_id,
        coalesce((select max(r.ts) from readings r
                  where r.meter_id = b.meter_id and r.obis = '1-0:1.8.0' and r.ts < b.lo), b.lo) as lo,
        coalesce((select min(r.ts) from readings r
                  where r.meter_id = b.meter_id and r.obis = '1-0:1.8.0' and r.ts > b.hi), b.hi) as hi
    from b
), s as (
    select r.meter_id, r.ts, r.value, (n.ts is not null) as is_new,
        lag(r.ts) over x as prev_ts, lag(r.value) over x as prev_value,
        lag(n.ts is not null) over x as prev_new
    from w
    cross join lateral (
        select r.meter_id, r.ts, r.value from readings r
        where r.meter_id = w.meter_id and r.obis = '1-0:1.8.0' and r.ts between w.lo and w.hi
        offset 0  -- keep it a per-meter index range scan (never a scan of the whole chunk)
    ) r
    left join ingest_new n on n.meter_id = r.meter_id and n.ts = r.ts
    window x as (partition by r.meter_id order by r.ts)
)
select meter_id, prev_ts, prev_value, ts, value from s where prev_ts is not null and (is_new or prev_new)
"""

# A gap is filled when no step inside it is longer than its max_step_s any more.
_FILL_GAPS = """
update meter_events e set detail = e.detail || jsonb_build_object('filled_at', %(now)s::timestamptz)
where e.kind = 'gap' and e.meter_id = any(%(meters)s) and not (e.detail ? 'filled_at')
  and e.ts <= %(hi)s and (e.detail->>'to')::timestamptz >= %(lo)s
  and not exists (
    select 1 from (
        select r.ts - lag(r.ts) over (order by r.ts) as step
        from readings r
        where r.meter_id = e.meter_id and r.obis = '1-0:1.8.0'
          and r.ts between e.ts and (e.detail->>'to')::timestamptz
    ) s where s.step > make_interval(secs => (e.detail->>'max_step_s')::float8))
returning e.meter_id, e.ts
"""

# A repeat of (meter, OBIS, ts) is dropped; one that carries another value is recorded.
_CONFLICTS = """
select distinct on (s.meter_id, s.ts) s.meter_id, s.obis, s.ts, r.value, s.value
from ingest_stage s
join readings r on r.meter_id = s.meter_id and r.obis = s.obis and r.ts = s.ts
where r.value <> s.value
order by s.meter_id, s.ts, s.obis
"""

_INSERT_EVENTS = """
insert into meter_events (meter_id, ts, kind, detail, source)
select meter_id, ts, kind, detail, source from ingest_stage_events
on conflict do nothing
returning meter_id, kind
"""

_SEEN = """
update meters m set last_seen_at = %(now)s, comms_state = 'online'
from (select id, comms_state as old_state from meters
      where id = any(%(ids)s)
        and (last_seen_at is null or last_seen_at < %(now)s - interval '60 seconds' or comms_state <> 'online')
      order by id for update) o
where m.id = o.id
returning m.id, o.old_state
"""

# Two-key advisory locks in the ingest namespace 18766 (0x494E, "IN"), taken in ascending key order.
_LOCK = """
select count(pg_advisory_xact_lock(18766, k))
from (select k from unnest(%s::int[]) with ordinality as t(k, n) order by n) as keys
"""

_DIRECTORY = """
select m.id, coalesce(sp.timezone, 'UTC'), m.mqtt_topic, m.register_max_wh::float8, m.rated_current_a::float8,
       m.nominal_voltage_v::float8, m.phases, m.poll_interval_s, m.protocol
from meters m left join service_points sp on sp.id = m.service_point_id
"""


@dataclass
class WriteResult:
    readings_new: int = 0
    readings_offered: int = 0
    billing_rows: int = 0
    events_new: int = 0
    quarantined: int = 0
    findings: list[Finding] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (item index, reason), whole or part
    conflicts: list[Event] = field(default_factory=list)  # a repeat of a stored reading with another value
    gaps_filled: int = 0
    restored: list[str] = field(default_factory=list)  # meters whose comms came back

    @property
    def duplicates(self) -> int:
        return self.readings_offered - self.readings_new

    @property
    def rereads(self) -> list[Finding]:
        return [f for f in self.findings if f.reread]


async def load_directory(conn: psycopg.AsyncConnection[Any]) -> MeterDirectory:
    cur = await conn.execute(_DIRECTORY)
    rows = await cur.fetchall()
    return MeterDirectory.of(
        [
            MeterInfo(
                meter_id=r[0],
                timezone=r[1],
                mqtt_topic=r[2],
                register_max_wh=r[3],
                rated_current_a=r[4],
                nominal_voltage_v=r[5],
                phases=r[6],
                interval_s=r[7],
                protocol=r[8],
            )
            for r in rows
        ]
    )


def meter_lock_keys(meter_ids: set[str]) -> list[int]:
    """Sorted, distinct signed 32-bit keys of the meters' advisory locks."""
    return sorted({zlib.crc32(m.encode()) - 2**31 for m in meter_ids})


def _summary(rows: Sequence[Reading | Event], limit: int = 3) -> str:
    shown = ", ".join(f"{r.meter_id}@{r.ts.isoformat()}" for r in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


@dataclass(slots=True)
class _Plan:
    """What a batch becomes, before any SQL: accepted rows and quarantine rows."""

    readings: list[tuple[str, str, datetime, float, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    event_sources: list[str] = field(default_factory=list)
    quarantine: list[tuple[str, str | None, str | None, bytes, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (item index, reason)
    seen: set[str] = field(default_factory=set)


class BatchWriter:
    """Writes batches of items; keeps the meter directory (refreshed on a miss, rate-limited)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        future_tolerance_s: float = 300.0,
        gap_factor: float = 1.5,
        directory_min_age_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.future_tolerance_s = future_tolerance_s
        self.gap_factor = gap_factor
        self.directory_min_age_s = directory_min_age_s
        self.directory = MeterDirectory()
        self.interval_overrides: dict[str, float] = {}  # protocol -> interval_s used for gaps
        self._directory_at = float("-inf")

    async def refresh_directory(self, *, force: bool = False) -> bool:
        """Reload the meter directory unless it was loaded very recently. True if reloaded."""
        if not force and time.monotonic() - self._directory_at < self.directory_min_age_s:
            return False
        async with self.pool.connection() as conn:
            directory = await load_directory(conn)
        if self.interval_overrides:  # e.g. HEADEND_MODBUS_POLL_INTERVAL_S: gaps follow the real schedule
            directory = MeterDirectory.of(
                [
                    dataclasses.replace(m, interval_s=int(self.interval_overrides[m.protocol]))
                    if m.protocol in self.interval_overrides
                    else m
                    for m in directory.by_id.values()
                ]
            )
        self.directory = directory
        self._directory_at = time.monotonic()
        return True

    def _plan(self, items: Sequence[Item], now: datetime) -> _Plan:
        plan = _Plan()
        known = self.directory.by_id
        for index, item in enumerate(items):
            if item.decoded is None:
                plan.quarantine.append((item.source, item.topic, item.meter_id, item.payload, item.reason or "unknown"))
                plan.rejected.append((index, item.reason or "unknown"))
                continue
            reasons: list[str] = []
            unknown = sorted(m for m in item.decoded.meter_ids if m not in known)
            readings: list[Reading] = [r for r in item.decoded.readings if r.meter_id in known]
            events: list[Event] = [e for e in item.decoded.events if e.meter_id in known]
            if unknown:
                reasons.append("unknown_meter: " + ", ".join(unknown[:5]))
            readings, late = split_future(readings, now, self.future_tolerance_s)
            events, late_events = split_future_events(events, now, self.future_tolerance_s)
            if late or late_events:
                reasons.append("future_timestamp: " + _summary([*late, *late_events]))
            if reasons:
                meter = item.meter_id or (unknown[0] if unknown else None)
                plan.quarantine.append((item.source, item.topic, meter, item.payload, "; ".join(reasons)))
                plan.rejected.append((index, "; ".join(reasons)))
            for r in readings:
                plan.readings.append((r.meter_id, r.obis, r.ts, r.value, item.source))
                plan.seen.add(r.meter_id)
            for e in events:
                plan.events.append(e)
                plan.event_sources.append(item.source)
                plan.seen.add(e.meter_id)
        return plan

    async def write(self, items: Sequence[Item], now: datetime, *, quarantine: bool = True) -> WriteResult:
        """Write one batch in one transaction. Raises on database errors (nothing is committed).

        With ``quarantine=False`` (replay) rejected items are only reported in ``rejected``.
        """
        if any(
            item.decoded is not None and not item.decoded.meter_ids <= self.directory.by_id.keys() for item in items
        ):
            await self.refresh_directory()
        plan = self._plan(items, now)
        if not quarantine:
            plan.quarantine.clear()
        result = WriteResult(
            readings_offered=len(plan.readings), quarantined=len(plan.quarantine), rejected=plan.rejected
        )
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_STAGE)
            if plan.seen:
                # Serialise batches that touch the same meters (several collectors on a shared
                # subscription): the dedup and the neighbour-based validation then always see
                # the other batch's committed rows. One statement, keys in ascending order.
                await conn.execute(_LOCK, (meter_lock_keys(plan.seen),))
            cur = conn.cursor()
            if plan.readings:
                async with cur.copy(
                    "copy ingest_stage (meter_id, obis, ts, value, source) from stdin (format binary)"
                ) as copy:
                    copy.set_types(["text", "text", "timestamptz", "float8", "text"])
                    for row in plan.readings:
                        await copy.write_row(row)
                await cur.execute(_INSERT_READINGS)
                counts = await cur.fetchone()
                assert counts is not None
                result.readings_new, result.billing_rows = int(counts[0]), int(counts[1])
                if result.billing_rows:
                    await self._validate(cur, result, now)
                if result.readings_new < result.readings_offered:
                    await cur.execute(_CONFLICTS)
                    result.conflicts = [
                        Event(r[0], r[2], "reading_conflict", {"obis": r[1], "stored": r[3], "offered": r[4]})
                        for r in await cur.fetchall()
                    ]
            events = [(e, s) for e, s in zip(plan.events, plan.event_sources, strict=True)]
            events += [(e, "ingest") for e in result.conflicts]
            events += [(Event(f.meter_id, f.ts, f.kind, f.detail), "ingest") for f in result.findings]
            if events:
                async with cur.copy(
                    "copy ingest_stage_events (meter_id, ts, kind, detail, source) from stdin (format binary)"
                ) as copy:
                    copy.set_types(["text", "timestamptz", "text", "jsonb", "text"])
                    for e, source in events:
                        await copy.write_row((e.meter_id, e.ts, e.kind, Jsonb(e.detail), source))
                await cur.execute(_INSERT_EVENTS)
                result.events_new = len(await cur.fetchall())
            holds: dict[str, str] = {}
            for f in result.findings:
                if f.hold:
                    holds.setdefault(f.meter_id, f.kind)  # the first reason in time order wins
            if holds:
                await cur.execute(
                    "update meters m set billing_hold = coalesce(m.billing_hold, h.reason)"
                    " from unnest(%s::text[], %s::text[]) as h(id, reason) where m.id = h.id",
                    (list(holds), list(holds.values())),
                )
            if plan.quarantine:
                async with cur.copy(
                    "copy quarantine (source, topic, meter_id, payload, reason) from stdin (format binary)"
                ) as copy:
                    copy.set_types(["text", "text", "text", "bytea", "text"])
                    for q in plan.quarantine:
                        await copy.write_row(q)
            if plan.seen:
                await cur.execute(_SEEN, {"now": now, "ids": sorted(plan.seen)})
                changed = await cur.fetchall()
                result.restored = sorted(r[0] for r in changed if r[1] == "lost")
                if result.restored:
                    await cur.executemany(
                        "insert into meter_events (meter_id, ts, kind, detail, source)"
                        " values (%s, %s, 'comms_restored', '{}', 'ingest') on conflict do nothing",
                        [(m, now) for m in result.restored],
                    )
            if result.billing_rows:
                await cur.execute("select pg_notify('billing', %s)", (str(result.billing_rows),))
        return result

    async def _validate(self, cur: psycopg.AsyncCursor[Any], result: WriteResult, now: datetime) -> None:
        await cur.execute(_PAIRS)
        pairs = [Pair(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]
        result.findings = assess_all(pairs, self.directory.by_id, gap_factor=self.gap_factor)
        await cur.execute("select array_agg(distinct meter_id), min(ts), max(ts) from ingest_new")
        row = await cur.fetchone()
        if row and row[0]:
            await cur.execute(_FILL_GAPS, {"now": now, "meters": row[0], "lo": row[1], "hi": row[2]})
            result.gaps_filled = len(await cur.fetchall())


def utc_now() -> datetime:
    return datetime.now(UTC)


TRANSIENT = (psycopg.OperationalError, PoolTimeout)


async def write_resilient(writer: BatchWriter, items: Sequence[Item], clock: Callable[[], datetime]) -> WriteResult:
    """Write a batch; retry transient database errors with backoff (forever: nothing is acked meanwhile).

    A batch the database rejects for another reason is written item by item; an item
    that still fails is quarantined with reason ``store_error``.
    """
    waits = delays(0.2, 10.0)
    while True:
        try:
            return await writer.write(items, clock())
        except TRANSIENT as exc:
            wait = next(waits)
            logger.warning("database unavailable (%s); retrying the batch in %.1fs", exc, wait)
            await asyncio.sleep(wait)
        except psycopg.Error as exc:
            if len(items) == 1:
                item = items[0]
                logger.error("item from %s rejected by the database: %s", item.topic, exc)
                bad = Item(
                    item.source, item.topic, item.payload, reason=f"store_error: {exc}"[:500], meter_id=item.meter_id
                )
                return await writer.write([bad], clock())
            logger.error("batch rejected by the database (%s); writing item by item", exc)
            total = WriteResult()
            for item in items:
                one = await write_resilient(writer, [item], clock)
                total.readings_new += one.readings_new
                total.readings_offered += one.readings_offered
                total.billing_rows += one.billing_rows
                total.events_new += one.events_new
                total.quarantined += one.quarantined
                total.findings += one.findings
                total.restored += one.restored
            return total
