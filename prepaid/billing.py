"""Billing of one meter's batch of register readings: a pure function of values.

``bill_meter(state, readings, ...)`` takes the meter's billing state and a batch of
(ts, register Wh) readings of 1-0:1.8.0 and returns the priced complete intervals,
the debit to post (rounded once, remainder carried) and the new state.

Exactly once per (meter, interval):
- a watermark (``last_ts``) moves forward only: a reading at or before it was
  already covered and is ignored, so duplicates, redelivery and late readings change
  nothing; a batch is sorted by time before use, so its order does not matter;
- the advance between consecutive readings is allocated to the intervals it covers
  (largest remainder, exact); an interval is priced and posted only once it is
  complete (its end is at or before the last reading); the energy of the partial
  interval at the end waits in ``pending_wh`` for the next reading.
A register decrease that is not a rollover, or a physically impossible advance,
stops billing at that reading and returns a hold reason. After an operator resolves
the hold, the first reading at or after ``rebaseline_at`` becomes the new baseline
and the energy across the reset is not billed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from headend.registers import AdvanceKind, advance_wh, is_spike
from prepaid import money
from prepaid.localtime import LocalCalendar
from prepaid.pricing import INTERVAL_S, Priced, TierState, allocate, price
from prepaid.tariffs import Version


@dataclass(frozen=True)
class MeterState:
    last_ts_s: int | None = None
    last_register_wh: int | None = None
    pending_start_s: int | None = None
    pending_wh: int = 0
    residual_micro: int = 0
    tier: TierState = field(default_factory=TierState)
    rebaseline_at_s: int | None = None


@dataclass(frozen=True)
class MeterSpec:
    """What billing needs to know about the meter's hardware."""

    register_max_wh: int = 99_999_900
    rated_current_a: float = 60.0
    nominal_voltage_v: float = 230.0
    phases: int = 1


@dataclass(frozen=True)
class MeterBill:
    priced: Priced
    debit_minor: int  # >= 0, to be posted as a negative ledger amount
    state: MeterState
    hold: str | None  # reason when billing must stop for this meter
    hold_ts_s: int | None
    energy_wh: int
    period_start_s: int | None
    period_end_s: int | None


def bill_meter(
    state: MeterState,
    readings: list[tuple[int, float]],
    versions: list[Version],
    calendar: LocalCalendar,
    spec: MeterSpec = MeterSpec(),
    interval_s: int = INTERVAL_S,
) -> MeterBill:
    """Bill a batch of (epoch seconds, register Wh) readings of one meter."""
    by_ts: dict[int, int] = {}
    for ts, value in readings:
        by_ts.setdefault(int(ts), round(value))
    hold: str | None = None
    hold_ts: int | None = None
    last_ts, last_reg = state.last_ts_s, state.last_register_wh
    rebaseline = state.rebaseline_at_s
    pend_start, pend_wh = state.pending_start_s, state.pending_wh
    parts_s: list[np.ndarray] = []
    parts_e: list[np.ndarray] = []
    total_energy = 0
    for ts in sorted(by_ts):
        reg = by_ts[ts]
        if last_ts is not None and ts <= last_ts:
            continue  # already covered: duplicate, redelivery or late reading
        if last_ts is None or last_reg is None or (rebaseline is not None and ts >= rebaseline):
            last_ts, last_reg, rebaseline = ts, reg, None
            pend_start, pend_wh = None, 0  # energy across a reset is not billed
            continue
        adv = advance_wh(last_reg, reg, spec.register_max_wh)
        if adv.kind is AdvanceKind.DECREASE:
            hold, hold_ts = "register_reset", ts
            break
        if is_spike(adv, spec.rated_current_a, spec.nominal_voltage_v, spec.phases, ts - last_ts):
            hold, hold_ts = "energy_spike", ts
            break
        energy = round(adv.energy_wh)
        starts, wh = allocate(energy, last_ts, ts, interval_s)
        if pend_start is not None and pend_wh:
            if starts[0] == pend_start:
                wh[0] += pend_wh
            else:  # the pending interval ended at the previous reading's gap edge
                starts = np.concatenate(([pend_start], starts))
                wh = np.concatenate(([pend_wh], wh))
        total_energy += energy
        complete = starts + interval_s <= ts
        parts_s.append(starts[complete])
        parts_e.append(wh[complete])
        if complete.all():
            pend_start, pend_wh = None, 0
        else:
            pend_start, pend_wh = int(starts[-1]), int(wh[-1])
        last_ts, last_reg = ts, reg

    starts_all = np.concatenate(parts_s) if parts_s else np.zeros(0, np.int64)
    energy_all = np.concatenate(parts_e) if parts_e else np.zeros(0, np.int64)
    priced, tier = price(versions, calendar, starts_all, energy_all, state.tier)
    debit, residual = money.post_with_carry(state.residual_micro, priced.total_micro)
    new_state = replace(
        state,
        last_ts_s=last_ts,
        last_register_wh=last_reg,
        pending_start_s=pend_start,
        pending_wh=pend_wh,
        residual_micro=residual,
        tier=tier,
        rebaseline_at_s=rebaseline,
    )
    return MeterBill(
        priced=priced,
        debit_minor=debit,
        state=new_state,
        hold=hold,
        hold_ts_s=hold_ts,
        energy_wh=total_energy,
        period_start_s=int(starts_all[0]) if starts_all.size else None,
        period_end_s=int(starts_all[-1]) + interval_s if starts_all.size else None,
    )
