"""Operations the api (and the CLI) call. Async, take a psycopg AsyncConnection, run their own
transaction, raise control.errors on misuse. Signatures are documented in docs/control.md.

Nothing here re-implements a rule: ``explain`` runs the same :func:`control.guard.decide` the
engine runs, on the same facts (:func:`control.store.load_facts`); commands requested here
are carried out by the engine's dispatcher, which re-checks every guard before sending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from control import audit, store
from control.errors import ApprovalError, CommandNotFound, ControlError, PolicyError
from control.guard import decide
from control.lifecycle import next_state
from control.models import SUPPLY_OFF_ACTIONS, Decision, Facts, Request
from control.policy import Policy, effective_policy, profile_for

Conn = psycopg.AsyncConnection[Any]
ACTIONS = ("disconnect", "arm", "reconnect", "load_limit", "clear_load_limit", "read_now", "status")


@dataclass(frozen=True)
class Explanation:
    account_id: str
    action: str
    decision: Decision
    facts: Facts | None
    policy_profile: str | None
    policy_version: int | None


async def _policy_for(conn: Conn, site: store.Site, now: datetime) -> Policy | None:
    return profile_for(await store.policies_in_force(conn, now), site.country, site.account_class)


async def explain(conn: Conn, account_id: str, now: datetime, action: str = "disconnect") -> Explanation:
    """Would ``action`` go now for this account, and if not, why and until when."""
    async with conn.transaction():
        site = await store.site_for_account(conn, account_id)
        if site is None:
            raise ControlError(f"account {account_id} has no meter")
        policy = await _policy_for(conn, site, now)
        facts = await store.load_facts(conn, site, now, policy, Request(), action)
    return Explanation(
        account_id,
        action,
        decide(facts, policy, now, action),
        facts,
        policy.profile if policy else None,
        policy.version if policy else None,
    )


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")


async def request_command(
    conn: Conn,
    *,
    meter_id: str,
    action: str,
    requested_by: str,
    reason: str,
    idempotency_key: str,
    now: datetime,
    manual: bool = True,
    authority_copy: bool = False,
    erroneous: bool = False,
    not_before: datetime | None = None,
) -> store.Command:
    """Request one command. A manual disconnect waits for approval; the rest is scheduled.

    Idempotent on ``idempotency_key`` (the same key returns the first command).
    """
    _check_action(action)
    async with conn.transaction():
        site = await store.site_for_meter(conn, meter_id)
        policy = await _policy_for(conn, site, now) if site else None
        needs = action in SUPPLY_OFF_ACTIONS and manual and (policy is None or policy.approvals.manual_disconnect)
        state = next_state("requested", "needs_approval" if needs else "schedule")
        command, created = await store.insert_command(
            conn,
            idempotency_key=idempotency_key,
            meter_id=meter_id,
            account_id=site.account_id if site else None,
            action=action,
            state=state,
            reason=reason,
            requested_by=requested_by,
            now=now,
            not_before=not_before or now,
            manual=manual,
            priority=5 if erroneous else 0,
            policy=policy,
            detail={"authority_copy": authority_copy, "erroneous": erroneous},
        )
        if created:
            await audit.append(
                conn,
                actor=requested_by,
                action="command_requested",
                subject=meter_id,
                detail={"command_id": command.id, "action": action, "reason": reason, "state": state},
                at=now,
            )
            await conn.execute("select pg_notify('control_commands', %s)", (str(command.id),))
    return command


async def bulk_request(
    conn: Conn,
    *,
    meter_ids: list[str],
    action: str,
    requested_by: str,
    reason: str,
    idempotency_key: str,
    now: datetime,
) -> list[store.Command]:
    """One command per meter, one batch. Above the approval threshold (or for disconnects) the
    whole batch waits for an approver; the dispatcher paces it by the per-feeder rates."""
    _check_action(action)
    if not meter_ids:
        raise ControlError("a batch needs at least one meter")
    unique = list(dict.fromkeys(meter_ids))
    out: list[store.Command] = []
    async with conn.transaction():
        policies = await store.policies_in_force(conn, now)
        threshold = min((p.approvals.batch_threshold for p in policies.values()), default=100)
        needs = len(unique) > threshold or action in SUPPLY_OFF_ACTIONS
        state = next_state("requested", "needs_approval" if needs else "schedule")
        for meter_id in unique:
            site = await store.site_for_meter(conn, meter_id)
            policy = profile_for(policies, site.country, site.account_class) if site else None
            command, _ = await store.insert_command(
                conn,
                idempotency_key=f"{idempotency_key}:{meter_id}",
                meter_id=meter_id,
                account_id=site.account_id if site else None,
                action=action,
                state=state,
                reason=reason,
                requested_by=requested_by,
                now=now,
                not_before=now,
                manual=True,
                batch_id=idempotency_key,
                batch_size=len(unique),
                policy=policy,
            )
            out.append(command)
        await audit.append(
            conn,
            actor=requested_by,
            action="batch_requested",
            subject=idempotency_key,
            detail={"action": action, "meters": len(unique), "state": state, "reason": reason},
            at=now,
        )
        await conn.execute("select pg_notify('control_commands', %s)", (idempotency_key,))
    return out


async def approve_command(conn: Conn, command_id: int, approver: str, now: datetime) -> store.Command:
    """A second person with the approver role approves; the requester never can."""
    async with conn.transaction():
        command = await store.get_command(conn, command_id, for_update=True)
        if command.state != "awaiting_approval":
            raise ApprovalError(f"command {command_id} is {command.state}, not awaiting approval")
        if approver == command.requested_by:
            raise ApprovalError("the approver cannot be the requester")
        site = await store.site_for_meter(conn, command.meter_id)
        policy = await _policy_for(conn, site, now) if site else None
        role = policy.approvals.approver_role if policy else "approver"
        if role not in await store.operator_roles(conn, approver):
            raise ApprovalError(f"{approver} does not have the {role} role")
        approved = await store.transition(conn, command, "approve", now, approved_by=approver)
        await audit.append(
            conn,
            actor=approver,
            action="command_approved",
            subject=command.meter_id,
            detail={"command_id": command_id, "requested_by": command.requested_by},
            at=now,
        )
        await conn.execute("select pg_notify('control_commands', %s)", (str(command_id),))
    return approved


async def approve_batch(conn: Conn, batch_id: str, approver: str, now: datetime) -> int:
    cur = await conn.execute(
        "select id from commands where batch_id = %s and state = 'awaiting_approval' order by id", (batch_id,)
    )
    ids = [int(r[0]) for r in await cur.fetchall()]
    for command_id in ids:
        await approve_command(conn, command_id, approver, now)
    return len(ids)


async def cancel_command(conn: Conn, command_id: int, by: str, reason: str, now: datetime) -> store.Command:
    async with conn.transaction():
        command = await store.get_command(conn, command_id, for_update=True)
        cancelled = await store.transition(conn, command, "cancel", now, last_error=f"cancelled by {by}: {reason}")
        await audit.append(
            conn,
            actor=by,
            action="command_cancelled",
            subject=command.meter_id,
            detail={"command_id": command_id, "reason": reason},
            at=now,
        )
    return cancelled


async def get_command(conn: Conn, command_id: int) -> store.Command:
    return await store.get_command(conn, command_id)


async def list_commands(
    conn: Conn,
    *,
    meter_id: str | None = None,
    account_id: str | None = None,
    state: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[store.Command]:
    return await store.list_commands(
        conn, meter_id=meter_id, account_id=account_id, state=state, after_id=after_id, limit=min(limit, 1000)
    )


async def get_policy(conn: Conn, profile: str, now: datetime) -> Policy:
    async with conn.transaction():
        await store.seed_policies(conn, now)
        policies = await store.policies_in_force(conn, now)
    if profile not in policies:
        raise CommandNotFound(f"no policy profile {profile!r}")
    return policies[profile]


async def list_policy_versions(conn: Conn, profile: str) -> list[dict[str, Any]]:
    return await store.policy_versions(conn, profile)


async def add_policy_version(
    conn: Conn,
    *,
    profile: str,
    document: dict[str, Any],
    created_by: str,
    now: datetime,
    effective_from: datetime | None = None,
) -> int:
    """Validate (company layer only stricter than the floor) and store a new version."""
    if document.get("profile", profile) != profile:
        raise PolicyError("document profile does not match")
    policy = effective_policy(document)
    if policy.profile != profile:
        raise PolicyError("floor profile does not match")
    async with conn.transaction():
        version = await store.insert_policy_version(conn, profile, document, policy, created_by, effective_from or now)
        await audit.append(
            conn,
            actor=created_by,
            action="policy_version_added",
            subject=profile,
            detail={"version": version, "effective_from": effective_from or now},
            at=now,
        )
    return version


async def verify_audit(conn: Conn) -> list[audit.Problem]:
    return await audit.verify(conn)


async def set_weather(
    conn: Conn,
    *,
    area: str,
    issued_at: datetime,
    horizon_start: datetime,
    horizon_end: datetime,
    min_c: Decimal,
    max_c: Decimal,
    source: str = "manual",
) -> int:
    if horizon_end <= horizon_start or min_c > max_c:
        raise ControlError("forecast horizon or range is inverted")
    async with conn.transaction():
        cur = await conn.execute(
            "insert into weather_forecasts (area, issued_at, horizon_start, horizon_end, min_c, max_c, source)"
            " values (%s, %s, %s, %s, %s, %s, %s) returning id",
            (area, issued_at, horizon_start, horizon_end, min_c, max_c, source),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def set_channel_health(conn: Conn, *, channel: str, healthy: bool, at: datetime, detail: str = "") -> None:
    """Record a channel's state; ``changed_at`` moves only when the state changes."""
    async with conn.transaction():
        await conn.execute(
            "insert into payment_channel_health (channel, healthy, changed_at, detail) values (%s, %s, %s, %s)"
            " on conflict (channel) do update set healthy = excluded.healthy, detail = excluded.detail,"
            " changed_at = case when payment_channel_health.healthy = excluded.healthy"
            " then payment_channel_health.changed_at else excluded.changed_at end",
            (channel, healthy, at, detail),
        )


