"""The control service as it runs: LISTEN wakes it, it reconnects a topped-up meter, it stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
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
        await asyncio.wait_for(started.wait(), 40)
        await asyncio.sleep(0.3)  # the first (startup) pass is done
        account_event(db_url, account, "credit_restored", datetime.now(UTC))
        for _ in range(300):  # generous: the machine is shared; this is not a timing test
            if rows(db_url, "select state from commands") == [("confirmed",)]:
                break
            await asyncio.sleep(0.1)
        assert rows(db_url, "select action, state from commands") == [("arm", "confirmed")]
        assert meter.relay == "armed"
        # The customer presses the button: the state report reaches meters.relay_state.
        meter.press_button()
        for _ in range(300):
            if rows(db_url, "select relay_state from meters") == [("connected",)]:
                break
            await asyncio.sleep(0.1)
        assert rows(db_url, "select relay_state from meters") == [("connected",)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        meter.stop()


async def _wait(pred: Callable[[], bool], timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_service_killed_while_waiting_for_ack_then_restarted(
    db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    """The process dies after the command left and before any ack: the next process reads the
    relay back first, then re-sends the same command (same id), and confirms it."""
    now = datetime.now(UTC)
    ((account, meter_id),) = register_site(db_url, now=now)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("update meters set relay_state = 'disconnected'")
    meter = FakeMeter(meter_id, mqtt_prefix, mqtt_host, mqtt_port, relay="disconnected", mode="silent").start()

    def settings(worker: str) -> ControlSettings:
        return ControlSettings(
            database_url=db_url,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_prefix=mqtt_prefix,
            control_worker_id=worker,
            control_poll_s=0.3,
            control_ack_timeout_s=30,
            control_readback_timeout_s=3,
            control_lease_s=1,
            control_pool_max=3,
        )

    first = asyncio.create_task(run(settings("first"), Clock()), name="control-first")
    try:
        account_event(db_url, account, "credit_restored", datetime.now(UTC))
        await _wait(lambda: [c["action"] for c in meter.received] == ["arm"], 40)
        assert rows(db_url, "select state from commands") == [("sent",)]
    finally:
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    assert rows(db_url, "select state from commands") == [("sent",)]  # nothing pretended
    meter.mode = "normal"
    second = asyncio.create_task(run(settings("second"), Clock()), name="control-second")
    try:
        await _wait(lambda: rows(db_url, "select state from commands") == [("confirmed",)], 40)
    finally:
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        meter.stop()
    actions = [c["action"] for c in meter.received]
    assert actions[:2] == ["arm", "status"]  # read back before anything else
    arm_ids = {c["id"] for c in meter.received if c["action"] == "arm"}
    assert len(arm_ids) == 1  # the same command, never a new one
    assert meter.relay == "armed"
    assert rows(db_url, "select attempts from commands") == [(2,)]
