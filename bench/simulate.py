"""Benchmark of the meter simulators: how many meters one process carries, how fast it talks.

Prints, each with the machine's own ceiling measured in the same run where one applies:
1. model + driver only (no I/O): readings generated per second for a 100k fleet, ticks/s,
   memory per meter;
2. MQTT, one reading per message (native single): messages/s to the real broker, against a
   bare paho publish loop of same-size payloads on the same broker (ratio);
3. MQTT, concentrator batches of 500 meters: readings/s delivered to the broker;
4. Modbus: 500 meters on 3 ports; SunSpec block reads/s by one pymodbus client.
Bounded: every part stops by a count and a time limit; the whole run takes about a minute.

    .venv/bin/python bench/simulate.py [--meters 100000] [--mqtt-meters 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators import registermaps as rm
from simulators.runner import Simulation
from simulators.scenario import parse_scenario

HOST = os.environ.get("HEADEND_MQTT_HOST", "127.0.0.1")
PORT = int(os.environ.get("HEADEND_MQTT_PORT", "1883"))
START = "2026-12-01T00:00:00+08:00"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def scenario(groups: list[dict[str, Any]], **kw: Any):
    raw: dict[str, Any] = {"seed": 1, "speed": 0, "step_s": 900, "start": START, "groups": groups}
    raw.update(kw)
    return parse_scenario(raw)


def bench_model(meters: int, ticks: int) -> None:
    rss0 = rss_mb()
    t0 = time.perf_counter()
    sim = Simulation(scenario([{"name": "L", "count": meters, "reporting": "concentrator", "concentrator_size": 500}]))
    build_s = time.perf_counter() - t0
    rss1 = rss_mb()
    t0 = time.perf_counter()
    payload_bytes = 0
    for k in range(ticks):
        payload_bytes += sum(len(m.payload) for m in sim.driver.tick(k))
    dt = time.perf_counter() - t0
    samples = sim.counters.samples
    print(f"[model] {meters:,} meters built in {build_s:.1f}s, ~{(rss1 - rss0) * 1024 / meters:.1f} KiB per meter")
    print(
        f"[model] {ticks} ticks (15-min readings, concentrator batches formatted): {samples / dt:,.0f} readings/s, "
        f"{dt / ticks * 1000:.0f} ms per tick, {payload_bytes / dt / 1e6:.1f} MB/s of JSON"
    )
    print(f"[model] => one process keeps up with {meters:,} meters at up to {900 / (dt / ticks):,.0f}x real time")


async def bare_paho(n: int, payload: bytes, topic: str, limit_s: float) -> float:
    """The ceiling: a plain paho client publishing same-size payloads as fast as it can."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex[:6]}")
    client.max_queued_messages_set(0)
    client.connect(HOST, PORT)
    client.loop_start()
    try:
        t0 = time.perf_counter()
        sent = 0
        while sent < n and time.perf_counter() - t0 < limit_s:
            for _ in range(1000):
                client.publish(f"{topic}/{sent % 1000}", payload, qos=0)
                sent += 1
            while client.want_write():  # noqa: ASYNC110 - same backpressure as the fleet (paho thread state)
                await asyncio.sleep(0.001)
        return sent / (time.perf_counter() - t0)
    finally:
        client.disconnect()
        client.loop_stop()


async def bench_mqtt_single(meters: int, ticks: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    sc = scenario(
        [{"name": "M", "count": meters, "interval_s": 900}],
        mqtt={"host": HOST, "port": PORT, "prefix": prefix},
        duration=ticks * 900,
    )
    sim = Simulation(sc)
    t0 = time.perf_counter()
    await sim.run()
    dt = time.perf_counter() - t0
    assert sim.link is not None
    sent = sim.link.published
    sample = next(iter(sim.driver.tick(ticks)), None)
    size = len(sample.payload) if sample else 200
    rate = sent / dt
    ceiling = await bare_paho(max(sent, 50_000), b"x" * size, f"{prefix}/bare", limit_s=10.0)
    print(
        f"[mqtt single] {meters:,} meters x {ticks} readings: {rate:,.0f} msgs/s ({size} B each) to Mosquitto; "
        f"bare paho ceiling {ceiling:,.0f} msgs/s; ratio {rate / ceiling:.2f}"
    )


async def bench_mqtt_batches(meters: int, ticks: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    sc = scenario(
        [{"name": "C", "count": meters, "reporting": "concentrator", "concentrator_size": 500}],
        mqtt={"host": HOST, "port": PORT, "prefix": prefix},
        duration=ticks * 900,
    )
    sim = Simulation(sc)
    t0 = time.perf_counter()
    await sim.run()
    dt = time.perf_counter() - t0
    assert sim.link is not None
    print(
        f"[mqtt batches] {meters:,} meters via {meters // 500} concentrators x {ticks} intervals: "
        f"{sim.counters.samples / dt:,.0f} readings/s in {sim.link.published / dt:,.0f} msgs/s"
    )


async def bench_modbus(meters: int, reads: int, limit_s: float) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    sc = scenario(
        [{"name": "SS", "count": meters, "wire": "sunspec"}],
        modbus={"host": "127.0.0.1", "port": 0, "units_per_port": 200},
        duration=None,
        speed=60,  # paced: the fleet ticks every 15 s of real time while the client reads
    )
    sim = Simulation(sc)
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop), name="bench-modbus")
    try:
        await asyncio.wait_for(sim.ready.wait(), 10)
        assert sim.farm is not None
        ports = sorted(set(sim.farm.ports.values()))
        clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=3) for p in ports]
        for c in clients:
            await c.connect()
        done, t0 = 0, time.perf_counter()
        meters_read: set[str] = set()
        while done < reads and time.perf_counter() - t0 < limit_s:
            spec = sim.specs[done % meters]
            _, port, unit = sim.modbus_endpoint(spec.meter_id)
            client = clients[ports.index(port)]
            rr = await client.read_holding_registers(rm.M203_AT, count=107, device_id=unit)
            assert not rr.isError()
            meters_read.add(spec.meter_id)
            done += 1
        dt = time.perf_counter() - t0
        for c in clients:
            c.close()
        print(
            f"[modbus] {meters} SunSpec meters on {len(ports)} ports in one process; one client read model 203 "
            f"(107 registers) {done / dt:,.0f} times/s across {len(meters_read)} meters"
        )
    finally:
        stop.set()
        await task


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--meters", type=int, default=100_000)
    p.add_argument("--model-ticks", type=int, default=8)
    p.add_argument("--mqtt-meters", type=int, default=20_000)
    p.add_argument("--mqtt-ticks", type=int, default=3)
    p.add_argument("--modbus-meters", type=int, default=500)
    args = p.parse_args()
    print(f"bench/simulate.py at {datetime.now(UTC):%Y-%m-%d %H:%M}Z, {os.cpu_count()} CPUs, broker {HOST}:{PORT}")
    bench_model(args.meters, args.model_ticks)
    await bench_mqtt_single(args.mqtt_meters, args.mqtt_ticks)
    await bench_mqtt_batches(args.meters, 2)
    await bench_modbus(args.modbus_meters, 3000, 15.0)


if __name__ == "__main__":
    asyncio.run(main())
