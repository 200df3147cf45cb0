"""Scenario files: a fleet, its load, its faults, its clock, its endpoints, in YAML.

A scenario is validated (unknown keys are errors) and expanded into ``MeterSpec``s
deterministically from its seed: the same file and seed give the same meters, the same
loads and the same faults. The format is documented in docs/simulators.md; examples live in
``scenarios/*.yaml``. Endpoints not given fall back to the HEADEND_* settings.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulators.errors import ScenarioError
from simulators.faults import FaultPlan, FaultRates
from simulators.models import MeterSpec, Protocol, Reporting, WireFormat
from simulators.profiles import PROFILES

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(value: str | float | int | None) -> float | None:
    """``90``, ``"15m"``, ``"2h"``, ``"3d"`` -> seconds; ``None`` -> run until stopped."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90, 15m, 2h, 3d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttEndpoint(_Strict):
    host: str | None = None  # default HEADEND_MQTT_HOST
    port: int | None = None  # default HEADEND_MQTT_PORT
    prefix: str | None = None  # default HEADEND_MQTT_PREFIX
    tasmota_prefix: str = ""
    shelly_prefix: str = ""
    clients: int = Field(1, ge=1, le=16)
    readings_qos: Literal[0, 1] = 0


class ModbusEndpoint(_Strict):
    host: str = "127.0.0.1"  # where the servers listen
    advertise_host: str | None = None  # the host registered for pollers (default: host)
    port: int = Field(5020, ge=0, le=65535)  # first port; 0 = any free port (tests)
    units_per_port: int = Field(200, ge=1, le=247)


