"""Ingest benchmark: end-to-end readings/s (published -> committed) and the machine's ceilings.

Runs in one command (``.venv/bin/python bench/ingest.py``), bounded (< 2 min), on a
fresh database of its own on the real TimescaleDB and Mosquitto:

1. ceiling: a bare paho subscriber's receive rate (QoS 1, v5) for the publisher used below;
2. one-reading messages through the collector (decode, COPY, dedup, billing hand-off,
   validation, PUBACK after commit): readings/s, p50/p99 latency, ratio to (1);
3. ceiling: raw COPY into the readings hypertable (rows/s);
4. batched payloads (concentrator batches of 1,000 meters) through the collector:
   readings/s, p50/p99, ratio to (3);
5. Modbus: polls/s over N simulated SunSpec meters (a pymodbus server in a child
   process, the poller here), with the relay read off (one FC03 read per poll).

The publisher and the Modbus server run in child processes so that they do not
share the collector's interpreter. Prints figures; asserts nothing about time.
Sizes: HEADEND_BENCH_SCALE (default 1.0) scales every count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from headend import db, registry  # noqa: E402

HOST = os.environ.get("HEADEND_TEST_MQTT_HOST", "127.0.0.1")
PORT = int(os.environ.get("HEADEND_TEST_MQTT_PORT", "1883"))
BASE_URL = os.environ.get("HEADEND_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SCALE = float(os.environ.get("HEADEND_BENCH_SCALE", "1.0"))
METERS = 1000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------- child: publisher
def single_payloads(n: int, offset_steps: int = 0) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        meter, step = i % METERS, i // METERS + offset_steps
        ts = (T0 + timedelta(minutes=15 * step)).isoformat()
        out.append((f"M-{meter:05d}", f'{{"v":1,"ts":"{ts}","values":{{"1-0:1.8.0":{1000 + 100 * step}}}'))
    return out


def batch_payloads(messages: int, offset_steps: int) -> list[str]:
    out = []
    for m in range(messages):
        step = m + offset_steps
        ts = (T0 + timedelta(minutes=15 * step)).isoformat()
        meters = [
            f'{{"meter":"M-{k:05d}","readings":[{{"ts":"{ts}","values":{{"1-0:1.8.0":{1000 + 100 * step}}}}}]}}'
            for k in range(METERS)
        ]
        out.append('{"v":1,"concentrator":"DC-1","meters":[' + ",".join(meters) + "]")
    return out


def publisher_main(prefix: str, kind: str, count: int, offset: int, part: int, parts: int, rate: float) -> None:
    if kind == "single":
        msgs = [(f"{prefix}/v1/meters/{m}/readings", p) for m, p in single_payloads(count, offset)]
    else:
        msgs = [(f"{prefix}/v1/concentrators/DC-1/readings", p) for p in batch_payloads(count, offset)]
    msgs = msgs[part::parts]
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(0)  # the broker's Receive Maximum (CONNACK) is the limit
    client.max_queued_messages_set(0)
    client.connect(HOST, PORT)
    client.loop_start()
    infos = []
    start = time.time()
    gap = 1.0 / rate if rate > 0 else 0.0  # messages per second per publisher; 0: as fast as it can
    for k, (topic, body) in enumerate(msgs):
        if gap:
            time.sleep(max(0.0, start + k * gap - time.time()))
        # the send time rides along as an extra top-level field (ignored by the decoder)
        infos.append(client.publish(topic, body[:-1] + f',"sent":{time.time()}}}', qos=1))
    for info in infos:
        info.wait_for_publish(60)
    print(json.dumps({"start": start, "end": time.time()}), flush=True)
    client.disconnect()
    client.loop_stop()


PUBLISHERS = int(os.environ.get("HEADEND_BENCH_PUBLISHERS", "2"))


class Publishers:
    """``PUBLISHERS`` child processes, one connection each, publishing disjoint slices."""

    def __init__(self, prefix: str, kind: str, count: int, offset: int = 0, rate: float = 0.0) -> None:
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--publish",
                    prefix,
                    kind,
                    str(count),
                    str(offset),
                    str(k),
                    str(PUBLISHERS),
                    str(rate),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(PUBLISHERS)
        ]

    def wait(self) -> float:
        """The earliest publish start (wall clock) over all publishers."""
        return min(float(json.loads(p.communicate(timeout=120)[0])["start"]) for p in self.procs)


def publish(prefix: str, kind: str, count: int, offset: int = 0, rate: float = 0.0) -> Publishers:
    return Publishers(prefix, kind, count, offset, rate)


# ----------------------------------------------------------------------------- child: Modbus server
def quiet_pymodbus() -> None:
    from pymodbus import pymodbus_apply_logging_config

    pymodbus_apply_logging_config(logging.CRITICAL)


def modbus_server_main(ports: list[int], units: int) -> None:
    from tests.integration.ingest.modbus_sim import start_server, sunspec_block

    async def main() -> None:
        servers = [await start_server(p, {u: sunspec_block() for u in range(1, units + 1)}) for p in ports]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for s in servers:
            await s.shutdown()  # type: ignore[no-untyped-call]

    quiet_pymodbus()
    asyncio.run(main())


def raw_modbus_main(ports: list[int]) -> None:
    """A minimal Modbus TCP responder (MBAP framing, FC03 from the recorded SunSpec block, any unit id).

    It costs a few microseconds per request, so the poll rate against it is the poller's own.
    """
    import struct

    from tests.integration.ingest.modbus_sim import recorded

    base, regs = recorded("sunspec/meter_203_chain.json")
    block = struct.pack(f">{len(regs)}H", *regs)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                fc = pdu[0]
                body = bytes([fc | 0x80, 1])  # illegal function
                if fc == 3 and len(pdu) >= 5:
                    addr, count = struct.unpack(">HH", pdu[1:5])
                    off = addr - base
                    body = bytes([fc, 2 * count]) + block[2 * off : 2 * (off + count)]
                    if off < 0 or off + count > len(regs):
                        body = bytes([fc | 0x80, 2])  # illegal data address
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        servers = [await asyncio.start_server(handle, "127.0.0.1", p) for p in ports]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for srv in servers:
            srv.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- measurements
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bare_subscriber_rate(prefix: str, n: int) -> tuple[float, float]:
    got = 0
    first = last = 0.0
    done = threading.Event()
    ready = threading.Event()

    def on_connect(client: paho.Client, *args: Any) -> None:
        client.subscribe(f"{prefix}/v1/meters/+/readings", qos=1)

    def on_subscribe(*args: Any) -> None:
        ready.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        nonlocal got, first, last
        now = time.perf_counter()
        if got == 0:
            first = now
        got += 1
        last = now
        if got == n:
            done.set()

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = 65535
    client.connect(HOST, PORT, properties=props)
    client.loop_start()
    ready.wait(10)
    c0 = time.process_time()
    pub = publish(prefix, "single", n)
    done.wait(90)
    cpu = time.process_time() - c0
    pub.wait()
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()
    if got < n:
        print(f"bare subscriber: only {got} of {n} messages arrived (see the broker log for drops)", file=sys.stderr)
    return float((n - 1) / (last - first) if got > 1 else 0.0), 1e6 * cpu / max(1, got)


async def through_collector(
    url: str, prefix: str, kind: str, count: int, readings: int, offset: int, rate: float = 0.0
) -> dict[str, Any]:
    from psycopg_pool import AsyncConnectionPool

    from ingest.dispatch import Prefixes
    from ingest.mqtt import MqttCollector, MqttOptions
    from ingest.service import MqttIngest
    from ingest.store import BatchWriter

    latencies: list[float] = []
    committed = 0
    done = asyncio.Event()

    class Measured(MqttIngest):
        async def commit(self, messages: Any) -> Any:
            nonlocal committed
            result = await super().commit(messages)
            now = time.time()
            for m in messages[:: max(1, len(messages) // 50)]:  # sample: parse "sent" off the hot path
                latencies.append(now - float(m.payload[m.payload.rindex(b":") + 1 : -1]))
            committed += len(messages)
            if committed >= count:
                done.set()
            return result

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=2, max_size=4, open=False)
    await pool.open()
    options = MqttOptions(
        host=HOST,
        port=PORT,
        client_id=f"bench-{uuid.uuid4().hex[:8]}",
        topics=[f"{prefix}/v1/meters/+/readings", f"{prefix}/v1/concentrators/+/readings"],
        session_expiry_s=5,  # short: a finished phase's session must not keep queueing the next phase's traffic
        receive_maximum=65535,
        queue_size=200_000,
    )
    collector = MqttCollector(options)
    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    ingest = Measured(collector, writer, prefixes=Prefixes(native=prefix), batch_size=20_000, linger_s=0.02)
    collector.start()
    await asyncio.to_thread(collector.wait_connected, 10)
    await asyncio.sleep(0.3)
    task = asyncio.create_task(ingest.run())
    c0 = time.process_time()
    pub = publish(prefix, kind, count, offset, rate)
    try:
        await asyncio.wait_for(done.wait(), 100)
    except TimeoutError:
        print(f"timed out: committed {committed} of {count} messages; {collector.health.line()}", file=sys.stderr)
        raise
    finally:
        end = time.time()
        cpu = time.process_time() - c0
        start = await asyncio.to_thread(pub.wait)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.to_thread(collector.stop)
        await pool.close()
    return {
        "readings_per_s": readings / (end - start),
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "batches": collector.health.batches,
        "cpu_us_per_reading": 1e6 * cpu / readings,
    }


def raw_copy_rate(url: str, rows: int) -> float:
    with psycopg.connect(url) as conn:
        t = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("copy readings (meter_id, obis, ts, value) from stdin (format binary)") as cp,
        ):
            cp.set_types(["text", "text", "timestamptz", "float8"])
            base = T0 - timedelta(days=400)
            for i in range(rows):
                cp.write_row((f"M-{i % METERS:05d}", "1-0:2.8.0", base + timedelta(seconds=900 * (i // METERS)), 1.0))
        conn.commit()
        return rows / (time.perf_counter() - t)


def start_modbus_server(ports: list[int], per_port: int, raw: bool = False) -> subprocess.Popen[str]:
    mode = "--modbus-raw" if raw else "--modbus-server"
    server = subprocess.Popen(
        [sys.executable, __file__, mode, ",".join(map(str, ports)), str(per_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


async def modbus_polls(url: str, meters: int, seconds: float, raw: bool = False) -> dict[str, Any]:
    from psycopg_pool import AsyncConnectionPool

    from ingest.modbus import ModbusPoller
    from tests.integration.ingest.modbus_sim import free_port

    per_port = 125
    ports = [free_port() for _ in range((meters + per_port - 1) // per_port)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from meters where protocol = 'modbus'")  # the previous run's fleet
        for i in range(meters):
            registry.ensure_meter(
                conn,
                f"MB-{i:04d}",
                service_point_id="SP-1",
                protocol="modbus",
                model="sunspec",
                modbus_host="127.0.0.1",
                modbus_port=ports[i // per_port],
                modbus_unit=i % per_port + 1,
                modbus_map="sunspec",
                poll_interval_s=1,
            )
    if raw:
        servers = [start_modbus_server(ports, per_port, raw=True)]
    else:  # two pymodbus server processes (half the ports each): the simulated meters are the costly side
        servers = [start_modbus_server(ports[k::2], per_port) for k in range(min(2, len(ports)))]
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=2, max_size=4, open=False)
    await pool.open()
    from ingest.store import BatchWriter

    writer = BatchWriter(pool)
    await writer.refresh_directory(force=True)
    poller = ModbusPoller(pool, writer, concurrency=128, timeout_s=5.0, read_relay=False, linger_s=0.1)
    await poller.load()
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(2.0)  # connect and discover
    for s in poller.states.values():  # then poll as fast as the pair can go
        s.meter = dataclasses.replace(s.meter, interval_s=0.05)
    p0, t0, c0 = poller.health.polls, time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    polls = poller.health.polls - p0
    rate = polls / (time.perf_counter() - t0)
    cpu_per_poll = (time.process_time() - c0) / max(1, polls)  # this process: poller + batch writer
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await pool.close()
    for server in servers:
        server.communicate("stop\n", timeout=20)
    return {
        "polls_per_s": rate,
        "failures": poller.health.failures,
        "meters": meters,
        "cpu_ms_per_poll": 1000 * cpu_per_poll,
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    quiet_pymodbus()
    name = f"headend_bench_{os.getpid()}"
    url = db.create_database(BASE_URL, name, drop_first=True)
    try:
        db.migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            registry.ensure_service_point(conn, "SP-1", feeder="F-1")
            with conn.cursor() as cur, cur.copy("copy meters (id, service_point_id, poll_interval_s) from stdin") as cp:
                for i in range(METERS):
                    cp.write_row((f"M-{i:05d}", "SP-1", 900))
        n_single = int(30_000 * SCALE)
        n_batches = int(100 * SCALE)
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        t_all = time.perf_counter()

        def phase(name: str) -> None:
            print(f"[{time.perf_counter() - t_all:5.1f}s] {name}", file=sys.stderr, flush=True)

        phase("bare paho subscriber")
        bare, bare_cpu_us = bare_subscriber_rate(prefix + "-bare", n_single)
        phase("one-reading messages through the collector")
        single = asyncio.run(through_collector(url, prefix + "-1", "single", n_single, n_single, 0))
        phase("one-reading messages at a steady 1,000 msg/s (latency without a backlog)")
        paced_n = int(5_000 * SCALE)
        paced = asyncio.run(
            through_collector(url, prefix + "-2", "single", paced_n, paced_n, -(-n_single // METERS), rate=500.0)
        )
        phase("raw COPY")
        copy_rate = raw_copy_rate(url, int(100_000 * SCALE))
        phase("batched payloads through the collector")
        steps = -(-n_single // METERS) - (-paced_n // METERS)
        batched = asyncio.run(through_collector(url, prefix + "-3", "batch", n_batches, n_batches * METERS, steps))
        phase("Modbus poller")
        n_modbus, modbus_s = int(500 * min(SCALE, 1.0)) or 10, 6.0 * min(SCALE, 1.0) or 2
        modbus = asyncio.run(modbus_polls(url, n_modbus, modbus_s))
        phase("Modbus poller against a minimal responder")
        modbus_raw = asyncio.run(modbus_polls(url, n_modbus, modbus_s, raw=True))

        print(f"ingest bench ({os.cpu_count()} cores, {time.perf_counter() - t_all:.0f}s)")
        print(
            f"  ceiling  bare paho subscriber receive rate : {bare:10,.0f} msg/s"
            f"  ({bare_cpu_us:.0f} us CPU per message in the subscriber)"
        )
        print(
            f"  one-reading messages, published->committed: {single['readings_per_s']:10,.0f} readings/s"
            f"  p50 {single['p50_ms']:.0f} ms  p99 {single['p99_ms']:.0f} ms"
            f"  ratio to bare paho {single['readings_per_s'] / bare:.2f} (target >= 0.8)"
        )
        print(
            f"    collector side: {single['cpu_us_per_reading']:.0f} us CPU per message"
            f" = {1e6 / single['cpu_us_per_reading']:,.0f} msg/s per core ({single['batches']} batches)"
        )
        print(
            f"  one-reading messages at 1,000 msg/s steady : {paced['readings_per_s']:10,.0f} readings/s"
            f"  p50 {paced['p50_ms']:.0f} ms  p99 {paced['p99_ms']:.0f} ms (no backlog: batch linger + commit)"
        )
        print(f"  ceiling  raw COPY into readings hypertable : {copy_rate:10,.0f} rows/s")
        print(
            f"  batched (1,000 readings/message)          : {batched['readings_per_s']:10,.0f} readings/s"
            f"  p50 {batched['p50_ms']:.0f} ms  p99 {batched['p99_ms']:.0f} ms"
            f"  ratio to raw COPY {batched['readings_per_s'] / copy_rate:.2f} (target >= 100k readings/s)"
        )
        print(
            f"    collector side: {batched['cpu_us_per_reading']:.1f} us CPU per reading"
            f" = {1e6 / batched['cpu_us_per_reading']:,.0f} readings/s per core; the rest is PostgreSQL"
        )
        print(
            f"  Modbus polls over {modbus['meters']} simulated SunSpec meters: {modbus['polls_per_s']:10,.0f} polls/s"
            f"  failures {modbus['failures']} (target >= 2,000 polls/s)"
        )
        print(
            f"    poller side: {modbus['cpu_ms_per_poll']:.2f} ms CPU per poll (incl. writing the readings)"
            f" = {1000 / modbus['cpu_ms_per_poll']:,.0f} polls/s per core; the rest is the simulated meters"
        )
        print(
            f"  Modbus polls over {modbus_raw['meters']} meters, minimal responder: {modbus_raw['polls_per_s']:8,.0f}"
            f" polls/s  failures {modbus_raw['failures']}  ({modbus_raw['cpu_ms_per_poll']:.2f} ms CPU per poll)"
        )
    finally:
        db.drop_database(BASE_URL, name)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        a = sys.argv[2:]
        publisher_main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), float(a[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--modbus-raw":
        raw_modbus_main([int(p) for p in sys.argv[2].split(",")])
    elif len(sys.argv) > 1 and sys.argv[1] == "--modbus-server":
        modbus_server_main([int(p) for p in sys.argv[2].split(",")], int(sys.argv[3]))
    else:
        main()
