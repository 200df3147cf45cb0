"""Cumulative register arithmetic, shared by ingest (flagging) and prepaid (billing).

A cumulative energy register only goes up, except:
- rollover at the register's maximum (e.g. 99,999.9 kWh -> 0): the advance is
  ``max - prev + next``; recognised when ``prev`` is in the top ``ROLLOVER_BAND``
  of the range and ``next`` in the bottom band;
- meter replacement or fault: any other decrease. It is never billed as negative
  consumption; the caller holds billing until a person resolves it.

A physically impossible advance (more than rated current x voltage x phases x
elapsed time, with a margin) is a spike: flagged, not billed automatically.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

ROLLOVER_BAND = 0.10  # top/bottom 10 % of the register's range
SPIKE_MARGIN = Decimal("1.2")  # 20 % above rated: meters tolerate short overloads


class AdvanceKind(StrEnum):
    NORMAL = "normal"
    ROLLOVER = "rollover"
    DECREASE = "decrease"


@dataclass(frozen=True)
class Advance:
    kind: AdvanceKind
    energy_wh: float  # >= 0; 0 for DECREASE

    @property
    def billable(self) -> bool:
        return self.kind is not AdvanceKind.DECREASE


def advance_wh(prev_wh: float, next_wh: float, register_max_wh: float) -> Advance:
    """The energy between two readings of one cumulative register, in Wh."""
    if next_wh >= prev_wh:
        return Advance(AdvanceKind.NORMAL, next_wh - prev_wh)
    band = register_max_wh * ROLLOVER_BAND
    if prev_wh >= register_max_wh - band and next_wh <= band:
        return Advance(AdvanceKind.ROLLOVER, register_max_wh - prev_wh + next_wh)
    return Advance(AdvanceKind.DECREASE, 0.0)


def max_physical_wh(
    rated_current_a: float | Decimal, nominal_voltage_v: float | Decimal, phases: int, seconds: float
) -> float:
    """The most energy a meter can deliver in ``seconds``, with a tolerance margin."""
    watts = Decimal(str(rated_current_a)) * Decimal(str(nominal_voltage_v)) * max(1, phases) * SPIKE_MARGIN
    return float(watts * Decimal(str(max(0.0, seconds))) / Decimal(3600))


def is_spike(
    advance: Advance,
    rated_current_a: float | Decimal,
    nominal_voltage_v: float | Decimal,
    phases: int,
    seconds: float,
    *,
    min_seconds: float = 60.0,
) -> bool:
    """True when the advance exceeds what the supply can physically deliver.

    Short elapsed times are widened to ``min_seconds`` so that clock jitter between
    two close readings does not make an honest advance look impossible.
    """
    if not advance.billable:
        return False
    window = max(seconds, min_seconds)
    return advance.energy_wh > max_physical_wh(rated_current_a, nominal_voltage_v, phases, window)
