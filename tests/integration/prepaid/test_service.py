"""The prepaid service in process: a NOTIFY wakes it, the debit lands, cancel is clean."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import psycopg

from headend.clock import AcceleratedClock
from prepaid.service import serve
from prepaid.settings import PrepaidSettings
from tests.integration.prepaid.conftest import enqueue, setup_account


async def test_notify_wakes_the_engine_and_cancel_is_clean(db_url: str) -> None:
    setup_account(db_url, balance_minor=1000)
    settings = PrepaidSettings(database_url=db_url, prepaid_poll_s=30.0, prepaid_daily_every_s=3600)
    clock = AcceleratedClock(origin=datetime(2026, 3, 3, 2, tzinfo=UTC))
    task = asyncio.create_task(serve(settings, clock), name="prepaid-under-test")
    try:
        await asyncio.sleep(1.0)  # listening
        t = datetime(2026, 3, 3, 1, tzinfo=UTC)
        await asyncio.to_thread(enqueue, db_url, "M1", [(t, 0.0), (t + timedelta(minutes=15), 2000.0)])
        balance = None
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            for _ in range(100):  # the poll is 30 s: only the NOTIFY can be this quick
                cur = await conn.execute("select balance_minor from accounts where id = 'A1'")
                balance = (await cur.fetchone() or (None,))[0]
                if balance != 1000:
                    break
                await asyncio.sleep(0.05)
        assert balance == 1000 - 100  # 2 kWh x 0.50
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
