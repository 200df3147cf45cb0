"""SDM630 meters read by an independent client: sdm_modbus, in a virtualenv of its own.

sdm_modbus needs an older pymodbus (< 3.7: ``pymodbus.payload``, ``slave=``) than headend's
3.16, so the test builds a small virtualenv once (cached under the temp dir by a key of its
requirements) and runs a script there against the simulator's server. It is skipped, with the
reason, only if pip cannot install the requirements (no registry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from simulators.modbus import ModbusFarm
from simulators.runner import Simulation
from simulators.scenario import parse_scenario

pytestmark = pytest.mark.integration

REQUIREMENTS = ["sdm_modbus==0.7.0", "pymodbus>=3.5,<3.7"]
SCRIPT = """
import json, sys
import sdm_modbus
meter = sdm_modbus.SDM630(host=sys.argv[1], port=int(sys.argv[2]), unit=int(sys.argv[3]), timeout=3, retries=1)
inputs = meter.read_all(sdm_modbus.registerType.INPUT)
holding = {k: meter.read(k) for k in ("meter_id", "system_type", "baud", "demand_period")}
print(json.dumps({"input": inputs, "holding": holding}))
"""


@pytest.fixture(scope="session")
def sdm_python() -> Path:
    key = hashlib.sha256(("|".join(REQUIREMENTS) + sys.version).encode()).hexdigest()[:12]
    home = Path(tempfile.gettempdir()) / f"headend-sdm-venv-{key}"
    python = home / "bin" / "python"
    if python.exists():
        return python
    build = Path(tempfile.mkdtemp(prefix="headend-sdm-build-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(build)], check=True, capture_output=True, timeout=120)
        pip = subprocess.run(
            [str(build / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if pip.returncode != 0:
            pytest.skip(f"pip could not install {REQUIREMENTS} (no package registry?): {pip.stderr[-400:]}")
        try:
            build.rename(home)
        except OSError:  # another run made it first
            shutil.rmtree(build, ignore_errors=True)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(build, ignore_errors=True)
        pytest.skip(f"building the sdm_modbus virtualenv timed out: {exc}")
    return python


async def test_sdm_modbus_reads_the_sdm630_map(sdm_python: Path) -> None:
    scenario = parse_scenario(
        {
            "seed": 2,
            "speed": 0,
            "start": "2026-11-30T19:00:00+08:00",
            "modbus": {"host": "127.0.0.1", "port": 0},
            "groups": [
                {
                    "name": "SDM",
                    "count": 2,
                    "wire": "sdm630",
                    "phases": 3,
                    "annual_kwh": 20000,
                    "initial_wh": [2e6, 3e6],
                }
            ],
        }
    )
    sim = Simulation(scenario)
    for k in range(20):
        sim.driver.tick(k)
    mb = scenario.modbus
    async with ModbusFarm(sim.driver, mb.host, mb.port, sim.sim_now) as farm:
        i = sim.model.index["SDM-000002"]
        port, unit = farm.port_of(i), sim.specs[i].modbus_unit
        proc = await asyncio.create_subprocess_exec(
            str(sdm_python),
            "-c",
            SCRIPT,
            mb.host,
            str(port),
            str(unit),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    got = json.loads(out)
    values = got["input"]
    m = sim.model
    assert values["import_energy_active"] == pytest.approx(m.import_wh[i] / 1000, rel=1e-6)
    assert values["export_energy_active"] == 0.0
    assert values["total_power_active"] == pytest.approx(m.power_w[i], rel=1e-5)
    assert values["l1_voltage"] == pytest.approx(m.voltage_v[i], rel=1e-5)
    assert values["frequency"] == pytest.approx(50.0)
    assert values["total_energy_active"] == pytest.approx(m.import_wh[i] / 1000, rel=1e-6)
    assert sum(values[f"l{p}_import_energy_active"] for p in (1, 2, 3)) == pytest.approx(
        m.import_wh[i] / 1000, rel=1e-5
    )
    assert values["neutral_current"] == 0.0  # an unused address inside a bulk read answers 0
    assert got["holding"] == {"meter_id": unit, "system_type": 3, "baud": 2, "demand_period": 60}
