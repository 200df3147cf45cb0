"""SIGKILL of the engine process mid-batch neither loses nor duplicates a debit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.integration.prepaid.conftest import enqueue, setup_account

METERS = 12
READINGS = 300  # per meter, 100 Wh per 15 min at 0.50 CNY/kWh = 5 fen per interval
APP = "prepaid-crash-test"


def start_engine(db_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env |= {
        "HEADEND_DATABASE_URL": f"{db_url}?application_name={APP}",
        "HEADEND_PREPAID_BATCH_SIZE": "400",
        "HEADEND_PREPAID_POLL_S": "0.2",
        "HEADEND_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "headend", "run", "prepaid"], env=env)


def queued(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    row = conn.execute("select count(*) from billing_queue").fetchone()
    return int(row[0]) if row else 0


def in_flight(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    row = conn.execute(
        "select count(*) from pg_stat_activity where application_name = %s"
        " and state in ('active', 'idle in transaction') and xact_start is not null",
        (APP,),
    ).fetchone()
    return bool(row and row[0])


def test_sigkill_mid_batch_neither_loses_nor_duplicates(db_url: str) -> None:
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    for i in range(METERS):
        setup_account(db_url, account=f"A{i}", meter=f"M{i}", balance_minor=100_000)
    for i in range(METERS):
        enqueue(db_url, f"M{i}", [(t0 + timedelta(minutes=15 * k), 1000.0 + 100 * k) for k in range(READINGS)])
    # the same readings delivered again (e.g. ingest replay): must change nothing
    for i in range(0, METERS, 3):
        enqueue(db_url, f"M{i}", [(t0 + timedelta(minutes=15 * k), 1000.0 + 100 * k) for k in range(0, READINGS, 7)])

    rng = random.Random(7)
    kills_mid_txn = 0
    with psycopg.connect(db_url, autocommit=True) as watch:
        total = queued(watch)
        for _ in range(12):
            proc = start_engine(db_url)
            try:
                deadline = time.monotonic() + 20
                while queued(watch) == total and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.15))
                kills_mid_txn += in_flight(watch)
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait(10)
            total = queued(watch)
            if total == 0 or kills_mid_txn >= 3:
                break
        proc = start_engine(db_url)
        try:
            deadline = time.monotonic() + 60
            while queued(watch) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        assert queued(watch) == 0
        balances = watch.execute("select id, balance_minor from accounts order by id").fetchall()
        per_meter = watch.execute(
            "select meter_id, count(*), count(distinct interval_start), sum(energy_wh) from interval_charges"
            " group by meter_id"
        ).fetchall()
        sums: dict[str, int] = {
            r[0]: int(r[1])
            for r in watch.execute("select account_id, sum(amount_minor) from ledger_entries group by 1").fetchall()
        }

    print(f"kills inside a transaction: {kills_mid_txn}")
    assert kills_mid_txn >= 1, "no kill landed inside a transaction; the test proved nothing"
    intervals = READINGS - 1
    assert all(bal == 100_000 - 5 * intervals for _, bal in balances), balances
    assert sums == {a: bal for a, bal in balances}
    assert len(per_meter) == METERS
    assert all(r[1] == r[2] == intervals and r[3] == 100 * intervals for r in per_meter), per_meter
