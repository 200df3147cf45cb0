"""Two engines on one queue bill each meter's readings in ts order, as one engine would.

Readings of one meter arrive interleaved (each round's rows enqueued newest first, so
queue ids run against time) while two engines (two connections = two sessions, as two
processes) bill concurrently with tiny batches. The interval charges must be exactly
those a single engine writes for the same readings in one batch: under a TOU tariff
with readings off the interval grid, billing a later reading before an earlier one
would allocate the advance differently and change the rows.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from prepaid.engine import METER_LOCK_NS, VersionCache, bill_batch
from tests.integration.prepaid.conftest import T0, enqueue, setup_account

NOW = datetime(2026, 3, 10, tzinfo=UTC)
TOU = {
    "kind": "tou",
    "currency": "CNY",
    "bands": [
        {"name": "peak", "start": "08:00", "end": "22:00", "price_per_kwh": "0.6173"},
        {"name": "valley", "start": "22:00", "end": "08:00", "price_per_kwh": "0.3073"},
    ],
}


def series(seed: int, n: int) -> list[tuple[datetime, float]]:
    """Readings every 7-53 minutes, off the 15-minute grid, with uneven advances."""
    rnd = random.Random(seed)
    t = datetime(2026, 3, 2, 6, 3, tzinfo=UTC)
    reg = 1_000_000.0
    out = [(t, reg)]
    for _ in range(n - 1):
        t += timedelta(minutes=rnd.randint(7, 53), seconds=rnd.randint(0, 59))
        reg += rnd.randint(0, 900)
        out.append((t, reg))
    return out


def charges(db_url: str, meter: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "select interval_start, block, label, energy_wh, rate_micro, amount_micro from interval_charges"
            " where meter_id = %s order by interval_start, block",
            (meter,),
        ).fetchall()


def balance(db_url: str, account: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("select balance_minor from accounts where id = %s", (account,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_two_engines_allocate_a_meter_as_one_engine_would(db_url: str) -> None:
    setup_account(db_url, account="A1", meter="M1", balance_minor=100_000, versions=[(T0, TOU)])
    setup_account(db_url, account="A2", meter="M2", balance_minor=100_000, versions=[(T0, TOU)])
    readings = series(7, 60)
    cache_a, cache_b = VersionCache(), VersionCache()
    holds: dict[str, str] = {}
    async with (
        await psycopg.AsyncConnection.connect(db_url) as a,
        await psycopg.AsyncConnection.connect(db_url) as b,
    ):
        for r in range(0, len(readings), 6):
            # newest first: queue ids run against time inside each round
            for reading in reversed(readings[r : r + 6]):
                enqueue(db_url, "M1", [reading])
            for _ in range(20):
                ra, rb = await asyncio.gather(
                    bill_batch(a, now=NOW, limit=2, versions=cache_a),
                    bill_batch(b, now=NOW, limit=2, versions=cache_b),
                )
                holds |= ra.holds | rb.holds
                assert ra.late == rb.late == 0  # nothing billed out of order, so nothing left behind
                if not ra.claimed_ids and not rb.claimed_ids:
                    break
        # the reference: one engine, every reading in one batch
        enqueue(db_url, "M2", readings)
        r2 = await bill_batch(a, now=NOW, limit=1000, versions=cache_a)
        assert len(r2.claimed_ids) == len(readings)
    assert holds == {}
    one = charges(db_url, "M2")
    two = charges(db_url, "M1")
    assert len(one) > 100
    assert {row[2] for row in one} == {"peak", "valley"}
    assert two == one
    assert balance(db_url, "A1") == balance(db_url, "A2") < 100_000
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select count(*) from billing_queue").fetchone() == (0,)


async def test_a_meter_held_by_another_transaction_is_skipped_not_waited_for(db_url: str) -> None:
    setup_account(db_url, account="A1", meter="M1", balance_minor=100_000, versions=[(T0, TOU)])
    setup_account(db_url, account="A2", meter="M2", balance_minor=100_000, versions=[(T0, TOU)])
    enqueue(db_url, "M1", series(1, 5))
    enqueue(db_url, "M2", series(2, 5))
    async with (
        await psycopg.AsyncConnection.connect(db_url) as holder,
        await psycopg.AsyncConnection.connect(db_url) as engine,
    ):
        # another engine (process) is billing M1: it holds M1's advisory lock until it commits
        await holder.execute("select pg_advisory_xact_lock(%s, hashtext('M1'))", (METER_LOCK_NS,))
        r = await asyncio.wait_for(bill_batch(engine, now=NOW, limit=100), timeout=10)
        billed = await (await engine.execute("select distinct meter_id from interval_charges")).fetchall()
        assert billed == [("M2",)]
        assert len(r.claimed_ids) == 5
        await holder.rollback()
        r = await bill_batch(engine, now=NOW, limit=100)
        assert len(r.claimed_ids) == 5
    assert len(charges(db_url, "M1")) > 0


async def test_a_late_reading_below_the_watermark_is_ignored_and_counted(db_url: str) -> None:
    setup_account(db_url, account="A1", meter="M1", balance_minor=100_000, versions=[(T0, TOU)])
    rs = series(3, 8)
    enqueue(db_url, "M1", rs[:3] + rs[4:])
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await bill_batch(conn, now=NOW, limit=100)
        before = charges(db_url, "M1")
        enqueue(db_url, "M1", [rs[3]])  # arrives after a later reading was billed
        r = await bill_batch(conn, now=NOW, limit=100)
    assert r.late == 1 and r.deleted == 1
    assert charges(db_url, "M1") == before  # the documented rule: the advance already covered it
