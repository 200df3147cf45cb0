"""The MQTT collector against the real Mosquitto and TimescaleDB."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import AsyncConnectionPool

from ingest.decode import subscriptions
from ingest.dispatch import Prefixes
from ingest.mqtt import MqttCollector, MqttOptions
from ingest.service import MqttIngest
from ingest.store import BatchWriter

from .conftest import query

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


class Publisher:
    """A plain paho client that publishes QoS 1 and records what it receives."""

    def __init__(self, host: str, port: int, subscribe: str | None = None) -> None:
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.received: list[tuple[str, bytes]] = []
        self._ready = threading.Event()
        sub = subscribe

        def on_connect(client: paho.Client, *args: Any) -> None:
            if sub:
                client.subscribe(sub, qos=1)
            else:
                self._ready.set()

        def on_subscribe(client: paho.Client, *args: Any) -> None:
            self._ready.set()

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            self.received.append((msg.topic, bytes(msg.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._ready.wait(10)

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # paho closes its wake-up socket pair only in __del__


async def wait_for(check: Callable[[], bool], within_s: float = 20.0, debug: Callable[[], Any] | None = None) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in time {debug() if debug else ''}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def collector(
    pool: AsyncConnectionPool[Any], mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> AsyncIterator[MqttIngest]:
    prefixes = Prefixes(native=mqtt_prefix, tasmota=mqtt_prefix, shelly=mqtt_prefix)
    options = MqttOptions(
        host=mqtt_host,
        port=mqtt_port,
        client_id=f"ingest-test-{uuid.uuid4().hex[:8]}",
        topics=subscriptions(native_prefix=mqtt_prefix, tasmota_prefix=mqtt_prefix, shelly_prefix=mqtt_prefix),
        session_expiry_s=60,
    )
    coll = MqttCollector(options)
    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    ingest = MqttIngest(coll, writer, prefixes=prefixes, linger_s=0.02)
    coll.start()
    assert await asyncio.to_thread(coll.wait_connected, 10)
    await asyncio.sleep(0.3)  # SUBACK
    task = asyncio.create_task(ingest.run(), name="test-ingest")
    try:
        yield ingest
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(coll.stop)


def reading(ts: str, wh: float) -> str:
    return json.dumps({"v": 1, "ts": ts, "values": {"1-0:1.8.0": wh}})


async def test_end_to_end_vee(
    collector: MqttIngest, fleet: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    cmds = Publisher(mqtt_host, mqtt_port, subscribe=f"{mqtt_prefix}/v1/meters/+/cmd")
    pub = Publisher(mqtt_host, mqtt_port)
    t = f"{mqtt_prefix}/v1/meters"
    try:
        # reordered and duplicated
        for ts, wh in [(at(15), 1100), (at(0), 1000), (at(15), 1100), (at(30), 1200)]:
            pub.publish(f"{t}/M-1/readings", reading(ts, wh))
        # garbage and an unknown meter
        pub.publish(f"{t}/M-1/readings", b"\x00garbage")
        pub.publish(f"{t}/M-404/readings", reading(at(0), 1))
        # a reset on M-2
        pub.publish(f"{t}/M-2/readings", reading(at(0), 5_000_000))
        pub.publish(f"{t}/M-2/readings", reading(at(15), 3))
        # a gap on M-1 (30 -> 90), then the backfill
        pub.publish(f"{t}/M-1/readings", reading(at(90), 1500))
        # device formats
        local = (T0 + timedelta(hours=8)).replace(tzinfo=None).isoformat()  # Asia/Shanghai wall time
        pub.publish(f"{mqtt_prefix}/tele/tasmota_kitchen/SENSOR", f'{{"Time":"{local}","ENERGY":{{"Total":1}}}}')
        await wait_for(lambda: query(fleet, "select count(*) from readings")[0][0] == 7)
        await wait_for(lambda: len(cmds.received) == 1)
        topic, payload = cmds.received[0]
        assert topic == f"{t}/M-1/cmd"
        cmd = json.loads(payload)
        assert cmd["action"] == "read_now" and cmd["from"] == at(30) and cmd["to"] == at(90)
        block = {"v": 1, "readings": [{"ts": at(m), "values": {"1-0:1.8.0": 1200 + m}} for m in (45, 60, 75)]}
        pub.publish(f"{t}/M-1/readings", json.dumps(block))
        await wait_for(lambda: query(fleet, "select count(*) from readings")[0][0] == 10)
        await wait_for(lambda: "filled_at" in query(fleet, "select detail from meter_events where kind = 'gap'")[0][0])
    finally:
        pub.close()
        cmds.close()
    assert query(fleet, "select count(*) from billing_queue where meter_id = 'M-1'")[0][0] == 7
    reasons = sorted(r[0].split(":")[0] for r in query(fleet, "select reason from quarantine"))
    assert reasons == ["malformed_json", "unknown_meter"]
    assert query(fleet, "select billing_hold from meters where id = 'M-2'")[0][0] == "register_reset"
    await wait_for(lambda: collector.collector.health.committed == 11)  # counted just after the commit


async def test_shared_subscription_splits_the_load(
    pool: AsyncConnectionPool[Any], fleet: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int
) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    prefixes = Prefixes(native=mqtt_prefix)
    topics = subscriptions(native_prefix=mqtt_prefix)[:3]
    runs: list[tuple[MqttCollector, asyncio.Task[None]]] = []
    for k in range(2):
        options = MqttOptions(
            host=mqtt_host,
            port=mqtt_port,
            client_id=f"share-{group}-{k}",
            topics=topics,
            share_group=group,
            session_expiry_s=30,
        )
        coll = MqttCollector(options)
        writer = BatchWriter(pool)
        await writer.refresh_directory(force=True)
        coll.start()
        assert await asyncio.to_thread(coll.wait_connected, 10)
        runs.append((coll, asyncio.create_task(MqttIngest(coll, writer, prefixes=prefixes, linger_s=0.01).run())))
    await asyncio.sleep(0.5)
    pub = Publisher(mqtt_host, mqtt_port)
    try:
        for i in range(200):
            ts = (T0 - timedelta(days=3) + timedelta(minutes=15 * i)).isoformat()
            pub.publish(f"{mqtt_prefix}/v1/meters/M-{1 + i % 2}/readings", reading(ts, 1000 + i))
        await wait_for(
            lambda: query(fleet, "select count(*) from readings")[0][0] == 200,
            debug=lambda: (query(fleet, "select count(*) from readings"), [c.health for c, _ in runs]),
        )
        await asyncio.sleep(0.5)
    finally:
        pub.close()
        for coll, task in runs:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(coll.stop)
    shares = [coll.health.committed for coll, _ in runs]
    assert sum(shares) == 200 and all(s > 0 for s in shares), shares
    assert query(fleet, "select count(*) from billing_queue")[0][0] == 200
