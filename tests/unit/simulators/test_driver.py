"""The fleet driver: what meters publish per tick, how they answer commands, how faults bend it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from simulators.driver import FleetDriver, Outgoing
from simulators.faults import FaultPlan, FaultRates, Faults
from simulators.fleet import FleetModel
from simulators.formats import Topics, decode_command
from simulators.meter import Action
from simulators.models import Command, MeterSpec, Reporting, WireFormat

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
TOPICS = Topics("pfx", "tas", "shl")


def make(specs: list[MeterSpec], faults: FaultPlan | None = None, seed: int = 1, **kw) -> FleetDriver:
    kw.setdefault("birth_report", False)  # counted exactly below; the birth report has its own test
    model = FleetModel(specs, seed=seed)
    f = Faults(faults or FaultPlan(), [s.meter_id for s in specs], seed)
    return FleetDriver(model, f, TOPICS, step_s=60.0, origin=T0, **kw)


def run(d: FleetDriver, ticks: int, start: int = 0) -> list[Outgoing]:
    out: list[Outgoing] = []
    for k in range(start, start + ticks):
        out.extend(d.tick(k))
    return out


def bodies(out: list[Outgoing], leaf: str) -> list[dict]:
    return [json.loads(m.payload) for m in out if m.topic.endswith(leaf)]


def test_single_readings_every_interval() -> None:
    d = make([MeterSpec("M-1"), MeterSpec("M-2", interval_s=300)])
    out = run(d, 15)
    m1 = [json.loads(m.payload) for m in out if m.topic == "pfx/v1/meters/M-1/readings"]
    m2 = [json.loads(m.payload) for m in out if m.topic == "pfx/v1/meters/M-2/readings"]
    assert [b["ts"] for b in m1] == ["2026-11-30T00:15:00Z"]
    assert len(m2) == 3
    assert m1[0]["meter"] == "M-1" and m1[0]["values"]["1-0:1.8.0"] == pytest.approx(d.model.import_wh[0], abs=0.05)
    assert set(m1[0]["values"]) == {"1-0:1.8.0", "1-0:2.8.0", "1-0:16.7.0", "1-0:32.7.0", "1-0:31.7.0"}


def test_blocks_batches_tasmota_shelly() -> None:
    specs = [
        MeterSpec("B-1", reporting=Reporting.BLOCK, block_intervals=4),
        MeterSpec("C-1", reporting=Reporting.CONCENTRATOR, concentrator="DC-7"),
        MeterSpec("C-2", reporting=Reporting.CONCENTRATOR, concentrator="DC-7"),
        MeterSpec("T-1", wire=WireFormat.TASMOTA, device_topic="tasmota_ABC"),
        MeterSpec("S-1", wire=WireFormat.SHELLY, device_topic="shellypro3em-01"),
    ]
    d = make(specs)
    out = run(d, 60)
    blocks = [json.loads(m.payload) for m in out if m.topic == "pfx/v1/meters/B-1/readings"]
    assert len(blocks) == 1 and len(blocks[0]["readings"]) == 4
    batches = [json.loads(m.payload) for m in out if m.topic == "pfx/v1/concentrators/DC-7/readings"]
    assert len(batches) == 4 and [x["meter"] for x in batches[0]["meters"]] == ["C-1", "C-2"]
    tas = [json.loads(m.payload) for m in out if m.topic == "tas/tele/tasmota_ABC/SENSOR"]
    assert len(tas) == 4 and tas[0]["Time"] == "2026-11-30T08:15:00"  # Asia/Shanghai local time
    assert tas[-1]["ENERGY"]["Total"] == pytest.approx(d.model.import_wh[3] / 1000, abs=0.001)
    sh = [json.loads(m.payload) for m in out if m.topic == "shl/shellypro3em-01/events/rpc"]
    assert len(sh) == 4 and sh[-1]["method"] == "NotifyStatus"
    assert sh[-1]["params"]["emdata:0"]["total_act"] == pytest.approx(d.model.import_wh[4], abs=0.01)


def test_disconnect_ack_state_and_events() -> None:
    d = make([MeterSpec("M-1")])
    run(d, 5)
    cmd = decode_command("M-1", b'{"v":1,"id":"c-1","action":"disconnect","issued_at":"2026-11-30T00:05:00Z"}')
    assert isinstance(cmd, Command)
    out = d.handle_command(cmd, T0 + timedelta(minutes=5))
    ack = bodies(out, "/ack")[0]
    assert ack == {"v": 1, "id": "c-1", "status": "ok", "relay": "disconnected", "ts": "2026-11-30T00:05:00Z"}
    assert bodies(out, "/state")[0]["relay"] == "disconnected"
    assert bodies(out, "/events")[0]["events"][0]["kind"] == "relay_change"
    before = d.model.import_wh[0]
    run(d, 30, 5)
    assert d.model.import_wh[0] == before


def test_arm_then_button_after_delay() -> None:
    d = make([MeterSpec("M-1")], button_after_s=300.0)
    now = T0
    d.handle_command(Command("M-1", "a", Action.DISCONNECT, {}), now)
    out = d.handle_command(Command("M-1", "b", Action.ARM, {}), now)
    assert bodies(out, "/ack")[0]["relay"] == "armed"
    out = run(d, 6)
    kinds = [e["kind"] for b in bodies(out, "/events") for e in b["events"]]
    assert kinds == ["button_press", "relay_change"]
    assert bodies(out, "/state")[-1]["relay"] == "connected"


def test_expired_and_unknown_commands() -> None:
    d = make([MeterSpec("M-1")])
    cmd = Command("M-1", "x", Action.DISCONNECT, {}, expires_at=T0)
    ack = bodies(d.handle_command(cmd, T0 + timedelta(seconds=1)), "/ack")[0]
    assert ack["status"] == "rejected" and ack["reason"] == "expired" and ack["relay"] == "connected"
    assert d.handle_command(Command("NOPE", "y", Action.STATUS, {}), T0) == []
    assert decode_command("M-1", b"not json") == "not_json"
    assert decode_command("M-1", b'{"v":1,"id":"z","action":"explode"}') == "unknown_action"
    assert TOPICS.meter_of_command("pfx/v1/meters/M-1/cmd") == "M-1"
    assert TOPICS.meter_of_command("pfx/v1/meters/a/b/cmd") is None


def test_offline_backlog_arrives_as_a_block() -> None:
    d = make([MeterSpec("M-1")])
    d.offline[0] = True
    d.offline_until[0] = (T0 + timedelta(hours=2)).timestamp()
    out = run(d, 119)
    assert bodies(out, "/readings") == []
    assert d.handle_command(Command("M-1", "c", Action.STATUS, {}), T0) == []  # cannot hear
    block, latest = bodies(run(d, 1, 119), "/readings")  # back at 02:00: the backlog, then the new one
    assert len(block["readings"]) == 7  # 00:15 .. 01:45, in order
    ts = [r["ts"] for r in block["readings"]]
    assert ts == sorted(ts) and ts[-1] == "2026-11-30T01:45:00Z" and latest["ts"] == "2026-11-30T02:00:00Z"


def test_message_faults() -> None:
    specs = [MeterSpec(f"M-{i}", interval_s=60) for i in range(20)]
    assert run(make(specs, FaultPlan(FaultRates(drop=1.0))), 5) == []
    dup = run(make(specs, FaultPlan(FaultRates(duplicate=1.0))), 1)
    assert len(dup) == 40 and dup[0] == dup[1]
    garbage = run(make(specs, FaultPlan(FaultRates(garbage=1.0))), 1)
    assert all(not m.payload.startswith(b'{"v":1,"meter"') for m in garbage)
    d = make([MeterSpec("M-1", interval_s=60)], FaultPlan(FaultRates(reorder=0.5)), seed=3)
    ts = [json.loads(m.payload)["ts"] for m in run(d, 50) + d.flush()]
    assert sorted(ts) == sorted(set(ts)) and ts != sorted(ts)  # nothing lost, some out of order
    d = make([MeterSpec("M-1", interval_s=60)], FaultPlan(FaultRates(delay=1.0, delay_s=300)))
    assert run(d, 4) == []
    (released,) = run(d, 2, 4)  # the 00:01 reading, 5 simulated minutes late
    assert json.loads(released.payload)["ts"] == "2026-11-30T00:01:00Z"


def test_per_meter_override_and_seeded() -> None:
    specs = [MeterSpec(f"M-{i}", interval_s=60) for i in range(3)]
    plan = FaultPlan(FaultRates(), {"M-1": FaultRates(drop=1.0)})
    out = run(make(specs, plan), 3)
    assert {m.topic for m in out} == {"pfx/v1/meters/M-0/readings", "pfx/v1/meters/M-2/readings"}
    noisy = FaultPlan(FaultRates(drop=0.3, duplicate=0.2, garbage=0.1, clock_skew=0.5))
    a = [m.payload for m in run(make(specs, noisy, seed=9), 30)]
    b = [m.payload for m in run(make(specs, noisy, seed=9), 30)]
    c = [m.payload for m in run(make(specs, noisy, seed=10), 30)]
    assert a == b and a != c


def test_relay_faults_and_load_side_voltage() -> None:
    specs = [MeterSpec("F"), MeterSpec("W"), MeterSpec("V"), MeterSpec("Q"), MeterSpec("K")]
    plan = FaultPlan(
        FaultRates(),
        {
            "F": FaultRates(relay_fail=1.0),
            "W": FaultRates(wrong_state=1.0),
            "V": FaultRates(load_side_voltage=1.0),
            "Q": FaultRates(ack_missing=1.0),
            "K": FaultRates(keep_power=1.0),
        },
    )
    d = make(specs, plan)
    ack = bodies(d.handle_command(Command("F", "1", Action.DISCONNECT, {}), T0), "/ack")[0]
    assert ack["status"] == "failed" and ack["relay"] == "connected" and d.model.relay[0] == 0
    ack = bodies(d.handle_command(Command("W", "2", Action.DISCONNECT, {}), T0), "/ack")[0]
    assert ack["status"] == "ok" and ack["relay"] == "connected" and d.model.relay[1] == 1  # lies
    d.handle_command(Command("V", "3", Action.DISCONNECT, {}), T0)
    ack = bodies(d.handle_command(Command("V", "4", Action.RECONNECT, {}), T0), "/ack")[0]
    assert ack["status"] == "rejected" and ack["reason"] == "load_side_voltage"
    out = d.handle_command(Command("Q", "5", Action.DISCONNECT, {}), T0)
    assert bodies(out, "/ack") == [] and d.model.relay[3] == 1
    ack = bodies(d.handle_command(Command("K", "6", Action.DISCONNECT, {}), T0), "/ack")[0]
    assert ack["status"] == "rejected" and ack["reason"] == "keep_power_mode" and d.model.relay[4] == 0


def test_per_day_faults_reset_spike_power() -> None:
    specs = [MeterSpec("R", initial_import_wh=5e6), MeterSpec("S"), MeterSpec("P"), MeterSpec("X")]
    plan = FaultPlan(
        FaultRates(),
        {
            "R": FaultRates(register_reset=1e9),
            "S": FaultRates(spike=1e9, spike_wh=1e6),
            "P": FaultRates(power_fail=1e9),
            "X": FaultRates(tamper=1e9, cover_open=1e9),
        },
    )
    d = make(specs, plan)
    out = run(d, 1)
    assert d.model.import_wh[0] < 100 and d.model.import_wh[1] > 1e6
    events = {b["meter"]: [e["kind"] for e in b["events"]] for b in bodies(out, "/events")}
    assert events == {"P": ["power_fail"], "X": ["cover_open", "tamper"]}


def test_broker_outage_keeps_readings_and_sends_the_backlog() -> None:
    d = make([MeterSpec("M-1"), MeterSpec("C-1", reporting=Reporting.CONCENTRATOR, concentrator="DC")])
    run(d, 15)
    d.set_uplink(False, d.model_time())
    assert bodies(run(d, 60, 15), "/readings") == []
    d.set_uplink(True, d.model_time())
    out = run(d, 1, 75)
    (block,) = bodies(out, "M-1/readings")
    assert len(block["readings"]) == 4  # 00:30 .. 01:15 kept while the broker was away
    assert bodies(out, "/events") == []
    out = run(d, 15, 76)
    (batch,) = bodies(out, "DC/readings")
    assert len(batch["meters"][0]["readings"]) == 5  # the concentrator's backlog rides in its next batch


def test_unreadable_commands_with_an_id_are_rejected() -> None:
    from simulators.formats import command_id_of

    d = make([MeterSpec("M-1")])
    payload = b'{"v":1,"id":"q-9","action":"explode"}'
    reason = decode_command("M-1", payload)
    assert reason == "unknown_action" and command_id_of(payload) == "q-9" and command_id_of(b"[]") is None
    (ack,) = bodies(d.reject_command("M-1", "q-9", reason, T0), "/ack")
    assert ack == {
        "v": 1,
        "id": "q-9",
        "status": "rejected",
        "relay": "connected",
        "ts": "2026-11-30T00:00:00Z",
        "reason": "unknown_action",
    }


def test_meters_report_their_relay_state_on_coming_online() -> None:
    d = make([MeterSpec("M-1"), MeterSpec("M-2")], birth_report=True)
    d.offline[1] = True
    d.offline_until[1] = (T0 + timedelta(minutes=30)).timestamp()
    first = run(d, 1)
    assert [m.topic for m in first if m.topic.endswith("/state")] == ["pfx/v1/meters/M-1/state"]
    assert bodies(first, "/state")[0]["relay"] == "connected"
    assert bodies(run(d, 28, 1), "/state") == []  # once, not every tick
    back = run(d, 2, 29)
    assert [m.topic for m in back if m.topic.endswith("/state")] == ["pfx/v1/meters/M-2/state"]
