"""The one clock every headend process reads ``now`` from.

Real time in production. For demos and fast-forwarded tests, an accelerated clock
that every process (services and simulators) computes identically from three
settings, so that they agree without talking to each other:

    sim_now = origin + (real_now - real_start) * speed

``HEADEND_CLOCK_ORIGIN`` (ISO 8601 with zone), ``HEADEND_CLOCK_REAL_START`` (unix
seconds, defaults to the process start) and ``HEADEND_CLOCK_SPEED`` (e.g. 1440 =
one day per minute). Without ORIGIN the clock is the system clock. Pure decision
code never reads a clock: the shells call ``clock.now()`` and pass the value in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


class Clock:
    """System clock: aware UTC now."""

    speed: float = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep_s(self, sim_seconds: float) -> float:
        """Real seconds to wait for ``sim_seconds`` of clock time to pass."""
        return sim_seconds / self.speed


@dataclass
class AcceleratedClock(Clock):
    origin: datetime
    speed: float = 1.0
    real_start: float = field(default_factory=time.time)
    wall: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.origin.tzinfo is None:
            raise ValueError("clock origin must carry a time zone")
        if self.speed <= 0:
            raise ValueError("clock speed must be positive")

    def now(self) -> datetime:
        elapsed = (self.wall() - self.real_start) * self.speed
        return (self.origin + timedelta(seconds=elapsed)).astimezone(UTC)


def clock_from_env(env: Mapping[str, str] | None = None) -> Clock:
    env = os.environ if env is None else env
    origin = env.get("HEADEND_CLOCK_ORIGIN")
    if not origin:
        return Clock()
    return AcceleratedClock(
        origin=datetime.fromisoformat(origin),
        speed=float(env.get("HEADEND_CLOCK_SPEED", "1")),
        real_start=float(env.get("HEADEND_CLOCK_REAL_START", str(time.time()))),
    )


def clock_env(origin: datetime, speed: float, real_start: float | None = None) -> dict[str, str]:
    """The environment that makes child processes share an accelerated clock."""
    return {
        "HEADEND_CLOCK_ORIGIN": origin.isoformat(),
        "HEADEND_CLOCK_SPEED": repr(float(speed)),
        "HEADEND_CLOCK_REAL_START": repr(real_start if real_start is not None else time.time()),
    }
