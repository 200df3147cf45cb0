"""Decoding of the native v1 payloads (docs/interfaces.md §1) and topic routing.

Pure: bytes in, :class:`~ingest.models.Decoded` out, or :class:`DecodeError`
with a stable reason code (the quarantine reason). No I/O, no clock.

Topic scheme (``<p>`` = the native prefix)::

    <p>/v1/meters/<meter_id>/readings          single reading or interval block
    <p>/v1/meters/<meter_id>/events            events
    <p>/v1/concentrators/<id>/readings         concentrator batch
    [<tasmota prefix>/]tele/<device>/SENSOR    Tasmota ENERGY (ingest.tasmota)
    [<shelly prefix>/]<device>/events/rpc      Shelly Gen2 NotifyStatus (ingest.shelly)
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ingest.errors import DecodeError
from ingest.models import EVENT_KINDS, RELAY_STATES, Decoded, Event, Reading, Route, RouteKind

METER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OBIS_RE = re.compile(r"^\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}$")
VERSION = 1


# ------------------------------------------------------------------ routing
def _split_prefix(topic: str, prefix: str) -> list[str] | None:
    if not prefix:
        return topic.split("/")
    if not topic.startswith(prefix + "/"):
        return None
    return topic[len(prefix) + 1 :].split("/")


def route(topic: str, *, native_prefix: str, tasmota_prefix: str = "", shelly_prefix: str = "") -> Route:
    """Which decoder a topic goes to, and the meter / concentrator / device it names."""
    parts = _split_prefix(topic, native_prefix)
    if parts and len(parts) == 4 and parts[0] == "v1":
        if parts[1] == "meters" and parts[3] in ("readings", "events"):
            kind = RouteKind.NATIVE_READINGS if parts[3] == "readings" else RouteKind.NATIVE_EVENTS
            return Route(kind, _meter_id(parts[2]))
        if parts[1] == "concentrators" and parts[3] == "readings":
            return Route(RouteKind.CONCENTRATOR, _meter_id(parts[2]))
    parts = _split_prefix(topic, tasmota_prefix)
    if parts and len(parts) == 3 and parts[0] == "tele" and parts[2] == "SENSOR" and parts[1]:
        return Route(RouteKind.TASMOTA, parts[1])
    parts = _split_prefix(topic, shelly_prefix)
    if parts and len(parts) == 3 and parts[1:] == ["events", "rpc"] and parts[0]:
        return Route(RouteKind.SHELLY, parts[0])
    raise DecodeError("unknown_topic", topic)


def subscriptions(*, native_prefix: str, tasmota_prefix: str = "", shelly_prefix: str = "") -> list[str]:
    """The topic filters a collector subscribes to (before any ``$share/<group>/``)."""

    def join(prefix: str, rest: str) -> str:
        return f"{prefix}/{rest}" if prefix else rest

    return [
        join(native_prefix, "v1/meters/+/readings"),
        join(native_prefix, "v1/meters/+/events"),
        join(native_prefix, "v1/concentrators/+/readings"),
        join(tasmota_prefix, "tele/+/SENSOR"),
        join(shelly_prefix, "+/events/rpc"),
    ]


# ------------------------------------------------------------------ shared field parsing
def parse_json_object(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError("malformed_json", str(exc)[:200]) from exc
    except RecursionError as exc:  # absurdly deep nesting
        raise DecodeError("malformed_json", "nested too deeply") from exc
    if not isinstance(doc, dict):
        raise DecodeError("malformed_json", "top level is not an object")
    return doc


def _meter_id(value: object) -> str:
    if not isinstance(value, str) or not METER_ID_RE.match(value):
        raise DecodeError("schema", f"bad meter id {value!r}"[:200])
    return value


def parse_utc(value: object) -> datetime:
    """An RFC 3339 timestamp with a zone, as aware UTC. A naive one is rejected."""
    if not isinstance(value, str):
        raise DecodeError("bad_timestamp", f"{value!r}"[:100])
    return _parse_utc(value)


@functools.lru_cache(maxsize=4096)  # a batch repeats the same interval timestamps
def _parse_utc(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DecodeError("bad_timestamp", f"{value!r}"[:100]) from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise DecodeError("naive_timestamp", value[:100])
    return ts.astimezone(UTC)


def number(value: object, what: str) -> float:
    """A finite JSON number (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError("bad_value", f"{what}={value!r}"[:200])
    out = float(value)
    if not math.isfinite(out):
        raise DecodeError("bad_value", f"{what}={value!r}"[:200])
    return out


def is_cumulative(obis: str) -> bool:
    """Cumulative energy registers (x.8.y) may never be negative."""
    return obis.split(":", 1)[1].split(".")[1] == "8"


_CUMULATIVE: dict[str, bool] = {}  # valid OBIS codes seen so far -> cumulative?


def reading(meter_id: str, obis: str, ts: datetime, raw: object) -> Reading:
    cumulative = _CUMULATIVE.get(obis) if isinstance(obis, str) else None
    if cumulative is None:
        if not isinstance(obis, str) or not OBIS_RE.match(obis):
            raise DecodeError("bad_obis", f"{obis!r}"[:100], meter_id)
        cumulative = (
            _CUMULATIVE.setdefault(obis, is_cumulative(obis)) if len(_CUMULATIVE) < 1024 else is_cumulative(obis)
        )
    if isinstance(raw, float) and math.isfinite(raw):
        value = raw
    else:
        value = number(raw, obis)
    if value < 0 and cumulative:
        raise DecodeError("bad_value", f"negative cumulative register {obis}={value}", meter_id)
    return Reading(meter_id, obis, ts, value)


# ------------------------------------------------------------------ native v1
def _check_version(doc: Mapping[str, Any]) -> None:
    if doc.get("v") != VERSION:
        raise DecodeError("unsupported_version", f"v={doc.get('v')!r}"[:100])


def _values(meter_id: str, ts: datetime, values: object) -> list[Reading]:
    if not isinstance(values, dict) or not values:
        raise DecodeError("schema", "values must be a non-empty object", meter_id)
    return [reading(meter_id, obis, ts, raw) for obis, raw in values.items()]


def _reading_list(meter_id: str, items: object) -> list[Reading]:
    if not isinstance(items, list) or not items:
        raise DecodeError("schema", "readings must be a non-empty list", meter_id)
    out: list[Reading] = []
    for item in items:
        if not isinstance(item, dict):
            raise DecodeError("schema", "a reading must be an object", meter_id)
        out.extend(_values(meter_id, parse_utc(item.get("ts")), item.get("values")))
    return out


def decode_native_readings(meter_id: str, payload: bytes) -> Decoded:
    """A single reading or an interval block published on ``.../meters/<meter_id>/readings``."""
    doc = parse_json_object(payload)
    _check_version(doc)
    if "meter" in doc and doc["meter"] != meter_id:
        raise DecodeError("meter_mismatch", f"payload meter {doc['meter']!r} on topic of {meter_id!r}"[:200], meter_id)
    if "readings" in doc:
        if "values" in doc or "ts" in doc:
            raise DecodeError("schema", "either ts/values or readings, not both", meter_id)
        return Decoded(readings=tuple(_reading_list(meter_id, doc["readings"])))
    return Decoded(readings=tuple(_values(meter_id, parse_utc(doc.get("ts")), doc.get("values"))))


def decode_concentrator(concentrator_id: str, payload: bytes) -> Decoded:
    """A concentrator batch: many meters' intervals in one message."""
    doc = parse_json_object(payload)
    _check_version(doc)
    if "concentrator" in doc and doc["concentrator"] != concentrator_id:
        raise DecodeError("meter_mismatch", f"payload concentrator {doc['concentrator']!r}"[:200])
    meters = doc.get("meters")
    if not isinstance(meters, list) or not meters:
        raise DecodeError("schema", "meters must be a non-empty list")
    out: list[Reading] = []
    for entry in meters:
        if not isinstance(entry, dict):
            raise DecodeError("schema", "a meters entry must be an object")
        out.extend(_reading_list(_meter_id(entry.get("meter")), entry.get("readings")))
    return Decoded(readings=tuple(out))


def decode_native_events(meter_id: str, payload: bytes) -> Decoded:
    doc = parse_json_object(payload)
    _check_version(doc)
    if "meter" in doc and doc["meter"] != meter_id:
        raise DecodeError("meter_mismatch", f"payload meter {doc['meter']!r} on topic of {meter_id!r}"[:200], meter_id)
    items = doc.get("events")
    if not isinstance(items, list) or not items:
        raise DecodeError("schema", "events must be a non-empty list", meter_id)
    out: list[Event] = []
    for item in items:
        if not isinstance(item, dict):
            raise DecodeError("schema", "an event must be an object", meter_id)
        kind = item.get("kind")
        if kind not in EVENT_KINDS:
            raise DecodeError("unknown_event", f"{kind!r}"[:100], meter_id)
        detail = item.get("detail", {})
        if not isinstance(detail, dict):
            raise DecodeError("schema", "detail must be an object", meter_id)
        if kind == "relay_change" and detail.get("relay") not in RELAY_STATES:
            raise DecodeError("schema", f"relay_change needs relay in {sorted(RELAY_STATES)}", meter_id)
        out.append(Event(meter_id, parse_utc(item.get("ts")), str(kind), detail))
    return Decoded(events=tuple(out))
