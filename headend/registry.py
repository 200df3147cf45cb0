"""Registration of the things headend serves: tariffs, service points, meters, accounts.

Idempotent upserts over a sync psycopg connection, used by the demo, the
simulator's ``--register`` and tests. The API has its own validated routes and
may call these too. Each function commits nothing itself: the caller's
transaction (or autocommit) decides.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

_METER_FIELDS = {
    "mqtt_topic",
    "modbus_host",
    "modbus_port",
    "modbus_unit",
    "modbus_map",
    "poll_interval_s",
    "rated_current_a",
    "nominal_voltage_v",
    "phases",
    "register_max_wh",
    "supports_load_limit",
    "relay_state",
}


def ensure_tariff(
    conn: psycopg.Connection[Any],
    tariff_id: str,
    name: str,
    *,
    currency: str = "CNY",
    effective_from: datetime,
    definition: dict[str, Any],
) -> None:
    """Create the tariff if missing and add this version if missing (versions are never edited)."""
    conn.execute(
        "insert into tariffs (id, name, currency) values (%s, %s, %s) on conflict (id) do nothing",
        (tariff_id, name, currency),
    )
    conn.execute(
        "insert into tariff_versions (tariff_id, effective_from, definition) values (%s, %s, %s)"
        " on conflict (tariff_id, effective_from) do nothing",
        (tariff_id, effective_from, json.dumps(definition)),
    )


def ensure_service_point(
    conn: psycopg.Connection[Any],
    sp_id: str,
    *,
    feeder: str,
    timezone: str = "Asia/Shanghai",
    area: str = "default",
    country: str = "CN",
    subdivision: str | None = None,
    account_class: str = "residential",
) -> None:
    conn.execute(
        "insert into service_points (id, feeder, timezone, area, country, subdivision, account_class)"
        " values (%s, %s, %s, %s, %s, %s, %s)"
        " on conflict (id) do update set feeder = excluded.feeder, timezone = excluded.timezone,"
        " area = excluded.area, country = excluded.country, subdivision = excluded.subdivision,"
        " account_class = excluded.account_class",
        (sp_id, feeder, timezone, area, country, subdivision, account_class),
    )


def ensure_meter(
    conn: psycopg.Connection[Any],
    meter_id: str,
    *,
    service_point_id: str | None,
    protocol: str = "mqtt",
    model: str = "native",
    **fields: Any,
) -> None:
    unknown = set(fields) - _METER_FIELDS
    if unknown:
        raise ValueError(f"unknown meter fields: {sorted(unknown)}")
    cols = ["id", "service_point_id", "protocol", "model", *fields]
    vals = [meter_id, service_point_id, protocol, model, *fields.values()]
    query = sql.SQL("insert into meters ({cols}) values ({vals}) on conflict (id) do update set {updates}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        updates=sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in cols[1:]),
    )
    conn.execute(query, vals)


def open_account(
    conn: psycopg.Connection[Any],
    account_id: str,
    *,
    service_point_id: str,
    tariff_id: str | None,
    balance_minor: int = 0,
    currency: str = "CNY",
    customer_name: str | None = None,
) -> None:
    """Open an account (idempotent on its id). An opening balance is posted as a ledger entry."""
    row = conn.execute("select 1 from accounts where id = %s", (account_id,)).fetchone()
    if row:
        return
    conn.execute(
        "insert into accounts (id, service_point_id, tariff_id, currency, customer_name, balance_minor)"
        " values (%s, %s, %s, %s, %s, %s)",
        (account_id, service_point_id, tariff_id, currency, customer_name, balance_minor),
    )
    if balance_minor:
        conn.execute(
            "insert into ledger_entries (account_id, kind, amount_minor, balance_after_minor, reference)"
            " values (%s, 'opening_balance', %s, %s, 'opening')",
            (account_id, balance_minor, balance_minor),
        )
