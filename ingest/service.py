"""The ingest services: ``serve_mqtt`` (the MQTT collector) and ``serve_modbus`` (the poller).

Each is one ``async with`` block: the pool opened explicitly, the clients, and a
TaskGroup of named tasks. Cancellation (SIGTERM via ``headend run``) flushes the
batch in hand and whatever is queued, acknowledges it, then closes.

MQTT pipeline: network thread -> bounded queue -> batch (size or linger time) ->
decode -> :class:`~ingest.store.BatchWriter` (one transaction) -> PUBACK of the
batch's messages -> re-read commands for gaps. A database outage keeps the batch
in hand and retries with backoff: nothing is acknowledged that is not committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from headend.clock import clock_from_env
from ingest.decode import subscriptions
from ingest.dispatch import Prefixes, decode_message
from ingest.modbus import ModbusPoller, parse_shard
from ingest.models import Item
from ingest.mqtt import MqttCollector, MqttOptions
from ingest.settings import IngestSettings
from ingest.store import TRANSIENT, BatchWriter, WriteResult, utc_now, write_resilient
from ingest.validation import Finding

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
FINAL_FLUSH_S = 15.0  # how long SIGTERM waits for the last batch to commit


_STALE = """
with lost as (
    update meters set comms_state = 'lost'
    where protocol = 'mqtt' and comms_state = 'online'
      and last_seen_at < %(now)s - make_interval(secs => poll_interval_s * %(factor)s)
    returning id, last_seen_at
)
insert into meter_events (meter_id, ts, kind, detail, source)
select id, %(now)s, 'comms_lost', jsonb_build_object('last_seen_at', last_seen_at), 'ingest' from lost
on conflict do nothing
returning meter_id
"""


def read_now_command(finding: Finding, now: datetime) -> dict[str, Any]:
    """The ``read_now`` command that asks a meter to publish a gap's readings again."""
    return {
        "v": 1,
        "id": f"reread:{finding.meter_id}:{finding.detail['from']}",
        "action": "read_now",
        "issued_at": now.isoformat(),
        "expires_at": (now + timedelta(minutes=15)).isoformat(),
        "from": finding.detail["from"],
        "to": finding.detail["to"],
    }


