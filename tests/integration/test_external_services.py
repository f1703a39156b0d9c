"""Against "external" services: a broker URL and a PostgreSQL DSN instead of the embedded ones.

The test session's own Mosquitto and TimescaleDB stand in for external services;
what changes is the code path: nothing is started or provisioned by fleetstream,
every engine process uses the URL's credentials (as compose.yaml runs it); the simulated fleet,
being devices, has an account of its own. The DSN is the schema owner's
login (not a superuser: an external database should give the engine no more).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

from fleetstream import credentials
from fleetstream.engine import Engine, settings_env


def test_engine_and_simulator_with_a_broker_url_and_a_dsn(services_settings, db, tmp_path) -> None:
    tenant = f"ext{int(time.time())}"
    user, password = credentials.service_account(services_settings, "gateway")
    host, port = services_settings.mqtt_endpoint()
    external = replace(
        services_settings,
        mqtt_url=f"mqtt://{user}:{password}@{host}:{port}",
        pg_dsn=services_settings.dsn("migrate"),
        state_dir=tmp_path,
        tenant=tenant,
        sim_vehicles=3,
        sim_minutes=0.25,
        sim_speedup=20.0,
    )
    assert not external.embedded_mqtt and not external.embedded_pg
    engine = Engine(external)
    engine.start()
    try:
        engine.wait_ready()
        sim_user, sim_password = credentials.service_account(services_settings, "simulator")
        fleet = replace(external, mqtt_url=f"mqtt://{sim_user}:{sim_password}@{host}:{port}")
        done = subprocess.run(
            [sys.executable, "-m", "fleetstream.cli", "simulate"],
            env=settings_env(fleet),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        assert summary["flushed"] and summary["refused"] == 0
        published = summary["readings"]
        for _ in range(100):
            counts = {
                t: db.execute(f"SELECT count(*) FROM {t} WHERE tenant = %s", (tenant,)).fetchone()[0]
                for t in ("positions", "temperatures", "door_events")
            }
            if counts == {
                "positions": published["gps"],
                "temperatures": published["temp"],
                "door_events": published["door"],
            }:
                break
            time.sleep(0.3)
        assert counts == {
            "positions": published["gps"],
            "temperatures": published["temp"],
            "door_events": published["door"],
        }
    finally:
        engine.stop()
