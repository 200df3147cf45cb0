"""The audit log: append-only and hash-chained (DOMAIN.md §5.5 "write the audit first").

Each row's ``hash`` is ``sha256(prev_hash + canonical_json(record))`` where ``record`` is
``{"at", "actor", "action", "subject", "detail"}`` (``at`` as UTC ISO 8601 with microseconds;
canonical JSON: sorted keys, no spaces, Decimals and datetimes as strings). The first row's
``prev_hash`` is 64 zeros. Appends are serialised by a transaction-level advisory lock so
two control processes never fork the chain; the table refuses UPDATE and DELETE (trigger of
migration 0300). :func:`verify` recomputes the whole chain and lists every broken row.

A command's audit row is written in the same transaction that moves it to ``sent`` and is
committed before anything is published: if the audit cannot be written (lock timeout,
database down) :class:`AuditUnavailable` is raised and nothing leaves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from control.errors import AuditUnavailable

GENESIS = "0" * 64
_LOCK_KEY = 0x4155_4449  # "AUDI"


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return json.dumps(sorted(value))
    raise TypeError(f"not JSON: {type(value).__name__}")


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def normalise_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail as it will read back from jsonb (datetimes/Decimals already strings)."""
    loaded: dict[str, Any] = json.loads(canonical_json(detail))
    return loaded


def record_hash(prev_hash: str, at: datetime, actor: str, action: str, subject: str | None, detail: object) -> str:
    record = {
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "detail": detail,
    }
    return hashlib.sha256((prev_hash + canonical_json(record)).encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    seq: int
    what: str


async def append(
    conn: psycopg.AsyncConnection[Any],
    *,
    actor: str,
    action: str,
    subject: str | None,
    detail: dict[str, Any],
    at: datetime,
    lock_timeout_ms: int = 2000,
) -> int:
    """Append one row inside the caller's transaction; returns its seq. Raises AuditUnavailable."""
    detail_n = normalise_detail(detail)
    at = at.astimezone(UTC)
    try:
        await conn.execute(f"set local lock_timeout = {int(lock_timeout_ms)}")
        await conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cur = await conn.execute("select hash from audit_log order by seq desc limit 1")
        row = await cur.fetchone()
        prev = str(row[0]) if row else GENESIS
        digest = record_hash(prev, at, actor, action, subject, detail_n)
        cur = await conn.execute(
            "insert into audit_log (at, actor, action, subject, detail, prev_hash, hash)"
            " values (%s, %s, %s, %s, %s, %s, %s) returning seq",
            (at, actor, action, subject, json.dumps(detail_n), prev, digest),
        )
        inserted = await cur.fetchone()
    except psycopg.Error as exc:
        raise AuditUnavailable(f"audit record not written: {exc}") from exc
    assert inserted is not None
    return int(inserted[0])


async def verify(conn: psycopg.AsyncConnection[Any], batch: int = 5000) -> list[Problem]:
    """Recompute the chain; every row whose prev_hash or hash does not match is a problem."""
    problems: list[Problem] = []
    prev = GENESIS
    last_seq = 0
    while True:
        cur = await conn.execute(
            "select seq, at, actor, action, subject, detail, prev_hash, hash from audit_log"
            " where seq > %s order by seq limit %s",
            (last_seq, batch),
        )
        rows = await cur.fetchall()
        if not rows:
            return problems
        for seq, at, actor, action, subject, detail, prev_hash, digest in rows:
            if prev_hash != prev:
                problems.append(Problem(seq, "prev_hash does not match the previous row's hash"))
            if record_hash(prev_hash, at, actor, action, subject, detail) != digest:
                problems.append(Problem(seq, "hash does not match the row's content"))
            prev = digest
            last_seq = seq
