"""SQL of the control package (psycopg 3, async). No decisions here: facts in, rows out.

* :func:`load_facts` gathers everything :func:`control.guard.decide` reads for one account;
  a fact that cannot be established is left ``None`` (unknown keeps power on).
* policy versions (seeded from ``control/policies/*.yaml`` when a profile has none),
* commands: insert (idempotent on ``idempotency_key``), transitions through the lifecycle
  table, claiming due work with ``FOR UPDATE SKIP LOCKED`` and a lease,
* plans, notices (the outbox rows prepaid's sender delivers), cases, relay state.
"""

from __future__ import annotations

import importlib
import inspect
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row

from control.errors import CommandNotFound
from control.ladder import ProtectionRow, effective_protections
from control.lifecycle import next_state
from control.models import SUPPLY_ON_ACTIONS, Facts, Notice, Request, Weather
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


@dataclass(frozen=True)
class Site:
    """An account with its service point and meter."""

    account_id: str
    meter_id: str
    service_point_id: str
    feeder: str
    area: str
    timezone: str
    country: str
    subdivision: str | None
    account_class: str
    balance_minor: int
    protocol: str
    relay_state: str
    relay_state_at: datetime | None
    supports_load_limit: bool


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


# --- facts ---------------------------------------------------------------------------------


async def site_for_account(conn: Conn, account_id: str) -> Site | None:
    cur = await conn.execute(
        "select a.id, m.id, sp.id, sp.feeder, sp.area, sp.timezone, sp.country, sp.subdivision,"
        " sp.account_class, a.balance_minor, m.protocol, m.relay_state, m.relay_state_at, m.supports_load_limit"
        " from accounts a join service_points sp on sp.id = a.service_point_id"
        " join meters m on m.service_point_id = sp.id where a.id = %s order by m.id limit 1",
        (account_id,),
    )
    row = await cur.fetchone()
    return Site(*row) if row else None


async def site_for_meter(conn: Conn, meter_id: str) -> Site | None:
    cur = await conn.execute(
        "select a.id from meters m join accounts a on a.service_point_id = m.service_point_id"
        " and a.status = 'open' where m.id = %s",
        (meter_id,),
    )
    row = await cur.fetchone()
    return await site_for_account(conn, str(row[0])) if row else None


def _notice(row: tuple[Any, ...] | None) -> Notice | None:
    if row is None:
        return None
    status, sent_at, delivered_at = row
    if delivered_at is not None:
        return Notice("delivered", sent_at=sent_at, delivered_at=delivered_at)
    if status in ("failed", "dead", "undeliverable"):
        return Notice("failed", sent_at=sent_at)
    if sent_at is not None:
        return Notice("sent", sent_at=sent_at)
    return Notice("pending")


@lru_cache(maxsize=1)
def prepaid_credit_facts() -> Any:
    """prepaid.operations.credit_facts, imported once (the service warms this up at start:
    the import costs about a second and must not land on the first top-up's path)."""
    try:
        prepaid_ops: Any = importlib.import_module("prepaid.operations")
    except ImportError:
        return None
    return getattr(prepaid_ops, "credit_facts", None)


async def _credit(conn: Conn, site: Site, now: datetime) -> tuple[int | None, bool | None, bool | None, bool | None]:
    """(available credit, exhausted, installment plan in good standing, only previous occupant's debt).

    prepaid's ``credit_facts`` is used when it exists (the contract); otherwise the facts are
    derived from account_events: credit is exhausted when the latest of credit_exhausted /
    credit_restored is credit_exhausted. A previous occupant's debt stays on the closed
    account, so the open account's own balance carries none of it.
    """
    credit_facts = prepaid_credit_facts()
    if credit_facts is not None:
        try:
            cf = credit_facts(conn, site.account_id, now)
            if inspect.isawaitable(cf):
                cf = await cf
        except psycopg.Error:
            raise
        except Exception:  # prepaid could not establish the facts: unknown keeps power on
            return None, None, None, None
        state = getattr(cf, "credit_state", None)
        plan_state = getattr(cf, "installment_plan_state", None)
        return (
            getattr(cf, "available_minor", None),
            state == "exhausted" if state is not None else getattr(cf, "credit_exhausted", None),
            plan_state == "good_standing",
            getattr(cf, "only_previous_occupant_debt", None),
        )
    cur = await conn.execute(
        "select kind, detail from account_events where account_id = %s"
        " and kind in ('credit_exhausted', 'credit_restored') order by id desc limit 1",
        (site.account_id,),
    )
    row = await cur.fetchone()
    exhausted = row is not None and row[0] == "credit_exhausted"
    cur = await conn.execute("select to_regclass('installment_plans') is not null")
    has_plans = await cur.fetchone()
    plan: bool | None = False
    if has_plans and has_plans[0]:
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    "select exists (select 1 from installment_plans where account_id = %s and state = 'good_standing')",
                    (site.account_id,),
                )
                got = await cur.fetchone()
                plan = bool(got[0]) if got else None
        except psycopg.Error:
            plan = None  # a table we cannot read: unknown
    return site.balance_minor, exhausted, plan, False


