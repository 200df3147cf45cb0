"""Decoding of native v1, Tasmota and Shelly payloads from recorded fixtures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.decode import (
    decode_concentrator,
    decode_native_events,
    decode_native_readings,
    route,
    subscriptions,
)
from ingest.errors import DecodeError
from ingest.models import RouteKind
from ingest.shelly import decode_shelly
from ingest.tasmota import decode_tasmota

FIX = Path(__file__).resolve().parents[2] / "fixtures"


def fx(rel: str) -> bytes:
    return (FIX / rel).read_bytes()


def values(decoded) -> dict[tuple[str, str], float]:
    return {(r.obis, r.ts.isoformat()): r.value for r in decoded.readings}


def test_native_single() -> None:
    d = decode_native_readings("M-0001", fx("native/single.json"))
    assert values(d) == {
        ("1-0:1.8.0", "2026-11-29T10:15:00+00:00"): 1234567.0,
        ("1-0:2.8.0", "2026-11-29T10:15:00+00:00"): 0.0,
        ("1-0:16.7.0", "2026-11-29T10:15:00+00:00"): 812.5,
    }
    assert {r.meter_id for r in d.readings} == {"M-0001"}


def test_native_interval_block() -> None:
    d = decode_native_readings("M-0001", fx("native/interval_block.json"))
    assert [(r.ts.minute, r.value) for r in d.readings] == [(0, 1234000.0), (15, 1234567.0)]
    assert all(r.ts.tzinfo is UTC for r in d.readings)


def test_concentrator_batch_normalises_offsets_to_utc() -> None:
    d = decode_concentrator("DC-17", fx("native/concentrator.json"))
    assert [(r.meter_id, r.ts.hour, r.ts.minute, r.value) for r in d.readings] == [
        ("M-0001", 10, 0, 1.0),
        ("M-0002", 10, 0, 2.0),
        ("M-0002", 10, 15, 3.0),
    ]


def test_native_events() -> None:
    d = decode_native_events("M-0001", fx("native/events.json"))
    assert [e.kind for e in d.events] == ["power_fail", "power_restore", "relay_change"]
    assert d.events[2].detail == {"relay": "disconnected"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\xff\xfe", "malformed_json", id="not-utf8"),
        pytest.param(b"{not json", "malformed_json", id="not-json"),
        pytest.param(b"[1,2]", "malformed_json", id="not-object"),
        pytest.param(
            b'{"v": 2, "ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": 1}}', "unsupported_version", id="v2"
        ),
        pytest.param(
            b'{"ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": 1}}', "unsupported_version", id="no-version"
        ),
        pytest.param(
            b'{"v": 1, "ts": "2026-01-01T00:00:00", "values": {"1-0:1.8.0": 1}}', "naive_timestamp", id="naive"
        ),
        pytest.param(b'{"v": 1, "ts": "yesterday", "values": {"1-0:1.8.0": 1}}', "bad_timestamp", id="bad-ts"),
        pytest.param(b'{"v": 1, "ts": "2026-01-01T00:00:00Z", "values": {"energy": 1}}', "bad_obis", id="bad-obis"),
        pytest.param(
            b'{"v": 1, "ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": "12"}}', "bad_value", id="string-value"
        ),
        pytest.param(
            b'{"v": 1, "ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": true}}', "bad_value", id="bool-value"
        ),
        pytest.param(
            b'{"v": 1, "ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": -5}}', "bad_value", id="negative-energy"
        ),
        pytest.param(b'{"v": 1, "ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": NaN}}', "bad_value", id="nan"),
        pytest.param(b'{"v": 1, "ts": "2026-01-01T00:00:00Z", "values": {}}', "schema", id="empty-values"),
        pytest.param(
            b'{"v": 1, "meter": "M-9", "ts": "2026-01-01T00:00:00Z", "values": {"1-0:1.8.0": 1}}',
            "meter_mismatch",
            id="mismatch",
        ),
        pytest.param(b'{"v": 1, "readings": []}', "schema", id="empty-block"),
    ],
)
def test_native_readings_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_native_readings("M-0001", payload)
    assert info.value.reason == reason


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    with pytest.raises(DecodeError) as info:
        decode_native_readings("M-1", b"[" * 100_000 + b"]" * 100_000)
    assert info.value.reason == "malformed_json"


def test_negative_power_is_fine() -> None:
    d = decode_native_readings("M-1", b'{"v":1,"ts":"2026-01-01T00:00:00Z","values":{"1-0:16.7.0":-300}}')
    assert d.readings[0].value == -300.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(
            b'{"v":1,"events":[{"ts":"2026-01-01T00:00:00Z","kind":"explosion"}]}', "unknown_event", id="unknown-kind"
        ),
        pytest.param(
            b'{"v":1,"events":[{"ts":"2026-01-01T00:00:00Z","kind":"relay_change","detail":{}}]}',
            "schema",
            id="relay-without-state",
        ),
        pytest.param(b'{"v":1,"events":[]}', "schema", id="empty"),
    ],
)
def test_native_events_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_native_events("M-1", payload)
    assert info.value.reason == reason


def test_concentrator_bad_meter_id() -> None:
    payload = (
        b'{"v":1,"meters":[{"meter":"bad id!","readings":[{"ts":"2026-01-01T00:00:00Z","values":{"1-0:1.8.0":1}}]}]}'
    )
    with pytest.raises(DecodeError) as info:
        decode_concentrator("DC", payload)
    assert info.value.reason == "schema"


def test_tasmota_single_phase_local_time() -> None:
    d = decode_tasmota("T-1", "Europe/Berlin", fx("tasmota/energy_single_phase.json"))
    got = {r.obis: r.value for r in d.readings}
    assert got == {"1-0:1.8.0": 1290396.0, "1-0:16.7.0": 47.11, "1-0:32.7.0": 230.0, "1-0:31.7.0": 0.418}
    # 20:31:48 CET (UTC+1 in February) is 19:31:48 UTC
    assert {r.ts for r in d.readings} == {datetime(2023, 2, 5, 19, 31, 48, tzinfo=UTC)}


def test_tasmota_time_zone_matters() -> None:
    d = decode_tasmota("T-1", "Asia/Shanghai", fx("tasmota/energy_single_phase.json"))
    assert d.readings[0].ts == datetime(2023, 2, 5, 12, 31, 48, tzinfo=UTC)


def test_tasmota_three_phase() -> None:
    d = decode_tasmota("T-3", "UTC", fx("tasmota/energy_three_phase.json"))
    got = {r.obis: r.value for r in d.readings}
    assert got["1-0:1.8.0"] == 5012500.0
    assert got["1-0:16.7.0"] == 515.0
    assert (got["1-0:32.7.0"], got["1-0:52.7.0"], got["1-0:72.7.0"]) == (231.0, 229.0, 230.0)
    assert (got["1-0:31.7.0"], got["1-0:51.7.0"], got["1-0:71.7.0"]) == (0.52, 1.48, 0.24)
    assert got["1-0:14.7.0"] == 50.0


def test_tasmota_without_energy_is_quarantined() -> None:
    with pytest.raises(DecodeError) as info:
        decode_tasmota("T-1", "UTC", fx("tasmota/status_no_energy.json"))
    assert info.value.reason == "no_energy"


def test_shelly_emdata() -> None:
    d = decode_shelly("S-1", fx("shelly/pro3em_notify_emdata.json"))
    assert {r.obis: r.value for r in d.readings} == {"1-0:1.8.0": 26289.57, "1-0:2.8.0": 131881.86}
    assert d.readings[0].ts == datetime.fromtimestamp(1757060280.21, UTC)


def test_shelly_em_instantaneous() -> None:
    d = decode_shelly("S-1", fx("shelly/pro3em_notify_em.json"))
    got = {r.obis: r.value for r in d.readings}
    assert got["1-0:16.7.0"] == 312.6 and got["1-0:52.7.0"] == 230.9 and got["1-0:71.7.0"] == 0.027


def test_shelly_switch_is_relay_event() -> None:
    d = decode_shelly("S-2", fx("shelly/pro_switch_off.json"))
    assert d.readings == ()
    assert [(e.kind, e.detail["relay"]) for e in d.events] == [("relay_change", "disconnected")]


def test_shelly_notify_event_carries_nothing() -> None:
    d = decode_shelly("S-1", fx("shelly/notify_event_sys.json"))
    assert d.readings == () and d.events == ()


def test_routes() -> None:
    kw = {"native_prefix": "hq", "tasmota_prefix": "", "shelly_prefix": "sh"}
    assert route("hq/v1/meters/M-1/readings", **kw).kind is RouteKind.NATIVE_READINGS
    assert route("hq/v1/meters/M-1/events", **kw).kind is RouteKind.NATIVE_EVENTS
    assert route("hq/v1/concentrators/DC-1/readings", **kw).key == "DC-1"
    assert route("tele/kitchen/SENSOR", **kw).key == "kitchen"
    assert route("sh/shellypro3em-1/events/rpc", **kw).key == "shellypro3em-1"
    for bad in ("hq/v1/meters/M-1/cmd", "other/v1/meters/M-1/readings", "hq/v1/meters/bad id/readings"):
        with pytest.raises(DecodeError):
            route(bad, **kw)
    subs = subscriptions(**kw)
    assert "hq/v1/meters/+/readings" in subs and "tele/+/SENSOR" in subs and "sh/+/events/rpc" in subs


obis_values = st.dictionaries(
    st.sampled_from(["1-0:1.8.0", "1-0:2.8.0", "1-0:16.7.0", "1-0:32.7.0"]),
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
    min_size=1,
)


@given(block=st.lists(st.tuples(st.datetimes(timezones=st.just(UTC)), obis_values), min_size=1, max_size=20))
def test_native_block_round_trips(block) -> None:
    doc = {"v": 1, "readings": [{"ts": ts.isoformat(), "values": vals} for ts, vals in block]}
    d = decode_native_readings("M-1", json.dumps(doc).encode())
    expected = [(ts, k, v) for ts, vals in block for k, v in vals.items()]
    assert [(r.ts, r.obis, r.value) for r in d.readings] == expected


@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_other_exception(payload: bytes) -> None:
    for decode in (
        lambda p: decode_native_readings("M-1", p),
        lambda p: decode_shelly("S", p),
        lambda p: decode_tasmota("T", "UTC", p),
        lambda p: decode_concentrator("D", p),
        lambda p: decode_native_events("M-1", p),
    ):
        try:
            decode(payload)
        except DecodeError:
            pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=15,
    )
)
def test_json_shapes_never_escape(doc) -> None:
    for wrap in (
        doc,
        {"v": 1, "values": doc, "ts": "2026-01-01T00:00:00Z"},
        {"v": 1, "readings": doc},
        {"v": 1, "meters": doc},
        {"ENERGY": doc, "Time": "2026-01-01T00:00:00"},
        {"method": "NotifyStatus", "params": doc},
    ):
        payload = json.dumps(wrap).encode()
        for decode in (
            lambda p: decode_native_readings("M-1", p),
            lambda p: decode_shelly("S", p),
            lambda p: decode_tasmota("T", "UTC", p),
            lambda p: decode_concentrator("D", p),
        ):
            try:
                decode(payload)
            except DecodeError:
                pass


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        pytest.param("2024-10-27T02:30:00", datetime(2024, 10, 27, 0, 30, tzinfo=UTC), id="fold-first-occurrence"),
        pytest.param("2024-03-31T02:30:00", datetime(2024, 3, 31, 1, 30, tzinfo=UTC), id="gap-offset-before"),
        pytest.param("2024-07-01T12:00:00+02:00", datetime(2024, 7, 1, 10, 0, tzinfo=UTC), id="explicit-offset"),
    ],
)
def test_tasmota_dst(local: str, utc: datetime) -> None:
    payload = json.dumps({"Time": local, "ENERGY": {"Total": 1.0}}).encode()
    assert decode_tasmota("T-1", "Europe/Berlin", payload).readings[0].ts == utc
