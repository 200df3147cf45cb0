"""Faults: what goes wrong with real meters and networks, switchable fleet-wide or per meter, seeded.

Rates (``FaultRates``; every field defaults to 0 = off):

| kind              | field(s)                          | unit of the rate                         |
|-------------------|-----------------------------------|------------------------------------------|
| dropped message   | drop                              | probability per published message        |
| duplicated        | duplicate                         | probability per message (sent twice)     |
| reordered         | reorder                           | per message (sent after the next one on its topic) |
| delayed           | delay, delay_s                    | probability per message; simulated delay |
| garbage payload   | garbage                           | probability per message                  |
| clock skew        | clock_skew, clock_skew_max_s      | share of meters; skew uniform in +-max   |
| load-side voltage | load_side_voltage                 | share of meters (closing is refused)     |
| keep-power mode   | keep_power                        | share of meters (trips are refused)      |
| offline + backlog | offline, offline_s                | per meter per simulated day; duration    |
| register reset    | register_reset                    | per meter per day (meter replaced, ~0)   |
| spike             | spike, spike_wh                   | per meter per day; register jumps        |
| power failure     | power_fail, power_fail_s          | per meter per day; duration              |
| cover opened      | cover_open                        | per meter per day (closed 10 min later)  |
| tamper            | tamper                            | per meter per day (magnetic field event) |
| relay fails       | relay_fail                        | probability per relay operation          |
| wrong state       | wrong_state                       | probability per ack/state report         |
| missing ack       | ack_missing                       | probability per command                  |
| slow ack          | ack_slow, ack_delay_s             | probability per command; simulated delay |

A ``FaultPlan`` is the fleet-wide rates plus per-meter overrides (a meter's override replaces
the fleet's rates for that meter). ``Faults`` draws from its own seeded generator in a fixed
order, so the same seed gives the same faults. Pure: numpy only, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.errors import ScenarioError

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

_DURATIONS = {"delay_s", "clock_skew_max_s", "offline_s", "spike_wh", "power_fail_s", "ack_delay_s"}
PER_DAY = ("offline", "register_reset", "spike", "power_fail", "cover_open", "tamper")


@dataclass(frozen=True)
class FaultRates:
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    delay_s: float = 600.0
    garbage: float = 0.0
    clock_skew: float = 0.0
    clock_skew_max_s: float = 900.0
    load_side_voltage: float = 0.0
    keep_power: float = 0.0
    offline: float = 0.0
    offline_s: float = 6 * 3600.0
    register_reset: float = 0.0
    spike: float = 0.0
    spike_wh: float = 5_000_000.0
    power_fail: float = 0.0
    power_fail_s: float = 2 * 3600.0
    cover_open: float = 0.0
    tamper: float = 0.0
    relay_fail: float = 0.0
    wrong_state: float = 0.0
    ack_missing: float = 0.0
    ack_slow: float = 0.0
    ack_delay_s: float = 300.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], base: FaultRates | None = None) -> FaultRates:
        """Rates from a scenario mapping; unknown names and out-of-range values are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ScenarioError(f"unknown fault(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        values = dict((base or cls()).__dict__)
        for name, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(f"fault {name} must be a number, got {value!r}")
            if name in _DURATIONS:
                if value < 0:
                    raise ScenarioError(f"fault {name} must be >= 0")
            elif name in PER_DAY:
                if value < 0:
                    raise ScenarioError(f"fault rate {name} must be >= 0 (per day)")
            elif not 0.0 <= value <= 1.0:
                raise ScenarioError(f"fault {name} is a probability: 0..1, got {value}")
            values[name] = float(value)
        return cls(**values)

    @property
    def any_message_fault(self) -> bool:
        return any((self.drop, self.duplicate, self.reorder, self.delay, self.garbage))


@dataclass(frozen=True)
class FaultPlan:
    fleet: FaultRates = field(default_factory=FaultRates)
    meters: Mapping[str, FaultRates] = field(default_factory=dict)

    def rates_for(self, meter_id: str) -> FaultRates:
        return self.meters.get(meter_id, self.fleet)


@dataclass(frozen=True)
class MessageFate:
    drop: bool = False
    duplicate: bool = False
    reorder: bool = False
    delay_s: float = 0.0
    garbage: bool = False


CLEAN = MessageFate()


@dataclass(frozen=True)
class CommandFate:
    relay_fails: bool = False
    wrong_state: bool = False
    ack_missing: bool = False
    ack_delay_s: float = 0.0


_GARBAGE = (
    b"\x00\xff\xfe garbage \x81",
    b'{"v": 1, "meter": ',  # truncated
    b'{"v": 99, "meter": "?", "ts": "yesterday"}',
    b"[]",
    b'{"v": 1, "ts": "2026-01-01T00:00:00", "values": {"1-0:1.8.0": "NaN"}}',
)


class Faults:
    """Fault draws for one fleet. ``meter_ids`` fixes the per-meter arrays' order."""

    def __init__(self, plan: FaultPlan, meter_ids: Sequence[str], seed: int) -> None:
        self.plan = plan
        self.rng = np.random.default_rng(seed)
        n = len(meter_ids)
        self.n = n
        self.ids = list(meter_ids)
        # Fleet rates everywhere, then the few per-meter overrides.
        self._rates = {f.name: np.full(n, getattr(plan.fleet, f.name), dtype=np.float64) for f in fields(FaultRates)}
        where = {m: i for i, m in enumerate(meter_ids)} if plan.meters else {}
        for meter_id, rates in plan.meters.items():
            if meter_id in where:
                for f in fields(FaultRates):
                    self._rates[f.name][where[meter_id]] = getattr(rates, f.name)
        self.any_message_fault = plan.fleet.any_message_fault or any(r.any_message_fault for r in plan.meters.values())
        skewed = self.rng.random(n) < self._rates["clock_skew"]
        self.skew_s = np.where(skewed, np.rint(self.rng.uniform(-1, 1, n) * self._rates["clock_skew_max_s"]), 0.0)
        self.load_side_voltage = self.rng.random(n) < self._rates["load_side_voltage"]
        self.keep_power = self.rng.random(n) < self._rates["keep_power"]

    def rate(self, name: str, i: int) -> float:
        return float(self._rates[name][i])

    def per_day(self, dt_s: float) -> dict[str, IndexArray]:
        """Meters hit by each per-day fault during a step of ``dt_s`` simulated seconds."""
        out: dict[str, IndexArray] = {}
        for name in PER_DAY:
            rates = self._rates[name]
            if not rates.any():
                continue
            hit = np.flatnonzero(self.rng.random(self.n) < rates * (dt_s / 86400.0))
            if hit.size:
                out[name] = hit
        return out

    def message(self, i: int | None) -> MessageFate:
        """The fate of one message of meter ``i`` (``None``: a concentrator's, fleet rates)."""
        if not self.any_message_fault:
            return CLEAN
        r = self.plan.fleet if i is None else self.plan.rates_for(self.ids[i])
        if not r.any_message_fault:
            return CLEAN
        u = self.rng.random(5)
        return MessageFate(
            drop=bool(u[0] < r.drop),
            duplicate=bool(u[1] < r.duplicate),
            reorder=bool(u[2] < r.reorder),
            delay_s=r.delay_s if u[3] < r.delay else 0.0,
            garbage=bool(u[4] < r.garbage),
        )

    def command(self, i: int) -> CommandFate:
        u = self.rng.random(4)
        return CommandFate(
            relay_fails=bool(u[0] < self.rate("relay_fail", i)),
            wrong_state=bool(u[1] < self.rate("wrong_state", i)),
            ack_missing=bool(u[2] < self.rate("ack_missing", i)),
            ack_delay_s=self.rate("ack_delay_s", i) if u[3] < self.rate("ack_slow", i) else 0.0,
        )

    def wrong_state(self, i: int) -> bool:
        return bool(self.rng.random() < self.rate("wrong_state", i))

    def garble(self, payload: bytes) -> bytes:
        """A broken payload in place of a good one."""
        return _GARBAGE[int(self.rng.integers(len(_GARBAGE)))] if payload else b"\xff"
