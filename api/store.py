"""SQL of the API's plain resources: service points, meters, readings, events, accounts
(read side), tariffs (read side), commands (read side), notices and quarantine.

Money and guard logic are not here: they are prepaid's and control's operation
functions. Every list is keyset-paginated (``after`` = last id of the previous page).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from api.errors import Conflict, NotFound, Unprocessable

Row = dict[str, Any]

SP_COLUMNS = "id, feeder, area, timezone, country, subdivision, account_class, created_at"
METER_COLUMNS = (
    "id, service_point_id, protocol, model, mqtt_topic, modbus_host, modbus_port, modbus_unit,"
    " poll_interval_s, supports_load_limit, relay_state, relay_state_at, comms_state, last_seen_at,"
    " billing_hold, created_at"
)
ACCOUNT_COLUMNS = (
    "id, service_point_id, customer_name, currency, tariff_id, balance_minor, status, opened_at, closed_at"
)
COMMAND_COLUMNS = (
    "id, idempotency_key, meter_id, account_id, action, state, reason, requested_by, approved_by,"
    " created_at, updated_at, not_before, expires_at, attempts, detail, manual, batch_id, batch_size, priority,"
    " policy_profile, policy_version_planned, policy_version_dispatched, sent_at, confirmed_at, deadline_at,"
    " relay_read_back"
)
NOTICE_COLUMNS = "id, account_id, kind, body, created_at, channel, status, attempts, sent_at, delivered_at, last_error"
QUARANTINE_COLUMNS = (
    "id, received_at, source, topic, meter_id, reason, replayed_at, replay_result, octet_length(payload) as size"
)


async def _all(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return list(await cur.fetchall())


async def _one(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def _found(conn: psycopg.AsyncConnection[Any], what: str, query: Any, params: Any) -> Row:
    """The one row of ``query``, or NotFound("<what> not found")."""
    row = await _one(conn, query, params)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


async def _check_service_point(conn: psycopg.AsyncConnection[Any], sp_id: str | None) -> None:
    """A meter's service point must exist (422 unknown-reference); None is no reference."""
    if sp_id is None:
        return
    if await _one(conn, "select 1 as x from service_points where id = %s", (sp_id,)) is None:
        raise Unprocessable(
            f"service point {sp_id} does not exist",
            code="unknown-reference",
            errors=[{"field": "body.service_point_id", "message": "no such service point"}],
        )


