"""The batch writer against the real TimescaleDB: dedup, billing hand-off, VEE, quarantine."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from ingest.dispatch import Prefixes, decode_message
from ingest.models import Decoded, Item, Reading
from ingest.store import BatchWriter

from .conftest import query

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
PFX = Prefixes(native="hq")


def native(meter: str, *points: tuple[datetime, float]) -> Item:
    doc = {"v": 1, "readings": [{"ts": ts.isoformat(), "values": {"1-0:1.8.0": wh}} for ts, wh in points]}
    return Item(
        "mqtt",
        f"hq/v1/meters/{meter}/readings",
        json.dumps(doc).encode(),
        decoded=Decoded(tuple(Reading(meter, "1-0:1.8.0", ts, wh) for ts, wh in points)),
        meter_id=meter,
    )


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def writer(pool: AsyncConnectionPool[Any]) -> BatchWriter:
    w = BatchWriter(pool)
    await w.refresh_directory(force=True)
    return w


async def test_duplicates_are_stored_and_billed_once(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    batch = [native("M-1", (at(0), 1000), (at(15), 1100)), native("M-1", (at(15), 1100))]
    first = await w.write(batch, NOW)
    assert (first.readings_new, first.billing_rows, first.duplicates) == (2, 2, 1)
    again = await w.write(batch, NOW)
    assert (again.readings_new, again.billing_rows) == (0, 0)
    assert query(fleet, "select count(*) from readings")[0][0] == 2
    assert query(fleet, "select meter_id, energy_wh from billing_queue order by ts") == [("M-1", 1000), ("M-1", 1100)]
    assert query(fleet, "select comms_state from meters where id = 'M-1'")[0][0] == "online"


async def test_out_of_order_is_accepted_without_findings(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    r1 = await w.write([native("M-1", (at(30), 1300))], NOW)
    r2 = await w.write([native("M-1", (at(15), 1200)), native("M-1", (at(0), 1000))], NOW)
    assert r1.findings == [] and r2.findings == []
    assert query(fleet, "select value from readings order by ts") == [(1000,), (1200,), (1300,)]


async def test_late_reading_that_breaks_monotony_is_judged_against_its_successor(
    pool: AsyncConnectionPool[Any], fleet: str
) -> None:
    w = await writer(pool)
    await w.write([native("M-1", (at(0), 1000), (at(30), 1300))], NOW)
    res = await w.write([native("M-1", (at(15), 6000))], NOW)  # later reading 1300 < 6000: a decrease
    assert [f.kind for f in res.findings] == ["energy_spike", "register_reset"]
    assert query(fleet, "select billing_hold from meters where id = 'M-1'")[0][0] == "energy_spike"


async def test_rollover_reset_and_spike(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    await w.write([native("M-1", (at(0), 99_999_000), (at(15), 500)), native("M-2", (at(0), 5_000_000))], NOW)
    await w.write([native("M-2", (at(15), 10))], NOW)
    events = query(fleet, "select meter_id, kind, detail from meter_events order by meter_id, ts")
    assert [(m, k) for m, k, _ in events] == [("M-1", "register_rollover"), ("M-2", "register_reset")]
    assert events[1][2]["prev_wh"] == 5_000_000 and events[1][2]["next_wh"] == 10
    holds = dict(query(fleet, "select id, billing_hold from meters where id in ('M-1', 'M-2')"))
    assert holds == {"M-1": None, "M-2": "register_reset"}
    # the reset reading is still stored and handed to billing (prepaid holds it)
    assert query(fleet, "select count(*) from billing_queue where meter_id = 'M-2'")[0][0] == 2
    await w.write([native("M-1", (at(30), 500 + 60 * 230 * 2))], NOW)  # 27.6 kWh in 15 min on 60 A
    assert query(fleet, "select kind from meter_events where meter_id = 'M-1' order by ts")[-1][0] == "energy_spike"
    assert query(fleet, "select billing_hold from meters where id = 'M-1'")[0][0] == "energy_spike"


async def test_gap_then_backfill(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    res = await w.write([native("M-1", (at(0), 1000), (at(60), 1400))], NOW)
    assert [(f.kind, f.ts) for f in res.rereads] == [("gap", at(0))]
    gap = query(fleet, "select detail from meter_events where kind = 'gap'")[0][0]
    assert gap["missing"] == 3 and "filled_at" not in gap
    res = await w.write([native("M-1", (at(15), 1100), (at(30), 1200))], NOW)  # still one missing
    assert res.gaps_filled == 0
    assert [(f.kind, f.ts) for f in res.rereads] == [("gap", at(30))]  # the rest is asked for again
    res = await w.write([native("M-1", (at(45), 1300))], NOW)
    assert res.gaps_filled == 2 and res.findings == []
    gaps = query(fleet, "select ts, detail from meter_events where kind = 'gap' order by ts")
    assert [ts for ts, _ in gaps] == [at(0), at(30)]
    assert all("filled_at" in d for _, d in gaps)
    assert query(fleet, "select count(*) from billing_queue")[0][0] == 5


async def test_garbage_unknown_and_future_go_to_quarantine(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    garbage = decode_message("hq/v1/meters/M-1/readings", b"\x00\x01 not json", w.directory, PFX)
    unknown = native("M-404", (at(0), 1))
    future = native("M-1", (at(0), 1000), (NOW + timedelta(hours=1), 2000))
    res = await w.write([garbage, unknown, future], NOW)
    assert res.quarantined == 3 and res.readings_new == 1
    rows = query(fleet, "select topic, meter_id, payload, reason from quarantine order by id")
    assert rows[0][2] == b"\x00\x01 not json" and rows[0][3].startswith("malformed_json")
    assert rows[1][1] == "M-404" and rows[1][3] == "unknown_meter: M-404"
    assert rows[2][3].startswith("future_timestamp: M-1@")
    assert query(fleet, "select ts from readings") == [(at(0),)]


async def test_device_formats_and_events(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    tas = b'{"Time":"2026-11-29T18:00:00","ENERGY":{"Total":12.5,"Power":100,"Voltage":230,"Current":0.5}}'
    shelly = json.dumps(
        {
            "method": "NotifyStatus",
            "params": {"ts": T0.timestamp(), "emdata:0": {"total_act": 10.0}, "switch:0": {"output": False}},
        }
    ).encode()
    ev = b'{"v":1,"events":[{"ts":"2026-11-29T10:03:12Z","kind":"power_fail"}]}'
    items = [
        decode_message("tele/tasmota_kitchen/SENSOR", tas, w.directory, PFX),
        decode_message("shellypro3em-abc/events/rpc", shelly, w.directory, PFX),
        decode_message("hq/v1/meters/M-1/events", ev, w.directory, PFX),
        decode_message("tele/unknown_plug/SENSOR", tas, w.directory, PFX),
    ]
    res = await w.write(items, NOW)
    assert res.readings_new == 5 and res.events_new == 2 and res.quarantined == 1
    # Tasmota local 18:00 in Asia/Shanghai is 10:00 UTC
    assert query(fleet, "select ts, value from readings where meter_id = 'T-1' and obis = '1-0:1.8.0'") == [
        (T0, 12500.0)
    ]
    assert query(fleet, "select meter_id, kind from meter_events order by meter_id") == [
        ("M-1", "power_fail"),
        ("S-1", "relay_change"),
    ]
    assert query(fleet, "select reason from quarantine")[0][0].startswith("unknown_device")


async def test_comms_restored_once(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    query(fleet, "update meters set comms_state = 'lost' where id = 'M-1'")
    w = await writer(pool)
    res = await w.write([native("M-1", (at(0), 1))], NOW)
    assert res.restored == ["M-1"]
    res = await w.write([native("M-1", (at(15), 2))], NOW + timedelta(seconds=1))
    assert res.restored == []
    assert query(fleet, "select count(*) from meter_events where kind = 'comms_restored'")[0][0] == 1


async def test_item_the_database_refuses_is_quarantined_alone(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    """jsonb refuses \\u0000: that message goes to quarantine as store_error, the rest of the batch is stored."""
    from ingest.store import write_resilient

    w = await writer(pool)
    poison = b'{"v":1,"events":[{"ts":"2026-11-29T10:00:00Z","kind":"tamper","detail":{"note":"a\\u0000b"}}]}'
    items = [
        native("M-1", (at(0), 1000)),
        decode_message("hq/v1/meters/M-2/events", poison, w.directory, PFX),
        native("M-2", (at(0), 2000)),
    ]
    assert items[1].decoded is not None  # valid JSON, valid event: only PostgreSQL refuses it
    result = await write_resilient(w, items, lambda: NOW)
    assert result.readings_new == 2 and result.quarantined == 1
    rows = query(fleet, "select topic, reason, payload from quarantine")
    assert rows[0][0] == "hq/v1/meters/M-2/events" and rows[0][1].startswith("store_error")
    assert rows[0][2] == poison


async def test_silent_mqtt_meter_is_lost_once(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    from ingest.service import sweep_stale

    query(
        fleet,
        "update meters set comms_state = 'online', last_seen_at = %s where id = 'M-1'",
        (NOW - timedelta(hours=1),),
    )
    query(fleet, "update meters set comms_state = 'online', last_seen_at = %s where id = 'M-2'", (NOW,))
    assert await sweep_stale(pool, NOW, 3.0) == ["M-1"]  # 3 x 900 s < 1 h
    assert await sweep_stale(pool, NOW + timedelta(minutes=1), 3.0) == []
    assert query(fleet, "select meter_id, kind from meter_events") == [("M-1", "comms_lost")]
    assert query(fleet, "select comms_state from meters where id = 'M-1'") == [("lost",)]


async def test_concurrent_writers_still_see_each_others_neighbours(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    """Two collectors (shared subscription) writing the same meter at once: the reset between them is found."""
    other: AsyncConnectionPool[Any] = AsyncConnectionPool(fleet, min_size=1, max_size=1, open=False)
    await other.open()
    try:
        w1, w2 = await writer(pool), await writer(other)
        for k in range(5):
            base = 60 * k
            await asyncio.gather(
                w1.write([native("M-1", (at(base), 5_000_000 + k))], NOW),
                w2.write([native("M-1", (at(base + 15), 10 + k))], NOW),
            )
    finally:
        await other.close()
    kinds = [k for (k,) in query(fleet, "select kind from meter_events where meter_id = 'M-1' order by ts")]
    assert kinds.count("register_reset") == 5  # every 5 MWh -> 10 Wh step, whichever batch committed first
    assert kinds.count("energy_spike") == 4  # every 10 Wh -> 5 MWh step 45 min later


async def test_interval_override_moves_the_gap_threshold(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = BatchWriter(pool)
    w.interval_overrides["mqtt"] = 3600  # as HEADEND_MODBUS_POLL_INTERVAL_S does for Modbus meters
    await w.refresh_directory(force=True)
    assert w.directory.by_id["M-1"].interval_s == 3600
    res = await w.write([native("M-1", (at(0), 1000), (at(60), 1400), (at(240), 1800))], NOW)
    assert [(f.kind, f.ts) for f in res.findings] == [("gap", at(60))]  # 3 h > 1.5 x 1 h; 1 h is not


async def test_a_repeat_with_another_value_is_recorded_not_applied(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = await writer(pool)
    await w.write([native("M-1", (at(0), 1000), (at(15), 1100))], NOW)
    res = await w.write([native("M-1", (at(0), 1000), (at(15), 1150))], NOW)  # same keys, one value differs
    assert res.readings_new == 0
    assert [(e.ts, e.detail) for e in res.conflicts] == [
        (at(15), {"obis": "1-0:1.8.0", "stored": 1100.0, "offered": 1150.0})
    ]
    assert query(fleet, "select value from readings where ts = %s", (at(15),)) == [(1100.0,)]  # first one wins
    assert query(fleet, "select kind from meter_events") == [("reading_conflict",)]
    assert query(fleet, "select count(*) from billing_queue")[0][0] == 2
