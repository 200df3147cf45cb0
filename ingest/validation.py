"""Validation (the V of VEE): future timestamps, register advances, gaps.

Pure functions of values; ``now`` is passed in. The batch writer
(``ingest.store``) feeds them every newly adjacent pair of 1-0:1.8.0 readings
(a new reading and its predecessor, and a new reading and an old successor), so
out-of-order and late readings are judged exactly like in-order ones.

Findings (become ``meter_events`` rows; kinds are stable):

| kind | when | effect |
|---|---|---|
| register_rollover | decrease recognised as a wrap at register_max_wh | event only, billed normally |
| register_reset | any other decrease (replacement, fault) | event + meters.billing_hold |
| energy_spike | advance > rated current x voltage x phases x elapsed (headend.registers) | event + billing_hold |
| gap | two consecutive readings further apart than gap_factor x interval | event + re-read request |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from headend.registers import AdvanceKind, advance_wh, is_spike
from ingest.models import Event, MeterInfo, Reading

DEFAULT_FUTURE_TOLERANCE_S = 300.0
DEFAULT_GAP_FACTOR = 1.5


def split_future(
    readings: Iterable[Reading], now: datetime, tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S
) -> tuple[list[Reading], list[Reading]]:
    """(accepted, rejected): a reading more than ``tolerance_s`` ahead of ``now`` is rejected."""
    limit = now + timedelta(seconds=tolerance_s)
    ok: list[Reading] = []
    bad: list[Reading] = []
    for r in readings:
        (bad if r.ts > limit else ok).append(r)
    return ok, bad


def split_future_events(
    events: Iterable[Event], now: datetime, tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S
) -> tuple[list[Event], list[Event]]:
    limit = now + timedelta(seconds=tolerance_s)
    ok: list[Event] = []
    bad: list[Event] = []
    for e in events:
        (bad if e.ts > limit else ok).append(e)
    return ok, bad


@dataclass(frozen=True, slots=True)
class Pair:
    """Two consecutive readings of one meter's import register (prev before next in time)."""

    meter_id: str
    prev_ts: datetime
    prev_wh: float
    ts: datetime
    wh: float


@dataclass(frozen=True, slots=True)
class Finding:
    meter_id: str
    ts: datetime
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)
    hold: bool = False  # sets meters.billing_hold to ``kind``
    reread: bool = False  # asks the meter to send the missing interval again


def assess(pair: Pair, meter: MeterInfo, *, gap_factor: float = DEFAULT_GAP_FACTOR) -> list[Finding]:
    """What is wrong (or notable) between two consecutive import-register readings."""
    out: list[Finding] = []
    seconds = (pair.ts - pair.prev_ts).total_seconds()
    values = {"prev_wh": pair.prev_wh, "next_wh": pair.wh, "prev_ts": pair.prev_ts.isoformat()}
    adv = advance_wh(pair.prev_wh, pair.wh, meter.register_max_wh)
    if adv.kind is AdvanceKind.DECREASE:
        out.append(Finding(pair.meter_id, pair.ts, "register_reset", values, hold=True))
    else:
        if adv.kind is AdvanceKind.ROLLOVER:
            detail = {**values, "register_max_wh": meter.register_max_wh, "advance_wh": adv.energy_wh}
            out.append(Finding(pair.meter_id, pair.ts, "register_rollover", detail))
        # Cheap float bound first; the exact (Decimal) check of headend.registers decides near it.
        rough_wh = meter.rated_current_a * meter.nominal_voltage_v * max(1, meter.phases) * max(seconds, 60.0) / 3000
        if adv.energy_wh >= 0.99 * rough_wh and is_spike(
            adv, meter.rated_current_a, meter.nominal_voltage_v, meter.phases, seconds
        ):
            detail = {**values, "advance_wh": adv.energy_wh, "seconds": seconds}
            out.append(Finding(pair.meter_id, pair.ts, "energy_spike", detail, hold=True))
    max_step_s = gap_factor * meter.interval_s
    if seconds > max_step_s:
        detail = {
            "from": pair.prev_ts.isoformat(),
            "to": pair.ts.isoformat(),
            "max_step_s": max_step_s,
            "missing": max(1, round(seconds / meter.interval_s) - 1),
        }
        out.append(Finding(pair.meter_id, pair.prev_ts, "gap", detail, reread=True))
    return out


def assess_all(
    pairs: Iterable[Pair], meters: dict[str, MeterInfo], *, gap_factor: float = DEFAULT_GAP_FACTOR
) -> list[Finding]:
    out: list[Finding] = []
    for p in pairs:
        meter = meters.get(p.meter_id)
        if meter is not None:
            out.extend(assess(p, meter, gap_factor=gap_factor))
    return out
