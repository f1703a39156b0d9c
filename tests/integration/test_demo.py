"""README command 1, shortened: the demo runs the engine and a simulated fleet end to end."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from fleetstream.engine import settings_env


def test_demo_end_to_end(services_settings, db) -> None:
    settings = replace(
        services_settings, tenant="demotest", sim_vehicles=4, sim_minutes=0.3, sim_speedup=20.0, engine_api=1
    )
    done = subprocess.run(
        [sys.executable, "-m", "fleetstream.cli", "demo"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "stored" in out and "flow lag" in out and "dead letters" in out  # live progress lines
    assert "TimescaleDB received for tenant 'demotest' during this run" in out
    # the control tower's URL, with a token of the demo's tenant
    assert f"control tower (live while the demo runs): {settings.api_url()}/?token=fs_" in out
    assert db.execute("SELECT count(*) FROM api_tokens WHERE tenant = 'demotest' AND name = 'demo'").fetchone()[0] >= 1
    stored = db.execute(
        "SELECT count(*), count(DISTINCT vehicle_id) FROM positions WHERE tenant = 'demotest'"
    ).fetchone()
    assert stored[0] > 50 and stored[1] == 4
    processed = db.execute("SELECT sum(gps_count) FROM vehicle_state WHERE tenant = 'demotest'").fetchone()[0]
    assert processed == stored[0]
    # the analytics ran on the simulated plans: live ETAs were written and the summary says so
    assert "eta_updates:" in out and "stop_events:" in out and "alerts:" in out
    etas = db.execute("SELECT count(DISTINCT vehicle_id) FROM eta_updates WHERE tenant = 'demotest'").fetchone()[0]
    assert etas == 4
