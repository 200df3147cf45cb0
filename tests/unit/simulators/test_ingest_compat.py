"""The contract both ways: ingest's own decoders accept everything the simulators send.

Pure (no broker, no database): messages come from the fleet driver, decoding from ingest's
pure core, so a drift on either side of docs/interfaces.md shows here.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.dispatch import Prefixes, decode_message
from ingest.models import MeterDirectory, MeterInfo
from ingest.registers_sdm import BLOCK_COUNT, decode_sdm
from ingest.registers_sunspec import decode_common, decode_conn, decode_meter_203, walk_models
from simulators import registermaps as rm
from simulators.driver import FleetDriver
from simulators.faults import FaultPlan, Faults
from simulators.fleet import FleetModel
from simulators.formats import Topics
from simulators.meter import Action
from simulators.models import Command, MeterSpec, Reporting, WireFormat

T0 = datetime(2026, 11, 30, tzinfo=UTC)
SPECS = [
    MeterSpec("N-1", pv_kwp=4.0),
    MeterSpec("B-1", reporting=Reporting.BLOCK, block_intervals=2),
    MeterSpec("C-1", reporting=Reporting.CONCENTRATOR, concentrator="DC-1"),
    MeterSpec("C-2", reporting=Reporting.CONCENTRATOR, concentrator="DC-1"),
    MeterSpec("T-1", wire=WireFormat.TASMOTA, device_topic="t-1"),
    MeterSpec("S-1", wire=WireFormat.SHELLY, device_topic="s-1"),
]


def test_ingest_decodes_every_simulated_mqtt_message() -> None:
    model = FleetModel(SPECS, seed=1)
    driver = FleetDriver(
        model, Faults(FaultPlan(), [s.meter_id for s in SPECS], 1), Topics("hx", "tas", "shl"), step_s=60.0, origin=T0
    )
    out = [m for k in range(6 * 60) for m in driver.tick(k)]  # six hours, PV exports at noon (Shanghai)
    out += driver.handle_command(Command("N-1", "c1", Action.DISCONNECT, {}), T0)
    shelly_cut = driver.handle_command(Command("S-1", "c2", Action.DISCONNECT, {}), T0)
    out += shelly_cut
    out += driver.tick(6 * 60)
    directory = MeterDirectory.of([MeterInfo(s.meter_id, "Asia/Shanghai", s.device_topic) for s in SPECS])
    prefixes = Prefixes("hx", "tas", "shl")
    readings = 0
    for m in out:
        if m.kind in ("ack", "state"):  # for control, not ingest
            continue
        item = decode_message(m.topic, m.payload, directory, prefixes)
        assert item.reason is None, (m.topic, m.payload, item.reason)
        assert item.decoded is not None
        readings += len(item.decoded.readings)
        for r in item.decoded.readings:
            assert r.ts.tzinfo is not None and T0 <= r.ts <= T0.replace(hour=7)
    assert readings > 24 * 5 * 4  # every meter, every quarter-hour, several OBIS codes each
    switch = [m for m in shelly_cut if m.topic == "shl/s-1/events/rpc"]
    item = decode_message(switch[0].topic, switch[0].payload, directory, prefixes)
    assert item.decoded is not None and item.decoded.events[0].detail["relay"] == "disconnected"
    kinds = {m.topic.rsplit("/", 1)[-1] for m in out}
    assert {"readings", "SENSOR", "rpc", "events"} <= kinds


def test_tasmota_and_shelly_values_survive_decoding() -> None:
    model = FleetModel(SPECS, seed=2)
    driver = FleetDriver(
        model, Faults(FaultPlan(), [s.meter_id for s in SPECS], 2), Topics("hx"), step_s=60.0, origin=T0
    )
    out = [m for k in range(15) for m in driver.tick(k)]
    directory = MeterDirectory.of([MeterInfo(s.meter_id, "Asia/Shanghai", s.device_topic) for s in SPECS])
    got = {}
    for m in out:
        if m.kind in ("ack", "state"):  # for control, not ingest
            continue
        item = decode_message(m.topic, m.payload, directory, Prefixes("hx"))
        assert item.decoded is not None
        for r in item.decoded.readings:
            got[(r.meter_id, r.obis)] = (r.ts, r.value)
    ts, value = got[("T-1", "1-0:1.8.0")]
    assert ts == T0.replace(minute=15) and value == pytest.approx(model.import_wh[4], abs=0.5)  # Total kWh, 3 dp
    ts, value = got[("S-1", "1-0:1.8.0")]
    assert value == pytest.approx(model.import_wh[5], abs=0.01)


def test_ingest_decodes_the_simulated_register_maps() -> None:
    reading = rm.MeterReading(
        import_wh=1_234_567.0,
        export_wh=89.0,
        power_w=-812.0,
        voltage_v=231.4,
        phases=1,
        frequency_hz=50.0,
        connected=False,
    )
    regs = rm.sunspec_registers(reading, "SS-7", 7)
    models = walk_models(regs)
    m1, m203, m123 = models[1], models[203], models[123]
    common = decode_common(regs[m1.address - rm.SUNSPEC_BASE :])
    assert (common["serial"], common["manufacturer"]) == ("SS-7", "headend")
    values = decode_meter_203(regs[m203.address - rm.SUNSPEC_BASE :])
    assert values["1-0:1.8.0"] == 1_234_567.0 and values["1-0:2.8.0"] == 89.0
    assert values["1-0:16.7.0"] == -812.0 and values["1-0:32.7.0"] == pytest.approx(231.4)
    assert decode_conn(regs[m123.address - rm.SUNSPEC_BASE :]) == "disconnected"
    assert m123.address + 4 == rm.CONN_ADDR

    sdm = rm.sdm630_input_registers(reading)
    values = decode_sdm(sdm[:BLOCK_COUNT])
    assert values["1-0:1.8.0"] == pytest.approx(1_234_567.0, abs=0.1)
    assert values["1-0:2.8.0"] == pytest.approx(89.0, abs=0.1)
    assert values["1-0:16.7.0"] == pytest.approx(-812.0)
