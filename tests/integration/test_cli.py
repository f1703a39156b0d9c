"""The command line against the test session's real services."""

from __future__ import annotations

import json
import subprocess
import sys

from fleetstream.engine import settings_env


def fleetstream(settings, *args: str) -> str:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [sys.executable, "-m", "fleetstream.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_migrate_is_idempotent(services_settings, db) -> None:
    fleetstream(services_settings, "db", "migrate")
    assert "nothing (schema is current)" in fleetstream(services_settings, "db", "migrate")
    versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions[:2] == [1, 2]
    license_ = db.execute("SHOW timescaledb.license").fetchone()[0]
    hypertables = {r[0] for r in db.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"positions", "temperatures", "door_events", "device_status", "dead_letters"} <= hypertables
    policies = db.execute(
        "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
    ).fetchone()[0]
    assert (policies > 0) == (license_ == "timescale")


def test_device_add_prints_credentials_and_is_idempotent(services_settings) -> None:
    first = json.loads(fleetstream(services_settings, "device", "add", "clitest", "van-9"))
    again = json.loads(fleetstream(services_settings, "device", "add", "clitest", "van-9"))
    assert first["username"] == "clitest.van-9" and first["publish_to"] == "fleet/clitest/van-9/#"
    assert first["password"] == again["password"] and len(first["password"]) >= 16


def test_services_status_reports_both_services(services_settings) -> None:
    out = fleetstream(services_settings, "services", "status", "--tenant", "clitest")
    status, end = json.JSONDecoder().raw_decode(out)
    assert status["postgres"]["accepting"] and status["mosquitto"]["accepting"]
    # then what to paste: the tenant's read-only login and its fleet manager over TLS
    connect = out[end:]
    assert "connect (tenant 'clitest'; paste a line):" in connect
    assert (
        f"psql 'host=127.0.0.1 port={services_settings.pg_port} dbname=fleetstream user=fleetstream_reader_clitest"
        in connect
    )
    assert (
        f"mosquitto_sub -h 127.0.0.1 -p {services_settings.mqtt_tls_port} --cafile "
        f"{services_settings.state_dir.resolve()}/tls/ca.crt -u manager.clitest.manager" in connect
    )


def test_bad_arguments_get_one_line(services_settings) -> None:
    """What a command refuses is one line on stderr (exit 2), never a traceback."""
    for args, says in (
        (["device", "add", "clitest", "bad id!"], "fleetstream device: error: "),
        (["evaluate", "--seeds", "1,x"], "fleetstream evaluate: error: --seeds: '1,x' is not a comma-separated list"),
        (["plan", "load", "/nonexistent/plans.json"], "error: [Errno 2] No such file or directory"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "fleetstream.cli", *args],
            env=settings_env(services_settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
