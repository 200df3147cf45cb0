"""Database access shared by the services: connections, migrations, test databases.

Migrations are the numbered ``migrations/NNNN_name.sql`` files, applied in order,
each in its own transaction, and recorded in ``schema_migrations``. Applying is
idempotent and serialised with an advisory lock, so several processes may call
``migrate`` at once. Files named ``NNNN_name.tsl.sql`` use features of the
Timescale-licensed edition (compression, retention); they run only where the
server reports ``timescaledb.license = 'timescale'`` and are skipped (and not
recorded) on the Apache edition, so they run later if the license changes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from headend.errors import DatabaseUnavailable, MigrationError

logger = logging.getLogger(__name__)

_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+(\.tsl)?\.sql$")
_LOCK_KEY = 0x4845_4144  # "HEAD"


def migrations_dir() -> Path:
    """The folder of migration files (``HEADEND_MIGRATIONS_DIR`` overrides)."""
    override = os.environ.get("HEADEND_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    needs_tsl: bool


def list_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    if not folder.is_dir():
        raise MigrationError(f"migrations folder not found: {folder}")
    found: list[Migration] = []
    for path in sorted(folder.iterdir()):
        m = _MIGRATION_RE.match(path.name)
        if m:
            found.append(Migration(m.group(1), path.name, path, bool(m.group(2))))
    versions = [m.version for m in found]
    dupes = {v for v in versions if versions.count(v) > 1}
    if dupes:
        raise MigrationError(f"two migrations share a number: {sorted(dupes)}")
    return found


def connect(url: str, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(url, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {exc}") from exc


def redact(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]+@", r"://\1:***@", url)


def timescale_license(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute("select current_setting('timescaledb.license', true)").fetchone()
    return str(row[0]) if row and row[0] else "apache"


def migrate(url: str, folder: Path | None = None, *, license_override: str | None = None) -> list[str]:
    """Apply pending migrations; return the names applied now (empty when up to date).

    ``license_override`` stands in for the server's ``timescaledb.license`` (tests of
    the Timescale-licensed path on an Apache server).
    """
    migrations = list_migrations(folder)
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "create table if not exists schema_migrations ("
                " version text primary key, name text not null,"
                " applied_at timestamptz not null default now())"
            )
            done = {r[0] for r in conn.execute("select version from schema_migrations")}
            license_ = license_override or (timescale_license(conn) if migrations else "apache")
            for mig in migrations:
                if mig.version in done:
                    continue
                if mig.needs_tsl and license_ != "timescale":
                    logger.info("skipping %s: timescaledb.license is %s", mig.name, license_)
                    continue
                logger.info("applying %s", mig.name)
                try:
                    with conn.transaction():
                        conn.execute(mig.path.read_text().encode())
                        conn.execute(
                            "insert into schema_migrations (version, name) values (%s, %s)",
                            (mig.version, mig.name),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{mig.name} failed: {exc}") from exc
                applied_now.append(mig.name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def database_url_for(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{dbname}" + (f"?{query}" if query else "")


def create_database(url: str, dbname: str, *, drop_first: bool = False) -> str:
    """Create ``dbname`` on the server of ``url`` (from template1, which has TimescaleDB)."""
    admin = database_url_for(url, "postgres")
    with connect(admin, autocommit=True) as conn:
        if drop_first:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
        exists = conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    return database_url_for(url, dbname)


def drop_database(url: str, dbname: str) -> None:
    admin = database_url_for(url, "postgres")
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
