"""The debit engine on the real TimescaleDB: exactly once, holds, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from prepaid.engine import VersionCache, bill_batch
from tests.integration.prepaid.conftest import enqueue, setup_account

NOW = datetime(2026, 3, 2, tzinfo=UTC)


async def run_all(db_url: str, now: datetime = NOW, limit: int = 500) -> int:
    cache = VersionCache()
    total = 0
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        while True:
            r = await bill_batch(conn, now=now, limit=limit, versions=cache)
            if not r.claimed_ids:
                return total
            total += r.debit_minor


def ledger(db_url: str) -> list[tuple[str, int, int]]:
    with psycopg.connect(db_url) as conn:
        return [
            (r[0], int(r[1]), int(r[2]))
            for r in conn.execute(
                "select kind, amount_minor, balance_after_minor from ledger_entries order by id"
            ).fetchall()
        ]


async def test_duplicates_and_redelivery_post_once(db_url: str) -> None:
    setup_account(db_url, balance_minor=10_000)
    t = datetime(2026, 3, 1, tzinfo=UTC)
    rs = [(t + timedelta(minutes=15 * i), 1_000_000.0 + 250 * i) for i in range(9)]  # 8 intervals x 250 Wh
    enqueue(db_url, "M1", rs)
    enqueue(db_url, "M1", list(reversed(rs[3:])))  # redelivered, reordered
    await run_all(db_url)
    enqueue(db_url, "M1", rs[:5])  # late redelivery after posting
    await run_all(db_url)
    with psycopg.connect(db_url) as conn:
        bal = conn.execute("select balance_minor from accounts where id = 'A1'").fetchone()
        n = conn.execute("select count(*), sum(energy_wh), sum(amount_micro) from interval_charges").fetchone()
        q = conn.execute("select count(*) from billing_queue").fetchone()
    assert n == (8, 2000, 2000 * 50_000)
    assert bal == (10_000 - 100,)  # 2 kWh x 0.50 = 1.00 CNY
    assert q == (0,)
    assert sum(a for k, a, _ in ledger(db_url)) == 10_000 - 100


async def test_register_reset_holds_billing_until_resolved(db_url: str) -> None:
    from prepaid.operations import resolve_billing_hold

    setup_account(db_url, balance_minor=10_000)
    t = datetime(2026, 3, 1, tzinfo=UTC)
    rs = [(t, 5000.0), (t + timedelta(minutes=15), 6000.0), (t + timedelta(minutes=30), 10.0)]
    rs += [(t + timedelta(minutes=45), 1010.0), (t + timedelta(minutes=60), 2010.0)]
    enqueue(db_url, "M1", rs)
    await run_all(db_url)
    with psycopg.connect(db_url) as conn:
        hold = conn.execute("select billing_hold from meters where id = 'M1'").fetchone()
        queued = conn.execute("select count(*) from billing_queue").fetchone()
    assert hold == ("register_reset",)
    assert queued == (3,)  # the reset reading and the ones after it wait
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await resolve_billing_hold(conn, "M1", "operator-1", NOW)
    await run_all(db_url)
    with psycopg.connect(db_url) as conn:
        energy = conn.execute("select sum(energy_wh) from interval_charges").fetchone()
        hold = conn.execute("select billing_hold from meters where id = 'M1'").fetchone()
    assert hold == (None,)
    assert energy == (1000 + 2000,)  # before the reset, and after it; never across it


async def test_balance_crossing_zero_emits_events_and_notifies(db_url: str) -> None:
    setup_account(db_url, balance_minor=3100)
    t = datetime(2026, 3, 2, 2, tzinfo=UTC)  # Monday 10:00 Shanghai: not friendly hours
    enqueue(db_url, "M1", [(t, 0.0), (t + timedelta(minutes=15), 1000.0)])  # 0.50
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen account_events")
        await run_all(db_url, now=t + timedelta(minutes=16))
        enqueue(db_url, "M1", [(t + timedelta(days=1), 65_000.0)])  # 32.00 -> balance -1.50
        await run_all(db_url, now=t + timedelta(days=1, minutes=1))
        enqueue(db_url, "M1", [(t + timedelta(days=2), 85_000.0)])  # 10.00 -> -11.50
        await run_all(db_url, now=t + timedelta(days=2, minutes=1))
        notified = [n.payload for n in listener.notifies(timeout=0.5)]
    with psycopg.connect(db_url) as conn:
        events = conn.execute("select id::text, kind from account_events order by id").fetchall()
        notices = conn.execute("select kind from notices").fetchall()
    kinds = [k for _, k in events]
    # 31.00 -> 30.50 (no threshold crossed) -> -1.50 (below 30 and 10: one warning) -> -11.50
    assert kinds == ["emergency_credit_started", "low_credit", "credit_exhausted"]
    assert sorted(notified) == sorted(i for i, _ in events)
    assert notices == [("low_credit",)]


async def test_rows_of_an_unknown_meter_are_quarantined(db_url: str) -> None:
    setup_account(db_url, balance_minor=0)
    with psycopg.connect(db_url) as conn:
        conn.execute("insert into billing_queue (meter_id, ts, energy_wh) values ('GHOST', now(), 5)")
    await run_all(db_url)
    with psycopg.connect(db_url) as conn:
        q = conn.execute("select meter_id, reason from quarantine").fetchall()
        left = conn.execute("select count(*) from billing_queue").fetchone()
    assert q == [("GHOST", "billing: unknown meter")] and left == (0,)
