"""A new user's first hour, scripted from the README: each step asserts what that user would see.

1. ``fleetstream demo`` (demo-sized); a second demo on the same state folder at the same time
   is refused at once, naming the first one's pid.
2. The demo again on the same seed: fresh vehicle ids, the same ``gps_jump`` count as the first
   run (re-driving stored vehicles over a stored time span used to add hundreds).
3. The printed ``psql`` line (psycopg with its DSN when psql is absent): the tenant's rows only,
   nothing writable. ``services status`` prints the same lines.
4. The printed ``mosquitto_sub`` line, as the tenant's fleet manager over TLS, receives the
   ``gps_jump`` alert of a new device that publishes with ``mosquitto_pub``.
5. ``fleetstream edge bundle``: the agent's wheel installs offline (``--no-index``) into a new
   venv; ``--check`` passes the broker (TLS verified, login accepted) and names the missing
   sensors with their fixes; the agent with fake sensors gets its readings stored.

Sizes are knobs: FLEETSTREAM_TEST_FIRST_HOUR_VEHICLES (3), ..._MINUTES (0.3 wall minutes at 20x).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from core.settings import Settings
from fleetstream.engine import Engine, settings_env
from tests.integration.waiting import wait_until

VEHICLES = int(os.environ.get("FLEETSTREAM_TEST_FIRST_HOUR_VEHICLES", "3"))
MINUTES = float(os.environ.get("FLEETSTREAM_TEST_FIRST_HOUR_MINUTES", "0.3"))
TENANT = "firsthour"
CLI = [sys.executable, "-m", "fleetstream.cli"]
# new devices are new in every session (the test database outlives it: their seqs would be conflicts)
NEW_VAN, PI_VAN = (f"{name}-{time.time_ns() // 1_000_000 % 10**9}" for name in ("newvan", "pi-van"))


def _cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=settings_env(settings), capture_output=True, text=True, timeout=timeout, check=False
    )


def _printed(out: str, command: str) -> str:
    """The pasteable line of ``command`` in a connect block."""
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(command + " ")]
    assert lines, f"no {command} line in:\n{out[-3000:]}"
    return lines[-1]


def _run_prefix(out: str) -> str:
    found = re.search(r'"vehicle_ids": "(r\d+-)veh-001', out)
    assert found, out[-3000:]
    return found.group(1)


def _gps_jumps(db: Any, run: str) -> int:
    return int(
        db.execute(
            "SELECT count(*) FROM alerts WHERE tenant = %s AND type = 'gps_jump' AND vehicle_id LIKE %s",
            (TENANT, run + "%"),
        ).fetchone()[0]
    )


def test_first_hour(services_settings: Settings, db: Any, tmp_path: Path) -> None:
    settings = replace(
        services_settings, tenant=TENANT, sim_vehicles=VEHICLES, sim_minutes=MINUTES, sim_speedup=20.0, sim_seed=11
    )
    env = settings_env(settings)

    # 1. the demo; a second one at the same time is refused at once, naming the first's pid
    first = subprocess.Popen([*CLI, "demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(
            lambda: any(
                f"pid {first.pid}" in p.read_text() for p in settings.state_dir.resolve().glob(".session*.lock")
            ),
            60,
            "the first demo holding the state folder",
        )
        began = time.monotonic()
        second = _cli(settings, "demo")
        assert second.returncode == 1, second.stdout + second.stderr
        assert (
            f"fleetstream demo: refused: the state folder {settings.state_dir.resolve()} is in use by " in second.stderr
        )
        assert f"fleetstream demo (pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert time.monotonic() - began < 30  # at once, not after the first ended
        out1, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out1[-3000:]
    # set-up steps are announced as they start; the summary is JSON; the connect block follows
    for step in ("... migrating the schema", "... starting the engine", "... loading the road network"):
        assert step in out1
    assert re.search(r"^simulator: \{.*\}$", out1, re.M)

    # 2. the same seed again: fresh vehicle ids, the same gps_jump count
    done = _cli(settings, "demo", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out2 = done.stdout
    run1, run2 = _run_prefix(out1), _run_prefix(out2)
    assert run1 != run2
    jumps1, jumps2 = _gps_jumps(db, run1), _gps_jumps(db, run2)
    print(json.dumps({"runs": [run1, run2], "gps_jump": [jumps1, jumps2]}))
    assert jumps1 == jumps2
    stored = db.execute("SELECT count(*) FROM positions WHERE tenant = %s", (TENANT,)).fetchone()[0]
    assert stored > 0

    # 3. the printed psql line: this tenant's rows, read-only
    psql = _printed(out2, "psql")
    dsn = shlex.split(psql)[1]
    assert "user=fleetstream_reader_firsthour" in dsn
    if shutil.which("psql"):
        seen = subprocess.run(
            [*shlex.split(psql), "-At", "-c", "SELECT count(*) FROM positions"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert seen.returncode == 0 and int(seen.stdout) == stored, seen.stderr
        write = subprocess.run(
            [*shlex.split(psql), "-c", "DELETE FROM positions"], capture_output=True, text=True, check=False
        )
        assert write.returncode != 0 and "permission denied" in write.stderr
    else:
        with psycopg.connect(dsn, autocommit=True) as reader:
            assert reader.execute("SELECT count(*) FROM positions").fetchone()[0] == stored
    status = _cli(settings, "services", "status", "--tenant", TENANT)
    assert status.returncode == 0, status.stderr
    assert _printed(status.stdout, "psql") == psql
    assert _printed(status.stdout, "mosquitto_sub") == _printed(out2, "mosquitto_sub")

    # 4. the manager's feed, with a new device publishing
    engine = Engine(settings)
    engine.start()
    try:
        engine.wait_ready()
        _manager_sees_a_new_devices_alert(settings, _printed(out2, "mosquitto_sub"))
        # 5. the edge bundle, installed offline, checked, running
        _edge_bundle(settings, db, tmp_path)
    finally:
        engine.stop()


def _manager_sees_a_new_devices_alert(settings: Settings, mosquitto_sub: str) -> None:
    argv = shlex.split(mosquitto_sub)
    assert argv[argv.index("-p") + 1] == str(settings.mqtt_tls_port) and "--cafile" in argv  # over TLS
    # stdbuf: mosquitto_sub's stdout is a pipe here, which C stdio would fill before passing on
    sub = subprocess.Popen(
        ["stdbuf", "-oL", *argv, "-d", "-W", "150"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert sub.stdout is not None
        seen: list[str] = []
        for line in sub.stdout:  # -d: the broker's SUBACK is printed once it subscribed
            seen.append(line)
            if "received SUBACK" in line:
                break
        assert any("received SUBACK" in line for line in seen), "".join(seen)
        added = _cli(settings, "device", "add", TENANT, NEW_VAN)
        assert added.returncode == 0, added.stderr
        device = json.loads(added.stdout)
        ca = argv[argv.index("--cafile") + 1]
        now = datetime.now(UTC)
        # two fixes 20 km apart 10 s apart: a jump no van can make, then a consistent third one
        for seq, (lat, lon, back_s) in enumerate([(60.17, 24.94, 30), (60.35, 24.94, 20), (60.1702, 24.9402, 10)]):
            fix = {
                "v": 1,
                "vehicle": NEW_VAN,
                "seq": seq + 1,
                "fix_time": (now - timedelta(seconds=back_s)).isoformat().replace("+00:00", "Z"),
                "lat": lat,
                "lon": lon,
            }
            pub = subprocess.run(
                ["mosquitto_pub", "-h", settings.mqtt_host, "-p", str(settings.mqtt_tls_port), "--cafile", ca]
                + ["-u", device["username"], "-P", device["password"], "-i", device["client_id"], "-V", "mqttv5"]
                + ["-q", "1", "-t", f"fleet/{TENANT}/{NEW_VAN}/gps", "-m", json.dumps(fix)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert pub.returncode == 0, pub.stderr
        alert = None
        for line in sub.stdout:
            seen.append(line)
            if line.startswith(f"alerts/{TENANT}/{NEW_VAN} "):
                alert = json.loads(line.split(" ", 1)[1])
                if alert.get("type") == "gps_jump":
                    break
        assert alert is not None and alert["type"] == "gps_jump", "".join(seen)
    finally:
        sub.kill()
        sub.wait()


def _edge_bundle(settings: Settings, db: Any, tmp_path: Path) -> None:
    made = _cli(settings, "edge", "bundle", "--tenant", TENANT, "--vehicle", PI_VAN, "--out", str(tmp_path))
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.strip())
    assert archive.name == f"fleetstream-edge-{TENANT}-{PI_VAN}.tar.gz" and "install.sh" in made.stderr
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / archive.name.removesuffix(".tar.gz")
    assert {p.name for p in folder.iterdir()} >= {"wheels", "edge.toml", "ca.crt", "edge.password", "install.sh"}
    assert {p.name.split("-")[0] for p in (folder / "wheels").iterdir()} == {"fleetstream_edge", "paho_mqtt"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(folder / "wheels")]
        + ["fleetstream-edge"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    agent = str(venv / "bin" / "fleetstream-edge")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSTREAM_")}
    check = subprocess.run(
        [agent, "--config", str(folder / "edge.toml"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # not the repository: the agent comes from the wheel
        env=clean_env,
    )
    out = check.stdout
    assert f"ok   broker: {settings.mqtt_host}:{settings.mqtt_tls_port} accepted {TENANT}.{PI_VAN} (TLS verified" in out
    assert check.returncode == 2 and "FAIL gpsd" in out and "fix: install and start gpsd" in out
    print(out)
    # with fake sensors (a van without its hardware yet) the installed agent runs and is stored
    config = (folder / "edge.toml").read_text()
    config = config.replace('source = "gpsd"', 'source = "fake"\nfake_rate_hz = 5.0').replace(
        'source = "w1"', 'source = "fake"'
    )
    config = config.replace('source = "gpio"', 'source = "fake"').replace(
        "/var/lib/fleetstream-edge/outbox.sqlite3", str(tmp_path / "outbox.sqlite3")
    )
    (folder / "fake.toml").write_text(config)
    ok = subprocess.run(
        [agent, "--config", str(folder / "fake.toml"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
    )
    assert ok.returncode == 0 and "fleetstream-edge: ready" in ok.stdout, ok.stdout + ok.stderr
    running = subprocess.Popen(
        [agent, "--config", str(folder / "fake.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env,
    )
    try:

        def stored() -> int:
            return int(
                db.execute(
                    "SELECT count(*) FROM positions WHERE tenant = %s AND vehicle_id = %s", (TENANT, PI_VAN)
                ).fetchone()[0]
            )

        wait_until(stored, 90, "the installed agent's fixes stored", every_s=0.5)
    finally:
        running.send_signal(signal.SIGTERM)
        log, _ = running.communicate(timeout=60)
    assert running.returncode == 0 and "Traceback" not in log, log[-3000:]
