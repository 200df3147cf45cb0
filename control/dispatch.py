"""Transports that carry a command to a meter and read its relay back (the I/O edge).

MQTT (docs/interfaces.md §1.4): publish ``<prefix>/v1/meters/<id>/cmd`` (QoS 1) with the
command's correlation id, wait for ``<prefix>/v1/meters/<id>/ack`` carrying the same id,
then read the relay back with a ``status`` command (its ack carries ``relay``). State
reports on ``<prefix>/v1/meters/+/state`` are handed to a callback (relay changes made at
the meter, e.g. the customer pressing the button of an armed meter).

Modbus / SunSpec: find model 123 (immediate controls) by walking the model chain from
40000, write ``Conn`` (+4 from the model's ID register; 0 = disconnect, 1 = connect) with
FC06 (or FC16 when asked), then read it back with FC03::

    40000 "SunS" | ID L body | ID L body | ... | 0xFFFF 0
                   model 123:  +0 ID=123  +1 L=24  +2 Conn_WinTms  +3 Conn_RvrtTms  +4 Conn

Modbus meters have no arm or load limit: ``arm`` closes the relay (direct), load limiting
is not offered (``meters.supports_load_limit`` false). Third-party errors are translated to
:class:`DispatchError`; every network wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from control.errors import DispatchError

logger = logging.getLogger(__name__)

SUNSPEC_BASE = 40000
SUNSPEC_MARKER = (0x5375, 0x6E53)
SUNSPEC_END = 0xFFFF
MODEL_CONTROLS = 123
CONN_OFFSET = 4
MAX_MODELS = 32


@dataclass(frozen=True)
class Ack:
    status: str  # ok | rejected | failed
    relay: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class MeterAddress:
    meter_id: str
    protocol: str
    modbus_host: str | None = None
    modbus_port: int | None = None
    modbus_unit: int | None = None


@dataclass(frozen=True)
class Outgoing:
    correlation_id: str
    action: str
    issued_at: datetime
    expires_at: datetime | None
    limit_w: int | None = None


class Transport(Protocol):
    async def send(self, meter: MeterAddress, cmd: Outgoing, timeout_s: float) -> Ack: ...

    async def read_relay(self, meter: MeterAddress, timeout_s: float) -> str | None: ...


def command_payload(cmd: Outgoing) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1,
        "id": cmd.correlation_id,
        "action": cmd.action,
        "issued_at": cmd.issued_at.astimezone(UTC).isoformat(),
        "expires_at": cmd.expires_at.astimezone(UTC).isoformat() if cmd.expires_at else None,
    }
    if cmd.limit_w is not None:
        payload["limit_w"] = cmd.limit_w
    return payload


class MqttTransport:
    """Commands over MQTT on a paho client whose network loop runs in its own thread.

    The client is given (constructed and connected by the service or test); this adapter
    installs its callbacks, subscribes to acks and state reports, and bridges paho's thread
    to asyncio futures keyed by correlation id.
    """

    def __init__(
        self,
        client: mqtt.Client,
        prefix: str,
        loop: asyncio.AbstractEventLoop,
        on_state: Callable[[str, dict[str, Any]], None] | None = None,
        publisher: mqtt.Client | None = None,
        state_wait_s: float = 0.5,
    ) -> None:
        self._client = client
        # Commands may leave on a connection of their own: the broker then never queues an ack
        # behind its PUBACK to us (Nagle on the broker side costs ~40 ms per round trip).
        self._publisher = publisher or client
        self._state_wait_s = state_wait_s
        self._sent_at: dict[str, float] = {}
        self._states: dict[str, tuple[float, str]] = {}
        self._state_waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._prefix = prefix
        self._loop = loop
        self._on_state = on_state
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._lock = threading.Lock()
        self._subscribed = asyncio.Event()
        self._sub_mids: set[int] = set()
        client.on_message = self._message
        client.on_connect = self._connected
        client.on_subscribe = self._suback
        if client.is_connected():
            no_delay(client)
            self._subscribe()

    def _subscribe(self) -> None:
        # Under the lock: the SUBACK (handled in paho's thread) must find its mid recorded.
        with self._lock:
            result, mid = self._client.subscribe(
                [(f"{self._prefix}/v1/meters/+/ack", 1), (f"{self._prefix}/v1/meters/+/state", 1)]
            )
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._sub_mids.add(mid)

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if not reason.is_failure:
            no_delay(client)
            self._subscribe()

    def _suback(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        with self._lock:
            known = mid in self._sub_mids
        if known:
            self._loop.call_soon_threadsafe(self._subscribed.set)

    async def ready(self, timeout_s: float = 15.0) -> None:
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError as exc:
            raise DispatchError("MQTT subscription not acknowledged") from exc

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 5:
            return
        meter_id, kind = parts[-2], parts[-1]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            logger.warning("unparseable %s from %s", kind, meter_id)
            return
        if not isinstance(body, dict):
            return
        if kind == "ack":
            ack = Ack(str(body.get("status", "failed")), body.get("relay"), body.get("reason"))
            with self._lock:
                fut = self._pending.get(str(body.get("id")))
            if fut is not None:
                self._loop.call_soon_threadsafe(_resolve, fut, ack)
        elif kind == "state":
            relay = body.get("relay")
            if isinstance(relay, str):
                self._loop.call_soon_threadsafe(self._state_report, meter_id, relay)
            if self._on_state is not None:
                self._loop.call_soon_threadsafe(self._on_state, meter_id, body)

    def _state_report(self, meter_id: str, relay: str) -> None:
        self._states[meter_id] = (time.monotonic(), relay)
        for fut in self._state_waiters.pop(meter_id, []):
            if not fut.done():
                fut.set_result(relay)

    async def _request(self, meter_id: str, payload: dict[str, Any], timeout_s: float) -> Ack:
        fut: asyncio.Future[Ack] = self._loop.create_future()
        cid = str(payload["id"])
        with self._lock:
            self._pending[cid] = fut
        try:
            self._sent_at[meter_id] = time.monotonic()
            topic = f"{self._prefix}/v1/meters/{meter_id}/cmd"
            info = self._publisher.publish(topic, json.dumps(payload), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise DispatchError(f"publish to {meter_id} failed: {mqtt.error_string(info.rc)}")
            try:
                return await asyncio.wait_for(fut, timeout_s)
            except TimeoutError as exc:
                raise DispatchError(f"no ack from {meter_id} within {timeout_s}s") from exc
        finally:
            with self._lock:
                self._pending.pop(cid, None)

    async def send(self, meter: MeterAddress, cmd: Outgoing, timeout_s: float) -> Ack:
        return await self._request(meter.meter_id, command_payload(cmd), timeout_s)

    async def read_relay(self, meter: MeterAddress, timeout_s: float) -> str | None:
        """The relay as the meter reports it *after* our last command: its own state report
        (published after every relay change) when one arrives, else a ``status`` request."""
        meter_id = meter.meter_id
        sent = self._sent_at.get(meter_id)
        known = self._states.get(meter_id)
        if sent is not None and known is not None and known[0] >= sent:
            return known[1]
        if sent is not None and self._state_wait_s > 0:
            fut: asyncio.Future[str] = self._loop.create_future()
            self._state_waiters.setdefault(meter_id, []).append(fut)
            try:
                return await asyncio.wait_for(fut, min(self._state_wait_s, timeout_s))
            except TimeoutError:
                pass
            finally:
                waiters = self._state_waiters.get(meter_id, [])
                if fut in waiters:
                    waiters.remove(fut)
        status = Outgoing(str(uuid.uuid4()), "status", datetime.now(UTC), None)
        ack = await self._request(meter.meter_id, command_payload(status), timeout_s)
        return ack.relay if ack.status == "ok" else None


def no_delay(client: mqtt.Client) -> None:
    """Disable Nagle on the client's socket: a command written right after a PUBACK would
    otherwise wait for the broker's delayed ACK (~40 ms on Linux) before leaving."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _resolve(fut: asyncio.Future[Ack], ack: Ack) -> None:
    if not fut.done():
        fut.set_result(ack)


