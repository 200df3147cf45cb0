"""Modbus scale-out: every meter belongs to exactly one poller shard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.modbus import in_shard, parse_shard


@given(st.text(min_size=1, max_size=20), st.integers(min_value=1, max_value=16))
def test_each_meter_has_exactly_one_shard(meter_id: str, shards: int) -> None:
    assert sum(in_shard(meter_id, k, shards) for k in range(shards)) == 1


def test_parse_shard() -> None:
    assert parse_shard("") == (0, 1)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "x"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_spread_the_fleet() -> None:
    counts = [sum(in_shard(f"MB-{i:04d}", k, 4) for i in range(1000)) for k in range(4)]
    assert min(counts) > 200
