"""Allocation of register advances to fixed intervals and vectorised pricing.

Allocation: an advance of E Wh between two readings at t0 < t1 is spread over the
fixed intervals (default 900 s, aligned to the UTC epoch) that [t0, t1) overlaps, in
proportion to the overlap, in whole Wh by the largest-remainder rule (ties go to the
earlier interval). The parts always sum to E exactly.

Pricing: each interval is priced by the tariff version in force at its start. Rates
are integer µ-minor units per Wh, so an interval's charge ``energy_wh * rate`` is an
exact integer and splitting an interval's energy conserves the charge. Tiered
tariffs split an interval that crosses a block boundary into one row per block.
Everything runs on numpy arrays over the whole batch; no Python loop per interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from prepaid.errors import TariffError
from prepaid.localtime import LocalCalendar
from prepaid.tariffs import Version

I64 = npt.NDArray[np.int64]
INTERVAL_S = 900


def allocate(energy_wh: int, start_s: int, end_s: int, interval_s: int = INTERVAL_S) -> tuple[I64, I64]:
    """Split ``energy_wh`` over [start_s, end_s): (interval starts, Wh per interval)."""
    if end_s <= start_s:
        raise ValueError("an advance needs end_s > start_s")
    if energy_wh < 0:
        raise ValueError("energy must not be negative")
    first = start_s - start_s % interval_s
    starts = np.arange(first, end_s, interval_s, dtype=np.int64)
    lo = np.maximum(starts, start_s)
    hi = np.minimum(starts + interval_s, end_s)
    dur = hi - lo
    total = end_s - start_s
    exact = energy_wh * dur
    parts = exact // total
    left = energy_wh - int(parts.sum())
    if left:
        remainders = exact % total
        order = np.argsort(-remainders, kind="stable")
        parts[order[:left]] += 1
    return starts, parts


@dataclass(frozen=True)
class TierState:
    """Cumulative use in the current tier period (local month or year number)."""

    period: int | None = None
    used_wh: int = 0


@dataclass(frozen=True)
class Priced:
    """Priced rows, one per (interval, block); arrays of equal length, in time order."""

    start_s: I64
    energy_wh: I64
    rate_micro: I64  # µ-minor per Wh
    amount_micro: I64  # exact charge, µ-minor units
    label: tuple[str, ...]  # band name, block label or "flat"
    block: I64  # 0 unless tiered (1-based block number)
    version_from_s: I64  # effective_from of the version that priced it

    @property
    def total_micro(self) -> int:
        return int(self.amount_micro.sum())

    def __len__(self) -> int:
        return int(self.start_s.shape[0])


def _empty() -> Priced:
    z = np.zeros(0, np.int64)
    return Priced(z, z, z, z, (), z, z)


def price(
    versions: list[Version],
    calendar: LocalCalendar,
    start_s: I64,
    energy_wh: I64,
    tier: TierState = TierState(),
) -> tuple[Priced, TierState]:
    """Price one meter's intervals (sorted by start, energy >= 0); rows and the tier state after."""
    start_s = np.asarray(start_s, np.int64)
    zeros = np.zeros(start_s.shape, np.int64)
    priced, _, tiers = price_many(versions, calendar, zeros, start_s, energy_wh, [tier])
    return priced, tiers[0]


