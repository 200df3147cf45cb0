"""The control service: LISTEN account_events (+ poll), plan, dispatch, timers.

One ``async with`` block: the pool (autocommit connections) opened explicitly, the MQTT
client (paho network thread), the Modbus transport, and a TaskGroup of named tasks:

* ``listen``: LISTEN ``account_events`` and ``control_commands``; a notification wakes the
  event handler or the dispatcher at once (the top-up -> command-on-the-wire path);
* ``events``: :meth:`Engine.process_events` on wake-up or every ``control_poll_s``;
* ``dispatch``: :meth:`Engine.dispatch_due` on wake-up or every ``control_poll_s``;
* ``timers``: armed timeouts;
* ``states``: relay state reports from meters.

Cancellation (SIGTERM) stops the tasks, stops the MQTT loop and closes the pool; a command
left ``sent`` is read back by the next worker that claims it (lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import AsyncConnectionPool

from control import store
from control.dispatch import ModbusTransport, MqttTransport, Transport, no_delay
from control.engine import Engine, EngineSettings
from control.settings import ControlSettings
from headend.clock import Clock, clock_from_env

logger = logging.getLogger(__name__)


async def serve() -> None:
    await run(ControlSettings(), clock_from_env())


async def run(settings: ControlSettings, clock: Clock, started: asyncio.Event | None = None) -> None:
    pool = AsyncConnectionPool(
        settings.database_url,
        open=False,
        min_size=1,
        max_size=settings.control_pool_max,
        kwargs={"autocommit": True},
        reset=reset_connection,
    )
    await pool.open(wait=True, timeout=30)
    store.prepaid_credit_facts()  # import prepaid's facts reader now, not on the first top-up
    loop = asyncio.get_running_loop()
    states: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.control_worker_id)
    client.reconnect_delay_set(1, 30)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.control_worker_id + "-cmd")
    publisher.reconnect_delay_set(1, 30)
    publisher.on_connect = lambda c, u, f, rc, p=None: no_delay(c)

    def on_state(meter_id: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            states.put_nowait((meter_id, body))

    mqtt_transport = MqttTransport(client, settings.mqtt_prefix, loop, on_state=on_state, publisher=publisher)
    modbus = ModbusTransport()
    transports: dict[str, Transport] = {"mqtt": mqtt_transport, "modbus": modbus}
    engine = Engine(
        pool.connection,
        transports,
        clock.now,
        EngineSettings(
            worker_id=settings.control_worker_id,
            ack_timeout_s=settings.control_ack_timeout_s,
            readback_timeout_s=settings.control_readback_timeout_s,
            lease_s=settings.control_lease_s,
            recheck_s=settings.control_recheck_s,
            batch=settings.control_batch,
            time_scale=clock.speed,
        ),
    )
    for c in (client, publisher):
        c.connect_async(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        c.loop_start()
    wake_events = asyncio.Event()
    wake_dispatch = asyncio.Event()
    try:
        async with pool.connection() as conn:
            await store.seed_policies(conn, clock.now())
        await mqtt_transport.ready(timeout_s=15)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_listen(settings, wake_events, wake_dispatch), name="control-listen")
            poll = settings.control_poll_s
            tg.create_task(_loop(engine.process_events, wake_events, poll, wake_dispatch), name="control-events")
            tg.create_task(_loop(engine.dispatch_due, wake_dispatch, poll, None), name="control-dispatch")
            timers = asyncio.Event()
            tg.create_task(_loop(engine.check_timers, timers, settings.control_timers_s, None), name="control-timers")
            tg.create_task(
                _loop(engine.recheck_unknown, asyncio.Event(), settings.control_timers_s, None), name="control-unknown"
            )
            tg.create_task(_states(engine, states), name="control-states")
            wake_events.set()
            wake_dispatch.set()
            if started is not None:
                started.set()
    finally:
        for c in (client, publisher):
            c.loop_stop()
            c.disconnect()
        modbus.close()
        await pool.close()


async def reset_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Back to the pool: drop any session advisory lock a cancelled worker left behind."""
    await conn.execute("select pg_advisory_unlock_all()")


async def _listen(settings: ControlSettings, wake_events: asyncio.Event, wake_dispatch: asyncio.Event) -> None:
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
            async with conn:
                await conn.execute("listen account_events")
                await conn.execute("listen control_commands")
                wake_events.set()
                async for note in conn.notifies():
                    (wake_events if note.channel == "account_events" else wake_dispatch).set()
        except psycopg.OperationalError as exc:
            logger.warning("LISTEN connection lost: %s", exc)
            await asyncio.sleep(2)


async def _loop(step: Any, wake: asyncio.Event, every_s: float, then: asyncio.Event | None) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), every_s)
        wake.clear()
        try:
            while await step():
                if then is not None:
                    then.set()
        except (psycopg.Error, OSError) as exc:
            logger.warning("%s failed: %s", getattr(step, "__name__", step), exc)
            await asyncio.sleep(1)


async def _states(engine: Engine, states: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
    while True:
        meter_id, body = await states.get()
        try:
            await engine.on_state_report(meter_id, body)
        except psycopg.Error as exc:
            logger.warning("relay state of %s not stored: %s", meter_id, exc)