def _filters(conditions: dict[str, Any]) -> tuple[sql.Composable, list[Any]]:
    """``where a = %s and b = %s`` for the conditions whose value is not None."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in conditions.items():
        if value is None:
            continue
        col, _, op = column.partition(" ")
        ident = sql.SQL(".").join(sql.Identifier(p) for p in col.split("."))
        parts.append(sql.SQL("{} {} %s").format(ident, sql.SQL(op or "=")))
        params.append(value)
    if not parts:
        return sql.SQL(""), params
    return sql.SQL(" where ") + sql.SQL(" and ").join(parts), params


# --- service points ----------------------------------------------------------------------


async def insert_service_point(conn: psycopg.AsyncConnection[Any], sp: Row) -> Row:
    row = await _one(
        conn,
        "insert into service_points (id, feeder, area, timezone, country, subdivision, account_class)"
        " values (%(id)s, %(feeder)s, %(area)s, %(timezone)s, %(country)s, %(subdivision)s, %(account_class)s)"
        f" on conflict (id) do nothing returning {SP_COLUMNS}",
        sp,
    )
    if row is None:
        raise Conflict(f"service point {sp['id']} already exists")
    return row


async def list_service_points(
    conn: psycopg.AsyncConnection[Any], *, feeder: str | None, area: str | None, after: str | None, limit: int
) -> list[Row]:
    where, params = _filters({"feeder": feeder, "area": area, "id >": after})
    query = sql.SQL("select " + SP_COLUMNS + " from service_points{} order by id limit %s").format(where)
    return await _all(conn, query, [*params, limit])


async def get_service_point(conn: psycopg.AsyncConnection[Any], sp_id: str) -> Row:
    return await _found(
        conn, f"service point {sp_id}", f"select {SP_COLUMNS} from service_points where id = %s", (sp_id,)
    )


# --- meters ------------------------------------------------------------------------------


async def insert_meter(conn: psycopg.AsyncConnection[Any], meter: Row) -> Row:
    await _check_service_point(conn, meter.get("service_point_id"))
    cols = list(meter)
    query = sql.SQL(
        "insert into meters ({}) values ({}) on conflict (id) do nothing returning " + METER_COLUMNS
    ).format(sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder(c) for c in cols))
    row = await _one(conn, query, meter)
    if row is None:
        raise Conflict(f"meter {meter['id']} already exists")
    return row


async def update_meter(conn: psycopg.AsyncConnection[Any], meter_id: str, changes: Row) -> Row:
    await _check_service_point(conn, changes.get("service_point_id"))
    if not changes:
        return await get_meter(conn, meter_id)
    query = sql.SQL("update meters set {} where id = {} returning " + METER_COLUMNS).format(
        sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in changes),
        sql.Placeholder("_id"),
    )
    row = await _one(conn, query, {**changes, "_id": meter_id})
    if row is None:
        raise NotFound(f"meter {meter_id} not found")
    return row


async def list_meters(
    conn: psycopg.AsyncConnection[Any],
    *,
    service_point_id: str | None,
    feeder: str | None,
    area: str | None,
    relay_state: str | None,
    comms_state: str | None,
    billing_hold: bool | None,
    after: str | None,
    limit: int,
) -> list[Row]:
    where, params = _filters(
        {
            "m.service_point_id": service_point_id,
            "sp.feeder": feeder,
            "sp.area": area,
            "m.relay_state": relay_state,
            "m.comms_state": comms_state,
            "m.id >": after,
        }
    )
    hold: sql.Composable = sql.SQL("")
    if billing_hold is not None:
        hold = sql.SQL(" and m.billing_hold is not null" if billing_hold else " and m.billing_hold is null")
        if not params:
            hold = sql.SQL(" where true") + hold
    cols = ", ".join(f"m.{c.strip()}" for c in METER_COLUMNS.split(","))
    query = sql.SQL(
        "select " + cols + " from meters m left join service_points sp on sp.id = m.service_point_id{}{}"
        " order by m.id limit %s"
    ).format(where, hold)
    return await _all(conn, query, [*params, limit])


async def get_meter(conn: psycopg.AsyncConnection[Any], meter_id: str) -> Row:
    return await _found(conn, f"meter {meter_id}", f"select {METER_COLUMNS} from meters where id = %s", (meter_id,))


async def last_reading(conn: psycopg.AsyncConnection[Any], meter_id: str) -> Row | None:
    rows = await _all(
        conn,
        "select ts, obis, value from readings where meter_id = %(m)s"
        " and ts = (select max(ts) from readings where meter_id = %(m)s)",
        {"m": meter_id},
    )
    if not rows:
        return None
    return {"ts": rows[0]["ts"], "values": {r["obis"]: r["value"] for r in rows}}


# --- readings and events -----------------------------------------------------------------


async def readings(
    conn: psycopg.AsyncConnection[Any],
    *,
    meter_id: str,
    obis: str | None,
    start: datetime,
    end: datetime,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Row]:
    params: dict[str, Any] = {"m": meter_id, "o": obis, "s": start, "e": end, "limit": limit}
    cursor = ""
    if after is not None:
        cursor = " and (ts, obis) > (%(ats)s, %(aobis)s)"
        params.update(ats=after[0], aobis=after[1])
    return await _all(
        conn,
        "select meter_id, obis, ts, value, received_at, source from readings"
        " where meter_id = %(m)s and (%(o)s::text is null or obis = %(o)s) and ts >= %(s)s and ts < %(e)s"
        + cursor
        + " order by ts, obis limit %(limit)s",
        params,
    )


async def aggregate_meter(
    conn: psycopg.AsyncConnection[Any],
    *,
    meter_id: str,
    obis: str,
    interval: str,
    timezone: str,
    start: datetime,
    end: datetime,
) -> list[Row]:
    rows = await _all(
        conn,
        "with b as ("
        " select time_bucket(%(w)s::interval, ts, %(tz)s) as bucket, count(*) as count,"
        " min(value) as min, max(value) as max, avg(value) as avg,"
        " first(value, ts) as first, last(value, ts) as last"
        " from readings where meter_id = %(m)s and obis = %(o)s and ts >= %(s)s and ts < %(e)s group by 1)"
        " select *, last - coalesce(lag(last) over (order by bucket), first) as delta from b order by bucket",
        {"w": interval, "tz": timezone, "m": meter_id, "o": obis, "s": start, "e": end},
    )
    for r in rows:
        if r["delta"] is not None and r["delta"] < 0:
            r["delta"] = None
    return rows


async def aggregate_area(
    conn: psycopg.AsyncConnection[Any],
    *,
    area: str,
    obis: str,
    interval: str,
    timezone: str,
    start: datetime,
    end: datetime,
) -> list[Row]:
    return await _all(
        conn,
        "with per as ("
        " select r.meter_id, time_bucket(%(w)s::interval, r.ts, %(tz)s) as bucket,"
        " first(r.value, r.ts) as first, last(r.value, r.ts) as last"
        " from readings r join meters m on m.id = r.meter_id join service_points sp on sp.id = m.service_point_id"
        " where sp.area = %(a)s and r.obis = %(o)s and r.ts >= %(s)s and r.ts < %(e)s group by 1, 2),"
        " d as (select bucket, meter_id,"
        " last - coalesce(lag(last) over (partition by meter_id order by bucket), first) as delta from per)"
        " select bucket, count(*) as meters, coalesce(sum(delta) filter (where delta >= 0), 0) as delta"
        " from d group by bucket order by bucket",
        {"w": interval, "tz": timezone, "a": area, "o": obis, "s": start, "e": end},
    )


async def area_exists(conn: psycopg.AsyncConnection[Any], area: str) -> bool:
    return await _one(conn, "select 1 as x from service_points where area = %s limit 1", (area,)) is not None


async def events(
    conn: psycopg.AsyncConnection[Any],
    *,
    meter_id: str | None,
    kind: str | None,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[Row]:
    return await _all(
        conn,
        "select meter_id, ts, kind, detail, received_at, source from meter_events"
        " where (%(m)s::text is null or meter_id = %(m)s) and (%(k)s::text is null or kind = %(k)s)"
        " and ts >= %(s)s and ts < %(e)s order by ts, meter_id, kind limit %(limit)s",
        {"m": meter_id, "k": kind, "s": start, "e": end, "limit": limit},
    )


# --- accounts ----------------------------------------------------------------------------


async def list_accounts(
    conn: psycopg.AsyncConnection[Any],
    *,
    only: frozenset[str] | None,
    service_point_id: str | None,
    status: str | None,
    after: str | None,
    limit: int,
) -> list[Row]:
    where, params = _filters({"service_point_id": service_point_id, "status": status, "id >": after})
    restrict = sql.SQL("")
    if only is not None:
        restrict = sql.SQL(" and id = any(%s)" if params else " where id = any(%s)")
        params.append(sorted(only))
    query = sql.SQL("select " + ACCOUNT_COLUMNS + " from accounts{}{} order by id limit %s").format(where, restrict)
    return await _all(conn, query, [*params, limit])


async def get_account(conn: psycopg.AsyncConnection[Any], account_id: str) -> Row:
    return await _found(
        conn, f"account {account_id}", f"select {ACCOUNT_COLUMNS} from accounts where id = %s", (account_id,)
    )


async def ledger(conn: psycopg.AsyncConnection[Any], account_id: str, *, after: int | None, limit: int) -> list[Row]:
    return await _all(
        conn,
        "select id, account_id, posted_at, kind, amount_minor, balance_after_minor, reference, meter_id,"
        " period_start, period_end, detail from ledger_entries"
        " where account_id = %s and id > %s order by id limit %s",
        (account_id, after or 0, limit),
    )


async def account_events(
    conn: psycopg.AsyncConnection[Any], account_id: str, *, after: int | None, limit: int
) -> list[Row]:
    return await _all(
        conn,
        "select id, account_id, kind, at, detail from account_events"
        " where account_id = %s and id > %s order by id limit %s",
        (account_id, after or 0, limit),
    )


# --- tariffs -----------------------------------------------------------------------------


async def list_tariffs(conn: psycopg.AsyncConnection[Any]) -> list[Row]:
    return await _all(conn, "select id, name, currency, created_at from tariffs order by id")


async def get_tariff(conn: psycopg.AsyncConnection[Any], tariff_id: str) -> Row:
    row = await _one(conn, "select id, name, currency, created_at from tariffs where id = %s", (tariff_id,))
    if row is None:
        raise NotFound(f"tariff {tariff_id} not found")
    row["versions"] = await _all(
        conn,
        "select tariff_id, effective_from, definition, created_at, created_by from tariff_versions"
        " where tariff_id = %s order by effective_from",
        (tariff_id,),
    )
    return row


# --- commands (read side) ----------------------------------------------------------------


async def list_commands(
    conn: psycopg.AsyncConnection[Any],
    *,
    state: str | None,
    meter_id: str | None,
    account_id: str | None,
    action: str | None,
    after: int | None,
    limit: int,
) -> list[Row]:
    where, params = _filters(
        {"state": state, "meter_id": meter_id, "account_id": account_id, "action": action, "id >": after}
    )
    query = sql.SQL("select " + COMMAND_COLUMNS + " from commands{} order by id limit %s").format(where)
    return await _all(conn, query, [*params, limit])


async def get_command(conn: psycopg.AsyncConnection[Any], command_id: int) -> Row:
    return await _found(
        conn, f"command {command_id}", f"select {COMMAND_COLUMNS} from commands where id = %s", (command_id,)
    )


async def commands_by_ids(conn: psycopg.AsyncConnection[Any], ids: list[int]) -> list[Row]:
    return await _all(conn, f"select {COMMAND_COLUMNS} from commands where id = any(%s) order by id", (ids,))


async def batch_states(conn: psycopg.AsyncConnection[Any], batch_id: str) -> dict[str, int]:
    rows = await _all(
        conn, "select state, count(*) as n from commands where batch_id = %s group by state order by state", (batch_id,)
    )
    return {r["state"]: int(r["n"]) for r in rows}


async def missing_meters(conn: psycopg.AsyncConnection[Any], meter_ids: list[str]) -> list[str]:
    rows = await _all(conn, "select id from meters where id = any(%s)", (meter_ids,))
    found = {r["id"] for r in rows}
    return [m for m in dict.fromkeys(meter_ids) if m not in found]


# --- policy versions (read side; control writes them) -------------------------------------


async def policy_versions(conn: psycopg.AsyncConnection[Any], profile: str) -> list[Row]:
    """Versions of a profile; the shipped base version's ``-infinity`` start reads as null."""
    return await _all(
        conn,
        "select profile, version, document, nullif(effective_from, '-infinity') as effective_from,"
        " created_at, created_by from policy_versions where profile = %s order by version",
        (profile,),
    )


