"""The Modbus TCP poller (pymodbus 3.16 ``AsyncModbusTcpClient``).

Polls every meter with ``protocol = 'modbus'`` on its own schedule
(``poll_interval_s``), at most ``concurrency`` requests at once, each with a
timeout. Register maps are data (``registers_sunspec``, ``registers_sdm``); the
map is the meter's ``modbus_map``: ``sunspec`` (model 1 + 203, model 123 Conn
for the relay state) or ``sdm630`` / ``sdm120``.

A meter that does not answer is retried with capped, jittered backoff; after
``lost_after`` consecutive failures it is marked ``comms_state = 'lost'`` with one
``comms_lost`` event; the first good poll after that restores it (the batch
writer records the one ``comms_restored`` event). Poll results go through the
same :class:`~ingest.store.BatchWriter` as MQTT messages, in batches. A register
block that does not decode is quarantined with its raw registers.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from headend.backoff import delays
from ingest.errors import PollError, RegisterMapError
from ingest.models import Decoded, Event, Item, Reading
from ingest.registers_sdm import BLOCK_COUNT, BLOCK_START, decode_sdm
from ingest.registers_sunspec import (
    BASE,
    CONTROLS,
    M203_READ,
    MARKER,
    METER_WYE,
    ModelLocation,
    decode_conn,
    decode_meter_203,
    model_header,
)
from ingest.store import TRANSIENT, BatchWriter, utc_now, write_resilient

logger = logging.getLogger(__name__)

MAPS = ("sunspec", "sdm630", "sdm120")
MAX_MODELS = 32  # a SunSpec chain longer than this is treated as broken

_METERS = """
select id, modbus_host, coalesce(modbus_port, 502), coalesce(modbus_unit, 1), coalesce(modbus_map, 'sunspec'),
       poll_interval_s
from meters where protocol = 'modbus' and modbus_host is not null
"""

_LOST = """
with lost as (
    update meters set comms_state = 'lost' where id = %(id)s and comms_state <> 'lost' returning id
)
insert into meter_events (meter_id, ts, kind, detail, source)
select id, %(now)s, 'comms_lost', %(detail)s, 'modbus' from lost
on conflict do nothing
returning meter_id
"""


@dataclass(frozen=True, slots=True)
class ModbusMeter:
    meter_id: str
    host: str
    port: int
    unit: int
    register_map: str
    interval_s: float


@dataclass
class _State:
    meter: ModbusMeter
    next_due: float = 0.0
    slot: float = 0.0  # the due time of the poll in flight (the schedule does not drift)
    failures: int = 0
    lost: bool = False  # this episode's comms_lost is recorded
    waits: Iterator[float] | None = None
    client: AsyncModbusTcpClient | None = None
    models: dict[int, ModelLocation] = field(default_factory=dict)
    relay: str | None = None


@dataclass
class PollerHealth:
    polls: int = 0
    failures: int = 0
    lost: int = 0
    batches: int = 0
    last_batch_lag_s: float = 0.0

    def line(self) -> str:
        return f"polls={self.polls} failures={self.failures} lost_now={self.lost} batches={self.batches}"


ClientFactory = Callable[[ModbusMeter, float], AsyncModbusTcpClient]


def in_shard(meter_id: str, shard: int, shards: int) -> bool:
    """Whether poller ``shard`` of ``shards`` owns a meter (a stable hash of its id)."""
    return shards <= 1 or zlib.crc32(meter_id.encode()) % shards == shard


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` (0 <= k < n) -> (k, n); empty -> (0, 1)."""
    if not text:
        return 0, 1
    k, _, n = text.partition("/")
    shard, shards = int(k), int(n)
    if not 0 <= shard < shards:
        raise ValueError(f"bad shard {text!r}: need k/n with 0 <= k < n")
    return shard, shards


def tcp_client(meter: ModbusMeter, timeout_s: float) -> AsyncModbusTcpClient:
    # reconnect_delay=0: no background reconnect task; the poller reconnects on its schedule.
    return AsyncModbusTcpClient(meter.host, port=meter.port, timeout=timeout_s, retries=0, reconnect_delay=0)


def _raw(registers: list[int]) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


