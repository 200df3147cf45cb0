"""Wire formats the simulated MQTT meters speak (docs/interfaces.md §1), as bytes.

| format   | topic                                         | payload                                        |
|----------|-----------------------------------------------|------------------------------------------------|
| native   | <prefix>/v1/meters/<id>/readings              | single reading (1 sample) or interval block    |
| native   | <prefix>/v1/concentrators/<dc>/readings       | concentrator batch of many meters              |
| native   | <prefix>/v1/meters/<id>/events|ack|state      | events, command ack, relay state report        |
| tasmota  | [<tasmota_prefix>/]tele/<topic>/SENSOR        | {"Time": local, "ENERGY": {"Total": kWh, ...}} |
| shelly   | [<shelly_prefix>/]<id>/events/rpc             | NotifyStatus {"emdata:0": {"total_act": Wh}}   |

Readings are formatted with f-strings from plain values (no dict, no json.dumps) because a 100k
fleet formats ~100k of them per interval; meter ids are restricted to ``[A-Za-z0-9._-]`` so
they need no escaping. Pure.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from simulators.meter import AckStatus, Action, RelayState
from simulators.models import Command, MeterEvent

METER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one meter: registers in Wh, power in W, voltage in V, current in A."""

    ts: datetime
    import_wh: float
    export_wh: float
    power_w: float
    voltage_v: float
    current_a: float


@functools.lru_cache(maxsize=4096)
def iso(ts: datetime) -> str:
    """RFC 3339 UTC with a Z and whole seconds (meters do not report fractions); cached per tick."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _values(s: Sample) -> str:
    return (
        f'{{"1-0:1.8.0":{s.import_wh:.1f},"1-0:2.8.0":{s.export_wh:.1f},"1-0:16.7.0":{s.power_w:.1f},'
        f'"1-0:32.7.0":{s.voltage_v:.1f},"1-0:31.7.0":{s.current_a:.2f}}}'
    )


def _reading(s: Sample) -> str:
    return f'{{"ts":"{iso(s.ts)}","values":{_values(s)}}}'


def native_single(meter_id: str, s: Sample) -> bytes:
    return f'{{"v":1,"meter":"{meter_id}","ts":"{iso(s.ts)}","values":{_values(s)}}}'.encode()


def native_block(meter_id: str, samples: Sequence[Sample]) -> bytes:
    return f'{{"v":1,"meter":"{meter_id}","readings":[{",".join(map(_reading, samples))}]}}'.encode()


def native_readings(meter_id: str, samples: Sequence[Sample]) -> bytes:
    """A single reading for one sample, an interval block for several."""
    return native_single(meter_id, samples[0]) if len(samples) == 1 else native_block(meter_id, samples)


def batch_part(meter_id: str, samples: Sequence[Sample]) -> str:
    """One meter's entry of a concentrator batch."""
    return f'{{"meter":"{meter_id}","readings":[{",".join(map(_reading, samples))}]}}'


def native_batch_parts(concentrator_id: str, parts: Sequence[str]) -> bytes:
    return f'{{"v":1,"concentrator":"{concentrator_id}","meters":[{",".join(parts)}]}}'.encode()


def native_batch(concentrator_id: str, meters: Sequence[tuple[str, Sequence[Sample]]]) -> bytes:
    return native_batch_parts(concentrator_id, [batch_part(m, ss) for m, ss in meters])


