"""``headend simulate``: a scenario run end to end as a process, with --register."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[3]


def test_simulate_registers_runs_and_summarises(tmp_path: Path, db_url: str, mqtt_prefix: str) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: cli\nseed: 5\nstart: 2026-12-01T09:00:00+08:00\nstep_s: 300\n"
        "groups:\n"
        "  - {name: M, count: 30, id_format: 'M-{n:03d}', reporting: block}\n"
        "  - {name: SS, count: 2, id_format: 'SS-{n}', wire: sunspec}\n"
        "modbus: {port: 0}\n"
        "accounts: {balance_minor: 1000}\n"
        "faults: {fleet: {garbage: 0.01}}\n"
    )
    env = {**os.environ, "HEADEND_MQTT_PREFIX": mqtt_prefix}
    env.pop("HEADEND_CLOCK_ORIGIN", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "headend",
            "simulate",
            str(scenario),
            "--speed",
            "0",
            "--duration",
            "6h",
            "--register",
            "--database-url",
            db_url,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "32 meters (30 MQTT, 2 Modbus)" in proc.stderr
    assert "registered 32 meters" in proc.stderr
    assert "summary: 72 ticks, 720 readings" in proc.stderr  # 30 meters x 24 quarter-hours; Modbus meters are polled
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select count(*) from meters").fetchone() == (32,)
        port = conn.execute("select modbus_port from meters where id = 'SS-2'").fetchone()
        assert port is not None and port[0] > 0
        assert conn.execute("select sum(balance_minor) from accounts").fetchone() == (32_000,)
