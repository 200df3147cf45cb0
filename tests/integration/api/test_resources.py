"""Plain resources through the real app: network, readings (time_bucket), events, notices,
quarantine (replay through ingest), validation errors as problem+json."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.integration.api.conftest import NOW, Keys


def _insert_readings(url: str, rows: list[tuple[str, str, datetime, float]]) -> None:
    with psycopg.connect(url) as conn:
        conn.cursor().executemany("insert into readings (meter_id, obis, ts, value) values (%s, %s, %s, %s)", rows)


async def test_register_and_list_network(client: httpx.AsyncClient, keys: Keys) -> None:
    op = keys.headers("operator")
    r = await client.post(
        "/v1/service-points",
        json={"id": "SP-9", "feeder": "F-9", "area": "east", "timezone": "Europe/Berlin", "country": "DE"},
        headers=op,
    )
    assert r.status_code == 201, r.text
    assert r.json()["timezone"] == "Europe/Berlin"
    again = await client.post("/v1/service-points", json={"id": "SP-9", "feeder": "F-9"}, headers=op)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"

    r = await client.post(
        "/v1/meters",
        json={
            "id": "M-9",
            "service_point_id": "SP-9",
            "protocol": "modbus",
            "modbus_host": "127.0.0.1",
            "modbus_port": 5020,
            "model": "sdm630",
        },
        headers=op,
    )
    assert r.status_code == 201, r.text
    assert r.json()["relay_state"] == "unknown" and r.json()["last_reading"] is None

    listed = await client.get("/v1/meters", params={"area": "east"}, headers=op)
    assert [m["id"] for m in listed.json()["items"]] == ["M-9"]
    listed = await client.get("/v1/meters", params={"feeder": "F-1"}, headers=op)
    assert [m["id"] for m in listed.json()["items"]] == ["M-1"]
    page1 = await client.get("/v1/meters", params={"limit": 2}, headers=op)
    assert [m["id"] for m in page1.json()["items"]] == ["M-1", "M-2"]
    page2 = await client.get("/v1/meters", params={"limit": 2, "after": page1.json()["next"]}, headers=op)
    assert [m["id"] for m in page2.json()["items"]] == ["M-9"] and page2.json()["next"] is None


async def test_register_meter_validation_errors_name_the_field(client: httpx.AsyncClient, keys: Keys) -> None:
    op = keys.headers("operator")
    r = await client.post("/v1/meters", json={"id": "bad id!", "phases": 2, "colour": "red"}, headers=op)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    fields = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "body.id" in fields and "pattern" in fields["body.id"]
    assert "body.phases" in fields
    assert "body.colour" in fields and "Extra inputs" in fields["body.colour"]
    unknown_sp = await client.post("/v1/meters", json={"id": "M-X", "service_point_id": "SP-NONE"}, headers=op)
    assert unknown_sp.status_code == 422
    assert unknown_sp.json()["errors"][0]["field"] == "body.service_point_id"
    bad_tz = await client.post(
        "/v1/service-points", json={"id": "SP-Z", "feeder": "f", "timezone": "Mars/Base"}, headers=op
    )
    assert bad_tz.status_code == 422
    assert "unknown IANA time zone" in bad_tz.json()["errors"][0]["message"]
    not_json = await client.post(
        "/v1/service-points", content=b"{nope", headers={**op, "content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert "not valid JSON" in not_json.json()["errors"][0]["message"]


async def test_meter_detail_has_last_reading(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    t0 = NOW - timedelta(hours=1)
    _insert_readings(
        seeded, [("M-1", "1-0:1.8.0", t0, 1000.0), ("M-1", "1-0:1.8.0", NOW, 1500.0), ("M-1", "1-0:16.7.0", NOW, 420.0)]
    )
    r = await client.get("/v1/meters/M-1", headers=keys.headers("approver"))
    assert r.status_code == 200
    last = r.json()["last_reading"]
    assert datetime.fromisoformat(last["ts"]) == NOW
    assert last["values"] == {"1-0:1.8.0": 1500.0, "1-0:16.7.0": 420.0}
    assert (await client.get("/v1/meters/NOPE", headers=keys.headers("approver"))).status_code == 404


async def test_raw_readings_paginate(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    base = NOW - timedelta(hours=2)
    _insert_readings(seeded, [("M-1", "1-0:1.8.0", base + timedelta(minutes=15 * i), 1000.0 + i) for i in range(8)])
    op = keys.headers("operator")
    seen: list[float] = []
    params: dict[str, str | int] = {"limit": 3, "start": (NOW - timedelta(days=1)).isoformat()}
    while True:
        r = await client.get("/v1/meters/M-1/readings", params=params, headers=op)
        assert r.status_code == 200, r.text
        seen += [x["value"] for x in r.json()["items"]]
        if r.json()["next"] is None:
            break
        params["after"] = r.json()["next"]
    assert seen == [1000.0 + i for i in range(8)]
    bad = await client.get("/v1/meters/M-1/readings", params={"after": "garbage"}, headers=op)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.after"


async def test_aggregates_per_meter_and_area(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    day = datetime(2026, 11, 23, tzinfo=UTC)
    rows = []
    for i in range(8):  # 2 hours of 15-minute readings, +100 Wh each step on M-1, +10 Wh on M-2
        ts = day + timedelta(minutes=15 * i)
        rows += [("M-1", "1-0:1.8.0", ts, 1000.0 + 100 * i), ("M-2", "1-0:1.8.0", ts, 50.0 + 10 * i)]
    _insert_readings(seeded, rows)
    op = keys.headers("operator")
    window = {"start": day.isoformat(), "end": (day + timedelta(hours=2)).isoformat()}
    r = await client.get("/v1/meters/M-1/readings/aggregate", params={**window, "bucket": "hour"}, headers=op)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [row["count"] for row in body["rows"]] == [4, 4]
    assert [row["delta"] for row in body["rows"]] == [300.0, 400.0]  # 2nd hour counts from the 1st hour's last
    assert body["rows"][0]["first"] == 1000.0 and body["rows"][1]["last"] == 1700.0
    r = await client.get("/v1/meters/M-1/readings/aggregate", params={**window, "bucket": "15min"}, headers=op)
    assert len(r.json()["rows"]) == 8
    r = await client.get(
        "/v1/meters/M-1/readings/aggregate",
        params={
            "start": day.isoformat(),
            "end": (day + timedelta(days=1)).isoformat(),
            "bucket": "day",
            "tz": "Asia/Shanghai",
        },
        headers=op,
    )
    # local midnight in Shanghai is 16:00 UTC the day before
    assert [datetime.fromisoformat(x["bucket"]) for x in r.json()["rows"]] == [datetime(2026, 11, 22, 16, tzinfo=UTC)]
    r = await client.get("/v1/meters/M-1/readings/aggregate", params={**window, "bucket": "month"}, headers=op)
    assert r.json()["rows"][0]["delta"] == 700.0
    area = await client.get("/v1/areas/south/readings/aggregate", params={**window, "bucket": "hour"}, headers=op)
    assert area.status_code == 200, area.text
    assert [(x["meters"], x["delta"]) for x in area.json()["rows"]] == [(1, 30.0), (1, 40.0)]
    assert (await client.get("/v1/areas/nowhere/readings/aggregate", headers=op)).status_code == 404
    too_long = await client.get(
        "/v1/meters/M-1/readings/aggregate",
        params={"bucket": "15min", "start": "2000-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        headers=op,
    )
    assert too_long.status_code == 422
    inverted = await client.get(
        "/v1/meters/M-1/readings/aggregate", params={"start": window["end"], "end": window["start"]}, headers=op
    )
    assert inverted.status_code == 422 and inverted.json()["errors"][0]["field"] == "query.start"


async def test_events(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        conn.execute(
            "insert into meter_events (meter_id, ts, kind, detail) values (%s, %s, 'register_reset', %s)",
            ("M-1", NOW - timedelta(hours=1), json.dumps({"prev_wh": 5, "next_wh": 1})),
        )
    r = await client.get("/v1/events", params={"meter_id": "M-1"}, headers=keys.headers("operator"))
    assert r.status_code == 200
    assert [(e["kind"], e["detail"]["prev_wh"]) for e in r.json()] == [("register_reset", 5)]
    assert (await client.get("/v1/events", params={"kind": "nope"}, headers=keys.headers("operator"))).json() == []


async def test_notice_delivery_receipt(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        row = conn.execute(
            "insert into notices (account_id, kind, status, sent_at)"
            " values ('A-1', 'pending_disconnection', 'sent', %s) returning id",
            (NOW - timedelta(hours=1),),
        ).fetchone()
    assert row is not None
    nid = row[0]
    op = keys.headers("operator")
    at = NOW - timedelta(minutes=30)
    r = await client.post(
        f"/v1/notices/{nid}/delivery", json={"delivered_at": at.isoformat(), "channel": "sms"}, headers=op
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "delivered" and datetime.fromisoformat(r.json()["delivered_at"]) == at
    later = await client.post(f"/v1/notices/{nid}/delivery", json={}, headers=op)
    assert datetime.fromisoformat(later.json()["delivered_at"]) == at  # first receipt wins
    assert (await client.post("/v1/notices/999999/delivery", headers=op)).status_code == 404
    naive = await client.post(f"/v1/notices/{nid}/delivery", json={"delivered_at": "2026-11-24T10:00:00"}, headers=op)
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "body.delivered_at"
    mine = await client.get("/v1/accounts/A-1/notices", headers=keys.headers("customer"))
    assert [n["id"] for n in mine.json()["items"]] == [nid]


@pytest.fixture
def quarantined(seeded: str) -> tuple[int, int]:
    """Two quarantined MQTT messages for meter M-7: one fixable (meter unknown), one malformed."""
    good = json.dumps({"v": 1, "meter": "M-7", "ts": "2026-11-24T01:45:00Z", "values": {"1-0:1.8.0": 1234.0}})
    with psycopg.connect(seeded) as conn:
        ids = []
        for payload, reason in ((good.encode(), "unknown_meter: M-7"), (b"\xff\xfenot json", "malformed_json")):
            row = conn.execute(
                "insert into quarantine (source, topic, meter_id, payload, reason) values"
                " ('mqtt', 'headend/v1/meters/M-7/readings', 'M-7', %s, %s) returning id",
                (payload, reason),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids[0], ids[1]


async def test_quarantine_inspect_and_replay_after_fix(
    client: httpx.AsyncClient, keys: Keys, seeded: str, quarantined: tuple[int, int]
) -> None:
    good, bad = quarantined
    op = keys.headers("operator")
    listed = await client.get("/v1/quarantine", params={"replayed": "false"}, headers=op)
    assert [q["id"] for q in listed.json()["items"]] == [good, bad]
    detail = await client.get(f"/v1/quarantine/{bad}", headers=op)
    assert detail.json()["payload_text"] is None
    assert base64.b64decode(detail.json()["payload_base64"]) == b"\xff\xfenot json"

    before_fix = await client.post(f"/v1/quarantine/{good}/replay", headers=op)
    assert before_fix.status_code == 200, before_fix.text
    assert before_fix.json()["accepted"] is False and "unknown_meter" in before_fix.json()["result"]

    # the fix: register the meter, then replay
    r = await client.post("/v1/meters", json={"id": "M-7", "service_point_id": "SP-1"}, headers=op)
    assert r.status_code == 201
    after = await client.post(f"/v1/quarantine/{good}/replay", headers=op)
    assert after.json()["accepted"] is True, after.json()
    assert "1 new readings" in after.json()["result"]
    with psycopg.connect(seeded) as conn:
        n = conn.execute("select count(*) from readings where meter_id = 'M-7'").fetchone()
        q = conn.execute("select count(*) from quarantine").fetchone()
    assert n == (1,) and q == (2,)  # nothing quarantined again
    still_bad = await client.post(f"/v1/quarantine/{bad}/replay", headers=op)
    assert still_bad.json()["accepted"] is False and "still rejected" in still_bad.json()["result"]
    replayed = await client.get("/v1/quarantine", params={"replayed": "true"}, headers=op)
    assert {q["id"] for q in replayed.json()["items"]} == {good, bad}


async def test_delivery_receipt_is_what_controls_guard_reads(
    client: httpx.AsyncClient, keys: Keys, seeded: str
) -> None:
    """The receipt endpoint feeds control's guard: 'notice not delivered' disappears once confirmed."""
    with psycopg.connect(seeded) as conn:
        row = conn.execute(
            "insert into notices (account_id, kind, status, sent_at)"
            " values ('A-1', 'pending_disconnection', 'sent', %s) returning id",
            (NOW - timedelta(hours=30),),
        ).fetchone()
        assert row is not None
        conn.execute(
            "insert into disconnect_plans (account_id, meter_id, notice_id) values ('A-1', 'M-1', %s)", (row[0],)
        )
    op = keys.headers("operator")
    before = await client.get("/v1/accounts/A-1/explain", headers=op)
    assert before.status_code == 200, before.text
    assert "notice_not_delivered" in before.json()["decision"]["reasons"]
    receipt = await client.post(
        f"/v1/notices/{row[0]}/delivery", json={"delivered_at": (NOW - timedelta(hours=29)).isoformat()}, headers=op
    )
    assert receipt.status_code == 200
    after = await client.get("/v1/accounts/A-1/explain", headers=op)
    reasons = after.json()["decision"].get("reasons", [])
    assert not any(r.startswith("notice_") for r in reasons), reasons


