"""``headend simulate --register``: the fleet lands in headend's tables, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from simulators.registration import register_fleet
from simulators.scenario import load_scenario

pytestmark = pytest.mark.integration


def test_register_demo_fleet_twice(db_url: str) -> None:
    scenario = load_scenario(Path(__file__).parents[3] / "scenarios" / "demo.yaml")
    specs = scenario.meters()
    with psycopg.connect(db_url) as conn:
        for _ in range(2):
            n = register_fleet(
                conn,
                scenario,
                specs,
                lambda s: 5020 + (s.modbus_server or 0),
                effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            )
            assert n == len(specs)
        rows = dict(conn.execute("select protocol, count(*) from meters group by protocol").fetchall())
        assert rows == {"mqtt": 68, "modbus": 5}
        t = conn.execute("select model, mqtt_topic from meters where id = 'T-0001'").fetchone()
        assert t == ("tasmota", "t-0001")
        mb = conn.execute(
            "select modbus_host, modbus_port, modbus_unit, modbus_map, phases from meters where id = 'SS-0002'"
        ).fetchone()
        assert mb == ("127.0.0.1", 5020, 2, "sunspec", 3)
        sp = conn.execute(
            "select sp.feeder, sp.account_class, sp.timezone from meters m join service_points sp"
            " on sp.id = m.service_point_id where m.id = 'C-0001'"
        ).fetchone()
        assert sp == ("F-1", "non_residential", "Asia/Shanghai")
        balances = conn.execute("select count(*), min(balance_minor), max(balance_minor) from accounts").fetchone()
        assert balances == (73, 3000, 3000)
        assert conn.execute("select count(*) from ledger_entries").fetchone() == (73,)
