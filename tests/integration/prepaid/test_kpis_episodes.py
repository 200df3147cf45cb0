"""KPIs: self-disconnection episodes (credit_exhausted events in the period) and accounts
flagged as self-disconnecting (3 or more episodes in the 30 days before ``end``),
driven through the real engine and top-ups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from prepaid import operations as ops
from prepaid.engine import bill_batch
from tests.integration.prepaid.conftest import FLAT, enqueue, setup_account

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)  # the 30 days before END start on 2 March


def day(month: int, d: int, hour: int = 0) -> datetime:
    return datetime(2026, month, d, hour, tzinfo=UTC)


async def test_self_disconnection_episodes_and_flagged_accounts(db_url: str) -> None:
    # flat 0.50 CNY/kWh, UTC, balance 5.00: 40 kWh (20.00) takes it past the 10.00 emergency credit
    versions = [(datetime(2025, 1, 1, tzinfo=UTC), FLAT)]
    setup_account(db_url, account="A1", meter="M1", balance_minor=500, timezone="UTC", versions=versions)
    setup_account(db_url, account="A2", meter="M2", balance_minor=500, timezone="UTC", versions=versions)
    register = {"M1": 0.0, "M2": 0.0}
    # weekdays, 05:00-09:00 readings, billed at 10:00: outside friendly hours (18:00-08:00, weekends)
    episodes = [
        (day(12, 29), "M1", "A1"),  # before START: not an episode of the period
        (day(1, 27), "M2", "A2"),  # in the period, not in the last 30 days
        (day(3, 3), "M1", "A1"),
        (day(3, 4), "M1", "A1"),
        (day(3, 5), "M1", "A1"),
        (day(3, 9), "M2", "A2"),
        (day(3, 10), "M2", "A2"),
    ]
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        for i, (d, meter, account) in enumerate(episodes):
            d = d.replace(year=2025) if d.month == 12 else d
            enqueue(
                db_url,
                meter,
                [(d + timedelta(hours=5), register[meter]), (d + timedelta(hours=9), register[meter] + 40_000)],
            )
            register[meter] += 40_000
            await bill_batch(conn, now=d + timedelta(hours=10))
            await conn.commit()
            facts = await ops.credit_facts(conn, account, d + timedelta(hours=10))
            assert facts.credit_state == "exhausted", (i, facts)
            r = await ops.topup(
                conn,
                account_id=account,
                channel="app",
                reference=f"t{i}",
                amount_minor=2000,
                now=d + timedelta(hours=12),
            )
            assert r.restored
        (k,) = await ops.kpis(conn, start=START, end=END)
        (one_account_window,) = await ops.kpis(conn, start=day(3, 4), end=day(3, 6))
    assert k.self_disconnection_episodes == 6  # 3 + 3 in [START, END); the December one is outside
    assert k.self_disconnecting_accounts == 1  # A1: 3 in the last 30 days; A2 only 2 there
    # a two-day period: 2 episodes (4 and 5 March), nobody with 3 in the 30 days before 6 March but A1
    assert one_account_window.self_disconnection_episodes == 2
    assert one_account_window.self_disconnecting_accounts == 1
    with psycopg.connect(db_url) as c:
        n = c.execute("select count(*) from account_events where kind = 'credit_exhausted'").fetchone()
    assert n == (7,)
