"""Plain data of the ingest package: decoded readings and events, routes, meter facts.

All timestamps are aware UTC datetimes. Quantities are named by OBIS code
(IEC 62056-61): energy in Wh, power in W, voltage in V, current in A.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

IMPORT_WH = "1-0:1.8.0"
EXPORT_WH = "1-0:2.8.0"
POWER_W = "1-0:16.7.0"
VOLTAGE_V = ("1-0:32.7.0", "1-0:52.7.0", "1-0:72.7.0")
CURRENT_A = ("1-0:31.7.0", "1-0:51.7.0", "1-0:71.7.0")
FREQUENCY_HZ = "1-0:14.7.0"
RELAY = "0-0:96.3.10"

EVENT_KINDS = frozenset(
    {
        "power_fail",
        "power_restore",
        "cover_open",
        "cover_close",
        "tamper",
        "relay_change",
        "button_press",
        "clock_adjusted",
    }
)
RELAY_STATES = frozenset({"connected", "disconnected", "armed", "load_limited"})


@dataclass(frozen=True, slots=True)
class Reading:
    meter_id: str
    obis: str
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Event:
    meter_id: str
    ts: datetime
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message carried. Empty when a well-formed device message has nothing metered."""

    readings: tuple[Reading, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def meter_ids(self) -> frozenset[str]:
        return frozenset(r.meter_id for r in self.readings) | frozenset(e.meter_id for e in self.events)


class RouteKind(StrEnum):
    NATIVE_READINGS = "native_readings"
    NATIVE_EVENTS = "native_events"
    CONCENTRATOR = "concentrator"
    TASMOTA = "tasmota"
    SHELLY = "shelly"


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    key: str  # meter id, concentrator id or device topic / id


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What ingest needs to know about a registered meter."""

    meter_id: str
    timezone: str = "UTC"
    mqtt_topic: str | None = None
    protocol: str = "mqtt"
    register_max_wh: float = 99_999_900.0
    rated_current_a: float = 60.0
    nominal_voltage_v: float = 230.0
    phases: int = 1
    interval_s: int = 900


@dataclass(frozen=True, slots=True)
class MeterDirectory:
    """The registered meters, by id and by device topic (Tasmota topic / Shelly id)."""

    by_id: dict[str, MeterInfo] = field(default_factory=dict)
    by_topic: dict[str, MeterInfo] = field(default_factory=dict)

    @classmethod
    def of(cls, meters: list[MeterInfo]) -> MeterDirectory:
        return cls(
            by_id={m.meter_id: m for m in meters},
            by_topic={m.mqtt_topic: m for m in meters if m.mqtt_topic},
        )


@dataclass(slots=True)
class Item:
    """One message (or one Modbus poll) on its way to the batch writer.

    ``decoded`` holds what could be accepted; ``reason`` (a quarantine reason) is
    set when the message could not be decoded at all. The writer may quarantine
    part of a decoded message too (unknown meter, future timestamp).
    """

    source: str
    topic: str | None
    payload: bytes
    decoded: Decoded | None = None
    reason: str | None = None
    meter_id: str | None = None
