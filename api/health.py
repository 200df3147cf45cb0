"""Health checks: the database (``select 1``) and the MQTT broker (a real MQTT CONNECT).

The broker probe speaks just enough MQTT 3.1.1 over a raw socket: CONNECT with a
clean session, expect CONNACK (0x20 0x02 flags rc), then DISCONNECT. Packet
building and CONNACK parsing are pure functions (tested without a broker).

CONNECT:  0x10 <remaining length> 00 04 'M' 'Q' 'T' 'T' 04 02 <keepalive 2 bytes> <client id as 2-byte-length string>
CONNACK:  0x20 0x02 <session present> <return code: 0 accepted, 1-5 refused>
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

CONNACK_REASONS = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


@dataclass(frozen=True)
class Check:
    ok: bool
    latency_ms: float
    detail: str


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive_s: int = 10) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02" + keepalive_s.to_bytes(2, "big")
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


DISCONNECT = b"\xe0\x00"


def parse_connack(data: bytes) -> int:
    """The CONNACK return code; raises ValueError when ``data`` is not a CONNACK."""
    if len(data) < 4 or data[0] != 0x20 or data[1] != 0x02:
        raise ValueError(f"not a CONNACK: {data[:4].hex()}")
    return data[3]


async def probe_broker(host: str, port: int, timeout_s: float) -> Check:
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(connect_packet(f"headend-health-{id(writer):x}"))
            await writer.drain()
            rc = parse_connack(await reader.readexactly(4))
            writer.write(DISCONNECT)
            await writer.drain()
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        return Check(False, _ms(started), f"{host}:{port}: {type(exc).__name__}: {exc}".rstrip(": "))
    finally:
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
    ok = rc == 0
    return Check(ok, _ms(started), f"{host}:{port}: CONNACK {CONNACK_REASONS.get(rc, rc)}")


async def probe_database(pool: AsyncConnectionPool[Any], timeout_s: float) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with pool.connection(timeout=timeout_s) as conn:
                await conn.execute("select 1")
    except Exception as exc:  # any failure is "down"; the reason is reported
        return Check(False, _ms(started), f"{type(exc).__name__}: {exc}")
    return Check(True, _ms(started), "select 1 ok")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
