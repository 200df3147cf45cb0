"""A fleet on the real Mosquitto, with faults on: readings, commands, acks, backlog, garbage."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.driver import Outgoing
from simulators.meter import RelayState
from simulators.runner import Progress, Simulation
from simulators.scenario import parse_scenario

pytestmark = pytest.mark.integration


class Listener:
    """An independent MQTT client that records everything under some topics."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{id(self)}")
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def publish(self, topic: str, body: dict) -> None:
        self.client.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    def take(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_fleet_with_faults_on_mosquitto(mqtt_host: str, mqtt_port: int, mqtt_prefix: str) -> None:
    scenario = parse_scenario(
        {
            "seed": 21,
            "speed": 1200,  # 20 simulated minutes per real second
            "step_s": 60,
            "duration": "2h",
            "start": "2026-12-01T10:00:00+08:00",
            "button_after_s": 120,
            "mqtt": {
                "host": mqtt_host,
                "port": mqtt_port,
                "prefix": mqtt_prefix,
                "tasmota_prefix": f"{mqtt_prefix}-tas",
                "shelly_prefix": f"{mqtt_prefix}-shl",
                "clients": 2,
            },
            "groups": [
                {"name": "N", "count": 20, "interval_s": 300},
                {"name": "DC", "count": 10, "reporting": "concentrator", "concentrator_size": 5},
                {"name": "T", "count": 2, "wire": "tasmota", "interval_s": 300},
                {"name": "S", "count": 2, "wire": "shelly", "interval_s": 300},
            ],
            "faults": {
                "fleet": {"duplicate": 0.1, "drop": 0.05, "reorder": 0.05, "garbage": 0.05},
                "meters": {"N-000002": {"offline": 1e6, "offline_s": 1800}, "N-000001": {}},
            },
        }
    )
    listener = Listener(mqtt_host, mqtt_port, [f"{mqtt_prefix}/#", f"{mqtt_prefix}-tas/#", f"{mqtt_prefix}-shl/#"])
    assert await asyncio.to_thread(listener.subscribed.wait, 5)
    progress: list[Progress] = []
    seen: list[Outgoing] = []
    sim = Simulation(scenario, on_progress=progress.append, on_message=seen.append, progress_every_s=0.5)
    task = asyncio.create_task(sim.run(), name="sim")
    try:
        async with asyncio.timeout(10):
            await sim.ready.wait()
        await asyncio.sleep(1.0)
        cmd_topic = f"{mqtt_prefix}/v1/meters/N-000001/cmd"
        listener.publish(cmd_topic, {"v": 1, "id": "cut-1", "action": "disconnect"})
        await asyncio.sleep(1.0)
        listener.publish(cmd_topic, {"v": 1, "id": "arm-1", "action": "arm"})
        listener.publish(f"{mqtt_prefix}/v1/meters/N-000003/cmd", {"v": 1, "id": "rd-1", "action": "read_now"})
        async with asyncio.timeout(30):
            counters = await task
    finally:
        if not task.done():
            task.cancel()
    await asyncio.sleep(0.5)
    got = [(t, p) for t, p in listener.take() if not t.endswith("/cmd")]
    listener.close()

    # everything the driver put on the wire arrived (QoS 0 on loopback), faults included
    assert (len(got), counters.messages) == (sim.link.published, sim.link.published)  # type: ignore[union-attr]
    assert counters.duplicated > 0 and counters.dropped > 0 and counters.garbage > 0 and counters.reordered > 0
    by_topic = Counter(t for t, _ in got)
    assert by_topic[f"{mqtt_prefix}-tas/tele/t-000001/SENSOR"] >= 15
    assert by_topic[f"{mqtt_prefix}-shl/s-000002/events/rpc"] >= 15
    batches = [json.loads(p) for t, p in got if "/concentrators/" in t and p.startswith(b'{"v":1,"conc')]
    assert batches and all(len(b["meters"]) <= 5 for b in batches)

    # the command round trip: ack, state report, relay change; then the customer's button
    acks = {json.loads(p)["id"]: json.loads(p) for t, p in got if t.endswith("/N-000001/ack")}
    assert acks["cut-1"]["status"] == "ok" and acks["cut-1"]["relay"] == "disconnected"
    assert acks["arm-1"]["relay"] == "armed"
    states = [json.loads(p)["relay"] for t, p in got if t.endswith("/N-000001/state")]
    assert states[0] == "connected"  # the birth report when the meter came online
    assert states[1:3] == ["disconnected", "armed"] and "connected" in states[3:]
    assert sim.model.relay_state(sim.model.index["N-000001"]) is RelayState.CONNECTED
    assert sim.meter_status("N-000001")["relay"] == "connected"
    read_now = [p for t, p in got if t.endswith("/N-000003/ack")]
    assert read_now and json.loads(read_now[0])["id"] == "rd-1"

    # the meter that keeps going offline delivers its backlog as interval blocks
    blocks = [json.loads(p) for t, p in got if t.endswith("/N-000002/readings") and p.startswith(b'{"v":1,"meter"')]
    assert any(len(b.get("readings", [])) >= 3 for b in blocks)

    # the observer (the demo's narrator) saw the acks and state reports, and no readings
    assert {m.kind for m in seen} <= {"ack", "state", "events"}
    assert any(m.kind == "ack" and b"cut-1" in m.payload for m in seen)

    # garbage is really garbage, and progress was reported to the end
    assert any(not p.startswith(b'{"') for _, p in got)
    assert progress[-1].done and progress[-1].tick == sim.ticks_total == 120


async def test_stop_ends_an_endless_run(mqtt_host: str, mqtt_port: int, mqtt_prefix: str) -> None:
    sim = Simulation(
        parse_scenario(
            {
                "seed": 1,
                "speed": 3600,
                "groups": [{"name": "A", "count": 3, "interval_s": 60}],
                "mqtt": {"host": mqtt_host, "port": mqtt_port, "prefix": mqtt_prefix},
            }
        )
    )
    task = asyncio.create_task(sim.run(), name="sim")
    async with asyncio.timeout(10):
        await sim.ready.wait()
    await asyncio.sleep(0.5)
    sim.stop()
    async with asyncio.timeout(10):
        counters = await task
    assert counters.ticks > 5 and counters.samples == 3 * counters.ticks