def native_events(meter_id: str, events: Sequence[MeterEvent], skew_s: float = 0.0) -> bytes:
    body = {
        "v": 1,
        "meter": meter_id,
        "events": [{"ts": iso(_skewed(e.ts, skew_s)), "kind": e.kind, "detail": e.detail} for e in events],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def native_ack(command_id: str, status: AckStatus, relay: RelayState, ts: datetime, reason: str | None = None) -> bytes:
    body: dict[str, Any] = {"v": 1, "id": command_id, "status": status.value, "relay": relay.wire, "ts": iso(ts)}
    if reason:
        body["reason"] = reason
    return json.dumps(body, separators=(",", ":")).encode()


def native_state(relay: RelayState, ts: datetime, load_side_voltage: bool) -> bytes:
    body = {"v": 1, "ts": iso(ts), "relay": relay.wire, "load_side_voltage": load_side_voltage}
    return json.dumps(body, separators=(",", ":")).encode()


def tasmota_sensor(s: Sample, local_tz: tzinfo, today_wh: float = 0.0, yesterday_wh: float = 0.0) -> bytes:
    """Tasmota ``tele/<topic>/SENSOR``: Total/Today/Yesterday in kWh, local time without a zone."""
    local = s.ts.astimezone(local_tz).strftime("%Y-%m-%dT%H:%M:%S")
    energy: dict[str, Any] = {
        "TotalStartTime": "2020-01-01T00:00:00",
        "Total": round(s.import_wh / 1000.0, 3),
        "Yesterday": round(yesterday_wh / 1000.0, 3),
        "Today": round(today_wh / 1000.0, 3),
        "Power": round(max(s.power_w, 0.0), 1),
        "ApparentPower": round(abs(s.power_w) / 0.95, 1),
        "ReactivePower": round(abs(s.power_w) * 0.33, 1),
        "Factor": 0.95,
        "Voltage": round(s.voltage_v),
        "Current": round(s.current_a, 3),
    }
    if s.export_wh:
        energy["ExportActive"] = round(s.export_wh / 1000.0, 3)
    return json.dumps({"Time": local, "ENERGY": energy}, separators=(",", ":")).encode()


def shelly_notify(device_id: str, s: Sample, relay: RelayState | None = None) -> bytes:
    """Shelly Gen2 ``<id>/events/rpc`` NotifyStatus with the changed keys (energy in Wh)."""
    params: dict[str, Any] = {
        "ts": round(s.ts.timestamp(), 2),
        "emdata:0": {"id": 0, "total_act": round(s.import_wh, 2), "total_act_ret": round(s.export_wh, 2)},
        "em:0": {"id": 0, "total_act_power": round(s.power_w, 1), "a_voltage": round(s.voltage_v, 1)},
    }
    if relay is not None:
        params["switch:0"] = {"id": 0, "output": relay in (RelayState.CONNECTED, RelayState.LOAD_LIMITED)}
    body = {"src": device_id, "dst": f"{device_id}/events", "method": "NotifyStatus", "params": params}
    return json.dumps(body, separators=(",", ":")).encode()


def _skewed(ts: datetime, skew_s: float) -> datetime:
    return ts + timedelta(seconds=skew_s) if skew_s else ts


def command_id_of(payload: bytes) -> str | None:
    """The correlation id of a command that could not be understood otherwise (to reject it)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    command_id = body.get("id") if isinstance(body, dict) else None
    return command_id if isinstance(command_id, str) and command_id else None


def decode_command(meter_id: str, payload: bytes) -> Command | str:
    """A command addressed to ``meter_id`` (§1.4), or the reason it cannot be understood."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "not_json"
    if not isinstance(body, dict) or body.get("v") != 1:
        return "unsupported_version"
    command_id = body.get("id")
    if not isinstance(command_id, str) or not command_id:
        return "missing_id"
    try:
        action = Action(str(body.get("action")))
    except ValueError:
        return "unknown_action"
    expires_at = None
    if isinstance(body.get("expires_at"), str):
        try:
            expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        except ValueError:
            return "bad_expires_at"
        if expires_at.tzinfo is None:
            return "bad_expires_at"
    params = {k: v for k, v in body.items() if k not in ("v", "id", "action", "issued_at", "expires_at")}
    return Command(meter_id, command_id, action, params, expires_at)


def shelly_switch(device_id: str, ts: datetime, relay: RelayState) -> bytes:
    """Shelly Gen2 NotifyStatus carrying only the changed ``switch:0`` output (after a relay change)."""
    closed = relay in (RelayState.CONNECTED, RelayState.LOAD_LIMITED)
    params = {"ts": round(ts.timestamp(), 2), "switch:0": {"id": 0, "output": closed}}
    body = {"src": device_id, "dst": f"{device_id}/events", "method": "NotifyStatus", "params": params}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Topics:
    """The topic names of one run (prefixes from settings/scenario)."""

    prefix: str = "headend"
    tasmota_prefix: str = ""
    shelly_prefix: str = ""

    def meter(self, meter_id: str, leaf: str) -> str:
        return f"{self.prefix}/v1/meters/{meter_id}/{leaf}"

    def concentrator(self, dc_id: str) -> str:
        return f"{self.prefix}/v1/concentrators/{dc_id}/readings"

    def commands(self) -> str:
        return f"{self.prefix}/v1/meters/+/cmd"

    def tasmota(self, topic: str) -> str:
        return f"{self.tasmota_prefix}/tele/{topic}/SENSOR" if self.tasmota_prefix else f"tele/{topic}/SENSOR"

    def shelly(self, device_id: str) -> str:
        return f"{self.shelly_prefix}/{device_id}/events/rpc" if self.shelly_prefix else f"{device_id}/events/rpc"

    def meter_of_command(self, topic: str) -> str | None:
        """The meter id of a command topic, or None if the topic is not ``<prefix>/v1/meters/<id>/cmd``."""
        head = f"{self.prefix}/v1/meters/"
        if not topic.startswith(head) or not topic.endswith("/cmd"):
            return None
        meter_id = topic[len(head) : -len("/cmd")]
        return meter_id if METER_ID.match(meter_id) else None
