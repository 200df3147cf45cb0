"""Idempotency keys for POSTs that create money or a command (table ``api_idempotency``, 0401).

Rules (also in docs/api.md):
- the ``Idempotency-Key`` header (1-200 printable ASCII characters) is required on
  POST /v1/topups, /v1/topups/reversals, /v1/commands and /v1/commands/bulk;
- keys are scoped to the API key that sent them;
- the request fingerprint is SHA-256 over method, path and the canonical JSON of
  the validated body (so whitespace and key order do not matter);
- first use: the key is claimed, the operation runs and its 2xx response is stored,
  all in one database transaction; if the operation fails the transaction rolls back,
  the claim with it (a retry runs it again);
- same key + same request: the stored response is replayed with the same status
  and the header ``Idempotent-Replayed: true``;
- same key + different request: 422 ``idempotency-mismatch``;
- same key while the first request is still running: 409 ``idempotency-in-flight``
  (its transaction holds an advisory lock on the key; the second request does not wait);
- a process that dies mid-request leaves nothing (its transaction rolls back). A claim
  without a response older than STALE_CLAIM_S (written by an earlier version, which
  committed the claim first) is taken over by the next request with that key. That is
  safe because the operations are idempotent themselves (top-ups on (channel, reference),
  commands on their key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import psycopg
from fastapi import Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from api.auth import Principal
from api.errors import Conflict, Unprocessable
from api.settings import ApiSettings

REPLAY_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
STALE_CLAIM_S = 300

IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        description="1-200 printable ASCII characters; same key + same body replays the first response",
    ),
]
Operation = Callable[[], Awaitable[tuple[int, Any]]]
# Two-key advisory lock namespace of idempotency claims (0x4150, "AP"); the second key is
# hashtext('<api key id>:<Idempotency-Key>'). Held until the claiming transaction ends.
LOCK_SPACE = 0x4150
_CLAIM = (
    "with lock as (select pg_try_advisory_xact_lock(%(space)s, hashtext(%(lock)s)) as got),"
    " claim as (insert into api_idempotency (key_id, idempotency_key, method, path, request_sha256)"
    " select %(key_id)s, %(key)s, %(method)s, %(path)s, %(digest)s from lock where got"
    " on conflict do nothing returning 1)"
    " select got, exists (select from claim) from lock"
)
_FORGET = (
    "delete from api_idempotency where key_id = %(key_id)s and idempotency_key = %(key)s"
    " and (created_at < now() - make_interval(hours => %(ttl_h)s)"
    " or (response is null and created_at < now() - make_interval(secs => %(stale_s)s)))"
)


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(jsonable_encoder(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


async def run_once(
    conn: psycopg.AsyncConnection[Any],
    principal: Principal,
    key: str,
    *,
    method: str,
    path: str,
    body: Any,
    ttl_h: int,
    operation: Operation,
) -> JSONResponse:
    """Run ``operation`` (returning status and a JSON-able body) at most once per key.

    One transaction holds the claim, the operation (its own transactions nest as
    savepoints) and the stored response: one commit, and the response is stored if and
    only if the operation's effects are. The claim's transaction-level advisory lock
    tells a concurrent request with the same key (409 in flight) without waiting on it.
    """
    digest = fingerprint(method, path, body)
    record = {
        "space": LOCK_SPACE,
        "lock": f"{principal.key_id}:{key}",
        "key_id": principal.key_id,
        "key": key,
        "method": method.upper(),
        "path": path,
        "digest": digest,
        "ttl_h": ttl_h,
        "stale_s": STALE_CLAIM_S,
    }
    async with conn.transaction():
        cur = await conn.execute(_CLAIM, record)
        got, claimed = await cur.fetchone() or (False, False)
        if not got:
            raise Conflict("a request with this Idempotency-Key is still in progress", code="idempotency-in-flight")
        if not claimed:
            # An earlier record: forget it if expired (or a claim a dead process left), else replay it.
            cur = await conn.execute(_FORGET, record)
            if cur.rowcount == 0:
                return await _replay(conn, principal, key, digest)
            await conn.execute(_CLAIM, record)
        status, result = await operation()
        payload = jsonable_encoder(result)
        await conn.execute(
            "update api_idempotency set status_code = %s, response = %s, completed_at = now()"
            " where key_id = %s and idempotency_key = %s",
            (status, Jsonb(payload), principal.key_id, key),
        )
    return JSONResponse(payload, status_code=status)


async def post_once(
    request: Request,
    conn: psycopg.AsyncConnection[Any],
    principal: Principal,
    key: str,
    body: BaseModel,
    operation: Operation,
) -> JSONResponse:
    """:func:`run_once` for a POST route: fingerprinted on the request's path and validated body,
    records kept for the app's ``api_idempotency_ttl_h``."""
    settings: ApiSettings = request.app.state.settings
    return await run_once(
        conn,
        principal,
        key,
        method="POST",
        path=request.url.path,
        body=body.model_dump(mode="json"),
        ttl_h=settings.api_idempotency_ttl_h,
        operation=operation,
    )


async def _replay(conn: psycopg.AsyncConnection[Any], principal: Principal, key: str, digest: str) -> JSONResponse:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "select request_sha256, status_code, response from api_idempotency"
            " where key_id = %s and idempotency_key = %s",
            (principal.key_id, key),
        )
        row = await cur.fetchone()
    if row is None:  # released between our insert attempt and now: the caller may retry
        raise Conflict("Idempotency-Key is being released; retry", code="idempotency-in-flight")
    if row["request_sha256"] != digest:
        raise Unprocessable("Idempotency-Key was already used with a different request", code="idempotency-mismatch")
    if row["status_code"] is None:
        raise Conflict("a request with this Idempotency-Key is still in progress", code="idempotency-in-flight")
    return JSONResponse(row["response"], status_code=int(row["status_code"]), headers={REPLAY_HEADER: "true"})