def price_many(
    versions: list[Version],
    calendar: LocalCalendar,
    owner: I64,
    start_s: I64,
    energy_wh: I64,
    tiers: list[TierState],
) -> tuple[Priced, I64, list[TierState]]:
    """Price the intervals of many meters at once (same tariff and calendar).

    ``owner`` is each interval's meter index (0..len(tiers)-1); rows must be grouped by
    owner and sorted by start within an owner. Tier use is counted per owner from its
    own TierState. Returns the priced rows, their owner, and each owner's tier state.
    """
    start_s = np.asarray(start_s, np.int64)
    energy_wh = np.asarray(energy_wh, np.int64)
    owner = np.asarray(owner, np.int64)
    if start_s.size == 0:
        return _empty(), np.zeros(0, np.int64), list(tiers)
    if (energy_wh < 0).any():
        raise ValueError("energy must not be negative")
    same_owner = owner[1:] == owner[:-1]
    if (np.diff(owner) < 0).any() or ((np.diff(start_s) < 0) & same_owner).any():
        raise ValueError("intervals must be grouped by owner and sorted by start")
    if not versions:
        raise TariffError("no tariff version")
    eff = np.array([v.effective_from_s for v in versions], np.int64)
    vidx = np.searchsorted(eff, start_s, side="right") - 1
    if (vidx < 0).any():
        raise TariffError("no tariff version in force at an interval's start")
    fields = calendar.fields(start_s)

    # Cumulative use within tier periods, per owner (only tiered versions consume it, but
    # the count runs through any version so that a change of tariff mid-year keeps the tier).
    tiered_periods = {v.period for v in versions if v.period is not None}
    period_kind = tiered_periods.pop() if len(tiered_periods) == 1 else ("year" if tiered_periods else None)
    new_tiers = list(tiers)
    cum_before = np.zeros_like(energy_wh)
    if period_kind is not None:
        period = fields.year if period_kind == "year" else fields.month
        cum = np.cumsum(energy_wh)
        change = np.ones(period.shape, bool)
        change[1:] = (period[1:] != period[:-1]) | ~same_owner
        group_start = np.maximum.accumulate(np.where(change, np.arange(period.size), 0))
        base = (cum - energy_wh)[group_start]
        cum_before = cum - energy_wh - base
        carried_period = np.array([-1 if t.period is None else t.period for t in tiers], np.int64)
        carried_used = np.array([t.used_wh for t in tiers], np.int64)
        cum_before = np.where(period == carried_period[owner], cum_before + carried_used[owner], cum_before)
        last = np.ones(owner.shape, bool)
        last[:-1] = ~same_owner
        for i in np.flatnonzero(last).tolist():
            new_tiers[int(owner[i])] = TierState(int(period[i]), int(cum_before[i] + energy_wh[i]))

    out_idx: list[I64] = []
    out_energy: list[I64] = []
    out_rate: list[I64] = []
    out_label: list[npt.NDArray[np.int64]] = []
    out_block: list[I64] = []
    labels: list[str] = []
    for vi in np.unique(vidx).tolist():
        v = versions[vi]
        sel = np.flatnonzero(vidx == vi)
        label_base = len(labels)
        labels.extend(v.labels)
        if v.band_of is not None:
            band = v.band_of[fields.day_type[sel], fields.minute[sel]].astype(np.int64)
            out_idx.append(sel)
            out_energy.append(energy_wh[sel])
            out_rate.append(v.rates[band])
            out_label.append(band + label_base)
            out_block.append(np.zeros(sel.size, np.int64))
        elif v.block_upper_wh is not None:
            upper = v.block_upper_wh
            lower = np.concatenate(([0], upper[:-1]))
            before = cum_before[sel][:, None]
            after = before + energy_wh[sel][:, None]
            part = np.clip(after, lower, upper) - np.clip(before, lower, upper)  # (n, blocks)
            in_block = (before >= lower) & (before < upper)
            keep = (part > 0) | ((energy_wh[sel] == 0)[:, None] & in_block)
            rows, blocks = np.nonzero(keep)
            out_idx.append(sel[rows])
            out_energy.append(part[rows, blocks])
            out_rate.append(v.rates[blocks])
            out_label.append(blocks.astype(np.int64) + label_base)
            out_block.append(blocks.astype(np.int64) + 1)
        else:
            out_idx.append(sel)
            out_energy.append(energy_wh[sel])
            out_rate.append(np.full(sel.size, v.rates[0], np.int64))
            out_label.append(np.full(sel.size, label_base, np.int64))
            out_block.append(np.zeros(sel.size, np.int64))

    idx = np.concatenate(out_idx)
    order = np.lexsort((np.concatenate(out_block), idx))
    idx = idx[order]
    e = np.concatenate(out_energy)[order]
    rate = np.concatenate(out_rate)[order]
    lab = np.concatenate(out_label)[order]
    block = np.concatenate(out_block)[order]
    label_arr = np.array(labels, dtype=object)
    return (
        Priced(
            start_s=start_s[idx],
            energy_wh=e,
            rate_micro=rate,
            amount_micro=e * rate,
            label=tuple(label_arr[lab].tolist()),
            block=block,
            version_from_s=eff[vidx[idx]],
        ),
        owner[idx],
        new_tiers,
    )