class MqttIngest:
    """Batches messages from the collector into the writer; acknowledges after commit."""

    def __init__(
        self,
        collector: MqttCollector,
        writer: BatchWriter,
        *,
        prefixes: Prefixes,
        batch_size: int = 10_000,
        linger_s: float = 0.05,
        reread: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        self.collector = collector
        self.writer = writer
        self.prefixes = prefixes
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.reread = reread
        self.clock = clock

    async def run(self) -> None:
        pending: list[Any] = []
        try:
            while True:
                pending = await asyncio.to_thread(self.collector.take, self.batch_size, 0.5)
                if not pending:
                    continue
                deadline = time.monotonic() + self.linger_s
                while len(pending) < self.batch_size and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                    self.collector.drain(pending, self.batch_size)
                await self.commit(pending)
                pending = []
        except asyncio.CancelledError:
            self.collector.drain(pending, 10**9)
            if pending:
                logger.info("flushing %d message(s) before stopping", len(pending))
                try:
                    # bounded: a database outage must not keep the process from stopping
                    await asyncio.wait_for(self.commit(pending), FINAL_FLUSH_S)
                except Exception:
                    logger.exception("final flush failed; the broker will redeliver")
            raise

    def decode(self, messages: Sequence[Any]) -> list[Item]:
        directory = self.writer.directory
        items: list[Item] = []
        for m in messages:
            try:
                items.append(decode_message(m.topic, m.payload, directory, self.prefixes))
            except Exception as exc:  # a decoder bug must not stop the collector (or loop on redelivery)
                logger.exception("decoder failed on a message from %s", m.topic)
                items.append(
                    Item("mqtt", m.topic, m.payload, reason=f"decode_crash: {type(exc).__name__}: {exc}"[:500])
                )
        return items

    async def commit(self, messages: Sequence[Any]) -> WriteResult:
        items = self.decode(messages)
        if any(i.reason and i.reason.startswith("unknown_device") for i in items):
            if await self.writer.refresh_directory():
                items = self.decode(messages)
        result = await write_resilient(self.writer, items, self.clock)
        self.collector.ack(messages)
        health = self.collector.health
        health.committed += len(messages)
        health.quarantined += result.quarantined
        health.batches += 1
        health.last_batch_lag_s = time.monotonic() - min(m.received for m in messages)
        for meter_id in result.restored:
            logger.info("meter %s is heard from again", meter_id)
        if self.reread:
            self.request_rereads(result.rereads)
        return result

    def request_rereads(self, gaps: Sequence[Finding]) -> None:
        now = self.clock()
        for gap in gaps:
            meter = self.writer.directory.by_id.get(gap.meter_id)
            if meter is None or meter.protocol != "mqtt":
                continue
            topic = f"{self.prefixes.native}/v1/meters/{gap.meter_id}/cmd"
            self.collector.publish(topic, json.dumps(read_now_command(gap, now)).encode())
            logger.info("gap %s..%s on %s: read_now requested", gap.detail["from"], gap.detail["to"], gap.meter_id)


async def sweep_stale(pool: AsyncConnectionPool[Any], now: datetime, factor: float) -> list[str]:
    """Mark silent MQTT meters ``lost`` (one comms_lost event per episode)."""
    async with pool.connection() as conn:
        cur = await conn.execute(_STALE, {"now": now, "factor": factor})
        lost = [r[0] for r in await cur.fetchall()]
    for meter_id in lost:
        logger.warning("meter %s went silent", meter_id)
    return lost


async def _every(seconds: float, fn: Callable[[], Any]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except TRANSIENT as exc:
            logger.warning("periodic task skipped: %s", exc)
        except Exception:  # a housekeeping failure must not stop the collector
            logger.exception("periodic task failed")


def mqtt_options(settings: IngestSettings) -> MqttOptions:
    topics = subscriptions(
        native_prefix=settings.mqtt_prefix,
        tasmota_prefix=settings.mqtt_tasmota_prefix,
        shelly_prefix=settings.mqtt_shelly_prefix,
    )
    if not settings.mqtt_subscribe_devices:
        topics = topics[:3]
    return MqttOptions(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        client_id=settings.mqtt_client_id,
        topics=topics,
        share_group=settings.mqtt_share_group,
        session_expiry_s=settings.mqtt_session_expiry_s,
        receive_maximum=settings.mqtt_receive_maximum,
        keepalive_s=settings.mqtt_keepalive_s,
        queue_size=settings.ingest_queue_size,
        backoff_base_s=settings.mqtt_backoff_base_s,
        backoff_cap_s=settings.mqtt_backoff_cap_s,
    )


def make_pool(settings: IngestSettings) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=settings.ingest_pool_size, open=False, name="ingest"
    )


def make_writer(pool: AsyncConnectionPool[Any], settings: IngestSettings) -> BatchWriter:
    return BatchWriter(
        pool, future_tolerance_s=settings.ingest_future_tolerance_s, gap_factor=settings.ingest_gap_factor
    )


async def serve_mqtt(settings: IngestSettings | None = None) -> None:
    """The MQTT collector service (``headend run ingest-mqtt``)."""
    settings = settings or IngestSettings()
    clock = clock_from_env()  # the clock every headend process shares (accelerated in demos)
    pool = make_pool(settings)
    await pool.open(wait=True, timeout=30)
    collector = MqttCollector(mqtt_options(settings))
    try:
        writer = make_writer(pool, settings)
        await writer.refresh_directory(force=True)
        ingest = MqttIngest(
            collector,
            writer,
            prefixes=Prefixes(settings.mqtt_prefix, settings.mqtt_tasmota_prefix, settings.mqtt_shelly_prefix),
            batch_size=settings.ingest_batch_size,
            linger_s=settings.ingest_batch_linger_s,
            reread=settings.ingest_reread,
            clock=clock.now,
        )
        collector.start()

        async def refresh() -> None:
            await writer.refresh_directory(force=True)

        async def stale() -> None:
            await sweep_stale(pool, clock.now(), settings.ingest_stale_factor)

        async def health() -> None:
            logger.info("ingest-mqtt health: %s", collector.health.line())

        async with asyncio.TaskGroup() as tg:
            tg.create_task(ingest.run(), name="ingest-mqtt-writer")
            tg.create_task(_every(60.0, refresh), name="ingest-mqtt-directory")
            tg.create_task(_every(60.0, stale), name="ingest-mqtt-stale")
            tg.create_task(_every(settings.ingest_health_interval_s, health), name="ingest-mqtt-health")
    finally:
        await asyncio.to_thread(collector.stop)
        await pool.close()


async def serve_modbus(settings: IngestSettings | None = None) -> None:
    """The Modbus TCP poller service (``headend run ingest-modbus``)."""
    settings = settings or IngestSettings()
    clock = clock_from_env()
    pool = make_pool(settings)
    await pool.open(wait=True, timeout=30)
    try:
        writer = make_writer(pool, settings)
        if settings.modbus_poll_interval_s:
            writer.interval_overrides["modbus"] = settings.modbus_poll_interval_s
        await writer.refresh_directory(force=True)
        poller = ModbusPoller(
            pool,
            writer,
            concurrency=settings.modbus_concurrency,
            timeout_s=settings.modbus_timeout_s,
            backoff_cap_s=settings.modbus_backoff_cap_s,
            read_relay=settings.modbus_read_relay,
            reload_s=settings.modbus_reload_s,
            shard=parse_shard(settings.modbus_shard),
            interval_override_s=settings.modbus_poll_interval_s,
            clock=clock.now,
        )
        await poller.load()
        logger.info("polling %d Modbus meter(s)", len(poller.states))

        async def health() -> None:
            while True:
                await asyncio.sleep(settings.ingest_health_interval_s)
                logger.info("ingest-modbus health: %s", poller.health.line())

        async with asyncio.TaskGroup() as tg:
            tg.create_task(poller.run(), name="ingest-modbus-poller")
            tg.create_task(health(), name="ingest-modbus-health")
    finally:
        await pool.close()
