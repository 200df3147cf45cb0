"""The whole cycle against the project's own simulated meter (simulators/), not a test double:
credit exhausted -> notice delivered -> disconnect confirmed by read-back -> top-up -> arm
confirmed -> the simulated customer presses the button -> relay connected."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from control.dispatch import MqttTransport
from control.engine import Engine, EngineSettings
from headend import registry
from simulators.runner import Simulation
from simulators.scenario import parse_scenario
from tests.integration.control.harness import (
    SettableClock,
    account_event,
    control_mqtt,
    deliver_notices,
    good_conditions,
    pool,
    rows,
)

pytestmark = pytest.mark.integration
METER = "N-000001"


async def test_cycle_with_simulated_meter(db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int) -> None:
    # Next Tuesday 10:00 in Shanghai for the engine's clock; the simulator runs in real time.
    clock = SettableClock(datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    with psycopg.connect(db_url, autocommit=True) as conn:
        registry.ensure_tariff(
            conn,
            "T",
            "flat",
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
            definition={"kind": "flat", "price_per_kwh": "0.56", "currency": "CNY"},
        )
        registry.ensure_service_point(conn, "SP-1", feeder="F-1")
        registry.ensure_meter(conn, METER, service_point_id="SP-1", relay_state="connected")
        registry.open_account(conn, "A-1", service_point_id="SP-1", tariff_id="T")
    good_conditions(db_url, clock.at)
    sim: Simulation | None = None
    sim_task: asyncio.Task[object] | None = None
    try:
        async with pool(db_url) as p, control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as client:
            pressed = asyncio.Event()

            def on_state(meter_id: str, body: dict[str, object]) -> None:
                if meter_id == METER and body.get("relay") == "connected":
                    pressed.set()

            transport = MqttTransport(client, mqtt_prefix, asyncio.get_running_loop(), on_state=on_state)
            await transport.ready()
            engine = Engine(
                p.connection,
                {"mqtt": transport},
                clock.now,
                EngineSettings(worker_id="sim", ack_timeout_s=5, readback_timeout_s=5, backoff_base_s=0.01),
            )
            account_event(db_url, "A-1", "emergency_credit_started", clock.at)
            await engine.process_events()
            deliver_notices(db_url, clock.advance(minutes=1))
            account_event(db_url, "A-1", "credit_exhausted", clock.advance(minutes=30))
            await engine.process_events()
            ((not_before,),) = rows(db_url, "select not_before from commands")
            # The simulated meter lives at the execution time (its clock: that origin, 10x speed),
            # so it judges expires_at on the same time line as the engine.
            scenario = parse_scenario(
                {
                    "seed": 3,
                    "speed": 10,
                    "step_s": 10,
                    "start": not_before.isoformat(),
                    "button_after_s": 2,
                    "groups": [{"name": "N", "count": 1, "interval_s": 900}],
                    "mqtt": {"host": mqtt_host, "port": mqtt_port, "prefix": mqtt_prefix},
                }
            )
            sim = Simulation(scenario)
            sim_task = asyncio.create_task(sim.run(), name="sim")
            async with asyncio.timeout(15):
                await sim.ready.wait()
            clock.at = not_before - timedelta(minutes=30)
            deliver_notices(db_url, clock.at, "final_reminder")
            clock.at = not_before
            good_conditions(db_url, clock.at)
            assert await engine.dispatch_due() == 1
            assert rows(db_url, "select action, state, relay_read_back from commands") == [
                ("disconnect", "confirmed", "disconnected")
            ]
            assert sim.meter_status(METER)["relay"] == "disconnected"
            account_event(db_url, "A-1", "credit_restored", clock.advance(hours=2))
            await engine.process_events()
            assert await engine.dispatch_due() == 1
            assert rows(db_url, "select state, relay_read_back from commands where action = 'arm'") == [
                ("confirmed", "armed")
            ]
            # The simulated customer presses the button; the state report says so.
            async with asyncio.timeout(15):
                await pressed.wait()
            await engine.on_state_report(METER, {"relay": "connected"})
            assert rows(db_url, "select relay_state from meters") == [("connected",)]
    finally:
        if sim is not None and sim_task is not None:
            sim.stop()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(10):
                    await sim_task