async def set_kill_switch(conn: Conn, *, on: bool, by: str, reason: str, now: datetime) -> None:
    async with conn.transaction():
        await conn.execute(
            "update control_switches set is_on = %s, set_by = %s, set_at = %s, reason = %s where name = 'kill_switch'",
            (on, by, now, reason),
        )
        await audit.append(
            conn, actor=by, action="kill_switch", subject=None, detail={"on": on, "reason": reason}, at=now
        )


async def set_operator(conn: Conn, name: str, roles: list[str]) -> None:
    async with conn.transaction():
        await conn.execute(
            "insert into control_operators (name, roles) values (%s, %s)"
            " on conflict (name) do update set roles = excluded.roles",
            (name, roles),
        )


async def _event(conn: Conn, account_id: str, kind: str, now: datetime, detail: dict[str, Any], key: str) -> None:
    cur = await conn.execute(
        "insert into account_events (account_id, kind, at, detail, dedupe_key) values (%s, %s, %s, %s, %s)"
        " on conflict (dedupe_key) do nothing returning id",
        (account_id, kind, now, json.dumps(detail, default=str), key),
    )
    row = await cur.fetchone()
    if row:
        await conn.execute("select pg_notify('account_events', %s)", (str(row[0]),))


async def add_protection(
    conn: Conn,
    *,
    account_id: str,
    kind: str,
    by: str,
    now: datetime,
    valid_until: datetime | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Add a protection; a ``protection_added`` event makes control reconnect with priority."""
    async with conn.transaction():
        cur = await conn.execute(
            "insert into protections (account_id, kind, valid_from, valid_until, detail) values (%s, %s, %s, %s, %s)"
            " returning id",
            (account_id, kind, now, valid_until, json.dumps({**(detail or {}), "added_by": by})),
        )
        row = await cur.fetchone()
        assert row is not None
        await _event(conn, account_id, "protection_added", now, {"protection_id": row[0]}, f"protection:{row[0]}")
        await audit.append(conn, actor=by, action="protection_added", subject=account_id, detail={"kind": kind}, at=now)
    return int(row[0])


async def review_protection(conn: Conn, protection_id: int, *, reviewer: str, keep: bool, now: datetime) -> None:
    """A person reviews a lapsed protection: keep it (renewed) or let it end."""
    async with conn.transaction():
        if keep:
            await conn.execute(
                "update protections set valid_until = null, reviewed_by = %s where id = %s", (reviewer, protection_id)
            )
        else:
            await conn.execute(
                "update protections set reviewed_by = %s, revoked_at = %s where id = %s",
                (reviewer, now, protection_id),
            )
        await audit.append(
            conn,
            actor=reviewer,
            action="protection_reviewed",
            subject=str(protection_id),
            detail={"keep": keep},
            at=now,
        )


async def open_dispute(
    conn: Conn, *, account_id: str, amount_minor: int, by: str, now: datetime, detail: dict[str, Any] | None = None
) -> int:
    async with conn.transaction():
        cur = await conn.execute(
            "insert into disputes (account_id, amount_minor, opened_at, detail) values (%s, %s, %s, %s) returning id",
            (account_id, amount_minor, now, json.dumps({**(detail or {}), "opened_by": by})),
        )
        row = await cur.fetchone()
        assert row is not None
        await _event(conn, account_id, "dispute_opened", now, {"dispute_id": row[0]}, f"dispute:{row[0]}")
    return int(row[0])


async def list_cases(conn: Conn, *, status: str = "open", limit: int = 100) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "select id, kind, account_id, meter_id, command_id, status, opened_at, detail from cases"
        " where status = %s order by id limit %s",
        (status, limit),
    )
    cols = ("id", "kind", "account_id", "meter_id", "command_id", "status", "opened_at", "detail")
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def close_case(conn: Conn, case_id: int, *, by: str, now: datetime) -> None:
    async with conn.transaction():
        await conn.execute(
            "update cases set status = 'closed', closed_at = %s, closed_by = %s where id = %s", (now, by, case_id)
        )
