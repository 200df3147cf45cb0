"""Shelly Gen2 (Pro 3EM) ``<device_id>/events/rpc`` JSON-RPC ``NotifyStatus`` adapter.

NotifyStatus carries only the keys that changed; ``params.ts`` is Unix seconds (UTC).

| key | field | OBIS |
|---|---|---|
| emdata:0 | total_act (Wh) | 1-0:1.8.0 |
| emdata:0 | total_act_ret (Wh) | 1-0:2.8.0 |
| em:0 | total_act_power (W) | 1-0:16.7.0 |
| em:0 | a/b/c_voltage (V) | 1-0:32.7.0 / 52.7.0 / 72.7.0 |
| em:0 | a/b/c_current (A) | 1-0:31.7.0 / 51.7.0 / 71.7.0 |
| switch:0 | output (bool) | event ``relay_change`` {"relay": connected/disconnected} |

Other methods (NotifyEvent, NotifyFullStatus without these keys) and other keys
(sys, wifi...) carry nothing metered: they decode to an empty result, which the
collector acknowledges and counts as ignored. Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ingest.decode import number, parse_json_object, reading
from ingest.errors import DecodeError
from ingest.models import CURRENT_A, EXPORT_WH, IMPORT_WH, POWER_W, VOLTAGE_V, Decoded, Event, Reading

_EMDATA = {"total_act": IMPORT_WH, "total_act_ret": EXPORT_WH}
_EM = {
    "total_act_power": POWER_W,
    "a_voltage": VOLTAGE_V[0],
    "b_voltage": VOLTAGE_V[1],
    "c_voltage": VOLTAGE_V[2],
    "a_current": CURRENT_A[0],
    "b_current": CURRENT_A[1],
    "c_current": CURRENT_A[2],
}
_NOTIFY = ("NotifyStatus", "NotifyFullStatus")


def decode_shelly(meter_id: str, payload: bytes) -> Decoded:
    doc = parse_json_object(payload)
    if doc.get("method") not in _NOTIFY:
        if isinstance(doc.get("method"), str):
            return Decoded()
        raise DecodeError("schema", "JSON-RPC message without method", meter_id)
    params = doc.get("params")
    if not isinstance(params, dict):
        raise DecodeError("schema", "params must be an object", meter_id)
    raw_ts = number(params.get("ts"), "ts")
    try:
        ts = datetime.fromtimestamp(raw_ts, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise DecodeError("bad_timestamp", f"ts={raw_ts}", meter_id) from exc
    readings: list[Reading] = []
    events: list[Event] = []
    emdata: Any = params.get("emdata:0")
    if isinstance(emdata, dict):
        readings.extend(reading(meter_id, obis, ts, emdata[k]) for k, obis in _EMDATA.items() if k in emdata)
    em: Any = params.get("em:0")
    if isinstance(em, dict):
        readings.extend(Reading(meter_id, obis, ts, number(em[k], k)) for k, obis in _EM.items() if k in em)
    switch: Any = params.get("switch:0")
    if isinstance(switch, dict) and "output" in switch:
        if not isinstance(switch["output"], bool):
            raise DecodeError("bad_value", f"switch:0 output={switch['output']!r}"[:100], meter_id)
        relay = "connected" if switch["output"] else "disconnected"
        events.append(Event(meter_id, ts, "relay_change", {"relay": relay, "source": "switch:0"}))
    return Decoded(readings=tuple(readings), events=tuple(events))
