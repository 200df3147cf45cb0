"""A database that is not there yet: the batch is kept and retried with backoff, then written once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from headend import db
from ingest.models import Decoded, Item, Reading
from ingest.store import BatchWriter, write_resilient

from .conftest import query, register_fleet

pytestmark = pytest.mark.integration

BASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.fixture
def later_db(template_db: str) -> Iterator[tuple[str, str]]:
    name = f"headend_t_{uuid.uuid4().hex[:12]}"
    yield name, db.database_url_for(BASE_URL, name)
    db.drop_database(BASE_URL, name)


async def test_outage_then_recovery_writes_the_batch_once(template_db: str, later_db: tuple[str, str]) -> None:
    name, url = later_db
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=1, max_size=1, open=False, timeout=1.0)
    await pool.open(wait=False)
    try:
        writer = BatchWriter(pool)
        item = Item("mqtt", "t", b"{}", decoded=Decoded((Reading("M-1", "1-0:1.8.0", T0, 1000.0),)), meter_id="M-1")
        task = asyncio.create_task(write_resilient(writer, [item], lambda: T0), name="outage-writer")
        await asyncio.sleep(2.5)
        assert not task.done()  # still retrying: nothing written, nothing lost
        with psycopg.connect(db.database_url_for(BASE_URL, "postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template_db))
            )
        register_fleet(url, {"M-1": {}})
        result = await asyncio.wait_for(task, 60)
        assert result.readings_new == 1
    finally:
        await pool.close()
    assert query(url, "select count(*) from readings")[0][0] == 1
    assert query(url, "select count(*) from billing_queue")[0][0] == 1
