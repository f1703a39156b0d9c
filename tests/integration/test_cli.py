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
    status = json.loads(fleetstream(services_settings, "services", "status"))
    assert status["postgres"]["accepting"] and status["mosquitto"]["accepting"]
