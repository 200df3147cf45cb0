"""Tasmota ``tele/<topic>/SENSOR`` ENERGY adapter.

Tasmota publishes local time without a zone; it is interpreted in the meter's
service-point time zone (an ambiguous wall time in a DST fold is taken as the
first occurrence; a wall time skipped by a DST gap takes the offset from before the
gap). A ``Time`` that carries an offset is honoured as is.

| ENERGY field | OBIS | conversion |
|---|---|---|
| Total (kWh)  | 1-0:1.8.0 | x 1000 -> Wh |
| Power (W), scalar or per-phase list | 1-0:16.7.0 | sum of phases |
| Voltage (V), scalar or list | 1-0:32.7.0 / 52.7.0 / 72.7.0 | per phase |
| Current (A), scalar or list | 1-0:31.7.0 / 51.7.0 / 71.7.0 | per phase |
| Frequency (Hz) | 1-0:14.7.0 | |

A SENSOR message without ENERGY is quarantined (``no_energy``): the collector
only subscribes to metering devices. Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ingest.decode import number, parse_json_object, reading
from ingest.errors import DecodeError
from ingest.models import CURRENT_A, FREQUENCY_HZ, IMPORT_WH, POWER_W, VOLTAGE_V, Decoded, Reading


def _local_ts(value: object, tz: str) -> datetime:
    if not isinstance(value, str):
        raise DecodeError("bad_timestamp", f"Time={value!r}"[:100])
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DecodeError("bad_timestamp", f"Time={value!r}"[:100]) from exc
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=ZoneInfo(tz), fold=0)
    return ts.astimezone(UTC)


def _phases(value: object, what: str) -> list[float]:
    if isinstance(value, list):
        if not 1 <= len(value) <= 3:
            raise DecodeError("bad_value", f"{what} has {len(value)} phases")
        return [number(v, what) for v in value]
    return [number(value, what)]


def decode_tasmota(meter_id: str, timezone: str, payload: bytes) -> Decoded:
    doc = parse_json_object(payload)
    energy = doc.get("ENERGY")
    if not isinstance(energy, dict):
        raise DecodeError("no_energy", "SENSOR message without ENERGY", meter_id)
    ts = _local_ts(doc.get("Time"), timezone)
    out: list[Reading] = []
    if "Total" in energy:
        kwh = number(energy["Total"], "Total")
        out.append(reading(meter_id, IMPORT_WH, ts, round(kwh * 1000.0, 3)))
    if "Power" in energy:
        out.append(Reading(meter_id, POWER_W, ts, sum(_phases(energy["Power"], "Power"))))
    if "Voltage" in energy:
        out.extend(Reading(meter_id, VOLTAGE_V[i], ts, v) for i, v in enumerate(_phases(energy["Voltage"], "Voltage")))
    if "Current" in energy:
        out.extend(Reading(meter_id, CURRENT_A[i], ts, v) for i, v in enumerate(_phases(energy["Current"], "Current")))
    if "Frequency" in energy:
        out.append(Reading(meter_id, FREQUENCY_HZ, ts, number(energy["Frequency"], "Frequency")))
    if not out:
        raise DecodeError("no_energy", "ENERGY without Total/Power/Voltage/Current", meter_id)
    return Decoded(readings=tuple(out))
