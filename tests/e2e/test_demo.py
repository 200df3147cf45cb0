"""``headend demo`` tells the whole story and exits 0 only when it completed.

Runs the real command (its own database, every service, the simulated fleet) with a
tiny background fleet; asserts on what it printed and on the rows it left.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from headend import db
from tests.conftest import BASE_URL
from tests.e2e.conftest import HEADEND, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "scenarios" / "tiny-fleet.yaml"


@pytest.mark.timeout(900)  # about 2.5 minutes on a quiet machine; a loaded CI box may need far more
def test_demo_tells_the_story_from_warning_to_reconnect() -> None:
    name = f"headend_demo_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HEADEND_DATABASE_URL": db.database_url_for(BASE_URL, "headend")}
    try:
        run = subprocess.run(
            [
                HEADEND,
                "--log-level",
                "WARNING",
                "demo",
                "--database",
                name,
                "--fleet",
                str(FLEET),
                "--api-port",
                str(free_port()),
                "--modbus-port",
                str(free_port()),
                "--max-minutes",
                "12",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
        out = run.stdout
        assert run.returncode == 0, out[-6000:] + run.stderr[-3000:]
        # the ladder, in the order a customer lives it
        milestones = [
            "A-D-0001: low credit",
            "A-D-0001: emergency credit started",
            "pending disconnection to A-D-0001",
            "A-D-0001: credit exhausted",
            "disconnect D-0001: confirmed",
            "D-0001 relay disconnected",
            "top-up 50.00 CNY via app for A-D-0001: HTTP 201",
            "A-D-0001: credit restored",
            "D-0001 relay connected",
        ]
        at = 0
        for milestone in milestones:  # each one after the one before
            found = out.find(milestone, at)
            assert found >= 0, f"{milestone!r} missing after position {at}:\n{out[-6000:]}"
            at = found + len(milestone)
        assert "case" in out and "A-P-0001" in out  # life support: a person decides, no command
        assert "the story completed" in out
        with psycopg.connect(db.database_url_for(BASE_URL, name)) as conn:
            cut = conn.execute(
                "select count(*) from commands where meter_id = 'P-0001' and action = 'disconnect'"
            ).fetchone()
            disconnect_at = conn.execute(
                "select c.updated_at at time zone sp.timezone from commands c join meters m on m.id = c.meter_id"
                " join service_points sp on sp.id = m.service_point_id"
                " where c.meter_id = 'D-0001' and c.action = 'disconnect' and c.state = 'confirmed'"
            ).fetchone()
            readings = conn.execute("select count(distinct meter_id) from readings").fetchone()
        assert cut == (0,)
        assert disconnect_at is not None
        local = disconnect_at[0]
        assert local.isoweekday() in (1, 2, 3, 4) and 9 <= local.hour < 15, local  # inside the window
        assert readings is not None and readings[0] == 6  # 3 story meters + native + Tasmota + SunSpec
    finally:
        db.drop_database(BASE_URL, name)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent's pid
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(300)
def test_killing_the_demo_takes_its_services_and_fleet_with_it() -> None:
    """A demo killed with SIGKILL (or by a test's timeout) leaves nothing publishing behind."""
    import signal
    import time

    name = f"headend_demo_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HEADEND_DATABASE_URL": db.database_url_for(BASE_URL, "headend")}
    demo = subprocess.Popen(
        [
            HEADEND,
            "--log-level",
            "WARNING",
            "demo",
            "--database",
            name,
            "--fleet",
            str(FLEET),
            "--api-port",
            str(free_port()),
            "--modbus-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        kids: list[int] = []
        while time.monotonic() < deadline and len(kids) < 2:  # services, then the fleet
            time.sleep(0.5)
            kids = _children(demo.pid)
        assert len(kids) >= 2, f"the demo did not start its services and fleet: {kids}"
        demo.send_signal(signal.SIGKILL)
        demo.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.5)
        assert not any(_alive(k) for k in kids), "children outlived the demo"
    finally:
        if demo.poll() is None:
            demo.kill()
        db.drop_database(BASE_URL, name)
