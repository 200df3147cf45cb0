"""Hypothesis properties of allocation, pricing, billing, the ledger and top-ups."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prepaid import ledger
from prepaid.billing import MeterState, bill_meter
from prepaid.credit import CreditPolicy, CreditStateName
from prepaid.localtime import LocalCalendar
from prepaid.pricing import allocate, price
from prepaid.tariffs import compile_versions
from prepaid.topups import Debt, split_topup

CAL = LocalCalendar("Asia/Shanghai", "CN")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASE = int(datetime(2026, 3, 27, tzinfo=UTC).timestamp())
VERSIONS = compile_versions(
    [
        (T0, {"kind": "tiered", "period": "month", "blocks": [
            {"up_to_kwh": "5", "price_per_kwh": "0.52837"},
            {"up_to_kwh": None, "price_per_kwh": "0.83"}]}),
        (datetime(2026, 3, 28, tzinfo=UTC), {"kind": "tou", "bands": [
            {"name": "peak", "start": "08:00", "end": "22:00", "price_per_kwh": "0.61111"},
            {"name": "valley", "start": "22:00", "end": "08:00", "price_per_kwh": "0.3"}]}),
    ]
)  # fmt: skip


@given(
    energy=st.integers(0, 10**7),
    start=st.integers(0, 10**6),
    length=st.integers(1, 200_000),
)
def test_allocation_conserves_energy(energy: int, start: int, length: int) -> None:
    starts, parts = allocate(energy, start, start + length)
    assert int(parts.sum()) == energy
    assert (parts >= 0).all()
    assert (np.diff(starts) == 900).all()


@given(energy=st.lists(st.integers(0, 5000), min_size=1, max_size=60), cut=st.data())
@settings(deadline=None)
def test_charges_never_negative_and_splitting_conserves(energy: list[int], cut: st.DataObject) -> None:
    starts = np.arange(BASE, BASE + 900 * len(energy), 900, dtype=np.int64)
    e = np.array(energy, np.int64)
    priced, _ = price(VERSIONS, CAL, starts, e)
    assert (priced.amount_micro >= 0).all()
    assert int(priced.energy_wh.sum()) == sum(energy)
    # split one interval's energy into two parts priced separately: same charge
    i = cut.draw(st.integers(0, len(energy) - 1))
    a = cut.draw(st.integers(0, energy[i]))
    left, _ = price(VERSIONS, CAL, starts[: i + 1], np.concatenate((e[:i], [a])))
    right_state = price(VERSIONS, CAL, starts[: i + 1], np.concatenate((e[:i], [a])))[1]
    right, _ = price(VERSIONS, CAL, starts[i:], np.concatenate(([energy[i] - a], e[i + 1 :])), right_state)
    assert left.total_micro + right.total_micro == priced.total_micro


def _readings(deltas: list[tuple[int, int]]) -> list[tuple[int, float]]:
    t, reg = BASE, 1_000_000
    out = [(t, float(reg))]
    for dt, de in deltas:
        t += dt
        reg += de * dt // 3600  # de is the mean power in W: always physically possible
        out.append((t, float(reg)))
    return out


readings_st = st.lists(st.tuples(st.integers(1, 3600), st.integers(0, 12_000)), min_size=1, max_size=40)


@given(deltas=readings_st, seed=st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_duplicating_and_reordering_a_batch_changes_nothing(deltas: list[tuple[int, int]], seed: int) -> None:
    rs = _readings(deltas)
    plain = bill_meter(MeterState(), rs, VERSIONS, CAL)
    rng = random.Random(seed)
    noisy = rs + rng.sample(rs, k=len(rs) // 2)
    rng.shuffle(noisy)
    again = bill_meter(MeterState(), noisy, VERSIONS, CAL)
    assert again.debit_minor == plain.debit_minor
    assert again.state == plain.state
    assert again.priced.amount_micro.tolist() == plain.priced.amount_micro.tolist()


@given(deltas=readings_st, cut=st.data())
@settings(max_examples=60, deadline=None)
def test_replay_posts_nothing_and_batching_does_not_change_the_total(
    deltas: list[tuple[int, int]], cut: st.DataObject
) -> None:
    rs = _readings(deltas)
    whole = bill_meter(MeterState(), rs, VERSIONS, CAL)
    k = cut.draw(st.integers(1, len(rs)))
    first = bill_meter(MeterState(), rs[:k], VERSIONS, CAL)
    second = bill_meter(first.state, rs[k:], VERSIONS, CAL)
    assert first.debit_minor + second.debit_minor == whole.debit_minor
    assert second.state == whole.state
    replay = bill_meter(whole.state, rs, VERSIONS, CAL)  # redelivered after a crash
    assert replay.debit_minor == 0 and len(replay.priced) == 0 and replay.state == whole.state
    # energy is conserved: billed + pending == register advance
    billed = int(whole.priced.energy_wh.sum()) + whole.state.pending_wh
    assert billed == sum(de * dt // 3600 for dt, de in deltas)


@given(st.lists(st.tuples(st.sampled_from(sorted(ledger.SIGN_RULES)), st.integers(-(10**6), 10**6)), max_size=50))
def test_balance_equals_sum_of_entries(entries: list[tuple[str, int]]) -> None:
    valid = []
    for kind, amount in entries:
        try:
            ledger.check(ledger.Entry(kind, amount))
        except ledger.PostingError:
            continue
        valid.append(ledger.Entry(kind, amount))
    balance, posted = ledger.post(0, valid)
    assert balance == sum(e.amount_minor for e in valid)
    running = 0
    for p in posted:
        running += p.amount_minor
        assert p.balance_after_minor == running
    assert ledger.verify({"a": balance}, {"a": sum(e.amount_minor for e in valid)}) == []


@given(
    amount=st.integers(1, 10**6),
    balance=st.integers(-(10**5), 10**5),
    debts=st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 10**5)), max_size=4),
    share=st.integers(0, 100),
    state=st.sampled_from(list(CreditStateName)),
)
def test_debt_recovery_never_exceeds_its_cap(
    amount: int, balance: int, debts: list[tuple[int, int]], share: int, state: CreditStateName
) -> None:
    policy = CreditPolicy(debt_recovery_share_pct=share)
    ds = [Debt(i, o, d) for i, (o, d) in enumerate(debts)]
    s = split_topup(amount, balance, state, ds, policy)
    assert 0 <= s.debt_recovered_minor <= amount * share // 100
    for debt_id, taken in s.debt_recovered:
        assert taken <= ds[debt_id].recoverable_minor
    base = balance + s.friendly_to_debt_minor
    if base + amount >= policy.restore_min_minor:
        assert s.balance_after_minor >= policy.restore_min_minor  # never blocks restoring supply
    assert s.balance_after_minor == base + amount - s.debt_recovered_minor
    if s.still_needed_minor:  # paying exactly what is still needed restores supply
        again = split_topup(s.still_needed_minor, s.balance_after_minor, state, ds, policy)
        assert again.balance_after_minor >= policy.restore_min_minor
        assert again.still_needed_minor == 0


@given(meters=st.lists(readings_st, min_size=1, max_size=5), carried=st.integers(0, 6000))
@settings(max_examples=40, deadline=None)
def test_pricing_many_meters_at_once_equals_one_by_one(meters: list[list[tuple[int, int]]], carried: int) -> None:
    from prepaid.billing import MeterSpec, bill_many
    from prepaid.pricing import TierState

    month = int(CAL.fields(np.array([BASE], np.int64)).month[0])
    start = MeterState(tier=TierState(month, carried))
    items = [(start, _readings(d), MeterSpec()) for d in meters]
    together, rows, owner = bill_many(items, VERSIONS, CAL)
    for (st_, rs, _), bill in zip(items, together, strict=True):
        alone = bill_meter(st_, rs, VERSIONS, CAL)
        assert alone.debit_minor == bill.debit_minor and alone.state == bill.state
        assert alone.priced.amount_micro.tolist() == bill.priced.amount_micro.tolist()
    assert len(rows) == owner.size == sum(len(b.priced) for b in together)
