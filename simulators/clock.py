"""The fleet's clock: simulated time advances in fixed ticks, paced against the wall clock.

Tick ``k`` stands for simulated time ``origin + k * step_s``. Every meter of a fleet advances
on the same ticks, so a run is deterministic for a seed whatever the machine's speed: a slow
machine runs ticks late, never with different timestamps.

Pacing follows ``headend.clock`` (the clock every headend process shares): with
``sim_now = origin + (wall - real_start) * speed``, tick ``k`` is due at wall time
``real_start + k * step_s / speed``. ``speed = 0`` means "as fast as possible" (benchmarks,
tests). Real time is speed 1 with the origin at the start of the run.

Pure: the wall time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from headend.clock import AcceleratedClock, Clock


@dataclass(frozen=True)
class TickClock:
    origin: datetime  # simulated time of tick 0 (aware)
    step_s: float  # simulated seconds per tick
    speed: float  # simulated seconds per wall second; 0 = unpaced
    real_start: float  # wall time (unix seconds) of tick 0

    def __post_init__(self) -> None:
        if self.origin.tzinfo is None:
            raise ValueError("clock origin must carry a time zone")
        if self.step_s <= 0:
            raise ValueError("step_s must be positive")
        if self.speed < 0:
            raise ValueError("speed must be >= 0")

    @property
    def paced(self) -> bool:
        return self.speed > 0

    def at(self, tick: int) -> datetime:
        """Simulated (UTC) time of a tick."""
        return (self.origin + timedelta(seconds=tick * self.step_s)).astimezone(UTC)

    def due_wall(self, tick: int) -> float:
        """Wall time at which a tick is due (``real_start`` for every tick when unpaced)."""
        if not self.paced:
            return self.real_start
        return self.real_start + tick * self.step_s / self.speed

    def ticks_due(self, wall: float) -> int:
        """How many ticks (0..k) are due at a wall time: the next tick to run is below this."""
        if not self.paced:
            return 2**62
        return max(0, math.floor((wall - self.real_start) * self.speed / self.step_s + 1e-9)) + 1

    def sim_now(self, wall: float) -> datetime:
        """Continuous simulated time at a wall time (what ``headend.clock`` shows)."""
        if not self.paced:
            return self.origin.astimezone(UTC)
        return (self.origin + timedelta(seconds=(wall - self.real_start) * self.speed)).astimezone(UTC)

    def ticks_for(self, seconds: float) -> int:
        """Number of ticks covering a simulated duration."""
        return math.ceil(seconds / self.step_s)


def align(ts: datetime, step_s: float) -> datetime:
    """Floor an aware time to a multiple of ``step_s`` since the epoch (so readings land on :00, :15...)."""
    epoch = ts.timestamp()
    return datetime.fromtimestamp(epoch - math.fmod(epoch, step_s), UTC)


def from_headend_clock(clock: Clock, step_s: float, wall: float) -> TickClock:
    """A tick clock that agrees with a ``headend.clock`` clock (system or accelerated)."""
    if isinstance(clock, AcceleratedClock):
        return TickClock(clock.origin, step_s, clock.speed, clock.real_start)
    # System clock: start at the current (aligned) time, at speed 1.
    now = datetime.fromtimestamp(wall, UTC)
    origin = align(now, step_s)
    return TickClock(origin, step_s, 1.0, wall - (now - origin).total_seconds())
