"""The control service as it runs: LISTEN wakes it, it reconnects a topped-up meter, it stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import psycopg
import pytest

from control.service import run
from control.settings import ControlSettings
from headend.clock import Clock
from tests.integration.control.harness import FakeMeter, account_event, good_conditions, register_site, rows

pytestmark = pytest.mark.integration


async def test_service_reconnects_on_credit_restored(
    db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    now = datetime.now(UTC)
    ((account, meter_id),) = register_site(db_url, now=now)
    good_conditions(db_url, now)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("update meters set relay_state = 'disconnected'")
    meter = FakeMeter(meter_id, mqtt_prefix, mqtt_host, mqtt_port, relay="disconnected").start()
    settings = ControlSettings(
        database_url=db_url,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        mqtt_prefix=mqtt_prefix,
        control_worker_id="svc-test",
        control_poll_s=30.0,  # only LISTEN can make this test pass in time
        control_ack_timeout_s=3,
        control_readback_timeout_s=3,
        control_pool_max=3,
    )
    started = asyncio.Event()
    task = asyncio.create_task(run(settings, Clock(), started), name="control-service")
    try:
        await asyncio.wait_for(started.wait(), 20)
        await asyncio.sleep(0.3)  # the first (startup) pass is done
        account_event(db_url, account, "credit_restored", datetime.now(UTC))
        for _ in range(100):
            if rows(db_url, "select state from commands") == [("confirmed",)]:
                break
            await asyncio.sleep(0.1)
        assert rows(db_url, "select action, state from commands") == [("arm", "confirmed")]
        assert meter.relay == "armed"
        # The customer presses the button: the state report reaches meters.relay_state.
        meter.press_button()
        for _ in range(50):
            if rows(db_url, "select relay_state from meters") == [("connected",)]:
                break
            await asyncio.sleep(0.1)
        assert rows(db_url, "select relay_state from meters") == [("connected",)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        meter.stop()
