"""Idempotency keys against the real database: replay, mismatch, in flight, failure releases."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from api.auth import Principal, Role
from api.errors import ApiError, Conflict, NotFound, Unprocessable
from api.idempotency import REPLAY_HEADER, fingerprint, run_once


@pytest.fixture
async def conn(seeded: str) -> Any:
    with psycopg.connect(seeded) as sync:
        row = sync.execute(
            "insert into api_keys (name, role, token_sha256) values ('k', 'integrator', repeat('a', 64)) returning id"
        ).fetchone()
    assert row is not None
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as c:
        yield c, Principal(int(row[0]), "k", Role.INTEGRATOR)


def test_fingerprint_ignores_key_order_not_values() -> None:
    assert fingerprint("post", "/v1/x", {"a": 1, "b": 2}) == fingerprint("POST", "/v1/x", {"b": 2, "a": 1})
    assert fingerprint("POST", "/v1/x", {"a": 1}) != fingerprint("POST", "/v1/x", {"a": 2})
    assert fingerprint("POST", "/v1/x", {"a": 1}) != fingerprint("POST", "/v1/y", {"a": 1})


async def test_same_key_same_body_replays_and_runs_once(conn: Any) -> None:
    c, who = conn
    calls = 0

    async def op() -> tuple[int, Any]:
        nonlocal calls
        calls += 1
        return 201, {"n": calls}

    kw: dict[str, Any] = {"method": "POST", "path": "/v1/topups", "ttl_h": 48, "operation": op}
    first = await run_once(c, who, "key-1", body={"amount": 5}, **kw)
    second = await run_once(c, who, "key-1", body={"amount": 5}, **kw)
    assert (first.status_code, first.body) == (201, b'{"n":1}')
    assert (second.status_code, second.body) == (201, b'{"n":1}')
    assert second.headers[REPLAY_HEADER] == "true" and REPLAY_HEADER not in first.headers
    assert calls == 1
    with pytest.raises(Unprocessable) as exc:
        await run_once(c, who, "key-1", body={"amount": 6}, **kw)
    assert exc.value.code == "idempotency-mismatch"
    third = await run_once(c, who, "key-2", body={"amount": 5}, **kw)
    assert third.body == b'{"n":2}'


async def test_failed_operation_releases_the_key(conn: Any) -> None:
    c, who = conn
    attempts = 0

    async def op() -> tuple[int, Any]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise NotFound("account A-9 not found")
        return 201, {"ok": True}

    kw: dict[str, Any] = {"method": "POST", "path": "/v1/topups", "body": {"a": 1}, "ttl_h": 48, "operation": op}
    with pytest.raises(ApiError):
        await run_once(c, who, "k", **kw)
    ok = await run_once(c, who, "k", **kw)
    assert ok.status_code == 201 and attempts == 2


async def test_concurrent_same_key_is_409_in_flight(conn: Any, seeded: str) -> None:
    c, who = conn
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> tuple[int, Any]:
        started.set()
        await release.wait()
        return 201, {"done": True}

    kw: dict[str, Any] = {"method": "POST", "path": "/v1/commands", "body": {"x": 1}, "ttl_h": 48}
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as other:
        first = asyncio.create_task(run_once(c, who, "k", operation=slow, **kw))
        await started.wait()
        with pytest.raises(Conflict) as exc:
            await run_once(other, who, "k", operation=slow, **kw)
        assert exc.value.code == "idempotency-in-flight"
        release.set()
        assert (await first).status_code == 201


async def test_stale_claim_of_a_dead_request_is_taken_over(conn: Any) -> None:
    c, who = conn
    await c.execute(
        "insert into api_idempotency (key_id, idempotency_key, method, path, request_sha256, created_at)"
        " values (%s, 'k', 'POST', '/v1/topups', %s, now() - interval '10 minutes')",
        (who.key_id, fingerprint("POST", "/v1/topups", {"a": 1})),
    )

    async def op() -> tuple[int, Any]:
        return 201, {"ok": True}

    r = await run_once(c, who, "k", method="POST", path="/v1/topups", body={"a": 1}, ttl_h=48, operation=op)
    assert r.status_code == 201 and REPLAY_HEADER not in r.headers


async def test_operation_and_stored_response_commit_together(conn: Any) -> None:
    """One transaction: what a failing operation wrote is rolled back with the claim,
    and a successful one's writes are visible together with its stored response."""
    c, who = conn
    kw: dict[str, Any] = {"method": "POST", "path": "/v1/topups", "body": {"a": 1}, "ttl_h": 48}

    async def write(note: str, fail: bool) -> tuple[int, Any]:
        await c.execute("update accounts set customer_name = %s where id = 'A-1'", (note,))
        if fail:
            raise NotFound("after the write")
        return 201, {"note": note}

    with pytest.raises(NotFound):
        await run_once(c, who, "k", operation=lambda: write("failed", True), **kw)
    cur = await c.execute("select customer_name from accounts where id = 'A-1'")
    assert (await cur.fetchone()) != ("failed",)
    cur = await c.execute("select count(*) from api_idempotency")
    assert await cur.fetchone() == (0,)

    r = await run_once(c, who, "k", operation=lambda: write("kept", False), **kw)
    assert r.status_code == 201
    cur = await c.execute(
        "select a.customer_name, i.status_code from accounts a, api_idempotency i"
        " where a.id = 'A-1' and i.idempotency_key = 'k'"
    )
    assert await cur.fetchone() == ("kept", 201)
