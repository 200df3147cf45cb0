"""SQL of the ``api_keys`` table (migration 0400): create, revoke, list, look up.

Sync functions serve the ``headend apikey`` CLI; :func:`lookup` serves requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.auth import Principal, Role, hash_token, new_token, principal_from_row


@dataclass(frozen=True)
class CreatedKey:
    key_id: int
    name: str
    role: Role
    token: str  # shown once, never stored


def create_key(
    conn: psycopg.Connection[Any], *, name: str, role: Role, account_ids: list[str] | None = None
) -> CreatedKey:
    """Create a key; customers must name at least one account, other roles none."""
    accounts = sorted(set(account_ids or []))
    if role is Role.CUSTOMER and not accounts:
        raise ValueError("a customer key needs at least one --account")
    if role is not Role.CUSTOMER and accounts:
        raise ValueError("only customer keys are limited to accounts")
    if not name.strip():
        raise ValueError("a key needs a name")
    if accounts:
        found = {r[0] for r in conn.execute("select id from accounts where id = any(%s)", (accounts,))}
        missing = [a for a in accounts if a not in found]
        if missing:
            raise ValueError(f"unknown account(s): {', '.join(missing)}")
    token = new_token()
    row = conn.execute(
        "insert into api_keys (name, role, account_ids, token_sha256) values (%s, %s, %s, %s) returning id",
        (name, role.value, accounts, hash_token(token)),
    ).fetchone()
    assert row is not None
    return CreatedKey(int(row[0]), name, role, token)


def revoke_key(conn: psycopg.Connection[Any], *, key_id: int | None = None, name: str | None = None) -> int:
    """Revoke by id or by name (all live keys of that name); returns how many were revoked."""
    if (key_id is None) == (name is None):
        raise ValueError("revoke by exactly one of id or name")
    cur = conn.execute(
        "update api_keys set revoked_at = now() where revoked_at is null and (id = %s or name = %s)",
        (key_id, name),
    )
    return cur.rowcount


def list_keys(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select id, name, role, account_ids, created_at, revoked_at from api_keys order by id")
        return list(cur.fetchall())


async def lookup(conn: psycopg.AsyncConnection[Any], token_sha256: str) -> Principal | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "select id, name, role, account_ids from api_keys where token_sha256 = %s and revoked_at is null",
            (token_sha256,),
        )
        row = await cur.fetchone()
    return principal_from_row(row) if row else None


def describe(row: dict[str, Any]) -> str:
    revoked: datetime | None = row["revoked_at"]
    accounts = ",".join(row["account_ids"]) or "-"
    state = f"revoked {revoked.isoformat()}" if revoked else "active"
    return f"{row['id']}\t{row['name']}\t{row['role']}\t{accounts}\t{state}"
