"""Capped, jittered exponential backoff: one small pure generator for every reconnect.

``delays(base_s, cap_s, rng)`` yields base, 2*base, 4*base ... capped at ``cap_s``,
each scaled by a "full jitter" factor in [0.5, 1.0] so that a fleet of clients
that lost the same broker does not come back in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def delays(base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None) -> Iterator[float]:
    if base_s <= 0 or cap_s < base_s:
        raise ValueError("need 0 < base_s <= cap_s")
    rng = rng or random.Random()
    step = base_s
    while True:
        yield step * (0.5 + 0.5 * rng.random())
        step = min(cap_s, step * 2)