# --- notices -----------------------------------------------------------------------------


async def list_notices(
    conn: psycopg.AsyncConnection[Any],
    *,
    account_id: str | None,
    kind: str | None,
    status: str | None,
    after: int | None,
    limit: int,
) -> list[Row]:
    where, params = _filters({"account_id": account_id, "kind": kind, "status": status, "id >": after})
    query = sql.SQL("select " + NOTICE_COLUMNS + " from notices{} order by id limit %s").format(where)
    return await _all(conn, query, [*params, limit])


async def get_notice(conn: psycopg.AsyncConnection[Any], notice_id: int) -> Row:
    return await _found(
        conn, f"notice {notice_id}", f"select {NOTICE_COLUMNS} from notices where id = %s", (notice_id,)
    )


async def mark_delivered(
    conn: psycopg.AsyncConnection[Any], notice_id: int, *, delivered_at: datetime, channel: str | None
) -> Row:
    """Record a delivery receipt. The first receipt wins: a later one does not move delivered_at."""
    async with conn.transaction():
        row = await _one(
            conn,
            "update notices set delivered_at = coalesce(delivered_at, %(at)s), status = 'delivered',"
            " channel = coalesce(%(ch)s, channel), sent_at = coalesce(sent_at, %(at)s)"
            f" where id = %(id)s returning {NOTICE_COLUMNS}",
            {"at": delivered_at, "ch": channel, "id": notice_id},
        )
        if row is None:
            raise NotFound(f"notice {notice_id} not found")
        await conn.execute("select pg_notify('notice_delivered', %s)", (str(notice_id),))
    return row


