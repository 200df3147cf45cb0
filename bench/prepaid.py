"""Benchmark of the prepaid debit engine (prints figures; asserts nothing about speed).

1. paced: an ingest-like producer commits readings + billing_queue rows at a fixed
   rate (default 2000/s, ~1 reading per meter per batch) and NOTIFYs billing; the
   engine (prepaid.service.run_billing, in process) bills them. Latency = time from
   the reading's commit to the commit of the batch that debited it: p50 / p99.
2. saturation: a pre-filled queue is drained as fast as possible: debits/s.
3. statement: a one-year statement of one account (35,040 15-minute intervals).
4. machine ceiling, same run: single-row UPDATE commits/s (one round trip per
   balance) and set-wise UPDATE rows/s (one statement per batch of 2000), reported
   as the ratios the engine reaches.

    .venv/bin/python bench/prepaid.py [--meters 2000] [--rate 2000] [--seconds 12]

Bounded: about a minute with the defaults. Uses its own database, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Run as `python bench/prepaid.py`, this file's folder comes first on sys.path and
# would shadow the prepaid package: drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

from headend import db  # noqa: E402
from headend.clock import Clock  # noqa: E402
from prepaid.engine import BatchResult  # noqa: E402
from prepaid.operations import statement, statement_columns, statement_json  # noqa: E402
from prepaid.service import listen_billing, run_billing  # noqa: E402
from prepaid.settings import PrepaidSettings  # noqa: E402

BASE = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKERS = 2
BATCH = 2000
T0 = datetime(2026, 1, 5, tzinfo=UTC)
TOU = {
    "kind": "tou",
    "currency": "CNY",
    "standing_charge_per_day": "0.30",
    "bands": [
        {"name": "peak", "start": "08:00", "end": "22:00", "price_per_kwh": "0.6173"},
        {"name": "valley", "start": "22:00", "end": "08:00", "price_per_kwh": "0.3073"},
    ],
}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def setup(url: str, meters: int, balance: int = 0) -> None:
    import json

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into tariffs (id, name) values ('T', 'bench')")
        conn.execute(
            "insert into tariff_versions (tariff_id, effective_from, definition) values ('T', %s, %s)",
            (datetime(2025, 1, 1, tzinfo=UTC), json.dumps(TOU)),
        )
        conn.execute(
            "insert into service_points (id, feeder) select 'SP' || g, 'F' || (g %% 20) from generate_series(1, %s) g",
            (meters,),
        )
        conn.execute(
            "insert into meters (id, service_point_id) select 'M' || g, 'SP' || g from generate_series(1, %s) g",
            (meters,),
        )
        conn.execute(
            "insert into accounts (id, service_point_id, tariff_id, balance_minor)"
            " select 'A' || g, 'SP' || g, 'T', %s from generate_series(1, %s) g",
            (balance, meters),
        )


def produce(url: str, meters: int, rate: int, seconds: float, rounds0: int) -> tuple[int, dict[int, float]]:
    """Like ingest: commit `rate` readings/s (10 slices a second) as readings + billing_queue
    rows in one transaction each, then NOTIFY billing. Each meter advances 15 min a round.
    Runs in its own process (the engine must not slow the producer down). Returns the
    number sent and each queue row's commit time (time.time())."""
    ids = [f"M{i}" for i in range(1, meters + 1)]
    per_tick = max(1, rate // 10)
    sent = 0
    k = rounds0 * meters
    commits: dict[int, float] = {}
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            tick_start = time.perf_counter()
            rows = []
            for _ in range(per_tick):
                rnd, m = divmod(k, meters)
                rows.append((ids[m], T0 + timedelta(minutes=15 * rnd), 1_000_000.0 + 150.0 * rnd + m % 7))
                k += 1
            cols = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
            conn.execute(
                "insert into readings (meter_id, obis, ts, value)"
                " select u.m, '1-0:1.8.0', u.t, u.v from unnest(%s::text[], %s::timestamptz[], %s::float8[])"
                " u(m, t, v) on conflict do nothing",
                cols,
            )
            cur = conn.execute(
                "insert into billing_queue (meter_id, ts, energy_wh)"
                " select * from unnest(%s::text[], %s::timestamptz[], %s::float8[]) returning id",
                cols,
            )
            qids = [int(r[0]) for r in cur.fetchall()]
            conn.commit()
            done = time.time()
            conn.execute("notify billing")
            conn.commit()
            for q in qids:
                commits[q] = done
            sent += len(rows)
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - tick_start)))
    return sent, commits


