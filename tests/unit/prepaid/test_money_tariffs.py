"""Exact money conversion and tariff validation, versions, bands and tiers."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from prepaid import money
from prepaid.errors import TariffError
from prepaid.localtime import LocalCalendar
from prepaid.pricing import TierState, price
from prepaid.tariffs import compile_version, compile_versions, parse_definition

CAL = LocalCalendar("Asia/Shanghai", "CN")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())  # type: ignore[misc,arg-type]


@pytest.mark.parametrize(
    ("price_text", "micro"),
    [
        pytest.param("0.56", 56_000, id="cny-2dp"),
        pytest.param("0.5283", 52_830, id="cny-4dp"),
        pytest.param("0.00001", 1, id="smallest"),
        pytest.param("0", 0, id="free"),
    ],
)
def test_price_converts_exactly(price_text: str, micro: int) -> None:
    assert money.price_micro_per_wh(price_text, "CNY") == micro


def test_price_with_too_much_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="precision"):
        money.price_micro_per_wh("0.000001", "CNY")


@pytest.mark.parametrize(
    ("residual", "charge", "minor", "left"),
    [
        pytest.param(0, 1_500_000, 2, -500_000, id="tie-goes-up"),
        pytest.param(-500_000, 0, 0, -500_000, id="carried-tie-never-negative"),
        pytest.param(-500_000, 1_000_000, 1, -500_000, id="carry"),
        pytest.param(400_000, 100_000, 1, -500_000, id="accumulates"),
    ],
)
def test_post_with_carry(residual: int, charge: int, minor: int, left: int) -> None:
    assert money.post_with_carry(residual, charge) == (minor, left)


@pytest.mark.parametrize(
    "definition",
    [
        pytest.param({"kind": "flat", "price_per_kwh": 0.56}, id="float-price"),
        pytest.param({"kind": "flat", "price_per_kwh": "-1"}, id="negative"),
        pytest.param({"kind": "flat", "price_per_kwh": "0.5", "currency": "XXX"}, id="currency"),
        pytest.param(
            {"kind": "tou", "bands": [{"name": "a", "start": "00:00", "end": "12:00", "price_per_kwh": "1"}]},
            id="tou-gap",
        ),
        pytest.param(
            {
                "kind": "tou",
                "bands": [
                    {"name": "a", "start": "00:00", "end": "24:00", "price_per_kwh": "1"},
                    {"name": "b", "start": "10:00", "end": "11:00", "price_per_kwh": "1"},
                ],
            },
            id="tou-overlap",
        ),
        pytest.param(
            {
                "kind": "tiered",
                "period": "year",
                "blocks": [{"up_to_kwh": "10", "price_per_kwh": "1"}, {"up_to_kwh": "5", "price_per_kwh": "1"}],
            },
            id="tier-not-open",
        ),
        pytest.param({"kind": "nope"}, id="kind"),
    ],
)
def test_invalid_definitions_are_rejected(definition: dict[str, object]) -> None:
    with pytest.raises(TariffError):
        parse_definition(definition)


TOU = {
    "kind": "tou",
    "currency": "CNY",
    "bands": [
        {"name": "peak", "start": "08:00", "end": "22:00", "price_per_kwh": "0.6", "day_types": ["weekday"]},
        {"name": "valley", "start": "22:00", "end": "08:00", "price_per_kwh": "0.3", "day_types": ["weekday"]},
        {
            "name": "offday",
            "start": "00:00",
            "end": "24:00",
            "price_per_kwh": "0.4",
            "day_types": ["weekend", "holiday"],
        },
    ],
}


def test_tou_uses_local_time_and_day_type() -> None:
    v = compile_versions([(T0, TOU)])
    starts = np.array(
        [
            ts(2026, 9, 29, 1, 0),  # Tue 09:00 Shanghai: peak
            ts(2026, 9, 29, 14, 30),  # Tue 22:30: valley
            ts(2026, 9, 28, 23, 45),  # Tue 07:45 local: valley
            ts(2026, 10, 3, 2, 0),  # Saturday: offday
            ts(2026, 10, 1, 2, 0),  # Thursday, National Day holiday: offday
        ],
        np.int64,
    )
    order = np.argsort(starts)
    priced, _ = price(v, CAL, starts[order], np.full(5, 1000, np.int64))
    by_start = dict(zip(priced.start_s.tolist(), priced.label, strict=True))
    assert [by_start[int(s)] for s in starts] == ["peak", "valley", "valley", "offday", "offday"]
    assert set(priced.amount_micro.tolist()) == {600_000_00, 300_000_00, 400_000_00}


TIERED = {
    "kind": "tiered",
    "currency": "CNY",
    "period": "month",
    "blocks": [{"up_to_kwh": "1", "price_per_kwh": "0.5"}, {"up_to_kwh": None, "price_per_kwh": "0.8"}],
}


def test_tier_boundary_splits_the_interval_and_period_resets() -> None:
    v = compile_versions([(T0, TIERED)])
    starts = np.array([ts(2026, 3, 10), ts(2026, 3, 11), ts(2026, 3, 12), ts(2026, 4, 2)], np.int64)
    energy = np.array([600, 600, 100, 700], np.int64)
    priced, tier = price(v, CAL, starts, energy, TierState())
    rows = list(zip(priced.start_s.tolist(), priced.energy_wh.tolist(), priced.block.tolist(), strict=True))
    assert rows == [
        (starts[0], 600, 1),
        (starts[1], 400, 1),
        (starts[1], 200, 2),
        (starts[2], 100, 2),
        (starts[3], 700, 1),  # April: a new month restarts the count
    ]
    assert priced.total_micro == (600 + 400 + 700) * 50_000 + 300 * 80_000
    assert tier.used_wh == 700


def test_tier_state_carries_into_the_next_batch() -> None:
    v = compile_versions([(T0, TIERED)])
    starts = np.array([ts(2026, 3, 10)], np.int64)
    state = TierState(period=int(CAL.fields(starts).month[0]), used_wh=990)
    priced, tier = price(v, CAL, starts, np.array([20], np.int64), state)
    assert priced.energy_wh.tolist() == [10, 10] and priced.block.tolist() == [1, 2]
    assert tier.used_wh == 1010


def test_a_new_version_never_rates_intervals_before_its_date() -> None:
    change = datetime(2026, 3, 1, tzinfo=UTC)
    v = compile_versions(
        [(T0, {"kind": "flat", "price_per_kwh": "0.5"}), (change, {"kind": "flat", "price_per_kwh": "0.7"})]
    )
    starts = np.array([ts(2026, 2, 28, 23, 45), ts(2026, 3, 1)], np.int64)
    priced, _ = price(v, CAL, starts, np.array([1000, 1000], np.int64))
    assert priced.rate_micro.tolist() == [50_000, 70_000]


def test_no_version_in_force_is_an_error() -> None:
    v = [compile_version(datetime(2027, 1, 1, tzinfo=UTC), {"kind": "flat", "price_per_kwh": "1"})]
    with pytest.raises(TariffError):
        price(v, CAL, np.array([ts(2026, 1, 1)], np.int64), np.array([1], np.int64))


def test_dst_day_in_europe_maps_to_local_minutes() -> None:
    cal = LocalCalendar("Europe/Berlin", "DE")
    f = cal.fields(np.array([ts(2026, 3, 29, 0, 45), ts(2026, 3, 29, 1, 0)], np.int64))
    assert f.minute.tolist() == [105, 180]  # 01:45 CET then 03:00 CEST