async def load_facts(
    conn: Conn, site: Site, now: datetime, policy: Policy | None, request: Request, action: str = "disconnect"
) -> Facts:
    """Facts for ``action``. Supply-on actions read only what their guard reads (credit,
    protections, disputes, the feeder's reconnect rate): the top-up -> reconnect path is hot."""
    available, exhausted, plan, prev_only = await _credit(conn, site, now)
    if action in SUPPLY_ON_ACTIONS:
        return await _supply_on_facts(conn, site, now, policy, request, available, exhausted)
    protections, dispute_open = await _protections_and_dispute(conn, site.account_id, now)
    notice = reminder = None
    cur = await conn.execute(
        "select notice_id, reminder_id from disconnect_plans where account_id = %s and state = 'open'",
        (site.account_id,),
    )
    plan_row = await cur.fetchone()
    if plan_row:
        for idx, notice_id in enumerate(plan_row):
            if notice_id is None:
                continue
            cur = await conn.execute("select status, sent_at, delivered_at from notices where id = %s", (notice_id,))
            value = _notice(await cur.fetchone())
            if idx == 0:
                notice = value
            else:
                reminder = value
    weather = None
    horizon_h = policy.weather.horizon_h if policy else 24
    cur = await conn.execute(
        "select issued_at, min_c, max_c from weather_forecasts where area = %s and issued_at <= %s"
        " and horizon_start <= %s and horizon_end >= %s order by issued_at desc limit 1",
        (site.area, now, now, now + timedelta(hours=horizon_h)),
    )
    w = await cur.fetchone()
    if w:
        weather = Weather(w[0], Decimal(w[1]), Decimal(w[2]))
    cur = await conn.execute("select bool_or(not healthy), max(changed_at) from payment_channel_health")
    ch = await cur.fetchone()
    degraded: bool | None = None
    healthy_since: datetime | None = None
    if ch and ch[0] is not None:
        degraded = bool(ch[0])
        healthy_since = None if degraded else ch[1]
    cur = await conn.execute(
        "select greatest((select max(ts) from readings where meter_id = %s),"
        " (select last_seen_at from meters where id = %s))",
        (site.meter_id, site.meter_id),
    )
    lr = await cur.fetchone()
    recent_off, recent_on = await feeder_recent(conn, site.feeder, now, policy)
    cur = await conn.execute("select is_on from control_switches where name = 'kill_switch'")
    ks = await cur.fetchone()
    return Facts(
        account_id=site.account_id,
        meter_id=site.meter_id,
        feeder=site.feeder,
        timezone=site.timezone,
        account_class=site.account_class,
        available_credit_minor=available,
        credit_exhausted=exhausted,
        protections=protections,
        dispute_open=dispute_open,
        previous_occupant_debt_only=prev_only,
        installment_plan_good_standing=plan,
        notice=notice,
        final_reminder=reminder,
        weather=weather,
        channels_degraded=degraded,
        channels_healthy_since=healthy_since,
        last_reading_at=lr[0] if lr else None,
        relay_state=site.relay_state,
        supports_load_limit=site.supports_load_limit,
        load_limited_since=site.relay_state_at if site.relay_state == "load_limited" else None,
        feeder_recent_disconnects=recent_off,
        feeder_recent_reconnects=recent_on,
        kill_switch=bool(ks[0]) if ks else None,
        request=request,
    )


async def _protections_and_dispute(conn: Conn, account_id: str, now: datetime) -> tuple[frozenset[str], bool | None]:
    cur = await conn.execute(
        "select kind, valid_until, revoked_at, reviewed_by from protections where account_id = %s and valid_from <= %s",
        (account_id, now),
    )
    protections = effective_protections([ProtectionRow(*r) for r in await cur.fetchall()], now)
    cur = await conn.execute(
        "select exists (select 1 from disputes where account_id = %s and closed_at is null)", (account_id,)
    )
    dispute = await cur.fetchone()
    return protections, bool(dispute[0]) if dispute else None


async def _supply_on_facts(
    conn: Conn,
    site: Site,
    now: datetime,
    policy: Policy | None,
    request: Request,
    available: int | None,
    exhausted: bool | None,
) -> Facts:
    protections, dispute = await _protections_and_dispute(conn, site.account_id, now)
    _, recent_on = await feeder_recent(conn, site.feeder, now, policy)
    return Facts(
        account_id=site.account_id,
        meter_id=site.meter_id,
        feeder=site.feeder,
        timezone=site.timezone,
        account_class=site.account_class,
        available_credit_minor=available,
        credit_exhausted=exhausted,
        protections=protections,
        dispute_open=dispute,
        previous_occupant_debt_only=None,
        installment_plan_good_standing=None,
        notice=None,
        final_reminder=None,
        weather=None,
        channels_degraded=None,
        channels_healthy_since=None,
        last_reading_at=None,
        relay_state=site.relay_state,
        supports_load_limit=site.supports_load_limit,
        load_limited_since=None,
        feeder_recent_reconnects=recent_on,
        kill_switch=None,
        request=request,
    )


async def feeder_recent(
    conn: Conn, feeder: str, now: datetime, policy: Policy | None
) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    off_period = timedelta(minutes=policy.grid.disconnect_period_min if policy else 15)
    on_period = timedelta(minutes=policy.grid.reconnect_period_min if policy else 5)
    cur = await conn.execute(
        "select c.action, c.sent_at from commands c join meters m on m.id = c.meter_id"
        " join service_points sp on sp.id = m.service_point_id"
        " where sp.feeder = %s and c.sent_at > %s and c.sent_at <= %s"
        " and c.action in ('disconnect', 'load_limit', 'arm', 'reconnect')",
        (feeder, now - max(off_period, on_period), now),
    )
    off: list[datetime] = []
    on: list[datetime] = []
    for action, sent_at in await cur.fetchall():
        if action in ("disconnect", "load_limit") and sent_at > now - off_period:
            off.append(sent_at)
        elif action in ("arm", "reconnect") and sent_at > now - on_period:
            on.append(sent_at)
    return tuple(off), tuple(on)


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
