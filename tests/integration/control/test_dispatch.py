"""Dispatch edge cases on the real broker/database: restarts, two workers, Modbus, audit."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from control import audit, operations
from control.dispatch import MeterAddress, ModbusTransport, MqttTransport, Outgoing
from control.engine import Engine, EngineSettings
from tests.integration.control.harness import (
    FakeMeter,
    SettableClock,
    account_event,
    control_mqtt,
    good_conditions,
    pool,
    register_site,
    rows,
)
from tests.unit.control.factories import local

pytestmark = pytest.mark.integration

T0 = local(2026, 11, 24, 10)


def make_engine(p: Any, transports: dict[str, Any], clock: SettableClock, worker: str = "w1") -> Engine:
    settings = EngineSettings(worker_id=worker, ack_timeout_s=2, readback_timeout_s=2, backoff_base_s=0.01, lease_s=30)
    return Engine(p.connection, transports, clock.now, settings)


async def disconnected_site(db_url: str, n: int = 1, **kw: Any) -> list[tuple[str, str]]:
    sites = register_site(db_url, n=n, now=T0, **kw)
    good_conditions(db_url, T0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("update meters set relay_state = 'disconnected', relay_state_at = %s", (T0,))
    return sites


async def test_restart_with_command_left_sent_reads_back_and_never_resends(
    db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    clock = SettableClock(T0)
    ((_account, meter_id),) = await disconnected_site(db_url)
    meter = FakeMeter(meter_id, mqtt_prefix, mqtt_host, mqtt_port, relay="armed").start()
    try:
        async with pool(db_url) as p, control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as client:
            async with p.connection() as conn:
                cmd = await operations.request_command(
                    conn,
                    meter_id=meter_id,
                    action="arm",
                    requested_by="ops",
                    reason="test",
                    idempotency_key="k1",
                    now=T0,
                )
                # A worker sent it and died before the ack: state sent, lease expired.
                await conn.execute(
                    "update commands set state = 'sent', sent_at = %s, attempts = 1, claimed_by = 'dead',"
                    " claimed_until = %s where id = %s",
                    (T0, T0 - timedelta(seconds=1), cmd.id),
                )
            transport = MqttTransport(client, mqtt_prefix, asyncio.get_running_loop())
            await transport.ready()
            engine = make_engine(p, {"mqtt": transport}, clock)
            assert await engine.dispatch_due() == 1
            assert rows(db_url, "select state, relay_read_back from commands") == [("confirmed", "armed")]
            assert [c["action"] for c in meter.received] == ["status"]  # read back, not resent
    finally:
        meter.stop()


async def test_restart_in_each_open_state_ends_settled(
    db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    """scheduled (claimed by a dead worker), sent (unconfirmed) and awaiting approval past its deadline:
    a fresh engine leaves none of them stuck."""
    clock = SettableClock(T0)
    sites = await disconnected_site(db_url, n=3)
    meters = [FakeMeter(m, mqtt_prefix, mqtt_host, mqtt_port, relay="disconnected").start() for _, m in sites]
    try:
        async with pool(db_url) as p, control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as client:
            async with p.connection() as conn:
                ids = []
                for i, (_, m) in enumerate(sites):
                    c = await operations.request_command(
                        conn,
                        meter_id=m,
                        action="reconnect",
                        requested_by="ops",
                        reason="t",
                        idempotency_key=f"r{i}",
                        now=T0,
                    )
                    ids.append(c.id)
                await conn.execute(
                    "update commands set claimed_by = 'dead', claimed_until = %s where id = %s", (T0, ids[0])
                )
                await conn.execute(
                    "update commands set state = 'sent', attempts = 1, claimed_until = %s where id = %s",
                    (T0, ids[1]),
                )
                await conn.execute(
                    "update commands set state = 'awaiting_approval', deadline_at = %s where id = %s", (T0, ids[2])
                )
            transport = MqttTransport(client, mqtt_prefix, asyncio.get_running_loop())
            await transport.ready()
            engine = make_engine(p, {"mqtt": transport}, clock)
            for _ in range(4):
                clock.advance(seconds=1)
                await engine.dispatch_due()
            states = dict(rows(db_url, "select id, state from commands"))
            assert states[ids[0]] == "confirmed"
            assert states[ids[1]] == "confirmed"  # retried after read-back disagreed, then confirmed
            assert states[ids[2]] == "expired"
            assert [fm.relay for fm in meters[:2]] == ["connected", "connected"]
    finally:
        for fm in meters:
            fm.stop()


async def test_two_control_processes_never_send_the_same_command_twice(
    db_url: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    clock = SettableClock(T0)
    sites = await disconnected_site(db_url, n=12)
    meters = [FakeMeter(m, mqtt_prefix, mqtt_host, mqtt_port, relay="disconnected").start() for _, m in sites]
    try:
        async with (
            pool(db_url) as p1,
            pool(db_url) as p2,
            control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as c1,
            control_mqtt(mqtt_prefix, mqtt_host, mqtt_port) as c2,
        ):
            for account, _ in sites:
                account_event(db_url, account, "credit_restored", T0)
            loop = asyncio.get_running_loop()
            t1, t2 = MqttTransport(c1, mqtt_prefix, loop), MqttTransport(c2, mqtt_prefix, loop)
            await t1.ready()
            await t2.ready()
            e1 = make_engine(p1, {"mqtt": t1}, clock, "w1")
            e2 = make_engine(p2, {"mqtt": t2}, clock, "w2")
            e1.settings.batch = e2.settings.batch = 3
            handled = await asyncio.gather(e1.process_events(), e2.process_events())
            assert sum(handled) == 12
            assert rows(db_url, "select count(*) from commands") == [(12,)]
            for _ in range(6):
                await asyncio.gather(e1.dispatch_due(), e2.dispatch_due())
            assert rows(db_url, "select state, count(*) from commands group by state") == [("confirmed", 12)]
            sent_ids = [cid for m in meters for c in m.received if c["action"] == "arm" for cid in [c["id"]]]
            assert len(sent_ids) == 12 and len(set(sent_ids)) == 12
            assert all(m.relay == "armed" for m in meters)
    finally:
        for m in meters:
            m.stop()


def sunspec_block() -> list[int]:
    regs = [0x5375, 0x6E53, 1, 66] + [0] * 66 + [203, 105] + [0] * 105 + [123, 24] + [0] * 24 + [0xFFFF, 0]
    regs[2 + 68 + 107 + 4] = 1  # Conn = connected
    return regs


@pytest.mark.parametrize("fc16", [False, True], ids=["fc06", "fc16"])
async def test_modbus_dispatch_writes_conn_and_reads_back(db_url: str, fc16: bool) -> None:
    from simulators.modbus import free_port

    port = free_port("127.0.0.1")
    device = SimDevice(3, simdata=[SimData(40000, values=sunspec_block(), datatype=DataType.REGISTERS)])
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    clock = SettableClock(T0)
    ((_account, meter_id),) = register_site(
        db_url, now=T0, protocol="modbus", modbus_host="127.0.0.1", modbus_port=port, modbus_unit=3
    )
    good_conditions(db_url, T0)
    modbus = ModbusTransport(use_fc16=fc16)
    try:
        async with pool(db_url) as p:
            engine = make_engine(p, {"modbus": modbus}, clock)
            async with p.connection() as conn:
                await operations.set_operator(conn, "boss", ["approver"])
                cmd = await operations.request_command(
                    conn,
                    meter_id=meter_id,
                    action="disconnect",
                    requested_by="ops",
                    reason="safety",
                    idempotency_key="m1",
                    now=T0,
                )
                assert cmd.state == "awaiting_approval"
                await operations.approve_command(conn, cmd.id, "boss", T0)
            # Approved, yet every guard still applies: with no notice given it is deferred.
            await engine.dispatch_due()
            detail = rows(db_url, "select state, detail->'last_decision'->'reasons' from commands")
            assert detail[0][0] == "scheduled" and "notice_not_sent" in detail[0][1]
            async with p.connection() as conn:
                c2 = await operations.request_command(
                    conn,
                    meter_id=meter_id,
                    action="disconnect",
                    requested_by="ops",
                    reason="x",
                    idempotency_key="m1",
                    now=T0,
                )
                assert c2.id == cmd.id  # idempotent
            # A reconnect needs no window nor notice: over Modbus it writes Conn=1.
            address = MeterAddress(meter_id, "modbus", "127.0.0.1", port, 3)
            assert await modbus.read_relay(address, 2) == "connected"
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("update commands set state = 'cancelled'")
                conn.execute("update meters set relay_state = 'unknown'")
            async with p.connection() as conn:
                await operations.request_command(
                    conn,
                    meter_id=meter_id,
                    action="reconnect",
                    requested_by="ops",
                    reason="erroneous",
                    idempotency_key="m2",
                    now=T0,
                    erroneous=True,
                )
            assert await engine.dispatch_due() == 1
            assert rows(db_url, "select action, state, relay_read_back from commands where idempotency_key='m2'") == [
                ("reconnect", "confirmed", "connected")
            ]
    finally:
        modbus.close()
        await server.shutdown()


async def test_modbus_disconnect_confirmed_by_read_back(db_url: str) -> None:
    from simulators.modbus import free_port

    port = free_port("127.0.0.1")
    device = SimDevice(1, simdata=[SimData(40000, values=sunspec_block(), datatype=DataType.REGISTERS)])
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    modbus = ModbusTransport()
    try:
        meter = MeterAddress("MB", "modbus", "127.0.0.1", port, 1)
        ack = await modbus.send(meter, Outgoing("c", "disconnect", T0, None), 3)
        assert ack.status == "ok" and ack.relay == "disconnected"
        assert await modbus.read_relay(meter, 3) == "disconnected"
        assert (await modbus.send(meter, Outgoing("d", "load_limit", T0, None), 3)).status == "rejected"
    finally:
        modbus.close()
        await server.shutdown()


async def test_audit_tampering_is_detected(db_url: str) -> None:
    async with pool(db_url) as p, p.connection() as conn:
        for i in range(5):
            async with conn.transaction():
                await audit.append(conn, actor="t", action="a", subject=str(i), detail={"i": i}, at=T0)
        assert await audit.verify(conn) == []
        with pytest.raises(psycopg.Error):
            await conn.execute("update audit_log set actor = 'x' where seq = 2")
        # A superuser bypassing the append-only trigger still cannot hide an edit.
        async with conn.transaction():
            await conn.execute("set local session_replication_role = replica")
            await conn.execute("update audit_log set detail = '{\"i\": 99}' where seq = 3")
        problems = await audit.verify(conn)
        assert [pr.seq for pr in problems] == [3]
        async with conn.transaction():
            await conn.execute("set local session_replication_role = replica")
            await conn.execute("delete from audit_log where seq = 4")
        assert 5 in [pr.seq for pr in await audit.verify(conn)]


async def test_audit_verify_cli(db_url: str) -> None:
    from headend.cli import main

    async with pool(db_url) as p, p.connection() as conn, conn.transaction():
        await audit.append(conn, actor="t", action="a", subject=None, detail={}, at=T0)
    assert await asyncio.to_thread(main, ["audit", "verify", "--database-url", db_url]) == 0
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute("update audit_log set actor = 'mallory'")
    assert await asyncio.to_thread(main, ["audit", "verify", "--database-url", db_url]) == 1


async def test_control_cli_explain_and_kill_switch(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from headend.cli import main

    ((account, _),) = register_site(db_url, now=T0)
    assert await asyncio.to_thread(main, ["control", "kill-switch", "on", "--by", "ops", "--database-url", db_url]) == 0
    assert rows(db_url, "select is_on, set_by from control_switches") == [(True, "ops")]
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["control", "explain", account, "--database-url", db_url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "refused" and "credit_not_exhausted" in out["reasons"] and "kill_switch" in out["reasons"]
    assert out["policy"] == ["cn-residential", 1]
