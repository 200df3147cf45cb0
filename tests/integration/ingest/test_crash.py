"""SIGKILL the collector mid-stream, restart it: every published reading is stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import query, register_fleet
from .test_mqtt import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=10)
N = 400


def start_collector(
    db_url: str, prefix: str, client_id: str, log: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HEADEND_DATABASE_URL": db_url,
        "HEADEND_MQTT_PREFIX": prefix,
        "HEADEND_MQTT_CLIENT_ID": client_id,
        "HEADEND_MQTT_SUBSCRIBE_DEVICES": "false",
        "HEADEND_MQTT_SESSION_EXPIRY_S": "300",
        "HEADEND_INGEST_BATCH_SIZE": "25",
        "HEADEND_INGEST_BATCH_LINGER_S": "0.02",
        **(extra or {}),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "headend", "run", "ingest-mqtt"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def wait_rows(db_url: str, sql: str, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = query(db_url, sql)[0][0]
        if got >= want:
            return int(got)
        time.sleep(0.1)
    return int(got)


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    fleet: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int, tmp_path: Path
) -> None:
    register_fleet(fleet, {"M-9": {}})
    client_id = f"ingest-crash-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "collector.log"
    topic = f"{mqtt_prefix}/v1/meters/{{}}/readings"
    pub = Publisher(mqtt_host, mqtt_port)
    proc = start_collector(fleet, mqtt_prefix, client_id, log)
    try:
        # The first connection creates the persistent session and its subscriptions.
        probe = json.dumps({"v": 1, "ts": T0.isoformat(), "values": {"1-0:1.8.0": 0}})
        deadline = time.monotonic() + 30
        while query(fleet, "select count(*) from readings")[0][0] == 0:
            assert time.monotonic() < deadline, log.read_text()
            pub.publish(topic.format("M-9"), probe)
            time.sleep(0.5)

        published = 0

        def publish_all() -> None:
            nonlocal published
            for i in range(N):
                meter = ("M-1", "M-2")[i % 2]
                ts = T0 + timedelta(minutes=15 * (i // 2 + 1))
                doc = {"v": 1, "ts": ts.isoformat(), "values": {"1-0:1.8.0": 1000.0 + i, "1-0:16.7.0": 5.0}}
                pub.publish(topic.format(meter), json.dumps(doc))
                published += 1
                time.sleep(0.003)

        sender = threading.Thread(target=publish_all)
        sender.start()
        while published < N // 3:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stored_at_kill = query(fleet, "select count(*) from readings where meter_id <> 'M-9'")[0][0]
        sender.join(60)
        assert published == N
        assert stored_at_kill < 2 * N, "the collector was killed after the stream had ended"
        print(f"stored at kill: {stored_at_kill} of {2 * N}")

        proc = start_collector(fleet, mqtt_prefix, client_id, log)
        sql = "select count(*) from readings where meter_id <> 'M-9'"
        assert wait_rows(fleet, sql, 2 * N, 60) == 2 * N, log.read_text()
        time.sleep(1.0)  # late redeliveries would show up now
        assert query(fleet, sql)[0][0] == 2 * N
        billed = query(
            fleet,
            "select count(*), count(distinct (meter_id, ts)) from billing_queue where meter_id <> 'M-9'",
        )[0]
        assert billed == (N, N)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        pub.close()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "session present: True" in log.read_text()  # the broker kept the session across the crash


def test_sigterm_flushes_the_batch_in_hand(
    fleet: str, mqtt_prefix: str, mqtt_host: str, mqtt_port: int, tmp_path: Path
) -> None:
    """A 60 s batch linger keeps messages in hand; SIGTERM writes and acknowledges them before exit."""
    client_id = f"ingest-term-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "collector.log"
    topic = f"{mqtt_prefix}/v1/meters/M-1/readings"
    env_extra = {"HEADEND_INGEST_BATCH_LINGER_S": "60", "HEADEND_INGEST_BATCH_SIZE": "1000"}
    pub = Publisher(mqtt_host, mqtt_port)
    proc = start_collector(fleet, mqtt_prefix, client_id, log, env_extra)
    try:
        deadline = time.monotonic() + 30
        while "MQTT connected" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # SUBACK
        for i in range(10):
            ts = T0 + timedelta(minutes=15 * i)
            pub.publish(topic, json.dumps({"v": 1, "ts": ts.isoformat(), "values": {"1-0:1.8.0": 100.0 + i}}))
        time.sleep(1.0)
        assert query(fleet, "select count(*) from readings")[0][0] == 0  # still lingering
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        pub.close()
    assert query(fleet, "select count(*) from readings")[0][0] == 10
    assert "flushing 10 message(s)" in log.read_text()
