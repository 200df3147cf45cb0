"""Fixtures of prepaid's integration tests: a registered service point, meter, account."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from headend import registry

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FLAT = {"kind": "flat", "currency": "CNY", "price_per_kwh": "0.5"}


def setup_account(
    db_url: str,
    *,
    account: str = "A1",
    meter: str = "M1",
    balance_minor: int = 0,
    versions: list[tuple[datetime, dict[str, Any]]] | None = None,
    timezone: str = "Asia/Shanghai",
) -> None:
    sp = f"SP-{account}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        for at, definition in versions or [(T0, FLAT)]:
            registry.ensure_tariff(conn, "T1", "test tariff", effective_from=at, definition=definition)
        registry.ensure_service_point(conn, sp, feeder="F1", timezone=timezone)
        registry.ensure_meter(conn, meter, service_point_id=sp)
        registry.open_account(conn, account, service_point_id=sp, tariff_id="T1", balance_minor=balance_minor)


def enqueue(db_url: str, meter: str, readings: list[tuple[datetime, float]]) -> None:
    """What ingest does: readings + billing_queue rows in one transaction, then NOTIFY billing."""
    with psycopg.connect(db_url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "insert into readings (meter_id, obis, ts, value) values (%s, '1-0:1.8.0', %s, %s)"
                " on conflict do nothing",
                [(meter, ts, v) for ts, v in readings],
            )
            cur.executemany(
                "insert into billing_queue (meter_id, ts, energy_wh) values (%s, %s, %s)",
                [(meter, ts, v) for ts, v in readings],
            )
        conn.commit()
        conn.execute("notify billing")
        conn.commit()


@pytest.fixture
def account_factory(db_url: str) -> Callable[..., None]:
    def make(**kwargs: Any) -> None:
        setup_account(db_url, **kwargs)

    return make
