"""/metrics from the database and /v1/stream (SSE) through a real uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import uvicorn
from psycopg.types.json import Jsonb

from api.app import create_app
from api.service import _Server
from api.settings import ApiSettings
from tests.integration.api.conftest import NOW, Keys


async def test_metrics_from_database(client: httpx.AsyncClient, keys: Keys, seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        conn.execute(
            "insert into commands (idempotency_key, meter_id, account_id, action, state)"
            " values ('k1', 'M-1', 'A-1', 'disconnect', 'requested'), ('k2', 'M-2', 'A-2', 'disconnect', 'sent')"
        )
        conn.execute(
            "insert into audit_log (actor, action, subject, detail, prev_hash, hash) values"
            " ('control', 'command_refused', 'M-1', %s, '', 'h1'),"
            " ('control', 'disconnect_blocked', 'A-1', %s, 'h1', 'h2')",
            (Jsonb({"reasons": ["weather_cold", "no_notice"]}), Jsonb({"reasons": ["protected"]})),
        )
        conn.execute("insert into readings (meter_id, obis, ts, value) values ('M-1', '1-0:1.8.0', now(), 1)")
        conn.execute("insert into billing_queue (meter_id, ts, energy_wh) values ('M-1', now(), 1)")
    assert (await client.get("/metrics", headers=keys.headers("customer"))).status_code == 403
    r = await client.get("/metrics", headers=keys.headers("operator"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = set(r.text.splitlines())
    assert "headend_readings_ingested_total 1" in lines
    assert "headend_billing_queue_depth 1" in lines
    assert 'headend_commands{action="disconnect",state="requested"} 1' in lines
    assert 'headend_commands{action="disconnect",state="sent"} 1' in lines
    assert 'headend_guard_refusals_total{action="command_refused",reason="weather_cold"} 1' in lines
    assert 'headend_guard_refusals_total{action="disconnect_blocked",reason="protected"} 1' in lines
    assert 'headend_ledger_entries_total{kind="opening_balance"} 2' in lines
    assert 'headend_ledger_amount_minor_total{kind="opening_balance"} 15000' in lines
    assert "# TYPE headend_guard_refusals_total counter" in lines


@pytest.fixture
async def live(settings: ApiSettings) -> AsyncIterator[tuple[str, ApiSettings, object]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # a pool of 2: streams must not hold connections, requests must not need two
    app = create_app(settings.model_copy(update={"api_sse_keepalive_s": 0.5, "api_pool_max": 2}), clock=lambda: NOW)
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-uvicorn")
    for _ in range(250):  # uvicorn has no "started" event to await
        if server.started:
            break
        await asyncio.sleep(0.02)
    await asyncio.wait_for(app.state.hub.connected.wait(), 5)
    try:
        yield f"http://127.0.0.1:{port}", settings, app
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _events(lines: AsyncIterator[str], n: int) -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
            if len(out) == n:
                return out
    return out


async def test_stream_sends_command_and_balance_changes(live: tuple[str, ApiSettings, object], keys: Keys) -> None:
    base, settings, _ = live
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        assert (await c.get("/v1/stream", headers=keys.headers("customer"))).status_code == 403
        async with c.stream(
            "GET", "/v1/stream", params={"account_id": "A-1", "max_seconds": 10}, headers=keys.headers("operator")
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()
            assert await anext(lines) == ": connected"
            async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
                await conn.execute(
                    "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor)"
                    " values ('A-2', 'debit', -1, 9999)"  # another account: filtered out
                )
                await conn.execute(
                    "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor, reference)"
                    " values ('A-1', 'topup', 700, 5700, 'bank:r1')"
                )
                await conn.execute(
                    "insert into commands (idempotency_key, meter_id, account_id, action, state)"
                    " values ('k1', 'M-1', 'A-1', 'disconnect', 'requested')"
                )
                await conn.execute("update commands set state = 'cancelled' where idempotency_key = 'k1'")
            got = await asyncio.wait_for(_events(lines, 3), 10)
    assert got[0][0] == "balance" and got[0][1]["balance_minor"] == 5700 and got[0][1]["account_id"] == "A-1"
    assert [(e, d["state"]) for e, d in got[1:]] == [("command", "requested"), ("command", "cancelled")]


async def test_stream_ends_after_max_seconds_with_keepalives(live: tuple[str, ApiSettings, object], keys: Keys) -> None:
    base, _, _ = live
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        started = asyncio.get_running_loop().time()
        r = await c.get("/v1/stream", params={"max_seconds": 1.2}, headers=keys.headers("approver"))
        elapsed = asyncio.get_running_loop().time() - started
    assert r.status_code == 200
    assert r.text.startswith(": connected\n\n")
    assert ": keep-alive" in r.text
    assert elapsed < 5


async def test_open_streams_and_concurrent_requests_do_not_starve_a_small_pool(
    live: tuple[str, ApiSettings, object], keys: Keys
) -> None:
    base, _, _ = live
    async with httpx.AsyncClient(base_url=base, timeout=8) as c:
        streams = []
        for _ in range(3):  # more open streams than pooled connections
            cm = c.stream("GET", "/v1/stream", params={"max_seconds": 8}, headers=keys.headers("operator"))
            r = await cm.__aenter__()
            assert r.status_code == 200
            streams.append(cm)
        try:
            answers = await asyncio.gather(
                *(c.get(f"/v1/accounts/A-{1 + n % 2}", headers=keys.headers("operator")) for n in range(12))
            )
            assert [a.status_code for a in answers] == [200] * 12
        finally:
            for cm in streams:
                await cm.__aexit__(None, None, None)


async def test_stream_shows_a_real_topup(live: tuple[str, ApiSettings, object], keys: Keys) -> None:
    """A top-up through the API (prepaid's real posting path) appears on an operator's stream."""
    base, _, _ = live
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        async with c.stream(
            "GET", "/v1/stream", params={"account_id": "A-1", "max_seconds": 10}, headers=keys.headers("operator")
        ) as r:
            lines = r.aiter_lines()
            assert await anext(lines) == ": connected"
            paid = await c.post(
                "/v1/topups",
                json={"account_id": "A-1", "channel": "app", "reference": "live-1", "amount_minor": 1234},
                headers={**keys.headers("integrator"), "Idempotency-Key": "live-1"},
            )
            assert paid.status_code == 201, paid.text
            got = await asyncio.wait_for(_events(lines, 2), 10)
    kinds = {e: d for e, d in got}
    assert kinds["balance"]["balance_minor"] == 5000 + 1234
    assert kinds["account_event"]["kind"] == "topup"