async def test_patch_meter_then_replay_tasmota_device(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    """The usual fix for 'unknown_device': map the device topic to its meter, then replay."""
    payload = json.dumps({"Time": "2026-11-24T09:00:00", "ENERGY": {"Total": 12.5, "Power": 40, "Voltage": 230}})
    with psycopg.connect(seeded) as conn:
        row = conn.execute(
            "insert into quarantine (source, topic, payload, reason)"
            " values ('mqtt', 'tele/kitchen/SENSOR', %s, 'unknown_device: tasmota device ''kitchen''') returning id",
            (payload.encode(),),
        ).fetchone()
    assert row is not None
    op = keys.headers("operator")
    before = await client.post(f"/v1/quarantine/{row[0]}/replay", headers=op)
    assert before.json()["accepted"] is False and "unknown_device" in before.json()["result"]
    patched = await client.patch("/v1/meters/M-2", json={"mqtt_topic": "kitchen", "model": "tasmota"}, headers=op)
    assert patched.status_code == 200, patched.text
    assert patched.json()["mqtt_topic"] == "kitchen" and patched.json()["protocol"] == "mqtt"
    after = await client.post(f"/v1/quarantine/{row[0]}/replay", headers=op)
    assert after.json()["accepted"] is True, after.json()
    with psycopg.connect(seeded) as conn:
        value = conn.execute("select value from readings where meter_id = 'M-2' and obis = '1-0:1.8.0'").fetchone()
    assert value == (12500.0,)  # Tasmota Total is kWh; stored in Wh
    bad = await client.patch("/v1/meters/M-2", json={"service_point_id": "SP-NONE"}, headers=op)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.service_point_id"
    assert (await client.patch("/v1/meters/NOPE", json={"model": "x"}, headers=op)).status_code == 404
    assert (await client.patch("/v1/meters/M-2", json={"id": "M-3"}, headers=op)).status_code == 422


async def test_replay_many_by_reason(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        for hour, total in ((8, 10.0), (9, 10.5)):
            payload = json.dumps({"Time": f"2026-11-24T0{hour}:00:00", "ENERGY": {"Total": total}})
            conn.execute(
                "insert into quarantine (source, topic, payload, reason)"
                " values ('mqtt', 'tele/garage/SENSOR', %s, 'unknown_device: garage')",
                (payload.encode(),),
            )
        conn.execute(
            "insert into quarantine (source, topic, payload, reason)"
            " values ('mqtt', 'headend/v1/meters/M-1/readings', 'x', 'malformed_json')"
        )
    op = keys.headers("operator")
    await client.patch("/v1/meters/M-1", json={"mqtt_topic": "garage"}, headers=op)
    r = await client.post("/v1/quarantine/replay", json={"reason_prefix": "unknown_device"}, headers=op)
    assert r.status_code == 200, r.text
    assert (r.json()["replayed"], r.json()["accepted"]) == (2, 2)
    again = await client.post("/v1/quarantine/replay", json={"reason_prefix": "unknown_device"}, headers=op)
    assert again.json()["replayed"] == 0  # already replayed items are skipped unless include_replayed
    everything = await client.post("/v1/quarantine/replay", json={"include_replayed": True}, headers=op)
    assert (everything.json()["replayed"], everything.json()["accepted"]) == (3, 2)
    assert (await client.post("/v1/quarantine/replay", json={}, headers=keys.headers("approver"))).status_code == 403
