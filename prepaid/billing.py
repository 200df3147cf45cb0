"""Billing of meters' batches of register readings: pure functions of values.

Two phases, so that pricing is vectorised over every meter of a batch:

1. ``advance_meter(state, readings, spec)`` (per meter, integer arithmetic): the
   advances between consecutive readings, allocated to the complete intervals they
   cover, plus the new watermark;
2. ``bill_many(items, versions, calendar)`` prices the complete intervals of all the
   meters that share a tariff and a calendar with one numpy pass
   (pricing.price_many), then rounds each meter's charge once with its carried
   remainder. ``bill_meter`` is the one-meter form.

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

from dataclasses import dataclass, field

import numpy as np

from headend.registers import AdvanceKind, advance_wh, is_spike, max_physical_wh
from prepaid import money
from prepaid.localtime import LocalCalendar
from prepaid.pricing import I64, INTERVAL_S, Priced, TierState, allocate, price_many
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
class Advanced:
    """Phase 1 of one meter: complete intervals and the state after (tier/residual unchanged)."""

    starts: list[int]
    energy: list[int]
    state: MeterState
    hold: str | None
    hold_ts_s: int | None
    energy_wh: int


@dataclass(frozen=True)
class MeterBill:
    group: Priced  # the priced rows of the whole group this meter was billed in
    lo: int  # this meter's rows are group[lo:hi]
    hi: int
    debit_minor: int  # >= 0, to be posted as a negative ledger amount
    state: MeterState
    hold: str | None  # reason when billing must stop for this meter
    hold_ts_s: int | None
    energy_wh: int
    period_start_s: int | None
    period_end_s: int | None

    @property
    def rows(self) -> int:
        return self.hi - self.lo

    @property
    def priced(self) -> Priced:
        """This meter's rows (sliced on demand: the engine writes the group's arrays directly)."""
        g, lo, hi = self.group, self.lo, self.hi
        return Priced(
            g.start_s[lo:hi],
            g.energy_wh[lo:hi],
            g.rate_micro[lo:hi],
            g.amount_micro[lo:hi],
            g.label[lo:hi],
            g.block[lo:hi],
            g.version_from_s[lo:hi],
        )


_WH_PER_S: dict[tuple[float, float, int], float] = {}


def _wh_per_s(spec: MeterSpec) -> float:
    """The spike limit per second of the meter's supply (max_physical_wh is linear in time)."""
    key = (spec.rated_current_a, spec.nominal_voltage_v, spec.phases)
    got = _WH_PER_S.get(key)
    if got is None:
        got = _WH_PER_S[key] = max_physical_wh(*key, 3600.0) / 3600.0
    return got


def _split(energy: int, start: int, end: int, interval_s: int) -> tuple[list[int], list[int]]:
    """allocate() with a fast path for an advance inside one interval."""
    first = start - start % interval_s
    if end <= first + interval_s:
        return [first], [energy]
    starts, parts = allocate(energy, start, end, interval_s)
    return starts.tolist(), parts.tolist()


