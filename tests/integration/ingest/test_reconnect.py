"""Reconnect with backoff: the broker is unreachable, then reachable, then the link drops and comes back.

A small TCP proxy in front of the real Mosquitto plays the network: closed, open, cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from ingest.decode import subscriptions
from ingest.dispatch import Prefixes
from ingest.mqtt import MqttCollector, MqttOptions
from ingest.service import MqttIngest
from ingest.store import BatchWriter

from .conftest import query
from .modbus_sim import free_port
from .test_mqtt import T0, Publisher, reading, wait_for

pytestmark = pytest.mark.integration


class Proxy:
    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server: asyncio.Server | None = None
        self.links: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.links:
            w.close()
        self.links.clear()
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None


async def test_collector_reconnects_and_resumes_its_session(
    pool: AsyncConnectionPool[Any], fleet: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    port = free_port()
    proxy = Proxy(port, (mqtt_host, mqtt_port))
    options = MqttOptions(
        host="127.0.0.1",
        port=port,
        client_id=f"reconnect-{uuid.uuid4().hex[:8]}",
        topics=subscriptions(native_prefix=mqtt_prefix)[:3],
        session_expiry_s=60,
        keepalive_s=5,
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
    )
    coll = MqttCollector(options)
    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    task = asyncio.create_task(MqttIngest(coll, writer, prefixes=Prefixes(mqtt_prefix), linger_s=0.01).run())
    coll.start()
    pub = Publisher(mqtt_host, mqtt_port)
    topic = f"{mqtt_prefix}/v1/meters/M-1/readings"
    try:
        await asyncio.sleep(1.0)
        assert not coll.health.connected and coll.health.last_error  # nothing listens yet: backing off
        await proxy.open()
        await wait_for(lambda: coll.health.connected, 10)
        await asyncio.sleep(0.3)  # SUBACK
        pub.publish(topic, reading(T0.isoformat(), 1000))
        await wait_for(lambda: query(fleet, "select count(*) from readings")[0][0] == 1)

        await proxy.close()  # the link drops; the broker keeps the session
        await wait_for(lambda: not coll.health.connected, 15)
        pub.publish(topic, reading(T0.replace(minute=15).isoformat(), 1100))  # while we are away
        await proxy.open()
        await wait_for(lambda: coll.health.connected and coll.health.connects == 2, 15)
        await wait_for(lambda: query(fleet, "select count(*) from readings")[0][0] == 2)
    finally:
        pub.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(coll.stop)
        await proxy.close()
