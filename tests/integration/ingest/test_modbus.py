"""The Modbus poller against real pymodbus servers on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from ingest.modbus import ModbusPoller
from ingest.store import BatchWriter

from .conftest import query, register_fleet
from .modbus_sim import free_port, sdm_block, start_server, sunspec_block

pytestmark = pytest.mark.integration

ROOT = str(Path(__file__).resolve().parents[3])


async def eventually(check: Callable[[], bool], within_s: float = 20.0, debug: Callable[[], Any] | None = None) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"condition not reached in time; {debug() if debug else ''}"
        await asyncio.sleep(0.1)


async def test_poller_sunspec_sdm_relay_and_comms_episodes(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    port_a, port_b = free_port(), free_port()
    common = {"protocol": "modbus", "modbus_host": "127.0.0.1", "poll_interval_s": 1}
    register_fleet(
        fleet,
        {
            "MB-1": {**common, "model": "sunspec", "modbus_port": port_a, "modbus_unit": 1, "modbus_map": "sunspec"},
            "MB-2": {**common, "model": "sdm630", "modbus_port": port_a, "modbus_unit": 2, "modbus_map": "sdm630"},
            "MB-3": {**common, "model": "sunspec", "modbus_port": port_b, "modbus_unit": 1, "modbus_map": "sunspec"},
        },
    )
    sunspec, sdm = sunspec_block(), sdm_block()
    server_a = await start_server(port_a, {1: sunspec, 2: sdm})
    server_b = None
    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    poller = ModbusPoller(pool, writer, timeout_s=0.5, backoff_cap_s=1.0, lost_after=3, linger_s=0.02)
    await poller.load()
    task = asyncio.create_task(poller.run(), name="test-poller")

    def count(sql: str) -> int:
        return int(query(fleet, sql)[0][0])

    try:
        await eventually(lambda: count("select count(distinct ts) from readings where meter_id = 'MB-1'") >= 2)
        await eventually(lambda: count("select count(*) from meter_events where kind = 'comms_lost'") == 1)
        values = dict(query(fleet, "select obis, value from readings where meter_id = 'MB-1' order by ts limit 10"))
        assert values["1-0:1.8.0"] == 12345678.0 and values["1-0:14.7.0"] == 50.02
        assert query(fleet, "select value from readings where meter_id = 'MB-2' and obis = '1-0:1.8.0' limit 1") == [
            (1290396.0,)
        ]
        # the energy register advances, the relay opens
        sunspec.set(40070 + 46, 12345678 >> 16, (12345678 + 250) & 0xFFFF)
        sunspec.set(40177 + 4, 0)
        await eventually(
            lambda: count("select count(*) from readings where meter_id = 'MB-1' and value = 12345928") >= 1
        )
        await eventually(lambda: count("select count(*) from meter_events where kind = 'relay_change'") == 1)
        assert query(fleet, "select detail->>'relay' from meter_events where kind = 'relay_change'") == [
            ("disconnected",)
        ]
        # the silent meter comes back
        assert query(fleet, "select comms_state from meters where id = 'MB-3'") == [("lost",)]
        server_b = await start_server(port_b, {1: sunspec_block()})
        await eventually(lambda: count("select count(*) from readings where meter_id = 'MB-3'") > 0)
        await eventually(lambda: count("select count(*) from meter_events where kind = 'comms_restored'") == 1)
        await asyncio.sleep(1.5)
        events = query(fleet, "select meter_id, kind from meter_events where kind like 'comms%' order by ts")
        assert events == [("MB-3", "comms_lost"), ("MB-3", "comms_restored")]
        assert query(fleet, "select comms_state from meters where id = 'MB-3'") == [("online",)]
        assert count("select count(*) from quarantine") == 0
        # billing hand-off for polled readings too, once per reading
        assert count("select count(*) from billing_queue where meter_id = 'MB-1'") == count(
            "select count(*) from readings where meter_id = 'MB-1' and obis = '1-0:1.8.0'"
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server_a.shutdown()
        if server_b is not None:
            await server_b.shutdown()


async def test_wrong_map_is_quarantined_with_raw_registers(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    port = free_port()
    register_fleet(
        fleet,
        {
            "MB-9": {
                "protocol": "modbus",
                "modbus_host": "127.0.0.1",
                "modbus_port": port,
                "modbus_unit": 1,
                "modbus_map": "sunspec",
                "poll_interval_s": 1,
            }
        },
    )
    server = await start_server(port, {1: sunspec_block()})
    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    poller = ModbusPoller(pool, writer, timeout_s=0.5)
    await poller.load()
    state = poller.states["MB-9"]
    try:
        item = await poller.poll(state)
        assert item.decoded is not None and len(item.decoded.readings) == 10
        state.models[203] = state.models[1]  # a meter whose map changed under us
        bad = await poller.poll(state)
        assert bad.reason is not None and bad.reason.startswith("register_map")
        assert len(bad.payload) == 2 * 55  # the raw registers of the poll read
        assert state.models == {}  # rediscovered on the next poll
        again = await poller.poll(state)
        assert again.decoded is not None
    finally:
        poller.close()
        await server.shutdown()


async def test_serve_modbus_process_polls_and_stops_cleanly(fleet: str, tmp_path: Path) -> None:
    """``headend run ingest-modbus`` as a process: polls a registered meter, exits 0 on SIGTERM."""
    port = free_port()
    register_fleet(
        fleet,
        {
            "MB-7": {
                "protocol": "modbus",
                "modbus_host": "127.0.0.1",
                "modbus_port": port,
                "modbus_unit": 3,
                "modbus_map": "sdm630",
                "poll_interval_s": 1,
            }
        },
    )
    server = await start_server(port, {3: sdm_block()})
    log = tmp_path / "modbus.log"
    env = {**os.environ, "HEADEND_DATABASE_URL": fleet}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "headend",
            "run",
            "ingest-modbus",
            env=env,
            stdout=out,
            stderr=out,
            cwd=ROOT,
        )
    try:
        await eventually(lambda: int(query(fleet, "select count(distinct ts) from readings")[0][0]) >= 2, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
        await server.shutdown()
    assert rc == 0, log.read_text()
    assert query(fleet, "select value from readings where obis = '1-0:1.8.0' limit 1") == [(1290396.0,)]
