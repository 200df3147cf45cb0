"""The whole cycle on the real broker and database: credit exhausted inside a window ->
notice delivered -> disconnect confirmed by read-back -> top-up -> reconnect confirmed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from control import audit
from control.dispatch import MqttTransport
from control.engine import Engine, EngineSettings
from tests.integration.control.harness import (
    FakeMeter,
    SettableClock,
    account_event,
    control_mqtt,
    deliver_notices,
    good_conditions,
    pool,
    register_site,
    rows,
)
from tests.unit.control.factories import local

pytestmark = pytest.mark.integration

T0 = local(2026, 11, 24, 10)  # Tuesday 10:00 Shanghai


def engine_for(p, client, prefix, clock, worker="w1", **kw) -> tuple[Engine, MqttTransport]:
    loop = asyncio.get_running_loop()
    transport = MqttTransport(client, prefix, loop)
    settings = EngineSettings(worker_id=worker, ack_timeout_s=3, readback_timeout_s=3, backoff_base_s=0.01, **kw)
    engine = Engine(p.connection, {"mqtt": transport}, clock.now, settings)
    return engine, transport


async def test_full_cycle(db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int) -> None:
    clock = SettableClock(T0)
    ((account, meter_id),) = register_site(db_url, now=T0)
    good_conditions(db_url, T0)
    meter = FakeMeter(meter_id, mqtt_prefix, mqtt_host, mqtt_port).start()
    try:
        async with pool(db_url) as p, control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as client:
            engine, transport = engine_for(p, client, mqtt_prefix, clock)
            await transport.ready()
            # Balance hits zero: emergency credit starts -> plan + pending-disconnection notice.
            account_event(db_url, account, "emergency_credit_started", T0)
            assert await engine.process_events() == 1
            notices = rows(db_url, "select kind, body->>'earliest_execution_at' from notices")
            assert [n[0] for n in notices] == ["pending_disconnection"]
            assert notices[0][1] is not None
            assert rows(db_url, "select count(*) from commands") == [(0,)]
            deliver_notices(db_url, clock.advance(minutes=1))
            # Emergency credit exhausted an hour later: the disconnect is scheduled, not sent.
            account_event(db_url, account, "credit_exhausted", clock.advance(hours=1))
            assert await engine.process_events() == 1
            ((cmd_id, state, not_before),) = rows(db_url, "select id, state, not_before from commands")
            assert state == "scheduled" and not_before >= T0 + timedelta(hours=24)
            assert await engine.dispatch_due() == 0
            assert meter.received == []
            # The final reminder goes out 30 min before; at the execution time the guard passes.
            clock.at = not_before - timedelta(minutes=30)
            assert deliver_notices(db_url, clock.at, "final_reminder") == 1
            clock.at = not_before
            good_conditions(db_url, clock.at)
            assert await engine.dispatch_due() == 1
            assert meter.relay == "disconnected"
            assert rows(db_url, "select state, relay_read_back from commands where id = %s", cmd_id) == [
                ("confirmed", "disconnected")
            ]
            assert rows(db_url, "select relay_state from meters") == [("disconnected",)]
            assert rows(db_url, "select state from disconnect_plans") == [("done",)]
            # Top-up restores credit: arm goes out at once, outside any window is fine.
            account_event(db_url, account, "credit_restored", clock.advance(hours=8))
            assert await engine.process_events() == 1
            assert await engine.dispatch_due() == 1
            assert meter.relay == "armed"
            arm = rows(db_url, "select action, state from commands where id <> %s", cmd_id)
            assert arm == [("arm", "confirmed")]
            assert rows(db_url, "select kind from notices where kind = 'reconnected'") == [("reconnected",)]
            # Audit: the send row precedes the confirmation; the chain verifies.
            actions = [r[0] for r in rows(db_url, "select action from audit_log order by seq")]
            assert actions.index("command_send") < actions.index("command_confirmed")
            async with p.connection() as conn:
                assert await audit.verify(conn) == []
    finally:
        meter.stop()


async def test_meter_that_lies_ends_unknown_with_work_order_never_disconnected(
    db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    clock = SettableClock(T0)
    ((account, meter_id),) = register_site(db_url, now=T0)
    good_conditions(db_url, T0)
    meter = FakeMeter(meter_id, mqtt_prefix, mqtt_host, mqtt_port, mode="liar").start()
    try:
        async with pool(db_url) as p, control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as client:
            engine, transport = engine_for(p, client, mqtt_prefix, clock)
            await transport.ready()
            account_event(db_url, account, "emergency_credit_started", T0)
            await engine.process_events()
            deliver_notices(db_url, clock.advance(minutes=1))
            account_event(db_url, account, "credit_exhausted", clock.advance(minutes=5))
            await engine.process_events()
            ((cmd_id, not_before),) = rows(db_url, "select id, not_before from commands")
            clock.at = not_before - timedelta(minutes=30)
            deliver_notices(db_url, clock.at, "final_reminder")
            clock.at = not_before
            good_conditions(db_url, clock.at)
            for _ in range(3):  # acked "ok" each time, yet the read-back still says connected
                assert await engine.dispatch_due() == 1
                clock.advance(minutes=1)
            assert rows(db_url, "select state, attempts from commands where id = %s", cmd_id) == [("unknown", 3)]
            assert rows(db_url, "select relay_state from meters") == [("unknown",)]
            assert rows(db_url, "select kind from cases") == [("field_work_order",)]
            assert meter.trips == 3
            # The field crew opens the relay by hand; a later read-back confirms the command.
            meter.relay = "disconnected"
            clock.advance(minutes=15)
            assert await engine.recheck_unknown() == 1
            assert rows(db_url, "select state from commands where id = %s", cmd_id) == [("confirmed",)]
            assert rows(db_url, "select relay_state from meters") == [("disconnected",)]
    finally:
        meter.stop()
