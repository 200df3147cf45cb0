"""Facts for the guard, read from the database (psycopg 3, async): what :func:`load_facts`
cannot establish is left ``None`` (unknown keeps power on).

Sources: the account's service point and meter; prepaid's ``credit_facts`` (credit state,
available credit, installment plan, previous occupant's debt); protections (a lapsed one
counts until reviewed); open disputes; the plan's pending-disconnection notice and final
reminder; the area's weather forecast covering the policy horizon; payment-channel health;
reading freshness; the feeder's recent operations; the kill switch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg

from control.ladder import ProtectionRow, effective_protections
from control.models import SUPPLY_ON_ACTIONS, Facts, Notice, Request, Weather
from control.policy import Policy

Conn = psycopg.AsyncConnection[Any]


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