async def engine_until(url: str, settings: PrepaidSettings, stop: asyncio.Event, on_batch: Any) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=settings.prepaid_workers + 1, open=False
    )
    await pool.open()
    wakes = [asyncio.Event() for _ in range(settings.prepaid_workers)]
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(listen_billing(url, wakes), name="bench-listen")]
            for i, wake in enumerate(wakes):
                tasks.append(
                    tg.create_task(
                        run_billing(pool, settings, Clock(), wake, on_batch, partition=(i, len(wakes))),
                        name=f"bench-billing-{i}",
                    )
                )
            await stop.wait()
            for t in tasks:
                t.cancel()
    finally:
        await pool.close()


async def queue_len(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("select count(*) from billing_queue")).fetchone()
        return int(row[0]) if row else 0


async def paced(url: str, meters: int, rate: int, seconds: float) -> dict[str, float]:
    settings = PrepaidSettings(database_url=url, prepaid_batch_size=BATCH, prepaid_poll_s=0.5, prepaid_workers=WORKERS)
    done_at: dict[int, float] = {}
    batches: list[int] = []

    def on_batch(r: BatchResult) -> None:
        done = time.time()
        batches.append(len(r.claimed_ids))
        for q in r.claimed_ids:
            done_at[q] = done

    stop = asyncio.Event()
    eng = asyncio.create_task(engine_until(url, settings, stop, on_batch))
    # warm-up, not measured: round 0 sets every meter's baseline (billing_state rows, caches)
    produce(url, meters, meters * 10, 0.05, 0)
    for _ in range(300):
        if not await queue_len(url):
            break
        await asyncio.sleep(0.1)
    done_at.clear()
    batches.clear()
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as ex:
        sent, commits = await asyncio.get_running_loop().run_in_executor(ex, produce, url, meters, rate, seconds, 1)
    elapsed = time.perf_counter() - t
    for _ in range(100):
        if not await queue_len(url):
            break
        await asyncio.sleep(0.1)
    stop.set()
    await eng
    latencies = [done_at[q] - c for q, c in commits.items() if q in done_at]
    by_commit = [done_at[q] - c for q, c in sorted(commits.items(), key=lambda kv: kv[1]) if q in done_at]
    third = max(1, len(by_commit) // 3)
    return {
        "p50_first_third_ms": pct(by_commit[:third], 0.5) * 1000,
        "p50_last_third_ms": pct(by_commit[-third:], 0.5) * 1000,
        "offered_per_s": sent / elapsed,
        "billed": len(latencies),
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "mean_batch": statistics.mean(batches) if batches else 0.0,
        "rounds": 1 + sent / meters,
    }


async def saturation(url: str, meters: int, rounds0: int, rounds: int) -> dict[str, float]:
    # pre-fill without an engine running: one slice of rounds * meters readings
    produce(url, meters, meters * 10 * rounds, 0.05, rounds0)
    queued = await queue_len(url)
    settings = PrepaidSettings(database_url=url, prepaid_batch_size=BATCH, prepaid_poll_s=0.2, prepaid_workers=WORKERS)
    rows: list[int] = []
    intervals: list[int] = []
    stop = asyncio.Event()

    def on_batch(r: BatchResult) -> None:
        rows.append(len(r.claimed_ids))
        intervals.append(r.intervals)

    t = time.perf_counter()
    eng = asyncio.create_task(engine_until(url, settings, stop, on_batch))
    while sum(rows) < queued:  # noqa: ASYNC110 - polling a counter the engine callback bumps
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t
    stop.set()
    await eng
    return {
        "rows": float(queued),
        "seconds": elapsed,
        "debits_per_s": sum(intervals) / elapsed,
        "readings_per_s": queued / elapsed,
    }


async def one_year_statement(url: str) -> dict[str, float]:
    """35,040 interval charges of one account (one ledger entry per day), then time statement()."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into service_points (id, feeder) values ('SPY', 'F0')")
        conn.execute("insert into meters (id, service_point_id) values ('MY', 'SPY')")
        conn.execute("insert into accounts (id, service_point_id, tariff_id) values ('AY', 'SPY', 'T')")
        conn.execute(
            "insert into ledger_entries (id, account_id, posted_at, kind, amount_minor, balance_after_minor)"
            " select 900000000 + d, 'AY', %s::timestamptz + d * interval '1 day', 'consumption', -500, -500 * (d + 1)"
            " from generate_series(0, 364) d",
            (T0,),
        )
        conn.execute(
            "insert into interval_charges (meter_id, account_id, interval_start, block, label, energy_wh,"
            " rate_micro, amount_micro, tariff_from, ledger_entry_id, balance_after_minor)"
            " select 'MY', 'AY', %s::timestamptz + g * interval '15 minutes', 0, 'peak', 125, 61730, 125 * 61730,"
            " %s, 900000000 + g / 96, -500 * (g / 96 + 1) from generate_series(0, 35039) g",
            (T0, T0),
        )
        conn.execute("analyze interval_charges")
    out: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for name, fn in (("rows", statement), ("columns", statement_columns), ("json", statement_json)):
            times = []
            for _ in range(7):
                t = time.perf_counter()
                st = await fn(conn, "AY", T0, T0 + timedelta(days=365))
                times.append(time.perf_counter() - t)
                await conn.commit()
            out[f"{name}_p50_ms"] = statistics.median(times) * 1000
            out[f"{name}_best_ms"] = min(times) * 1000
            if name == "columns":
                out["intervals"] = float(len(st))  # type: ignore[arg-type]
    return out


async def ceilings(url: str, meters: int) -> dict[str, float]:
    ids = [f"A{i}" for i in range(1, meters + 1)]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 2.0:
            await conn.execute(
                "update accounts set balance_minor = balance_minor - 1 where id = %s", (ids[n % meters],)
            )
            n += 1
        single = n / (time.perf_counter() - t)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 2.0:
            await conn.execute(
                "update accounts a set balance_minor = a.balance_minor - u.d"
                " from unnest(%s::text[], %s::bigint[]) u(id, d) where a.id = u.id",
                (ids, [1] * meters),
            )
            n += meters
        setwise = n / (time.perf_counter() - t)
    return {"single_row_commits_per_s": single, "setwise_rows_per_s": setwise}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--saturation-rounds", type=int, default=15)
    ap.add_argument("--workers", type=int, default=2, help="billing tasks (HEADEND_PREPAID_WORKERS)")
    ap.add_argument("--batch", type=int, default=2000, help="rows per transaction (HEADEND_PREPAID_BATCH_SIZE)")
    ap.add_argument(
        "--balance",
        type=int,
        default=0,
        help="opening balance (fen) of every account; 0 = all 2,000 go into emergency credit at once in the run",
    )
    args = ap.parse_args()
    global WORKERS, BATCH
    WORKERS, BATCH = args.workers, args.batch
    print(f"prepaid bench: {args.meters} meters, {args.workers} billing workers, batches up to {args.batch} rows")
    name = f"headend_bench_prepaid_{uuid.uuid4().hex[:8]}"
    url = db.create_database(BASE, name)
    try:
        db.migrate(url)
        setup(url, args.meters, args.balance)
        p = await paced(url, args.meters, args.rate, args.seconds)
        print(
            f"paced  {p['offered_per_s']:.0f} readings/s offered, {p['billed']:.0f} billed: commit->debit "
            f"p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms, max {p['max_ms']:.0f} ms "
            f"(mean batch {p['mean_batch']:.0f} rows; p50 of the first / last third of the run "
            f"{p['p50_first_third_ms']:.0f} / {p['p50_last_third_ms']:.0f} ms)"
        )
        s = await saturation(url, args.meters, int(p["rounds"]) + 1, args.saturation_rounds)
        print(
            f"saturation  {s['rows']:.0f} queued readings drained in {s['seconds']:.2f} s: "
            f"{s['readings_per_s']:.0f} readings/s, {s['debits_per_s']:.0f} interval debits/s"
        )
        st = await one_year_statement(url)
        print(
            f"statement  one account, one year, {st['intervals']:.0f} intervals: "
            + "; ".join(
                f"{k} p50 {st[k + '_p50_ms']:.0f} ms, best {st[k + '_best_ms']:.0f} ms"
                for k in ("rows", "columns", "json")
            )
            + " (rows = statement(), columns = statement_columns(), json = statement_json() bytes)"
        )
        c = await ceilings(url, args.meters)
        print(
            f"ceiling  single-row UPDATE commits {c['single_row_commits_per_s']:.0f}/s; "
            f"set-wise UPDATE {c['setwise_rows_per_s']:.0f} rows/s"
        )
        print(
            "ratio  engine saturation / single-row ceiling = "
            f"{s['readings_per_s'] / c['single_row_commits_per_s']:.2f}; "
            f"/ set-wise ceiling = {s['readings_per_s'] / c['setwise_rows_per_s']:.3f}"
        )
    finally:
        db.drop_database(BASE, name)


if __name__ == "__main__":
    asyncio.run(main())
