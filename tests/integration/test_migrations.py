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


def _scratch_db() -> tuple[str, str]:
    import uuid

    from tests.conftest import BASE_URL

    name = f"headend_lic_{uuid.uuid4().hex[:10]}"
    return name, db.create_database(BASE_URL, name, drop_first=True)


def test_tsl_migrations_run_only_on_the_timescale_license(tmp_path) -> None:
    from tests.conftest import BASE_URL

    (tmp_path / "0001_base.sql").write_text("create table base_t (id int);")
    (tmp_path / "0002_policies.tsl.sql").write_text("create table tsl_t (id int);")
    name, url = _scratch_db()
    try:
        assert db.migrate(url, tmp_path, license_override="apache") == ["0001_base.sql"]
        assert db.migrate(url, tmp_path, license_override="apache") == []
        # the license changes (e.g. moved to the Timescale-licensed image): the skipped file runs now
        assert db.migrate(url, tmp_path, license_override="timescale") == ["0002_policies.tsl.sql"]
        assert db.migrate(url, tmp_path, license_override="timescale") == []
        with psycopg.connect(url) as conn:
            assert conn.execute("select to_regclass('tsl_t') is not null").fetchone() == (True,)
    finally:
        db.drop_database(BASE_URL, name)


def test_real_tsl_migration_names_existing_hypertables(db_url: str) -> None:
    import re

    tsl = [m for m in db.list_migrations() if m.needs_tsl]
    assert tsl, "the compression/retention migration exists"
    with psycopg.connect(db_url) as conn:
        hypertables = {
            r[0] for r in conn.execute("select hypertable_name from timescaledb_information.hypertables").fetchall()
        }
        lic = db.timescale_license(conn)
    for mig in tsl:
        named = set(re.findall(r"add_\w+_policy\('(\w+)'", mig.path.read_text()))
        assert named and named <= hypertables, mig.name
    if lic == "timescale":  # pragma: no cover - only on the Timescale-licensed server
        with psycopg.connect(db_url) as conn:
            jobs = conn.execute("select count(*) from timescaledb_information.jobs where hypertable_name is not null")
            assert jobs.fetchone()[0] >= 4  # type: ignore[index]


def test_duplicate_numbers_are_refused(tmp_path) -> None:
    import pytest

    from headend.errors import MigrationError

    (tmp_path / "0001_a.sql").write_text("select 1;")
    (tmp_path / "0001_b.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="share a number"):
        db.list_migrations(tmp_path)


def test_failed_migration_is_not_recorded(tmp_path) -> None:
    import pytest

    from headend.errors import MigrationError
    from tests.conftest import BASE_URL

    (tmp_path / "0001_ok.sql").write_text("create table ok_t (id int);")
    (tmp_path / "0002_bad.sql").write_text("create table bad_t (id int); select no_such_function();")
    name, url = _scratch_db()
    try:
        with pytest.raises(MigrationError, match=r"0002_bad\.sql"):
            db.migrate(url, tmp_path)
        with psycopg.connect(url) as conn:
            assert conn.execute("select version from schema_migrations").fetchall() == [("0001",)]
            assert conn.execute("select to_regclass('bad_t') is null").fetchone() == (True,)
    finally:
        db.drop_database(BASE_URL, name)
