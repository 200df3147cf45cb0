"""A broker outage: the fleet keeps its readings and sends the backlog when the broker is back.

Uses a private Mosquitto started by the test on a free loopback port (and stopped by its pid),
so that the shared broker is never touched. Skipped if the mosquitto binary is not installed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.modbus import free_port
from simulators.runner import Simulation
from simulators.scenario import parse_scenario

pytestmark = pytest.mark.integration
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class Broker:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port("127.0.0.1")
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def listen(port: int, topic: str, got: list[dict], ready: threading.Event) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="outage-listener", clean_session=False)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda _c, _u, msg: got.append(json.loads(msg.payload))
    client.reconnect_delay_set(1, 2)
    client.connect_async("127.0.0.1", port)
    client.loop_start()
    return client


async def test_backlog_after_a_broker_outage(broker: Broker) -> None:
    scenario = parse_scenario(
        {
            "seed": 1,
            "speed": 600,  # 10 simulated minutes per real second
            "step_s": 60,
            "start": "2026-12-01T00:00:00+00:00",
            "groups": [{"name": "M", "count": 2, "interval_s": 300}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "outage"},
        }
    )
    got: list[dict] = []
    ready = threading.Event()
    await asyncio.sleep(0.3)  # the broker is listening
    listener = listen(broker.port, "outage/v1/meters/M-000001/readings", got, ready)
    assert await asyncio.to_thread(ready.wait, 5)
    sim = Simulation(scenario)
    task = asyncio.create_task(sim.run(), name="sim")
    try:
        await asyncio.sleep(1.5)
        broker.stop()
        await asyncio.sleep(2.0)  # ~20 simulated minutes without a broker
        broker.start()
        async with asyncio.timeout(20):
            while not any("readings" in b for b in got):  # noqa: ASYNC110 - the listener is a paho thread
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
    finally:
        sim.stop()
        await task
        listener.disconnect()
        listener.loop_stop()
    ts = [r["ts"] for b in got for r in (b.get("readings") or [b])]
    assert any(len(b.get("readings", [])) >= 2 for b in got)  # the backlog came as a block
    assert ts == sorted(ts)
    seconds = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in ts]
    assert all(b - a == 300 for a, b in itertools.pairwise(seconds))  # no reading lost