# --- quarantine --------------------------------------------------------------------------


async def list_quarantine(
    conn: psycopg.AsyncConnection[Any],
    *,
    source: str | None,
    meter_id: str | None,
    replayed: bool | None,
    after: int | None,
    limit: int,
) -> list[Row]:
    where, params = _filters({"source": source, "meter_id": meter_id, "id >": after})
    extra = sql.SQL("")
    if replayed is not None:
        cond = "replayed_at is not null" if replayed else "replayed_at is null"
        extra = sql.SQL((" and " if params else " where ") + cond)
    query = sql.SQL("select " + QUARANTINE_COLUMNS + " from quarantine{}{} order by id limit %s").format(where, extra)
    return await _all(conn, query, [*params, limit])


async def quarantine_ids(
    conn: psycopg.AsyncConnection[Any],
    *,
    meter_id: str | None,
    reason_prefix: str | None,
    include_replayed: bool,
    limit: int,
) -> list[int]:
    rows = await _all(
        conn,
        "select id from quarantine where source = 'mqtt' and topic is not null"
        " and (%(m)s::text is null or meter_id = %(m)s)"
        " and (%(r)s::text is null or starts_with(reason, %(r)s))"
        " and (%(all)s or replayed_at is null) order by id limit %(limit)s",
        {"m": meter_id, "r": reason_prefix, "all": include_replayed, "limit": limit},
    )
    return [int(r["id"]) for r in rows]


async def get_quarantined(conn: psycopg.AsyncConnection[Any], qid: int) -> Row:
    return await _found(
        conn, f"quarantine item {qid}", f"select {QUARANTINE_COLUMNS}, payload from quarantine where id = %s", (qid,)
    )


async def mark_replayed(conn: psycopg.AsyncConnection[Any], qid: int, *, at: datetime, result: str) -> None:
    await conn.execute("update quarantine set replayed_at = %s, replay_result = %s where id = %s", (at, result, qid))


# --- facts owned by control (existence checks only) --------------------------------------


async def protection_exists(conn: psycopg.AsyncConnection[Any], protection_id: int) -> bool:
    return await _one(conn, "select 1 as x from protections where id = %s", (protection_id,)) is not None


async def case_exists(conn: psycopg.AsyncConnection[Any], case_id: int) -> bool:
    return await _one(conn, "select 1 as x from cases where id = %s", (case_id,)) is not None
