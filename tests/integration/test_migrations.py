"""Migrations are idempotent and build the hypertables."""

from __future__ import annotations

import psycopg

from headend import db


def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    # db_url is already migrated (cloned from the migrated template)
    assert db.migrate(db_url) == []
    assert db.migrate(db_url) == []
    with psycopg.connect(db_url) as conn:
        n = conn.execute("select count(*) from schema_migrations").fetchone()
        assert n is not None and n[0] == len([m for m in db.list_migrations() if not m.needs_tsl])


def test_readings_and_events_are_hypertables(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        names = {
            r[0] for r in conn.execute("select hypertable_name from timescaledb_information.hypertables").fetchall()
        }
    assert {"readings", "meter_events"} <= names


def test_fresh_database_migrates_from_nothing(template_db: str) -> None:
    import uuid

    from tests.conftest import BASE_URL

    name = f"headend_fresh_{uuid.uuid4().hex[:10]}"
    url = db.create_database(BASE_URL, name, drop_first=True)
    try:
        first = db.migrate(url)
        assert first and first[0].startswith("0001_")
        assert db.migrate(url) == []
    finally:
        db.drop_database(BASE_URL, name)
