"""TimescaleDB connection and ordered SQL migrations."""

from __future__ import annotations

import logging
import time
from importlib import resources
from typing import Any

import psycopg

__all__ = ["connect", "migrate", "migrations", "one", "scalar", "wait_for_db"]

log = logging.getLogger("fleetstream.db")
_MIGRATION_LOCK = 0x666C6565  # advisory lock id: one migrator at a time


def connect(dsn: str, *, autocommit: bool = False, attempts: int = 1, delay_s: float = 1.0) -> psycopg.Connection:
    """Open a connection, retrying ``attempts`` times ``delay_s`` apart."""
    for attempt in range(1, attempts + 1):
        try:
            conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5)
            conn.add_notice_handler(lambda diag: log.info("db: %s", diag.message_primary))
            return conn
        except psycopg.OperationalError:
            if attempt == attempts:
                raise
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> tuple[Any, ...]:
    """The single row ``query`` returns (an aggregate, a lookup that must exist)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise LookupError(f"no row from {str(query)[:80]!r}")
    return tuple(row)


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the single row ``query`` returns."""
    return one(conn, query, params)[0]


def wait_for_db(dsn: str, timeout_s: float = 60.0) -> None:
    """Block until the database accepts connections (or raise after ``timeout_s``)."""
    connect(dsn, attempts=max(1, int(timeout_s)), delay_s=1.0).close()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in store/migrations, in order."""
    found = []
    for entry in resources.files("store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    found.sort()
    for (v1, n1, _), (v2, n2, _) in zip(found, found[1:], strict=False):
        if v1 == v2:  # the second would be skipped as applied: its tables would never exist
            raise RuntimeError(f"two migrations share version {v1}: {n1} and {n2}")
    return found


def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied; returns the names applied now."""
    applied_now: list[str] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                log.info("db: applied migration %s", name)
                applied_now.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now
