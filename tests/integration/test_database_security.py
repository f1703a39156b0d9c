"""Who can connect to the embedded TimescaleDB, as whom, and what each login can do.

Against the real cluster the session started: password authentication on every TCP
connection (the superuser never over TCP, no replication), the unix socket private to the
``postgres`` OS user, one login per engine process kind (none a superuser, none able to run
programs or read server files), row-level security on every tenant table with
``security_invoker`` views, and a tenant's read-only login that sees only its tenant's rows
and cannot reach them through a hypertable's chunks.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.settings import DATABASE_ROLES, Settings
from fleetstream import credentials, database
from fleetstream.engine import Engine
from ingest.dispatch import publish_plan
from store.db import migrate
from tests.integration.test_plans import plan
from tests.integration.trackers import with_listeners
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

PSQL = "psql"


@pytest.fixture(scope="module", autouse=True)
def schema(services_settings: Settings) -> None:
    migrate(services_settings.dsn())


def psql(
    settings: Settings, conninfo: str, sql: str = "SELECT 1", as_user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """psql with no password prompt (-w) and no password file but the one named in ``conninfo``."""
    cmd = [PSQL, "-w", "-X", "-A", "-t", "-c", sql, conninfo]
    if as_user is not None:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = "/nonexistent"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, check=False)


def tcp(settings: Settings, user: str, extra: str = "") -> str:
    return f"host=127.0.0.1 port={settings.pg_port} dbname={settings.pg_database} user={user} connect_timeout=5 {extra}"


def test_tcp_without_a_password_is_refused(services_settings: Settings) -> None:
    s = services_settings
    for user in ("postgres", *DATABASE_ROLES.values(), database.reader_role("nobodys-tenant")):
        done = psql(s, tcp(s, user))
        assert done.returncode != 0, user
        assert "no password supplied" in done.stderr or "rejects connection" in done.stderr, (user, done.stderr)
    wrong = psql(s, tcp(s, DATABASE_ROLES["gateway"], "password=guess"))
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    # the superuser is refused on TCP even with a password; so is any replication connection
    assert "rejects connection" in psql(s, tcp(s, "postgres", "password=x")).stderr
    gateway_password = database.login_passwords(s)[DATABASE_ROLES["gateway"]]
    physical = psql(s, tcp(s, DATABASE_ROLES["gateway"], f"password={gateway_password} replication=true"))
    assert physical.returncode != 0 and "no pg_hba.conf entry for replication connection" in physical.stderr
    logical = psql(s, tcp(s, DATABASE_ROLES["gateway"], f"password={gateway_password} replication=database"))
    assert logical.returncode != 0 and "must be superuser or replication role" in logical.stderr
    # the engine's own login, with its password, is let in
    ok = psql(s, tcp(s, DATABASE_ROLES["gateway"], f"password={gateway_password}"), "SELECT current_user")
    assert ok.returncode == 0 and ok.stdout.strip() == DATABASE_ROLES["gateway"], ok.stderr


def test_as_the_os_user_nobody_nothing_connects(services_settings: Settings) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run commands as nobody")
    s = services_settings
    socket_dir = s.pg_socket_dir
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    attempts = {
        "socket as postgres": f"host={socket_dir} port={s.pg_port} dbname={s.pg_database} user=postgres",
        "socket as the gateway": f"host={socket_dir} port={s.pg_port} dbname={s.pg_database} user=fleetstream_gateway",
        "TCP as postgres": tcp(s, "postgres"),
        "TCP as the gateway, its password file": tcp(s, "fleetstream_gateway", f"passfile={s.pg_passfile}"),
        "TCP as the migration role": tcp(s, "fleetstream_migrate", f"passfile={s.pg_passfile}"),
    }
    for what, conninfo in attempts.items():
        done = psql(s, conninfo, as_user="nobody")
        assert done.returncode != 0, (what, done.stdout)
    # and nothing that would let it in is readable to it
    state = Path(s.state_dir)
    secrets = [
        s.pg_passfile,
        state / "credentials.json",
        state / "devices.json",
        state / "tls" / "ca.key",
        state / "tls" / "server.key",
        state / "mosquitto" / "dynsec" / "dynamic-security.json",
        state / "pg" / "data" / "pg_hba.conf",
    ]
    for path in secrets:
        done = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True, check=False)
        assert done.returncode != 0 and done.stdout == b"", path
    listing = subprocess.run(["runuser", "-u", "nobody", "--", "ls", str(state)], capture_output=True, check=False)
    assert listing.returncode != 0  # the state folder can be passed through, not listed


def test_no_engine_connection_is_a_superuser(services_settings: Settings, db: Any) -> None:
    settings = with_listeners(services_settings)
    engine = Engine(settings, with_api=True)
    engine.start()
    try:
        engine.wait_ready()
        # the dispatch listener opens its connection with the first plan
        tenant = f"su{uuid.uuid4().hex[:8]}"
        publish_plan(settings, plan(tenant), credentials=credentials.service_account(settings, "dispatch"))
        expected = {f"fleetstream-{role}" for role in ("gateway", "flow", "dispatch", "deliver", "api")}

        def connections() -> list[tuple[Any, ...]]:
            return db.execute(
                "SELECT a.pid, a.application_name, a.usename, r.rolsuper FROM pg_stat_activity a "
                "JOIN pg_roles r ON r.oid = a.usesysid WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
            ).fetchall()

        wait_until(
            lambda: expected <= {c[1] for c in connections()},
            60,
            f"every engine process connected (seen: {sorted({c[1] for c in connections()})})",
        )
        rows = connections()
        engine_rows = [r for r in rows if r[1].startswith("fleetstream-")]
        assert len(engine_rows) >= len(expected)
        # nothing but this test's own administration (left out above) is a superuser
        assert [r for r in rows if r[3]] == []
        by_name = {r[1]: r[2] for r in engine_rows}
        assert by_name["fleetstream-gateway"] == "fleetstream_gateway"
        assert by_name["fleetstream-api"] == "fleetstream_api"
    finally:
        engine.stop()


def test_engine_logins_cannot_run_programs_or_read_server_files(services_settings: Settings) -> None:
    for role in DATABASE_ROLES:
        with psycopg.connect(services_settings.dsn(role), autocommit=True) as conn:
            su = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert su == (False, False, False, False, False), role
            for sql in (
                "COPY (SELECT 1) TO PROGRAM 'id'",
                "COPY positions FROM '/etc/passwd'",
                "SELECT pg_read_file('/etc/passwd')",
                "SELECT pg_ls_dir('/')",
                "SELECT lo_import('/etc/passwd')",
                "CREATE EXTENSION IF NOT EXISTS file_fdw",
                "ALTER ROLE CURRENT_USER SUPERUSER",
                "GRANT pg_execute_server_program TO CURRENT_USER",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)


def test_every_tenant_table_has_row_level_security_and_every_view_runs_as_its_reader(db: Any) -> None:
    tables = db.execute(
        "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant' AND NOT a.attisdropped "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
    ).fetchall()
    assert len(tables) >= 15 and all(rls for _, rls in tables), [t for t, rls in tables if not rls]
    views = db.execute(
        "SELECT c.relname, coalesce('security_invoker=true' = ANY (c.reloptions), false) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'v'"
    ).fetchall()
    assert len(views) >= 8 and all(invoker for _, invoker in views), [v for v, ok in views if not ok]


# ---------------------------------------------------------------- a tenant's reader


@pytest.fixture()
def two_tenants(db: Any) -> Iterator[tuple[str, str]]:
    """Positions (in two chunks), an alert and a vehicle state for tenants A and B."""
    a, b = f"ra{uuid.uuid4().hex[:8]}", f"rb{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    for tenant in (a, b):
        for i, at in enumerate((now - timedelta(days=3), now - timedelta(hours=1))):
            db.execute(
                "INSERT INTO positions (fix_time, tenant, vehicle_id, seq, lat, lon, h3_cell, received_at, shard, "
                "shard_seq) VALUES (%s, %s, 'van-1', %s, 60.2, 24.9, 1, now(), 99, 0)",
                (at, tenant, i),
            )
        db.execute(
            "INSERT INTO alerts (start_second, id, tenant, vehicle_id, type, severity, status, start_time, "
            "detected_at) VALUES (date_trunc('second', now()), gen_random_uuid(), %s, 'van-1', 'offline', "
            "'warning', 'open', now(), now())",
            (tenant,),
        )
        db.execute(
            "INSERT INTO vehicle_state (tenant, vehicle_id, gps_count, temp_count, door_count) VALUES (%s, 'van-1', 2, 0, 0)",
            (tenant,),
        )
        db.execute("INSERT INTO vehicles (tenant, vehicle_id) VALUES (%s, 'van-1')", (tenant,))
    yield a, b


def test_a_tenants_reader_sees_only_its_rows_never_a_chunk_and_writes_nothing(
    services_settings: Settings, db: Any, two_tenants: tuple[str, str]
) -> None:
    a, b = two_tenants
    done = subprocess.run(
        [sys.executable, "-m", "fleetstream.cli", "db", "reader", a],
        capture_output=True,
        text=True,
        env={**os.environ, **_settings_env(services_settings)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    dsn = done.stdout.strip()
    assert dsn == database.reader_dsn(services_settings, a)  # the same login and password again
    assert "password=" in dsn and f"user={database.reader_role(a)}" in dsn
    with psycopg.connect(dsn, autocommit=True) as reader:
        for table in ("positions", "alerts", "vehicle_current", "vehicle_state", "latest_positions", "open_alerts"):
            tenants = {r[0] for r in reader.execute(f"SELECT DISTINCT tenant FROM {table}").fetchall()}
            assert tenants == {a}, table
        assert reader.execute("SELECT count(*) FROM positions").fetchone()[0] == 2
        days = reader.execute(
            "SELECT count(*) FROM (SELECT time_bucket('1 day', fix_time) FROM positions GROUP BY 1) d"
        )
        assert days.fetchone()[0] == 2
        # neither a setting nor a role moves it to another tenant
        reader.execute("SELECT set_config('fleetstream.tenant', %s, false)", (b,))
        assert {r[0] for r in reader.execute("SELECT tenant FROM positions").fetchall()} == {a}
        reader.execute("SET ROLE fleetstream_readers")
        assert {r[0] for r in reader.execute("SELECT tenant FROM positions").fetchall()} == {a}
        reader.execute("RESET ROLE")
        chunks = [r[0] for r in db.execute("SELECT show_chunks('positions')::text").fetchall()]
        assert len(chunks) >= 2
        for chunk in chunks:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(f"SELECT tenant FROM {chunk}")
        for sql in (
            f"INSERT INTO vehicles (tenant, vehicle_id) VALUES ('{a}', 'van-x')",
            "UPDATE alerts SET comments = 9",
            "DELETE FROM positions",
            "TRUNCATE alerts",
            "CREATE TABLE mine (x int)",
            "CREATE TEMP TABLE mine (x int)",
            "SELECT * FROM api_tokens",
            "SELECT * FROM trackers",
            "SELECT * FROM dead_letters",
            "SELECT * FROM tenant_readers",
            "COPY (SELECT 1) TO PROGRAM 'id'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(sql)
    # a chunk made after the reader was: still closed to it, and read through the hypertable
    future = datetime.now(UTC) + timedelta(days=40)
    db.execute(
        "INSERT INTO positions (fix_time, tenant, vehicle_id, seq, lat, lon, h3_cell, received_at, shard, shard_seq) "
        "VALUES (%s, %s, 'van-1', 7, 60.2, 24.9, 1, now(), 99, 0), (%s, %s, 'van-1', 7, 60.2, 24.9, 1, now(), 99, 0)",
        (future, a, future, b),
    )
    newest = db.execute("SELECT show_chunks('positions', newer_than => now() + interval '30 days')::text").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(f"SELECT * FROM {newest}")
        assert (
            reader.execute("SELECT count(*) FROM positions WHERE fix_time > now() + interval '30 days'").fetchone()[0]
            == 1
        )
    db.execute("DELETE FROM positions WHERE tenant IN (%s, %s)", (a, b))
    # a new password: the old DSN no longer logs in
    rotated = database.reader_dsn(services_settings, a, rotate=True)
    assert rotated != dsn
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn).close()
    psycopg.connect(rotated).close()


def _settings_env(settings: Settings) -> dict[str, str]:
    from fleetstream.engine import settings_env

    return {k: v for k, v in settings_env(settings).items() if k.startswith("FLEETSTREAM_")}
