"""The walking skeleton, real end to end.

One simulated MQTT meter (``headend simulate``) -> Mosquitto -> the MQTT collector ->
the readings hypertable -> the prepaid engine debits its account -> the HTTP API
returns that balance. Every part is a real process on loopback; the clock is the
shared accelerated clock (one simulated hour per 10 real seconds).
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from headend.clock import clock_env
from tests.e2e.conftest import HEADEND, Processes, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SCENARIO = """
name: skeleton
seed: 7
step_s: 60
timezone: Asia/Shanghai
country: CN
groups:
  - name: home
    count: 1
    id_format: "E2E-{n:04d}"
    wire: native
    reporting: single
    interval_s: 900
    profile: {h0: 1.0}
    annual_kwh: 20000
accounts:
  tariff_id: flat-e2e
  price_per_kwh: "0.50"
  currency: CNY
  balance_minor: 100000
"""


def test_simulated_meter_reading_debits_balance_seen_through_api(
    db_url: str, mqtt_prefix: str, processes: Processes, tmp_path: Path
) -> None:
    scenario = tmp_path / "skeleton.yaml"
    scenario.write_text(SCENARIO)
    api_port = free_port()
    origin = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    env = {
        "HEADEND_DATABASE_URL": db_url,
        "HEADEND_MQTT_PREFIX": mqtt_prefix,
        "HEADEND_API_PORT": str(api_port),
        "HEADEND_INGEST_CLIENT_ID": f"ingest-{mqtt_prefix}",
        "HEADEND_MODBUS_POLL_INTERVAL_S": "3600",
        **clock_env(origin, 360.0),
    }
    token = (
        subprocess.run(
            [HEADEND, "apikey", "create", "--name", "e2e", "--role", "operator"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    processes.start("services", ["run", "all"], env)
    base = f"http://127.0.0.1:{api_port}"

    def api_up() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_for(api_up, 30, "the API to listen")
    processes.start("fleet", ["simulate", str(scenario), "--register", "--quiet"], env)

    headers = {"Authorization": f"Bearer {token}"}

    def debited() -> dict[str, object] | None:
        r = httpx.get(f"{base}/v1/accounts/A-E2E-0001", headers=headers, timeout=2)
        if r.status_code != 200:
            return None
        body: dict[str, object] = r.json()
        return body if isinstance(body["balance_minor"], int) and body["balance_minor"] < 100000 else None

    try:
        account = wait_for(debited, 60, "the account to be debited")
    except AssertionError:
        print(processes.log("services")[-4000:], processes.log("fleet")[-2000:])
        raise
    assert isinstance(account, dict)

    with psycopg.connect(db_url) as conn:
        readings = conn.execute(
            "select count(*) from readings where meter_id = 'E2E-0001' and obis = '1-0:1.8.0'"
        ).fetchone()
        row = conn.execute(
            "select a.balance_minor, coalesce(sum(e.amount_minor), 0), count(e.*) filter (where e.amount_minor < 0)"
            " from accounts a left join ledger_entries e on e.account_id = a.id"
            " where a.id = 'A-E2E-0001' group by a.balance_minor"
        ).fetchone()
    assert readings is not None and readings[0] >= 2
    assert row is not None
    balance, ledger_sum, debits = row
    # the API shows the balance the ledger proves, and it went down through debits
    assert debits >= 1
    assert balance == ledger_sum
    assert int(str(account["balance_minor"])) >= balance  # the API read came first; more debits may follow
    assert balance < 100000