def advance_meter(
    state: MeterState,
    readings: list[tuple[int, float]],
    spec: MeterSpec = MeterSpec(),
    interval_s: int = INTERVAL_S,
) -> Advanced:
    """Allocate a batch of (epoch seconds, register Wh) readings of one meter to intervals."""
    by_ts: dict[int, int] = {}
    for ts, value in readings:
        by_ts.setdefault(int(ts), round(value))
    hold: str | None = None
    hold_ts: int | None = None
    last_ts, last_reg = state.last_ts_s, state.last_register_wh
    rebaseline = state.rebaseline_at_s
    pend_start, pend_wh = state.pending_start_s, state.pending_wh
    out_s: list[int] = []
    out_e: list[int] = []
    total_energy = 0
    per_s = _wh_per_s(spec)
    for ts in sorted(by_ts):
        reg = by_ts[ts]
        if last_ts is not None and ts <= last_ts:
            continue  # already covered: duplicate, redelivery or late reading
        if last_ts is None or last_reg is None or (rebaseline is not None and ts >= rebaseline):
            last_ts, last_reg, rebaseline = ts, reg, None
            pend_start, pend_wh = None, 0  # energy across a reset is not billed
            continue
        if reg >= last_reg and (reg - last_reg) < 0.999 * per_s * max(ts - last_ts, 60):
            energy = reg - last_reg  # fast path: a normal advance well inside the physical limit
        else:  # the shared register rules decide (rollover, reset, spike), exactly as ingest does
            adv = advance_wh(last_reg, reg, spec.register_max_wh)
            if adv.kind is AdvanceKind.DECREASE:
                hold, hold_ts = "register_reset", ts
                break
            if is_spike(adv, spec.rated_current_a, spec.nominal_voltage_v, spec.phases, ts - last_ts):
                hold, hold_ts = "energy_spike", ts
                break
            energy = round(adv.energy_wh)
        starts, wh = _split(energy, last_ts, ts, interval_s)
        if pend_start is not None and pend_wh:
            # last_ts lies inside the pending interval, so it is the first one here
            wh[0] += pend_wh
        total_energy += energy
        if starts[-1] + interval_s <= ts:
            out_s += starts
            out_e += wh
            pend_start, pend_wh = None, 0
        else:
            out_s += starts[:-1]
            out_e += wh[:-1]
            pend_start, pend_wh = starts[-1], wh[-1]
        last_ts, last_reg = ts, reg
    new_state = MeterState(
        last_ts, last_reg, pend_start, pend_wh, state.residual_micro, state.tier, rebaseline
    )  # plain construction: dataclasses.replace is slow on the hot path
    return Advanced(out_s, out_e, new_state, hold, hold_ts, total_energy)


def bill_many(
    items: list[tuple[MeterState, list[tuple[int, float]], MeterSpec]],
    versions: list[Version],
    calendar: LocalCalendar,
    interval_s: int = INTERVAL_S,
) -> tuple[list[MeterBill], Priced, I64]:
    """Bill several meters that share tariff versions and calendar; one numpy pricing pass.

    Returns each meter's bill, and all priced rows with their owner (index into items).
    """
    advanced = [advance_meter(st, rs, spec, interval_s) for st, rs, spec in items]
    owner = np.repeat(np.arange(len(items), dtype=np.int64), [len(a.starts) for a in advanced])
    starts = np.fromiter((s for a in advanced for s in a.starts), np.int64, count=owner.size)
    energy = np.fromiter((e for a in advanced for e in a.energy), np.int64, count=owner.size)
    priced, row_owner, tiers = price_many(versions, calendar, owner, starts, energy, [st.tier for st, _, _ in items])
    bounds = np.searchsorted(row_owner, np.arange(len(items) + 1, dtype=np.int64))
    sums = np.zeros(len(items), np.int64)
    np.add.at(sums, row_owner, priced.amount_micro)  # exact int64 sums per meter
    bills: list[MeterBill] = []
    for i, ((state, _, _), adv) in enumerate(zip(items, advanced, strict=True)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        debit, residual = money.post_with_carry(state.residual_micro, int(sums[i]))
        bills.append(
            MeterBill(
                group=priced,
                lo=lo,
                hi=hi,
                debit_minor=debit,
                state=MeterState(
                    adv.state.last_ts_s,
                    adv.state.last_register_wh,
                    adv.state.pending_start_s,
                    adv.state.pending_wh,
                    residual,
                    tiers[i],
                    adv.state.rebaseline_at_s,
                ),
                hold=adv.hold,
                hold_ts_s=adv.hold_ts_s,
                energy_wh=adv.energy_wh,
                period_start_s=adv.starts[0] if adv.starts else None,
                period_end_s=adv.starts[-1] + interval_s if adv.starts else None,
            )
        )
    return bills, priced, row_owner


def bill_meter(
    state: MeterState,
    readings: list[tuple[int, float]],
    versions: list[Version],
    calendar: LocalCalendar,
    spec: MeterSpec = MeterSpec(),
    interval_s: int = INTERVAL_S,
) -> MeterBill:
    """Bill a batch of (epoch seconds, register Wh) readings of one meter."""
    bills, _, _ = bill_many([(state, readings, spec)], versions, calendar, interval_s)
    return bills[0]
