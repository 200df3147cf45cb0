"""Shared test fixtures.

Integration tests talk to the real services on loopback:
- ``db_url``: a fresh, fully migrated PostgreSQL+TimescaleDB database per test,
  cloned from a template migrated once per test session, dropped afterwards.
- ``mqtt_prefix``: a topic prefix of the test's own on the real Mosquitto broker.
Set HEADEND_TEST_DATABASE_URL / HEADEND_TEST_MQTT_HOST / HEADEND_TEST_MQTT_PORT to
point them elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from headend import db

BASE_URL = os.environ.get("HEADEND_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_HOST = os.environ.get("HEADEND_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("HEADEND_TEST_MQTT_PORT", "1883"))


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A migrated database used as the template of every test database."""
    name = f"headend_tpl_{os.getpid()}"
    url = db.create_database(BASE_URL, name, drop_first=True)
    db.migrate(url)
    # No connection may stay open on a template while it is being copied, and
    # TimescaleDB's background scheduler connects to every database that allows it.
    with psycopg.connect(db.database_url_for(BASE_URL, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("alter database {} with allow_connections false").format(sql.Identifier(name)))
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,))
    yield name
    db.drop_database(BASE_URL, name)


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh migrated database of this test's own."""
    name = f"headend_t_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template_db))
    with psycopg.connect(db.database_url_for(BASE_URL, "postgres"), autocommit=True) as conn:
        for attempt in range(50):
            try:
                conn.execute(create)
                break
            except psycopg.errors.ObjectInUse:
                # a backend may still be leaving the template; it goes within milliseconds
                if attempt == 49:
                    raise
                conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (template_db,)
                )
                time.sleep(0.1)
    yield db.database_url_for(BASE_URL, name)
    db.drop_database(BASE_URL, name)


@pytest.fixture
def mqtt_prefix() -> str:
    """A topic prefix of this test's own."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mqtt_host() -> str:
    return MQTT_HOST


@pytest.fixture
def mqtt_port() -> int:
    return MQTT_PORT


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> object:
    """Fail a test that leaves asyncio tasks running behind it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - sync tests get no loop
        yield None
        return
    before = asyncio.all_tasks()
    yield None
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    for t in leaked:
        t.cancel()
    assert not leaked, f"asyncio tasks leaked past the test: {[t.get_name() for t in leaked]}"