class Group(_Strict):
    name: str
    count: int = Field(ge=1, le=1_000_000)
    id_format: str = "{group}-{n:06d}"  # n counts from 1 within the group
    wire: WireFormat = WireFormat.NATIVE
    reporting: Reporting = Reporting.SINGLE
    interval_s: int = Field(900, ge=1)
    block_intervals: int = Field(4, ge=1, le=96)
    concentrator_size: int = Field(500, ge=1)
    profile: str | dict[str, float] = "h0"
    annual_kwh: float = Field(3500.0, gt=0)
    annual_kwh_spread: float = Field(0.35, ge=0, le=2)  # lognormal sigma between meters
    pv_share: float = Field(0.0, ge=0, le=1)
    pv_kwp: float = Field(5.0, ge=0)
    supports_load_limit: bool = True
    has_relay: bool = True
    keep_power_share: float = Field(0.0, ge=0, le=1)
    initial_wh: tuple[float, float] = (0.0, 20_000_000.0)
    register_max_wh: float = Field(99_999_900.0, gt=0)
    phases: int = Field(1, ge=1, le=3)
    rated_current_a: float = 60.0
    feeders: int = Field(1, ge=1)
    feeder_prefix: str = "F"
    account_class: str = "residential"

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str | dict[str, float]) -> str | dict[str, float]:
        names = [v] if isinstance(v, str) else list(v)
        unknown = [p for p in names if p not in PROFILES]
        if unknown:
            raise ValueError(f"unknown profile(s) {unknown}; known: {', '.join(PROFILES)}")
        if isinstance(v, dict) and (not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError("a profile mix needs positive weights")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Group:
        if self.reporting is not Reporting.SINGLE and self.wire is not WireFormat.NATIVE:
            raise ValueError("block and concentrator reporting exist only for the native format")
        try:
            self.id_format.format(group=self.name, n=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"id_format: {exc}") from exc
        return self


class Faults(_Strict):
    fleet: dict[str, float] = Field(default_factory=dict)
    meters: dict[str, dict[str, float]] = Field(default_factory=dict)


class Accounts(_Strict):
    """With --register: open one prepaid account per meter on this tariff."""

    tariff_id: str = "flat-cny"
    price_per_kwh: str = "0.56"
    currency: str = "CNY"
    balance_minor: int = 5000


class Scenario(_Strict):
    name: str = "scenario"
    seed: int = 1
    start: datetime | None = None  # simulated start; default: HEADEND_CLOCK_ORIGIN or now
    speed: float = Field(1.0, ge=0)  # simulated seconds per real second; 0 = as fast as possible
    step_s: float = Field(60.0, gt=0)
    duration: str | float | None = None  # e.g. "2d"; None = until stopped
    timezone: str = "Asia/Shanghai"
    country: str = "CN"
    button_after_s: float | None = 300.0  # customers press the button this long after an arm
    noise_sigma: float = Field(0.3, ge=0)
    mqtt: MqttEndpoint = Field(default_factory=MqttEndpoint)
    modbus: ModbusEndpoint = Field(default_factory=ModbusEndpoint)
    groups: list[Group] = Field(min_length=1)
    faults: Faults = Field(default_factory=Faults)
    accounts: Accounts | None = None

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("start needs a time zone (e.g. 2026-12-01T08:00:00+08:00)")
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        parse_duration_s(v)
        return v

    @property
    def duration_s(self) -> float | None:
        return parse_duration_s(self.duration)

    def fault_plan(self) -> FaultPlan:
        try:
            fleet = FaultRates.from_mapping(self.faults.fleet)
            meters = {m: FaultRates.from_mapping(r, fleet) for m, r in self.faults.meters.items()}
        except ScenarioError as exc:
            raise ScenarioError(f"{self.name}: {exc}") from exc
        return FaultPlan(fleet, meters)

    def meters(self) -> list[MeterSpec]:
        """The fleet, expanded deterministically from the seed."""
        specs: list[MeterSpec] = []
        server, unit = 0, 0
        for g_no, g in enumerate(self.groups):
            rng = np.random.default_rng([self.seed, g_no])
            if isinstance(g.profile, str):
                profiles = [g.profile] * g.count
            else:
                names = list(g.profile)
                weights = np.array([g.profile[p] for p in names])
                profiles = [names[j] for j in rng.choice(len(names), g.count, p=weights / weights.sum())]
            spread = g.annual_kwh_spread
            annual = (
                (g.annual_kwh * np.exp(rng.normal(-spread * spread / 2, spread, g.count))).tolist()
                if spread
                else [g.annual_kwh] * g.count
            )
            pv = (rng.random(g.count) < g.pv_share).tolist()
            keep = (rng.random(g.count) < g.keep_power_share).tolist()
            initial = np.mod(rng.uniform(g.initial_wh[0], g.initial_wh[1], g.count), g.register_max_wh).tolist()
            # What every meter of the group shares, computed once (100k meters expand in ~2 s).
            common: dict[str, Any] = {
                "register_max_wh": g.register_max_wh,
                "has_relay": g.has_relay,
                "supports_load_limit": g.supports_load_limit,
                "phases": g.phases,
                "rated_current_a": g.rated_current_a,
                "wire": g.wire,
                "reporting": g.reporting,
                "interval_s": g.interval_s,
                "block_intervals": g.block_intervals,
                "account_class": g.account_class,
            }
            modbus = g.wire.protocol is Protocol.MODBUS
            device = g.wire in (WireFormat.TASMOTA, WireFormat.SHELLY)
            concentrated = g.reporting is Reporting.CONCENTRATOR
            fmt, name, size, units = g.id_format, g.name, g.concentrator_size, self.modbus.units_per_port
            feeders = [f"{g.feeder_prefix}-{f + 1}" for f in range(g.feeders)]
            pv_kwp = g.pv_kwp
            for n in range(g.count):
                meter_id = fmt.format(group=name, n=n + 1)
                extra: dict[str, Any] = {}
                if modbus:
                    unit += 1
                    if unit > units:
                        unit, server = 1, server + 1
                    extra = {"modbus_server": server, "modbus_unit": unit}
                if concentrated:
                    extra["concentrator"] = f"{name}-DC{n // size + 1:04d}"
                if device:
                    extra["device_topic"] = meter_id.lower()
                specs.append(
                    MeterSpec(
                        meter_id=meter_id,
                        profile=profiles[n],
                        annual_kwh=annual[n],
                        pv_kwp=pv_kwp if pv[n] else 0.0,
                        initial_import_wh=initial[n],
                        keep_power=keep[n],
                        service_point_id=f"SP-{meter_id}",
                        feeder=feeders[n % len(feeders)],
                        **common,
                        **extra,
                    )
                )
        ids = [s.meter_id for s in specs]
        if len(set(ids)) != len(ids):
            raise ScenarioError(f"{self.name}: meter ids repeat across groups; give each group its own id_format")
        bad = [m for m in self.faults.meters if m not in set(ids)]
        if bad:
            raise ScenarioError(f"{self.name}: faults for unknown meters: {', '.join(bad[:5])}")
        return specs


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file; ``overrides`` replace top-level keys (CLI options)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario {path} must be a mapping")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_scenario(raw, str(path))


def parse_scenario(raw: dict[str, Any], origin: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{origin}: {problems}") from None
