"""SunSpec meters read and switched by an independent client (pysunspec2, its own Modbus stack)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sunspec2.modbus.client as sunspec_client

from simulators.meter import RelayState
from simulators.modbus import ModbusFarm
from simulators.runner import Simulation
from simulators.scenario import parse_scenario

pytestmark = pytest.mark.integration


def scenario(count: int = 3, units_per_port: int = 2, **faults: Any):
    return parse_scenario(
        {
            "seed": 4,
            "speed": 0,
            "step_s": 60,
            "start": "2026-11-30T10:00:00+08:00",
            "modbus": {"host": "127.0.0.1", "port": 0, "units_per_port": units_per_port},
            "groups": [
                {"name": "SS", "count": count, "wire": "sunspec", "annual_kwh": 8000, "initial_wh": [1e6, 2e6]},
            ],
            "faults": {"meters": faults},
        }
    )


def read_device(port: int, unit: int, conn: int | None = None) -> dict[str, Any]:
    d = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=5)
    try:
        d.scan()
        out: dict[str, Any] = {"models": sorted(k for k in d.models if isinstance(k, int))}
        common = d.models[1][0]
        meter = d.models[203][0]
        ctl = d.models[123][0]
        out["sn"] = common.SN.value
        out["mn"] = common.Mn.value
        out["imp_wh"] = meter.TotWhImp.cvalue
        out["exp_wh"] = meter.TotWhExp.cvalue
        out["w"] = meter.W.cvalue
        out["v"] = meter.PhV.cvalue
        out["hz"] = meter.Hz.cvalue
        out["conn"] = ctl.Conn.value
        if conn is not None:
            ctl.Conn.value = conn
            ctl.write()
            ctl.read()
            out["conn_after"] = ctl.Conn.value
        return out
    finally:
        d.close()


async def test_pysunspec2_reads_models_1_203_123_and_switches_the_relay() -> None:
    sim = Simulation(scenario(count=3))
    sim_task = asyncio.create_task(_serve(sim), name="sim")
    try:
        async with asyncio.timeout(10):
            await sim.ready.wait()
        for k in range(30):  # 30 simulated minutes so power and registers move
            sim.driver.tick(k)
        _, port, unit = sim.modbus_endpoint("SS-000003")
        assert unit == 1  # third meter: second server (2 units per port)
        got = await asyncio.to_thread(read_device, port, unit)
        i = sim.model.index["SS-000003"]
        assert got["models"] == [1, 123, 203]
        assert got["sn"] == "SS-000003" and got["mn"] == "headend"
        assert got["imp_wh"] == pytest.approx(round(float(sim.model.import_wh[i])), abs=1)
        assert got["exp_wh"] is None  # acc32 0 is SunSpec's "not implemented": no export yet
        assert got["w"] == pytest.approx(float(sim.model.power_w[i]), abs=1)
        assert got["v"] == pytest.approx(float(sim.model.voltage_v[i]), abs=0.1)
        assert got["hz"] == 50 and got["conn"] == 1

        got = await asyncio.to_thread(read_device, port, unit, 0)  # pysunspec2 writes Conn = 0 (FC06)
        assert got["conn_after"] == 0 and sim.model.relay_state(i) is RelayState.DISCONNECTED
        before = float(sim.model.import_wh[i])
        for k in range(30, 60):
            sim.driver.tick(k)
        assert float(sim.model.import_wh[i]) == before  # the relay really is open
        got = await asyncio.to_thread(read_device, port, unit, 1)
        assert got["conn_after"] == 1 and sim.model.relay_state(i) is RelayState.CONNECTED
    finally:
        sim_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sim_task


async def _serve(sim: Simulation) -> None:
    """Start the fleet's servers and keep them up (the test drives the ticks itself)."""
    mb = sim.scenario.modbus
    async with ModbusFarm(sim.driver, mb.host, mb.port, sim.sim_now) as farm:
        sim.farm = farm
        sim.ready.set()
        await asyncio.Event().wait()


