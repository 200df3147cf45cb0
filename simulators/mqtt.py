"""The MQTT shell of the fleet: one (or a few) paho-mqtt 2.x clients for thousands of meters.

A fleet does not open one connection per meter: it publishes every meter's messages through
``client_count`` shared clients (a topic always goes through the same client, so each topic's
order is kept) and subscribes once to ``<prefix>/v1/meters/+/cmd`` for all its meters.

paho runs its network loop in its own thread (``loop_start``); received commands cross into
asyncio with ``call_soon_threadsafe`` onto a bounded queue. ``drain()`` waits until paho has
written everything out, which is the fleet's backpressure: a tick's messages are on the wire
before the next tick is produced. Reconnects are paho's, with capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.driver import Outgoing
from simulators.errors import SimulatorError

logger = logging.getLogger(__name__)


class MqttLink:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        subscribe: Sequence[str] = (),
        client_count: int = 1,
        client_id: str | None = None,
        connect_timeout_s: float = 10.0,
        max_incoming: int = 100_000,
    ) -> None:
        self.host, self.port = host, port
        self.topics = list(subscribe)
        self.client_count = max(1, client_count)
        self.client_id = client_id or f"headend-sim-{os.getpid()}-{id(self) & 0xFFFF:x}"
        self.connect_timeout_s = connect_timeout_s
        self.incoming: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(max_incoming)
        self.clients: list[mqtt.Client] = []
        self.published = 0
        self.failed = 0
        self.incoming_dropped = 0
        self._connected: list[asyncio.Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> MqttLink:
        self._loop = asyncio.get_running_loop()
        for n in range(self.client_count):
            event = asyncio.Event()
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.client_id}-{n}", clean_session=True)
            client.max_queued_messages_set(0)
            client.max_inflight_messages_set(1000)  # QoS 1 readings: a window, not one at a time
            client.reconnect_delay_set(1, 30)
            client.on_connect = self._on_connect(event, subscribe=(n == 0))
            client.on_disconnect = self._on_disconnect(event)
            if n == 0:
                client.on_message = self._on_message
            client.connect_async(self.host, self.port, keepalive=30)
            client.loop_start()
            self.clients.append(client)
            self._connected.append(event)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await asyncio.gather(*(e.wait() for e in self._connected))
        except TimeoutError:
            await self.close()
            raise SimulatorError(f"MQTT broker {self.host}:{self.port} not reachable") from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for client in self.clients:
            client.disconnect()
        for client in self.clients:
            await asyncio.to_thread(client.loop_stop)
        self.clients.clear()

    # paho thread -> asyncio
    def _on_connect(self, event: asyncio.Event, *, subscribe: bool) -> Any:
        def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if getattr(reason, "is_failure", False):
                logger.warning("MQTT connect refused: %s", reason)
                return
            if subscribe:
                for topic in self.topics:
                    client.subscribe(topic, qos=1)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(event.set)

        return on_connect

    def _on_disconnect(self, event: asyncio.Event) -> Any:
        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(event.clear)
            logger.info("MQTT disconnected: %s", reason)

        return on_disconnect

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._put, msg.topic, bytes(msg.payload))

    def _put(self, topic: str, payload: bytes) -> None:
        try:
            self.incoming.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.incoming_dropped += 1

    # asyncio -> broker
    def _client_for(self, topic: str) -> mqtt.Client:
        if self.client_count == 1:
            return self.clients[0]
        return self.clients[zlib.crc32(topic.encode()) % self.client_count]

    def publish(self, messages: Sequence[Outgoing]) -> int:
        """Hand messages to paho (non-blocking); returns how many it refused (not connected)."""
        failed = 0
        for m in messages:
            info = self._client_for(m.topic).publish(m.topic, m.payload, qos=m.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                failed += 1
        self.published += len(messages) - failed
        self.failed += failed
        return failed

    @property
    def connected(self) -> bool:
        return bool(self.clients) and all(c.is_connected() for c in self.clients)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until paho has written out everything handed to it (True) or the timeout passed."""
        try:
            async with asyncio.timeout(timeout_s):
                while any(c.want_write() for c in self.clients):  # noqa: ASYNC110 - paho thread state, no event
                    await asyncio.sleep(0.002)
        except TimeoutError:
            return False
        return True
