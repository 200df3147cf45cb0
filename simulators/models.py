"""Plain data of the simulators: what a meter is, what it says.

- ``MeterSpec``: the static description of one simulated meter (load, registers, relay, wire).
- ``MeterEvent``: something a meter reports (docs/interfaces.md §1.3 kinds).
- ``Command``: a decoded command addressed to a meter (§1.4).
- ``Ack``: the meter's acknowledgement of a command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from simulators.meter import AckStatus, Action, RelayState


class Protocol(StrEnum):
    MQTT = "mqtt"
    MODBUS = "modbus"


class WireFormat(StrEnum):
    """How a meter talks: MQTT formats (native, tasmota, shelly) or Modbus maps (sunspec, sdm630)."""

    NATIVE = "native"
    TASMOTA = "tasmota"
    SHELLY = "shelly"
    SUNSPEC = "sunspec"
    SDM630 = "sdm630"

    @property
    def protocol(self) -> Protocol:
        return _PROTOCOL[self.value]


_PROTOCOL = {w.value: (Protocol.MODBUS if w.value in ("sunspec", "sdm630") else Protocol.MQTT) for w in WireFormat}


class Reporting(StrEnum):
    """How a native MQTT meter sends its readings."""

    SINGLE = "single"  # one reading per interval
    BLOCK = "block"  # an interval block every N intervals
    CONCENTRATOR = "concentrator"  # via a data concentrator batch of many meters


@dataclass(frozen=True)
class MeterSpec:
    meter_id: str
    profile: str = "h0"
    annual_kwh: float = 3500.0
    pv_kwp: float = 0.0
    register_max_wh: float = 99_999_900.0  # 99,999.9 kWh
    initial_import_wh: float = 0.0
    initial_export_wh: float = 0.0
    has_relay: bool = True
    supports_load_limit: bool = False
    keep_power: bool = False
    phases: int = 1
    nominal_voltage_v: float = 230.0
    rated_current_a: float = 60.0
    wire: WireFormat = WireFormat.NATIVE
    reporting: Reporting = Reporting.SINGLE
    interval_s: int = 900
    block_intervals: int = 4
    concentrator: str | None = None
    device_topic: str | None = None  # Tasmota topic / Shelly device id (default: the meter id)
    modbus_server: int | None = None  # which of the fleet's Modbus servers (port = base port + this)
    modbus_unit: int | None = None  # unit (device) id on that server, 1..247
    service_point_id: str | None = None
    feeder: str = "F-1"
    account_class: str = "residential"

    @property
    def topic_id(self) -> str:
        return self.device_topic or self.meter_id


@dataclass(frozen=True)
class MeterEvent:
    meter_id: str
    ts: datetime
    kind: str  # power_fail, power_restore, cover_open, cover_close, tamper, relay_change, button_press, ...
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    meter_id: str
    command_id: str
    action: Action
    params: dict[str, Any]
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Ack:
    meter_id: str
    command_id: str
    status: AckStatus
    relay: RelayState
    ts: datetime
    reason: str | None = None