async def test_fc06_write_relay_faults_and_offline_with_pymodbus() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    from simulators import registermaps as rm

    faults = {"SS-000001": {"relay_fail": 1.0}, "SS-000002": {"wrong_state": 1.0}}
    sim = Simulation(scenario(count=3, units_per_port=3, **faults))
    sim_task = asyncio.create_task(_serve(sim), name="sim")
    try:
        async with asyncio.timeout(10):
            await sim.ready.wait()
        _, port, _ = sim.modbus_endpoint("SS-000001")
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
        await client.connect()
        try:
            # unit 1 = SS-000001: the relay does not operate, the read-back shows it
            assert not (await client.write_register(rm.CONN_ADDR, 0, device_id=1)).isError()
            conn = (await client.read_holding_registers(rm.CONN_ADDR, count=1, device_id=1)).registers[0]
            assert conn == 1 and sim.model.relay_state(0) is RelayState.CONNECTED
            # unit 2 = SS-000002: the relay opens, the register says it did not
            assert not (await client.write_register(rm.CONN_ADDR, 0, device_id=2)).isError()
            conn = (await client.read_holding_registers(rm.CONN_ADDR, count=1, device_id=2)).registers[0]
            assert conn == 1 and sim.model.relay_state(1) is RelayState.DISCONNECTED
            # FC16 across Conn_WinTms, Conn_RvrtTms, Conn on unit 3 (SS-000003, no faults)
            assert not (await client.write_registers(rm.CONN_ADDR - 2, [0, 0, 0], device_id=3)).isError()
            assert sim.model.relay_state(2) is RelayState.DISCONNECTED
            assert not (await client.write_registers(rm.CONN_ADDR, [1], device_id=3)).isError()
            assert sim.model.relay_state(2) is RelayState.CONNECTED
            conn = (await client.read_holding_registers(rm.CONN_ADDR, count=1, device_id=3)).registers[0]
            assert conn == 1
            # writes outside model 123 and bad values are refused
            assert (await client.write_register(rm.M203_AT + 46, 0, device_id=2)).isError()
            assert (await client.write_register(rm.CONN_ADDR, 7, device_id=2)).isError()
            # an offline meter does not answer
            sim.driver.offline[1] = True
            assert (await client.read_holding_registers(rm.SUNSPEC_BASE, count=2, device_id=2)).isError()
        finally:
            client.close()
    finally:
        sim_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sim_task


async def test_five_hundred_meters_in_one_process() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    from simulators import registermaps as rm

    sc = parse_scenario(
        {
            "seed": 9,
            "speed": 0,
            "start": "2026-11-30T10:00:00+08:00",
            "modbus": {"host": "127.0.0.1", "port": 0, "units_per_port": 200},
            "groups": [
                {"name": "SS", "count": 300, "wire": "sunspec"},
                {"name": "SDM", "count": 200, "wire": "sdm630"},
            ],
        }
    )
    sim = Simulation(sc)
    for k in range(5):
        sim.driver.tick(k)
    async with ModbusFarm(sim.driver, "127.0.0.1", 0, sim.sim_now) as farm:
        assert farm.meter_count == 500 and len(farm.ports) == 3
        for meter_id in ("SS-000001", "SS-000200", "SS-000201", "SS-000300", "SDM-000001", "SDM-000100", "SDM-000200"):
            i = sim.model.index[meter_id]
            port, unit = farm.port_of(i), sim.specs[i].modbus_unit
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
            await client.connect()
            try:
                if meter_id.startswith("SS"):
                    rr = await client.read_holding_registers(rm.M203_AT + 46, count=2, device_id=unit)
                    value = (rr.registers[0] << 16) | rr.registers[1]
                    assert value == round(float(sim.model.import_wh[i])), meter_id
                else:
                    rr = await client.read_input_registers(0x0048, count=2, device_id=unit)
                    kwh = rm.decode_float32(rr.registers[0], rr.registers[1])
                    assert kwh == pytest.approx(float(sim.model.import_wh[i]) / 1000, rel=1e-6), meter_id
            finally:
                client.close()
