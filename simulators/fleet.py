"""The state of a whole fleet of meters, advanced together on the clock's ticks.

Per-meter numbers live in numpy arrays (one slot per meter) so that 100k meters advance in a
few milliseconds per tick; relay decisions go through ``simulators.meter`` one meter at a time.

``step(t, dt_s)`` integrates over ``[t, t + dt_s)`` with the demand at ``t`` (rectangle rule):

    demand_w = BDEW shape(profile, local t) * annual_kwh * 1000 * noise  -  pv_kwp * pv(local t) * clouds
    net_w    = supplied_power_w(demand_w, relay, limit_w, powered)       (0 through an open relay)
    import_wh += max(net_w, 0) * dt_s / 3600 ;  export_wh += max(-net_w, 0) * dt_s / 3600

and rolls the registers over at ``register_max_wh``. Noise is a per-meter AR(1) process
(time constant ``noise_tau_s``) drawn from one seeded generator in a fixed order, so a run is
the same for the same seed. Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from simulators.meter import (
    Action,
    CommandOutcome,
    MeterFlags,
    RelayState,
    decide_command,
    press_button,
    supplied_power_w,
    wrap_register,
)
from simulators.models import MeterEvent, MeterSpec
from simulators.profiles import load_profiles, pv_factor

FloatArray = npt.NDArray[np.float64]


def _never(_: date) -> bool:
    return False


class FleetModel:
    def __init__(
        self,
        specs: Sequence[MeterSpec],
        *,
        seed: int,
        timezone: str = "Asia/Shanghai",
        is_holiday: Callable[[date], bool] = _never,
        noise_sigma: float = 0.3,
        noise_tau_s: float = 1800.0,
    ) -> None:
        if len({s.meter_id for s in specs}) != len(specs):
            raise ValueError("meter ids must be unique")
        self.specs = list(specs)
        self.ids = [s.meter_id for s in specs]
        self.index = {m: i for i, m in enumerate(self.ids)}
        self.tz = ZoneInfo(timezone)
        self.is_holiday = is_holiday
        self.profiles = load_profiles()
        n = len(specs)
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.noise_sigma = noise_sigma
        self.noise_tau_s = noise_tau_s
        profile_no = {name: self.profiles.index(name) for name in {s.profile for s in specs}}
        self.profile_idx = np.array([profile_no[s.profile] for s in specs], dtype=np.int16)
        self.annual_kwh = np.array([s.annual_kwh for s in specs], dtype=np.float64)
        self.pv_kwp = np.array([s.pv_kwp for s in specs], dtype=np.float64)
        self.register_max_wh = np.array([s.register_max_wh for s in specs], dtype=np.float64)
        self.import_wh = wrap_register(
            np.array([s.initial_import_wh for s in specs], dtype=np.float64), self.register_max_wh
        )
        self.export_wh = wrap_register(
            np.array([s.initial_export_wh for s in specs], dtype=np.float64), self.register_max_wh
        )
        self.relay = np.zeros(n, dtype=np.int8)
        self.limit_w = np.full(n, np.inf)
        self.powered = np.ones(n, dtype=bool)
        self.cover_open = np.zeros(n, dtype=bool)
        self.load_side_voltage = np.zeros(n, dtype=bool)
        self.keep_power = np.array([s.keep_power for s in specs], dtype=bool)
        self.nominal_v = np.array([s.nominal_voltage_v for s in specs], dtype=np.float64)
        self.phases = np.array([max(1, s.phases) for s in specs], dtype=np.float64)
        self.noise = self.rng.standard_normal(n)
        self.clouds = 1.0
        self.power_w = np.zeros(n)
        self.voltage_v = self.nominal_v.copy()
        self.events: list[MeterEvent] = []
        self.steps = 0

    # ----------------------------------------------------------------- time
    def demand_w(self, t: datetime) -> FloatArray:
        """Demand of every meter at ``t`` (before relay and supply), import positive."""
        local = t.astimezone(self.tz)
        base = self.profiles.demand_w(self.profile_idx, self.annual_kwh, local, self.is_holiday(local.date()))
        s = self.noise_sigma
        demand: FloatArray = base * np.exp(s * self.noise - s * s / 2)
        if self.pv_kwp.any():
            demand = demand - self.pv_kwp * 1000.0 * pv_factor(local) * self.clouds
        return demand

    def step(self, t: datetime, dt_s: float) -> None:
        """Advance every meter over ``[t, t + dt_s)``."""
        net = supplied_power_w(self.demand_w(t), self.relay, self.limit_w, self.powered)
        self.power_w = net
        energy = net * (dt_s / 3600.0)
        self.import_wh = wrap_register(self.import_wh + np.maximum(energy, 0.0), self.register_max_wh)
        self.export_wh = wrap_register(self.export_wh + np.maximum(-energy, 0.0), self.register_max_wh)
        # Next step's noise and weather: one draw per meter, in order (deterministic for the seed).
        phi = math.exp(-dt_s / self.noise_tau_s)
        self.noise = phi * self.noise + math.sqrt(1 - phi * phi) * self.rng.standard_normal(self.n)
        self.clouds = min(1.0, max(0.2, self.clouds + float(self.rng.normal(0.0, 0.05))))
        self.voltage_v = (self.nominal_v + self.rng.normal(0.0, 1.5, self.n)) * self.powered
        self.steps += 1

    # --------------------------------------------------------------- readings
    def values(self, i: int) -> dict[str, float]:
        """The OBIS values a meter shows now: registers (Wh), power (W), voltage (V), current (A)."""
        volts = float(self.voltage_v[i])
        power = float(self.power_w[i])
        amps = abs(power) / (volts * float(self.phases[i])) if volts > 0 else 0.0
        return {
            "1-0:1.8.0": round(float(self.import_wh[i]), 1),
            "1-0:2.8.0": round(float(self.export_wh[i]), 1),
            "1-0:16.7.0": round(power, 1),
            "1-0:32.7.0": round(volts, 1),
            "1-0:31.7.0": round(amps, 2),
        }

    def relay_state(self, i: int) -> RelayState:
        return RelayState(int(self.relay[i]))

    def flags(self, i: int, *, relay_fails: bool = False) -> MeterFlags:
        spec = self.specs[i]
        return MeterFlags(
            relay=self.relay_state(i),
            has_relay=spec.has_relay,
            supports_load_limit=spec.supports_load_limit,
            keep_power=bool(self.keep_power[i]),
            load_side_voltage=bool(self.load_side_voltage[i]),
            relay_fails=relay_fails,
        )

    # ----------------------------------------------------------------- relay
    def _apply(self, i: int, outcome: CommandOutcome, ts: datetime) -> None:
        before = self.relay_state(i)
        if outcome.limit_w is not None:
            self.limit_w[i] = outcome.limit_w
        if outcome.relay is not before:
            self.relay[i] = int(outcome.relay)
            if outcome.relay is RelayState.CONNECTED:
                self.limit_w[i] = np.inf
            self.events.append(MeterEvent(self.ids[i], ts, "relay_change", {"relay": outcome.relay.wire}))

    def command(
        self, i: int, action: Action, params: dict[str, Any] | None, ts: datetime, *, relay_fails: bool = False
    ) -> CommandOutcome:
        """Carry out a command on meter ``i`` and return what happened (the ack's content)."""
        outcome = decide_command(self.flags(i, relay_fails=relay_fails), action, params)
        if outcome.changed:
            self._apply(i, outcome, ts)
        return outcome

    def press_button(self, i: int, ts: datetime, *, relay_fails: bool = False) -> CommandOutcome:
        self.events.append(MeterEvent(self.ids[i], ts, "button_press", {}))
        outcome = press_button(self.flags(i, relay_fails=relay_fails))
        if outcome.changed:
            self._apply(i, outcome, ts)
        return outcome

    # ----------------------------------------------------- supply and tamper
    def power_fail(self, i: int, ts: datetime) -> None:
        if self.powered[i]:
            self.powered[i] = False
            self.power_w[i] = 0.0
            self.events.append(MeterEvent(self.ids[i], ts, "power_fail", {}))

    def power_restore(self, i: int, ts: datetime) -> None:
        if not self.powered[i]:
            self.powered[i] = True
            self.events.append(MeterEvent(self.ids[i], ts, "power_restore", {}))

    def set_cover(self, i: int, is_open: bool, ts: datetime) -> None:
        if bool(self.cover_open[i]) != is_open:
            self.cover_open[i] = is_open
            self.events.append(MeterEvent(self.ids[i], ts, "cover_open" if is_open else "cover_close", {}))

    def tamper(self, i: int, ts: datetime, detail: dict[str, Any] | None = None) -> None:
        self.events.append(MeterEvent(self.ids[i], ts, "tamper", detail or {}))

    def set_load_side_voltage(self, i: int, present: bool) -> None:
        self.load_side_voltage[i] = present

    # ----------------------------------------------------------------- faults
    def replace_meter(self, i: int, start_wh: float = 0.0) -> None:
        """A new meter at the same place: registers start again near ``start_wh``."""
        self.import_wh[i] = start_wh
        self.export_wh[i] = 0.0

    def jump_register(self, i: int, delta_wh: float) -> None:
        """A corrupted register jumps by ``delta_wh`` (an energy spike)."""
        self.import_wh[i] = float(wrap_register(np.array([self.import_wh[i] + delta_wh]), self.register_max_wh[[i]])[0])

    def drain_events(self) -> list[MeterEvent]:
        out, self.events = self.events, []
        return out
