"""Daily rules, the notices outbox worker and `headend ledger verify`."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from prepaid.daily import daily_tick
from prepaid.notices import LogSender, WebhookSender, deliver_due
from tests.integration.prepaid.conftest import T0, setup_account

FLAT_STANDING = {"kind": "flat", "currency": "CNY", "price_per_kwh": "0.5", "standing_charge_per_day": "0.40"}


async def test_standing_charge_once_per_local_day_and_paused_while_disconnected(db_url: str) -> None:
    setup_account(db_url, balance_minor=1000, versions=[(T0, FLAT_STANDING)])
    now = datetime(2026, 3, 3, 1, tzinfo=UTC)  # 09:00 Shanghai, 3 March
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute("update accounts set opened_at = %s", (datetime(2026, 3, 1, tzinfo=UTC),))
        await conn.commit()
        a = await daily_tick(conn, now)
        b = await daily_tick(conn, now + timedelta(minutes=5))
        await conn.execute("update meters set relay_state = 'disconnected'")
        await conn.commit()
        c = await daily_tick(conn, now + timedelta(days=1))
    assert (a.standing_posted, b.standing_posted, c.standing_posted) == (2, 0, 0)
    with psycopg.connect(db_url) as conn:
        refs = conn.execute(
            "select reference, amount_minor from ledger_entries where kind = 'standing_charge' order by reference"
        ).fetchall()
        bal = conn.execute("select balance_minor from accounts").fetchone()
    assert refs == [("2026-03-02", -40), ("2026-03-03", -40)]
    assert bal == (920,)


async def test_friendly_hours_end_exhausts_credit(db_url: str) -> None:
    setup_account(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor)"
            " values ('A1', 'adjustment', -1500, -1500)"
        )
        conn.execute("update accounts set balance_minor = -1500")
        conn.execute("insert into credit_state (account_id, state) values ('A1', 'friendly')")
    monday_0900 = datetime(2026, 3, 2, 1, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        night = await daily_tick(conn, monday_0900 - timedelta(hours=3))  # 06:00: still friendly
        day = await daily_tick(conn, monday_0900)
    assert night.friendly_ticked == 1 and day.friendly_ticked == 1
    with psycopg.connect(db_url) as conn:
        kinds = conn.execute("select kind from account_events").fetchall()
        state = conn.execute("select state from credit_state").fetchone()
    assert kinds == [("credit_exhausted",)] and state == ("exhausted",)


async def test_notices_are_sent_retried_and_delivery_recorded(db_url: str) -> None:
    setup_account(db_url)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "insert into notices (account_id, kind, dedupe_key, next_attempt_at) values"
            " ('A1', 'pending_disconnection', 'k1', %s), ('A1', 'low_credit', 'k2', %s)",
            (now, now),
        )
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503) if len(calls) <= 2 else httpx.Response(200, json={"delivered": True})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        await psycopg.AsyncConnection.connect(db_url) as aconn,
    ):
        sender = WebhookSender(http, "http://receiver.invalid/notices")
        assert await deliver_due(aconn, sender, now) == 2  # both fail (503)
        assert await deliver_due(aconn, sender, now) == 0  # not due yet: backoff
        assert await deliver_due(aconn, sender, now + timedelta(minutes=5)) == 2
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "select status, attempts, sent_at, delivered_at, channel from notices order by id"
        ).fetchall()
    assert [(r[0], r[1], r[4]) for r in rows] == [("sent", 2, "webhook")] * 2
    assert all(r[2] is not None and r[3] is not None for r in rows)

    with psycopg.connect(db_url) as conn:
        conn.execute("insert into notices (account_id, kind, dedupe_key) values ('A1', 'reconnected', 'k3')")
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        assert await deliver_due(aconn, LogSender(), datetime.now(UTC)) == 1


def test_ledger_verify_cli_fails_on_a_tampered_balance(db_url: str) -> None:
    setup_account(db_url, balance_minor=700)
    cmd = [sys.executable, "-m", "headend", "ledger", "verify", "--database-url", db_url]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with psycopg.connect(db_url) as conn:
        conn.execute("update accounts set balance_minor = 9999 where id = 'A1'")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "A1: balance 9999 != sum of entries 700" in bad.stdout


async def test_daily_debt_recovery_never_blocks_supply_and_runs_once_a_day(db_url: str) -> None:
    from prepaid import operations as ops

    setup_account(db_url, balance_minor=900)
    now = datetime(2026, 3, 3, 2, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "update prepaid_policies set definition = '{\"debt_recovery_per_day_minor\": 300}' where name = 'default'"
        )
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await ops.add_debt(conn, account_id="A1", kind="arrears", amount_minor=1000, reference="old", now=now)
        first = await daily_tick(conn, now)
        again = await daily_tick(conn, now + timedelta(hours=1))
        next_day = await daily_tick(conn, now + timedelta(days=1))
        facts = await ops.credit_facts(conn, "A1", now + timedelta(days=1))
    # 300 on day one; then only 100 more: the balance never goes below the restore minimum (500)
    assert (first.debt_recovered_minor, again.debt_recovered_minor, next_day.debt_recovered_minor) == (300, 0, 100)
    assert facts.balance_minor == 500 and facts.debt_minor == 600
