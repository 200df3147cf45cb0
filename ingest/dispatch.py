"""From (topic, payload) to an :class:`~ingest.models.Item`: routing plus the right decoder.

Pure: the meter directory is passed in. A device (Tasmota topic, Shelly id) is
mapped to its meter by the meter's ``mqtt_topic``; an unknown device gives an
item with reason ``unknown_device`` (the collector refreshes its directory once
and decodes again before quarantining it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ingest.decode import decode_concentrator, decode_native_events, decode_native_readings, route
from ingest.errors import DecodeError
from ingest.models import Item, MeterDirectory, Route, RouteKind
from ingest.shelly import decode_shelly
from ingest.tasmota import decode_tasmota


@dataclass(frozen=True, slots=True)
class Prefixes:
    native: str = "headend"
    tasmota: str = ""
    shelly: str = ""


@functools.lru_cache(maxsize=65_536)  # topics repeat: one per meter (a rejected topic is not cached)
def _route(topic: str, prefixes: Prefixes) -> Route:
    return route(topic, native_prefix=prefixes.native, tasmota_prefix=prefixes.tasmota, shelly_prefix=prefixes.shelly)


def decode_message(topic: str, payload: bytes, directory: MeterDirectory, prefixes: Prefixes) -> Item:
    meter_id: str | None = None
    try:
        r = _route(topic, prefixes)
        if r.kind is RouteKind.NATIVE_READINGS:
            meter_id = r.key
            decoded = decode_native_readings(r.key, payload)
        elif r.kind is RouteKind.NATIVE_EVENTS:
            meter_id = r.key
            decoded = decode_native_events(r.key, payload)
        elif r.kind is RouteKind.CONCENTRATOR:
            decoded = decode_concentrator(r.key, payload)
        else:
            meter = directory.by_topic.get(r.key)
            if meter is None:
                raise DecodeError("unknown_device", f"{r.kind.value} device {r.key!r}")
            meter_id = meter.meter_id
            if r.kind is RouteKind.TASMOTA:
                decoded = decode_tasmota(meter.meter_id, meter.timezone, payload)
            else:
                decoded = decode_shelly(meter.meter_id, payload)
    except DecodeError as exc:
        return Item("mqtt", topic, payload, reason=exc.quarantine_reason, meter_id=exc.meter_id or meter_id)
    return Item("mqtt", topic, payload, decoded=decoded, meter_id=meter_id)
