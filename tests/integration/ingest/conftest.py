"""Fixtures of the ingest integration tests: a registered fleet and an open pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from headend import registry


def register_fleet(db_url: str, meters: dict[str, dict[str, Any]], timezone: str = "Asia/Shanghai") -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        registry.ensure_service_point(conn, "SP-1", feeder="F-1", timezone=timezone)
        for meter_id, fields in meters.items():
            fields = dict(fields)
            protocol = fields.pop("protocol", "mqtt")
            model = fields.pop("model", "native")
            registry.ensure_meter(conn, meter_id, service_point_id="SP-1", protocol=protocol, model=model, **fields)


@pytest.fixture
def fleet(db_url: str) -> Iterator[str]:
    register_fleet(
        db_url,
        {
            "M-1": {},
            "M-2": {},
            "T-1": {"model": "tasmota", "mqtt_topic": "tasmota_kitchen"},
            "S-1": {"model": "shelly", "mqtt_topic": "shellypro3em-abc"},
        },
    )
    yield db_url


@pytest.fixture
async def pool(fleet: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(fleet, min_size=1, max_size=2, open=False)
    await p.open()
    try:
        yield p
    finally:
        await p.close()


def query(db_url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []
