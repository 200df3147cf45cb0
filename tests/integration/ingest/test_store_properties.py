"""Property: any order, batching and duplication of a clean series stores it once, never holds billing,
and leaves no gap open (a gap seen while intervals were missing is filled by the late ones)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from ingest.models import Decoded, Item, Reading
from ingest.store import BatchWriter

from .conftest import query, register_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
_seq = itertools.count()


@st.composite
def shuffled_series(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[list[int]]]:
    steps = draw(st.lists(st.integers(min_value=0, max_value=4000), min_size=2, max_size=25))
    values = list(itertools.accumulate(steps, initial=1_000_000))[1:]
    series = list(enumerate(values))  # (interval index, Wh): 15-minute intervals, no gaps
    order = draw(st.permutations(range(len(series))))
    order = order + draw(st.lists(st.sampled_from(order), max_size=5))  # some duplicates
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(order) - 1), max_size=4)))
    batches = [list(order[a:b]) for a, b in itertools.pairwise([0, *cuts, len(order)])]
    return series, batches


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=shuffled_series())
def test_order_and_batching_do_not_matter(fleet: str, case: tuple[list[tuple[int, int]], list[list[int]]]) -> None:
    series, batches = case
    meter = f"P-{next(_seq)}"
    register_fleet(fleet, {meter: {}})

    async def run() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(fleet, min_size=1, max_size=1, open=False)
        await pool.open()
        try:
            writer = BatchWriter(pool)
            await writer.refresh_directory(force=True)
            for batch in batches:
                items = [
                    Item(
                        "mqtt",
                        "t",
                        b"",
                        decoded=Decoded(
                            (Reading(meter, "1-0:1.8.0", T0 + timedelta(minutes=15 * series[i][0]), series[i][1]),)
                        ),
                        meter_id=meter,
                    )
                    for i in batch
                ]
                result = await writer.write(items, NOW)
                assert {f.kind for f in result.findings} <= {"gap"}, result.findings
        finally:
            await pool.close()

    asyncio.run(run())
    assert query(fleet, "select count(*) from readings where meter_id = %s", (meter,))[0][0] == len(series)
    assert query(fleet, "select count(*) from billing_queue where meter_id = %s", (meter,))[0][0] == len(series)
    events = query(fleet, "select kind, detail from meter_events where meter_id = %s", (meter,))
    assert all(kind == "gap" and "filled_at" in detail for kind, detail in events), events
    assert query(fleet, "select billing_hold from meters where id = %s", (meter,)) == [(None,)]