class ModbusPoller:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        writer: BatchWriter,
        *,
        concurrency: int = 64,
        timeout_s: float = 2.0,
        backoff_cap_s: float = 300.0,
        read_relay: bool = True,
        lost_after: int = 3,
        batch_size: int = 2000,
        linger_s: float = 0.1,
        reload_s: float = 60.0,
        shard: tuple[int, int] = (0, 1),
        interval_override_s: float | None = None,
        client_factory: ClientFactory = tcp_client,
        clock: Callable[[], Any] | None = None,
    ) -> None:
        self.pool = pool
        self.writer = writer
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.read_relay = read_relay
        self.lost_after = lost_after
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.reload_s = reload_s
        self.shard = shard
        self.interval_override_s = interval_override_s
        self.client_factory = client_factory
        self.clock = clock or utc_now
        self.states: dict[str, _State] = {}
        self.health = PollerHealth()
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._results: asyncio.Queue[tuple[Item, float]] = asyncio.Queue(maxsize=10 * batch_size)

    # ------------------------------------------------------------------ meters
    async def load(self) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_METERS)
            rows = await cur.fetchall()
        seen = set()
        for r in rows:
            interval = self.interval_override_s or float(r[5])
            meter = ModbusMeter(r[0], r[1], int(r[2]), int(r[3]), str(r[4]).lower(), interval)
            if not in_shard(meter.meter_id, *self.shard):
                continue
            if meter.register_map not in MAPS:
                logger.error("meter %s: unknown modbus_map %r; not polled", meter.meter_id, meter.register_map)
                continue
            seen.add(meter.meter_id)
            state = self.states.get(meter.meter_id)
            if state is None or state.meter != meter:
                if state is not None:
                    self._close(state)
                due = time.monotonic()
                self.states[meter.meter_id] = _State(meter, next_due=due)
                heapq.heappush(self._heap, (due, meter.meter_id))
        for gone in set(self.states) - seen:
            self._close(self.states.pop(gone))
        self._wake.set()

    def poll_now(self, meter_id: str) -> None:
        """Poll a meter as soon as possible (a gap was found: ask again)."""
        state = self.states.get(meter_id)
        if state is not None and state.next_due != float("inf"):  # not while a poll is in flight
            state.next_due = time.monotonic()
            heapq.heappush(self._heap, (state.next_due, meter_id))
            self._wake.set()

    @staticmethod
    def _close(state: _State) -> None:
        if state.client is not None:
            state.client.close()
            state.client = None

    def close(self) -> None:
        for state in self.states.values():
            self._close(state)

    # ------------------------------------------------------------------ one poll
    async def _read(self, state: _State, address: int, count: int, *, holding: bool) -> list[int]:
        m = state.meter
        if state.client is None or not state.client.connected:
            if state.client is None:
                state.client = self.client_factory(m, self.timeout_s)
            async with asyncio.timeout(self.timeout_s * 2):
                ok = await state.client.connect()
            if not ok:
                raise PollError(f"cannot connect to {m.host}:{m.port}")
        read = state.client.read_holding_registers if holding else state.client.read_input_registers
        async with asyncio.timeout(self.timeout_s * 2):
            rr = await read(address, count=count, device_id=m.unit)
        if rr.isError():
            raise PollError(f"exception response {rr}")
        return list(rr.registers)

    async def _discover(self, state: _State) -> dict[int, ModelLocation]:
        """Walk the SunSpec model chain header by header (never reads past the end marker)."""
        if tuple(await self._read(state, BASE, 2, holding=True)) != MARKER:
            raise RegisterMapError(f"no SunS marker at {BASE}")
        models: dict[int, ModelLocation] = {}
        address = BASE + 2
        for _ in range(MAX_MODELS):
            model_id, length = await self._read(state, address, 2, holding=True)
            loc = model_header(address, model_id, length)
            if loc is None:
                break
            models.setdefault(model_id, loc)
            address += loc.span
        if METER_WYE not in models:
            raise RegisterMapError(f"no model 203 in the SunSpec chain (models {sorted(models)})")
        return models

    async def poll(self, state: _State) -> Item:
        """Read a meter once: an item with its readings (or a quarantine reason). Raises PollError."""
        m = state.meter
        topic = f"modbus://{m.host}:{m.port}/{m.unit}"
        regs: list[int] = []
        try:
            if m.register_map == "sunspec":
                if not state.models:
                    state.models = await self._discover(state)
                loc = state.models[METER_WYE]
                regs = await self._read(state, loc.address, M203_READ, holding=True)
                values = decode_meter_203(regs)
                events: list[Event] = []
                ctl = state.models.get(CONTROLS)
                now = self.clock()
                if self.read_relay and ctl is not None:
                    relay = decode_conn(await self._read(state, ctl.address, 5, holding=True))
                    if relay is not None and state.relay is not None and relay != state.relay:
                        events.append(Event(m.meter_id, now, "relay_change", {"relay": relay, "source": "model123"}))
                    state.relay = relay
            else:
                regs = await self._read(state, BLOCK_START, BLOCK_COUNT, holding=False)
                values = decode_sdm(regs)
                events = []
                now = self.clock()
        except RegisterMapError as exc:
            state.models = {}
            return Item("modbus", topic, _raw(regs), reason=f"register_map: {exc}", meter_id=m.meter_id)
        except (ModbusException, OSError, TimeoutError) as exc:
            raise PollError(f"{type(exc).__name__}: {exc}") from exc
        ts = now.replace(microsecond=(now.microsecond // 1000) * 1000)
        readings = tuple(Reading(m.meter_id, obis, ts, v) for obis, v in values.items())
        return Item("modbus", topic, b"", decoded=Decoded(readings, tuple(events)), meter_id=m.meter_id)

    async def _poll_one(self, state: _State, sem: asyncio.Semaphore) -> None:
        try:
            started = time.monotonic()
            try:
                item = await self.poll(state)
            except PollError as exc:
                await self._failed(state, exc)
                return
            self.health.polls += 1
            if state.failures:
                logger.info("meter %s answers again after %d failure(s)", state.meter.meter_id, state.failures)
            if state.lost:
                self.health.lost -= 1
            state.failures, state.waits, state.lost = 0, None, False
            self._schedule(state, state.meter.interval_s, started)
            await self._results.put((item, started))
        finally:
            sem.release()

    async def _failed(self, state: _State, exc: Exception) -> None:
        m = state.meter
        self._close(state)
        state.models = {} if state.failures else state.models
        state.failures += 1
        self.health.failures += 1
        if state.waits is None:
            state.waits = delays(min(m.interval_s, 5.0), max(self.backoff_cap_s, 5.0))
        wait = min(next(state.waits), max(m.interval_s, self.backoff_cap_s))
        self._schedule(state, wait, time.monotonic())
        if state.failures == 1:
            logger.info("meter %s did not answer (%s); retry in %.1fs", m.meter_id, exc, wait)
        if state.failures >= self.lost_after and not state.lost:
            detail = json.dumps({"error": str(exc)[:200], "failures": state.failures})
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(_LOST, {"id": m.meter_id, "now": self.clock(), "detail": detail})
                    if await cur.fetchall():
                        logger.warning("meter %s went silent: %s", m.meter_id, exc)
            except TRANSIENT as db_exc:  # recorded at the next failure instead
                logger.warning("could not record comms_lost of %s: %s", m.meter_id, db_exc)
                return
            state.lost = True
            self.health.lost += 1

    def _schedule(self, state: _State, delay_s: float, started: float) -> None:
        due = state.slot + delay_s if state.failures == 0 else started + delay_s
        if due < time.monotonic():
            due = time.monotonic() + (delay_s if state.failures else 0.0)
        state.next_due = due
        heapq.heappush(self._heap, (due, state.meter.meter_id))
        self._wake.set()

    # ------------------------------------------------------------------ loops
    async def _schedule_loop(self, tg: asyncio.TaskGroup) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                due, meter_id = heapq.heappop(self._heap)
                state = self.states.get(meter_id)
                if state is None or due != state.next_due:
                    continue  # stale heap entry
                state.slot, state.next_due = due, float("inf")  # in flight
                await sem.acquire()
                tg.create_task(self._poll_one(state, sem), name=f"modbus-poll-{meter_id}")
            self._wake.clear()
            wait = self._heap[0][0] - time.monotonic() if self._heap else 1.0
            if wait > 0:
                try:
                    async with asyncio.timeout(min(wait, 1.0)):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _write_loop(self) -> None:

        while True:
            batch = [await self._results.get()]
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._results.get_nowait())
                except asyncio.QueueEmpty:
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.005)
            await self.commit(batch)

    async def commit(self, batch: list[tuple[Item, float]]) -> None:
        result = await write_resilient(self.writer, [i for i, _ in batch], self.clock)
        self.health.batches += 1
        self.health.last_batch_lag_s = time.monotonic() - min(t for _, t in batch)
        for meter_id in result.restored:
            logger.info("meter %s is heard from again", meter_id)
        for gap in result.rereads:
            self.poll_now(gap.meter_id)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            try:
                await self.load()
                await self.writer.refresh_directory(force=True)
            except TRANSIENT as exc:
                logger.warning("meter reload skipped: %s", exc)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write_loop(), name="modbus-writer")
                tg.create_task(self._reload_loop(), name="modbus-reload")
                await self._schedule_loop(tg)
        finally:
            pending: list[tuple[Item, float]] = []
            while not self._results.empty():
                pending.append(self._results.get_nowait())
            if pending:
                try:
                    await asyncio.wait_for(self.commit(pending), 15.0)  # bounded, like the MQTT flush
                except Exception:
                    logger.exception("final Modbus flush failed; those polls are lost (the meters are read again)")
            self.close()