def find_model(block: list[int], model_id: int, base: int = SUNSPEC_BASE) -> int | None:
    """Address of ``model_id``'s ID register in a block read from ``base`` (None if absent)."""
    if tuple(block[:2]) != SUNSPEC_MARKER:
        return None
    i = 2
    for _ in range(MAX_MODELS):
        if i + 1 >= len(block):
            return None
        mid, length = block[i], block[i + 1]
        if mid == SUNSPEC_END:
            return None
        if mid == model_id:
            return base + i
        i += 2 + length
    return None


def _default_modbus_client(host: str, port: int) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(host, port=port, timeout=2, retries=1)


class ModbusTransport:
    """SunSpec model 123 ``Conn`` over Modbus TCP; one client per (host, port), made on demand."""

    def __init__(
        self,
        client_factory: Callable[[str, int], AsyncModbusTcpClient] | None = None,
        use_fc16: bool = False,
    ) -> None:
        self._factory = client_factory or _default_modbus_client
        self._clients: dict[tuple[str, int], AsyncModbusTcpClient] = {}
        self._conn_addr: dict[str, int] = {}
        self._fc16 = use_fc16

    async def _client(self, meter: MeterAddress) -> AsyncModbusTcpClient:
        if not meter.modbus_host or not meter.modbus_port:
            raise DispatchError(f"meter {meter.meter_id} has no Modbus address")
        key = (meter.modbus_host, meter.modbus_port)
        client = self._clients.get(key)
        if client is None:
            client = self._factory(*key)
            self._clients[key] = client
        if not client.connected:
            if not await client.connect():
                raise DispatchError(f"cannot connect to {key[0]}:{key[1]}")
        return client

    async def _read(self, client: AsyncModbusTcpClient, address: int, count: int, unit: int) -> list[int]:
        rr = await client.read_holding_registers(address, count=count, device_id=unit)
        if rr.isError():
            raise DispatchError(f"read {address}+{count} failed: {rr}")
        return list(rr.registers)

    async def _conn_address(self, client: AsyncModbusTcpClient, meter: MeterAddress) -> int:
        cached = self._conn_addr.get(meter.meter_id)
        if cached is not None:
            return cached
        unit = meter.modbus_unit or 1
        address = SUNSPEC_BASE
        head = await self._read(client, address, 2, unit)
        if tuple(head) != SUNSPEC_MARKER:
            raise DispatchError(f"{meter.meter_id}: no SunSpec marker at {SUNSPEC_BASE}")
        address += 2
        for _ in range(MAX_MODELS):
            mid, length = await self._read(client, address, 2, unit)
            if mid == SUNSPEC_END:
                break
            if mid == MODEL_CONTROLS:
                self._conn_addr[meter.meter_id] = address + CONN_OFFSET
                return address + CONN_OFFSET
            address += 2 + length
        raise DispatchError(f"{meter.meter_id}: SunSpec model 123 not found")

    async def send(self, meter: MeterAddress, cmd: Outgoing, timeout_s: float) -> Ack:
        if cmd.action not in ("disconnect", "reconnect", "arm"):
            return Ack("rejected", reason=f"unsupported_over_modbus:{cmd.action}")
        value = 0 if cmd.action == "disconnect" else 1
        try:
            async with asyncio.timeout(timeout_s):
                client = await self._client(meter)
                addr = await self._conn_address(client, meter)
                unit = meter.modbus_unit or 1
                if self._fc16:
                    wr = await client.write_registers(addr, [value], device_id=unit)
                else:
                    wr = await client.write_register(addr, value, device_id=unit)
                if wr.isError():
                    return Ack("rejected", reason=f"modbus_exception:{wr}")
                relay = await self._read_conn(client, addr, unit)
        except (TimeoutError, ModbusException, ConnectionError, OSError) as exc:
            raise DispatchError(f"modbus {meter.meter_id}: {exc}") from exc
        return Ack("ok", relay=relay)

    async def _read_conn(self, client: AsyncModbusTcpClient, addr: int, unit: int) -> str:
        (conn,) = await self._read(client, addr, 1, unit)
        return {0: "disconnected", 1: "connected"}.get(conn, "unknown")

    async def read_relay(self, meter: MeterAddress, timeout_s: float) -> str | None:
        try:
            async with asyncio.timeout(timeout_s):
                client = await self._client(meter)
                addr = await self._conn_address(client, meter)
                return await self._read_conn(client, addr, meter.modbus_unit or 1)
        except (TimeoutError, ModbusException, ConnectionError, OSError) as exc:
            raise DispatchError(f"modbus {meter.meter_id}: {exc}") from exc

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
