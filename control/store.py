"""SQL of the control package (psycopg 3, async). No decisions here: facts in, rows out.

* the guard's facts are read by control/facts.py (re-exported here: ``load_facts``, ``Site``),
* policy versions (seeded from ``control/policies/*.yaml`` when a profile has none),
* commands: insert (idempotent on ``idempotency_key``), transitions through the lifecycle
  table, claiming due work with ``FOR UPDATE SKIP LOCKED`` and a lease,
* plans, notices (the outbox rows prepaid's sender delivers), cases, relay state.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row

from control.errors import CommandNotFound
from control.facts import Site as Site
from control.facts import feeder_recent as feeder_recent
from control.facts import load_facts as load_facts
from control.facts import prepaid_credit_facts as prepaid_credit_facts
from control.facts import site_for_account as site_for_account
from control.facts import site_for_meter as site_for_meter
from control.lifecycle import next_state
from control.policy import Policy, load_profile_document, parse_policy, profile_names

Conn = psycopg.AsyncConnection[Any]

COMMAND_COLUMNS = (
    "id, idempotency_key, meter_id, account_id, action, state, reason, requested_by, approved_by,"
    " created_at, updated_at, not_before, expires_at, attempts, detail, correlation_id, plan_id, manual,"
    " batch_id, batch_size, priority, policy_profile, policy_version_planned, policy_version_dispatched,"
    " claimed_by, claimed_until, sent_at, confirmed_at, deadline_at, relay_read_back, last_error, supersedes"
)


@dataclass(frozen=True)
class Command:
    id: int
    idempotency_key: str
    meter_id: str
    account_id: str | None
    action: str
    state: str
    reason: str | None
    requested_by: str | None
    approved_by: str | None
    created_at: datetime
    updated_at: datetime
    not_before: datetime | None
    expires_at: datetime | None
    attempts: int
    detail: dict[str, Any]
    correlation_id: uuid.UUID
    plan_id: int | None
    manual: bool
    batch_id: str | None
    batch_size: int
    priority: int
    policy_profile: str | None
    policy_version_planned: int | None
    policy_version_dispatched: int | None
    claimed_by: str | None
    claimed_until: datetime | None
    sent_at: datetime | None
    confirmed_at: datetime | None
    deadline_at: datetime | None
    relay_read_back: str | None
    last_error: str | None
    supersedes: int | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in self.__dict__.items()}


# --- policy --------------------------------------------------------------------------------


async def seed_policies(conn: Conn, now: datetime) -> None:
    """Store version 1 of every profile file that has no version yet."""
    from control.policy import effective_policy

    for name in profile_names():
        doc = load_profile_document(name)
        policy = effective_policy(doc)
        await conn.execute(
            "insert into policy_versions (profile, version, document, effective_from, created_by)"
            " select %s, 1, %s, '-infinity', 'seed' where not exists"
            " (select 1 from policy_versions where profile = %s) on conflict (profile, version) do nothing",
            (name, json.dumps({**doc, "effective": policy.model_dump(mode="json")}), name),
        )
    del now


async def policies_in_force(conn: Conn, now: datetime) -> dict[str, Policy]:
    """The newest effective version of every profile (profile files seeded on first use)."""
    cur = await conn.execute("select exists (select 1 from policy_versions)")
    seeded = await cur.fetchone()
    if not (seeded and seeded[0]):
        await seed_policies(conn, now)
    cur = await conn.execute(
        "select distinct on (profile) profile, version, document from policy_versions"
        " where effective_from <= %s order by profile, version desc",
        (now,),
    )
    out: dict[str, Policy] = {}
    for profile, version, document in await cur.fetchall():
        out[profile] = _parsed(json.dumps(document["effective"], sort_keys=True), int(version))
    return out


@lru_cache(maxsize=128)
def _parsed(effective_json: str, version: int) -> Policy:
    """Versions are never edited, so a parsed version can be reused (the hot path parses none)."""
    effective = json.loads(effective_json)
    effective["version"] = version
    return parse_policy(effective)


async def policy_versions(conn: Conn, profile: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "select profile, version, document, effective_from, created_at, created_by from policy_versions"
        " where profile = %s order by version",
        (profile,),
    )
    return list(await cur.fetchall())


async def insert_policy_version(
    conn: Conn, profile: str, document: dict[str, Any], effective: Policy, by: str, effective_from: datetime
) -> int:
    cur = await conn.execute("select coalesce(max(version), 0) + 1 from policy_versions where profile = %s", (profile,))
    row = await cur.fetchone()
    assert row is not None
    version = int(row[0])
    stored = {**document, "effective": effective.model_copy(update={"version": version}).model_dump(mode="json")}
    await conn.execute(
        "insert into policy_versions (profile, version, document, effective_from, created_by)"
        " values (%s, %s, %s, %s, %s)",
        (profile, version, json.dumps(stored), effective_from, by),
    )
    return version


# --- commands ------------------------------------------------------------------------------


def _command(row: tuple[Any, ...]) -> Command:
    return Command(*row)


async def get_command(conn: Conn, command_id: int, *, for_update: bool = False) -> Command:
    cur = await conn.execute(
        f"select {COMMAND_COLUMNS} from commands where id = %s" + (" for update" if for_update else ""),
        (command_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise CommandNotFound(f"no command {command_id}")
    return _command(row)


async def list_commands(
    conn: Conn,
    *,
    meter_id: str | None = None,
    account_id: str | None = None,
    state: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[Command]:
    cur = await conn.execute(
        f"select {COMMAND_COLUMNS} from commands where id > %s"
        " and (%s::text is null or meter_id = %s) and (%s::text is null or account_id = %s)"
        " and (%s::text is null or state = %s) order by id limit %s",
        (after_id, meter_id, meter_id, account_id, account_id, state, state, limit),
    )
    return [_command(r) for r in await cur.fetchall()]


async def insert_command(
    conn: Conn,
    *,
    idempotency_key: str,
    meter_id: str,
    account_id: str | None,
    action: str,
    state: str,
    reason: str | None,
    requested_by: str,
    now: datetime,
    not_before: datetime | None,
    manual: bool = False,
    plan_id: int | None = None,
    batch_id: str | None = None,
    batch_size: int = 1,
    priority: int = 0,
    policy: Policy | None = None,
    deadline_at: datetime | None = None,
    supersedes: int | None = None,
    detail: dict[str, Any] | None = None,
) -> tuple[Command, bool]:
    """Insert a command; (command, created). The same idempotency key returns the first one."""
    cur = await conn.execute(
        "insert into commands (idempotency_key, meter_id, account_id, action, state, reason, requested_by,"
        " created_at, updated_at, not_before, manual, plan_id, batch_id, batch_size, priority, policy_profile,"
        " policy_version_planned, deadline_at, supersedes, detail)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " on conflict (idempotency_key) do nothing returning id",
        (
            idempotency_key,
            meter_id,
            account_id,
            action,
            state,
            reason,
            requested_by,
            now,
            now,
            not_before,
            manual,
            plan_id,
            batch_id,
            batch_size,
            priority,
            policy.profile if policy else None,
            policy.version if policy else None,
            deadline_at,
            supersedes,
            json.dumps(detail or {}),
        ),
    )
    row = await cur.fetchone()
    if row is not None:
        return await get_command(conn, int(row[0])), True
    cur = await conn.execute(f"select {COMMAND_COLUMNS} from commands where idempotency_key = %s", (idempotency_key,))
    existing = await cur.fetchone()
    assert existing is not None
    return _command(existing), False


async def transition(conn: Conn, command: Command, event: str, now: datetime, **fields: Any) -> Command:
    """Apply ``event`` (raises TransitionError if the table forbids it) and set ``fields``.

    The update is conditional on the state the caller saw, so a concurrent worker that moved
    the command first makes this one raise instead of acting twice.
    """
    new_state = next_state(command.state, event)
    if "detail" in fields:
        fields["detail"] = json.dumps(fields["detail"])
    sets = ", ".join(f"{k} = %s" for k in fields)
    cur = await conn.execute(
        f"update commands set state = %s, updated_at = %s{', ' + sets if sets else ''}"
        f" where id = %s and state = %s returning {COMMAND_COLUMNS}",
        (new_state, now, *fields.values(), command.id, command.state),
    )
    row = await cur.fetchone()
    if row is None:
        from control.errors import TransitionError

        raise TransitionError(f"command {command.id} left state {command.state!r} under us")
    return _command(row)


async def claim_due(conn: Conn, worker: str, now: datetime, lease: timedelta, limit: int) -> list[Command]:
    """Lease due commands to ``worker``: scheduled and due, or sent/unleased (a crashed worker's)."""
    cur = await conn.execute(
        f"update commands set claimed_by = %s, claimed_until = %s where id in ("
        " select id from commands where"
        " ((state = 'scheduled' and (not_before is null or not_before <= %s))"
        "  or (state = 'sent' and (claimed_until is null or claimed_until < %s))"
        "  or (state = 'awaiting_approval' and deadline_at is not null and deadline_at < %s))"
        " and (claimed_until is null or claimed_until < %s)"
        " order by priority desc, not_before nulls first, id limit %s for update skip locked)"
        f" returning {COMMAND_COLUMNS}",
        (worker, now + lease, now, now, now, now, limit),
    )
    return [_command(r) for r in await cur.fetchall()]


async def release(conn: Conn, command_id: int, worker: str) -> None:
    await conn.execute(
        "update commands set claimed_by = null, claimed_until = null where id = %s and claimed_by = %s",
        (command_id, worker),
    )


async def open_command_for(conn: Conn, meter_id: str, actions: tuple[str, ...]) -> Command | None:
    cur = await conn.execute(
        f"select {COMMAND_COLUMNS} from commands where meter_id = %s and action = any(%s)"
        " and state in ('requested', 'awaiting_approval', 'scheduled', 'sent', 'unknown') order by id desc limit 1",
        (meter_id, list(actions)),
    )
    row = await cur.fetchone()
    return _command(row) if row else None


# --- plans, notices, cases, relay ----------------------------------------------------------


async def open_plan(conn: Conn, account_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("select * from disconnect_plans where account_id = %s and state = 'open'", (account_id,))
    return await cur.fetchone()


async def insert_plan(
    conn: Conn, *, account_id: str, meter_id: str, event_id: int | None, execute_at: datetime | None, policy: Policy
) -> int | None:
    cur = await conn.execute(
        "insert into disconnect_plans (account_id, meter_id, event_id, execute_at, policy_profile, policy_version)"
        " values (%s, %s, %s, %s, %s, %s) on conflict do nothing returning id",
        (account_id, meter_id, event_id, execute_at, policy.profile, policy.version),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def close_plan(conn: Conn, plan_id: int, state: str, reason: str, now: datetime) -> None:
    await conn.execute(
        "update disconnect_plans set state = %s, close_reason = %s, closed_at = %s where id = %s and state = 'open'",
        (state, reason, now, plan_id),
    )


async def insert_notice(
    conn: Conn,
    *,
    account_id: str,
    kind: str,
    dedupe_key: str,
    body: dict[str, Any],
    now: datetime,
    next_attempt_at: datetime | None = None,
) -> int:
    cur = await conn.execute(
        "insert into notices (account_id, kind, dedupe_key, body, created_at, next_attempt_at)"
        " values (%s, %s, %s, %s, %s, %s) on conflict (dedupe_key) do update set dedupe_key = excluded.dedupe_key"
        " returning id",
        (account_id, kind, dedupe_key, json.dumps(body, default=str), now, next_attempt_at or now),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def open_case(
    conn: Conn,
    *,
    kind: str,
    dedupe_key: str,
    now: datetime,
    account_id: str | None = None,
    meter_id: str | None = None,
    command_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    cur = await conn.execute(
        "insert into cases (kind, account_id, meter_id, command_id, opened_at, detail, dedupe_key)"
        " values (%s, %s, %s, %s, %s, %s, %s) on conflict (dedupe_key) do update set kind = excluded.kind"
        " returning id",
        (kind, account_id, meter_id, command_id, now, json.dumps(detail or {}, default=str), dedupe_key),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def set_relay_state(conn: Conn, meter_id: str, state: str, at: datetime) -> None:
    await conn.execute(
        "update meters set relay_state = %s, relay_state_at = %s where id = %s and relay_state is distinct from %s",
        (state, at, meter_id, state),
    )


async def operator_roles(conn: Conn, name: str) -> frozenset[str]:
    cur = await conn.execute("select roles from control_operators where name = %s", (name,))
    row = await cur.fetchone()
    return frozenset(row[0]) if row else frozenset()
