"""The MQTT adapter: a paho-mqtt 2.x client in its own network thread.

- MQTT v5, QoS 1, persistent session (clean start off, session expiry set), so
  the broker keeps messages for a collector that is down;
- manual acknowledgement: a message's PUBACK is sent only by :meth:`ack`, which
  the pipeline calls after the rows it carried were committed, so a crash loses
  nothing (the broker redelivers, the writer deduplicates);
- ``ReceiveMaximum`` on CONNECT sets how many unacknowledged messages the broker
  may have in flight to us; a bounded queue between the network thread and the
  asyncio writer gives backpressure (when full, the network thread stops reading);
- shared subscriptions (``$share/<group>/<filter>``) let several collectors split
  the load;
- reconnects back off with ``headend.backoff.delays``; :class:`Health` is the
  small object the service logs (connected, last message, queue depth, lag).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from headend.backoff import delays

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float  # time.monotonic() when the network thread got it


@dataclass
class Health:
    connected: bool = False
    connects: int = 0
    last_message_at: float | None = None  # wall clock (time.time())
    received: int = 0
    committed: int = 0
    quarantined: int = 0
    batches: int = 0
    last_batch_lag_s: float = 0.0  # oldest message in the last batch: received -> committed
    queue_depth: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        age = "never" if self.last_message_at is None else f"{time.time() - self.last_message_at:.1f}s ago"
        return (
            f"connected={self.connected} last_message={age} received={self.received} committed={self.committed}"
            f" quarantined={self.quarantined} queue={self.queue_depth} lag={self.last_batch_lag_s:.3f}s"
        )


@dataclass(frozen=True, slots=True)
class MqttOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "headend-ingest"
    topics: Sequence[str] = ()
    share_group: str = ""
    session_expiry_s: int = 86_400
    receive_maximum: int = 10_000
    keepalive_s: int = 30
    queue_size: int = 50_000
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


class MqttCollector:
    """Receives messages into a bounded queue; acknowledges them on request."""

    def __init__(self, options: MqttOptions, client: paho.Client | None = None) -> None:
        self.options = options
        self.client = client or paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.queue: queue.Queue[Message] = queue.Queue(maxsize=options.queue_size)
        self.health = Health()
        self._stop = threading.Event()
        self._connected = threading.Event()
        # paho is driven by our own thread (client.loop), so every client call is made
        # from that thread: acks and publishes are handed over through these deques.
        self._acks: collections.deque[tuple[int, int]] = collections.deque()
        self._outbox: collections.deque[tuple[str, bytes, int]] = collections.deque()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- paho thread
    def _filters(self) -> list[str]:
        group = self.options.share_group
        return [f"$share/{group}/{t}" if group else t for t in self.options.topics]

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.health.last_error = f"connack {reason}"
            logger.warning("MQTT connect refused: %s", reason)
            return
        self.health.connected = True
        self.health.connects += 1
        self._connected.set()
        logger.info(
            "MQTT connected to %s:%s as %s (session present: %s)",
            self.options.host,
            self.options.port,
            self.options.client_id,
            getattr(flags, "session_present", None),
        )
        if self._filters():
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._filters()])

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.health.connected and not self._stop.is_set():
            logger.warning("MQTT disconnected: %s", reason)
        self.health.connected = False
        self._connected.clear()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        item = Message(msg.mid, msg.qos, msg.topic, payload, time.monotonic())
        self.health.received += 1
        self.health.last_message_at = time.time()
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.5)  # full: block the network thread (backpressure)
                return
            except queue.Full:
                continue

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.options.session_expiry_s
        props.ReceiveMaximum = self.options.receive_maximum
        return props

    def _run(self) -> None:
        waits = delays(self.options.backoff_base_s, self.options.backoff_cap_s)
        while not self._stop.is_set():
            try:
                self.client.connect(
                    self.options.host,
                    self.options.port,
                    keepalive=self.options.keepalive_s,
                    clean_start=False,
                    properties=self._connect_properties(),
                )
            except OSError as exc:
                self.health.last_error = str(exc)
                wait = next(waits)
                logger.warning(
                    "MQTT connect to %s:%s failed (%s); retry in %.1fs", self.options.host, self.options.port, exc, wait
                )
                self._stop.wait(wait)
                continue
            rc = paho.MQTT_ERR_SUCCESS
            while not self._stop.is_set() and rc == paho.MQTT_ERR_SUCCESS:
                rc = self.client.loop(timeout=0.02)
                if rc == paho.MQTT_ERR_SUCCESS:
                    rc = self._read_burst()
                self._send_pending()
                if self.health.connected:
                    waits = delays(self.options.backoff_base_s, self.options.backoff_cap_s)
            if self._stop.is_set():
                break
            self.health.connected = False
            wait = next(waits)
            logger.warning("MQTT connection lost (%s); reconnect in %.1fs", paho.error_string(rc), wait)
            self._stop.wait(wait)
        try:
            self._send_pending()
            self.client.disconnect()
            for _ in range(5):  # flush the DISCONNECT (and any last PUBACKs)
                if self.client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                    break
        except Exception:  # pragma: no cover - best effort on shutdown
            logger.debug("MQTT disconnect failed", exc_info=True)

    def _read_burst(self, max_packets: int = 2000) -> MQTTErrorCode:
        """Read the packets already waiting on the socket without a select() per packet.

        paho's loop() reads one packet per call; under load that is one select() per
        message. ``_packet_read`` is paho's own non-blocking reader (paho is pinned < 3).
        """
        for _ in range(max_packets):
            rc = self.client._packet_read()
            if rc == paho.MQTT_ERR_AGAIN:
                return paho.MQTT_ERR_SUCCESS
            if rc != paho.MQTT_ERR_SUCCESS:
                return rc
        return paho.MQTT_ERR_SUCCESS

    def _send_pending(self) -> None:
        acks, outbox = self._acks, self._outbox
        while acks:
            mid, qos = acks.popleft()
            self.client.ack(mid, qos)
        while outbox:
            topic, payload, qos = outbox.popleft()
            self.client.publish(topic, payload, qos=qos)

    # ---------------------------------------------------------------- asyncio side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-mqtt-network", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.client._reset_sockets()  # paho keeps its wake-up socket pair open until __del__

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def take(self, max_items: int, timeout: float) -> list[Message]:
        """Blocking: the first message (waiting up to ``timeout``), then whatever else is queued."""
        out: list[Message] = []
        try:
            out.append(self.queue.get(timeout=timeout))
        except queue.Empty:
            return out
        self.drain(out, max_items)
        return out

    def drain(self, out: list[Message], max_items: int) -> list[Message]:
        """Non-blocking: move queued messages into ``out`` up to ``max_items``."""
        get = self.queue.get_nowait
        try:
            while len(out) < max_items:
                out.append(get())
        except queue.Empty:
            pass
        self.health.queue_depth = self.queue.qsize()
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledge messages whose rows are committed (sent by the network thread)."""
        self._acks.extend((m.mid, m.qos) for m in messages if m.qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._outbox.append((topic, payload, qos))
