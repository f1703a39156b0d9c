"""The main job: embedded services, the engine and a simulated fleet, with live progress."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import Settings
from fleetstream import credentials, services
from fleetstream.connection import cli_command, connection_commands, format_commands
from fleetstream.engine import Engine
from fleetstream.state import exclusive_use, state_lock
from store.db import connect, migrate, one, scalar

__all__ = ["control_tower_url", "run_demo", "simulate", "fleet_summary"]

_SETTLE_TIMEOUT_S = 120.0  # longest wait, after the fleet finished, for the dataflow to catch up


@dataclass
class _Sample:
    at: float
    published: int
    stored: int
    dead: int
    duplicates: int
    processed: int
    lag_s: float | None
    tenant_rows: int


def _sample(conn: Any, published: int, tenant: str, since: datetime) -> _Sample:
    # rates come from the shards' counters; the backlog compares the tenant's own rows with
    # what the dataflow counted for it (other tenants' history may share the database); the lag
    # is of readings received since ``since`` only: a vehicle of an earlier run that the dataflow
    # touches again (a replay, a timer) would show how old its last reading is, not a lag
    stored, dead, dups = conn.execute(
        "SELECT coalesce(sum(stored), 0), coalesce(sum(dead_letters), 0), coalesce(sum(duplicates), 0) "
        "FROM gateway_shards"
    ).fetchone()
    processed, lag = conn.execute(
        "SELECT coalesce(sum(gps_count + temp_count + door_count), 0), "
        "extract(epoch FROM max(processed_at - last_received_at) FILTER (WHERE processed_at > now() - interval '5 s' "
        "AND last_received_at >= %s)) FROM vehicle_state WHERE tenant = %s",
        (since, tenant),
    ).fetchone()
    tenant_rows = scalar(
        conn,
        "SELECT (SELECT count(*) FROM positions WHERE tenant = %(t)s) + (SELECT count(*) FROM temperatures "
        "WHERE tenant = %(t)s) + (SELECT count(*) FROM door_events WHERE tenant = %(t)s)",
        {"t": tenant},
    )
    return _Sample(
        time.monotonic(),
        published,
        int(stored),
        int(dead),
        int(dups),
        int(processed),
        float(lag) if lag is not None else None,
        int(tenant_rows),
    )


def _progress_line(first: _Sample, prev: _Sample, cur: _Sample) -> str:
    dt = max(cur.at - prev.at, 1e-6)
    lag = f"{cur.lag_s:.1f} s" if cur.lag_s is not None else "-"
    return (
        f"[{cur.at - first.at:6.0f} s] in {(cur.published - prev.published) / dt:7.0f}/s  "
        f"stored {(cur.stored - prev.stored) / dt:7.0f}/s  total {cur.stored - first.stored:8d}  "
        f"flow lag {lag:>6}  backlog {max(0, cur.tenant_rows - cur.processed):6d}  "
        f"dead letters {cur.dead - first.dead:4d}  duplicates {cur.duplicates - first.duplicates:4d}"
    )


def fleet_summary(settings: Settings, tenant: str, since: datetime) -> dict[str, Any]:
    """What TimescaleDB received for ``tenant`` since ``since``: counts, time range, dead letters."""
    with connect(settings.dsn(), autocommit=True) as conn:
        out: dict[str, Any] = {}
        for table in ("positions", "temperatures", "door_events"):
            count, vehicles, first, last = one(
                conn,
                f"SELECT count(*), count(DISTINCT vehicle_id), min(fix_time), max(fix_time) FROM {table} "
                "WHERE tenant = %s AND received_at >= %s",
                (tenant, since),
            )
            out[table] = {"rows": count, "vehicles": vehicles, "first_fix": first, "last_fix": last}
        out["h3_cells_visited"] = scalar(
            conn,
            "SELECT count(DISTINCT h3_cell) FROM positions WHERE tenant = %s AND received_at >= %s",
            (tenant, since),
        )
        out["dead_letters"] = dict(  # the tenant's devices' and trackers' (by their identities)
            conn.execute(
                "SELECT reason, count(*) FROM dead_letters WHERE received_at >= %(since)s AND (topic LIKE %(fleet)s "
                "OR topic LIKE %(phones)s OR topic IN (SELECT protocol || '/' || identity FROM trackers "
                "WHERE tenant = %(tenant)s)) GROUP BY reason ORDER BY reason",
                {"since": since, "fleet": f"fleet/{tenant}/%", "phones": f"owntracks/ot.{tenant}.%", "tenant": tenant},
            ).fetchall()
        )
        # what the analytics made of it (rows written or changed during this run)
        out["alerts"] = dict(
            conn.execute(
                "SELECT type || ' ' || status, count(*) FROM alerts WHERE tenant = %s AND updated_at >= %s "
                "GROUP BY 1 ORDER BY 1",
                (tenant, since),
            ).fetchall()
        )
        out["stop_events"] = dict(
            conn.execute(
                "SELECT kind, count(*) FROM stop_events WHERE tenant = %s AND updated_at >= %s AND NOT retracted "
                "GROUP BY kind ORDER BY kind",
                (tenant, since),
            ).fetchall()
        )
        out["eta_updates"] = scalar(
            conn, "SELECT count(*) FROM eta_updates WHERE tenant = %s AND updated_at >= %s", (tenant, since)
        )
        # the dataflow's running totals (all time) must equal what is stored (all time)
        out["stored_all_time"] = {
            t: scalar(conn, f"SELECT count(*) FROM {t} WHERE tenant = %s", (tenant,))
            for t in ("positions", "temperatures", "door_events")
        }
        out["dataflow_vehicle_state"] = dict(
            zip(
                ("vehicles", "gps", "temp", "door"),
                one(
                    conn,
                    "SELECT count(*), coalesce(sum(gps_count), 0), coalesce(sum(temp_count), 0), "
                    "coalesce(sum(door_count), 0) FROM vehicle_state WHERE tenant = %s",
                    (tenant,),
                ),
                strict=True,
            )
        )
        return out


def _provision(settings: Settings, run: str) -> dict[str, str]:
    from sim.simulator import vehicle_ids

    return credentials.add_devices(settings, settings.tenant, vehicle_ids(settings.sim_vehicles, run))


def next_run(settings: Settings) -> str:
    """A fresh run id (``r<n>-``) for the vehicle ids of a simulated run, or "" with ``sim_fresh_ids`` 0.

    Why: a run that re-drove stored vehicle ids over a stored time span would jump between
    the old and the new positions (``gps_jump`` alerts that mean nothing). ``n`` counts up in
    ``<state_dir>/sim/last_run`` and skips any run id the tenant already has readings of (the
    counter may be older than the database).
    """
    from sim.simulator import vehicle_ids

    if not settings.sim_fresh_ids:
        return ""
    counter = Path(settings.state_dir) / "sim" / "last_run"
    with state_lock(settings, "sim-run"), connect(settings.dsn(), autocommit=True) as conn:
        try:
            n = int(counter.read_text(encoding="ascii").strip() or 0)
        except (FileNotFoundError, ValueError):
            n = 0
        while True:
            n += 1
            first = vehicle_ids(1, f"r{n}-")[0]
            used = scalar(
                conn,
                "SELECT EXISTS (SELECT 1 FROM positions WHERE tenant = %(t)s AND vehicle_id = %(v)s) "
                "OR EXISTS (SELECT 1 FROM vehicle_state WHERE tenant = %(t)s AND vehicle_id = %(v)s)",
                {"t": settings.tenant, "v": first},
            )
            if not used:
                break
        counter.parent.mkdir(parents=True, exist_ok=True)
        counter.write_text(f"{n}\n", encoding="ascii")
    return f"r{n}-"


def simulate(
    settings: Settings,
    batch: bool = False,
    stop: threading.Event | None = None,
    progress: dict[str, int] | None = None,
    run: str | None = None,
) -> dict[str, Any]:
    """Publish the simulated fleet with each vehicle's own credentials (provisioned here).

    ``run`` starts the vehicle ids (default: a fresh one from :func:`next_run`)."""
    from sim.fleet import run_simulation

    run = next_run(settings) if run is None else run

    # fifty agents' start/connect/stop lines would drown the progress display
    for name in ("fleetstream.edge.agent", "fleetstream.edge.publisher", "fleetstream.edge.outbox"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # an external broker's accounts are not ours to create: publish as the configured user
    passwords = _provision(settings, run) if settings.embedded_mqtt else None
    service = None if settings.embedded_mqtt else credentials.mqtt_account(settings, "simulator")

    def on_progress(counts: dict[str, int]) -> None:
        if progress is not None:
            progress.update(counts)

    trackers = None
    if settings.sim_protocols:
        from fleetstream.sim_trackers import TrackerFleet, VanTracker
        from fleetstream.trackers import simulated_trackers
        from sim.simulator import vehicle_ids

        vans = [VanTracker(**t) for t in simulated_trackers(settings, vehicle_ids(settings.sim_vehicles, run))]

        def trackers(counts: Counter[str]) -> TrackerFleet:
            return TrackerFleet(settings, vans, counts)

    return run_simulation(
        settings,
        vehicles=settings.sim_vehicles,
        minutes=settings.sim_minutes,
        speedup=settings.sim_speedup,
        seed=settings.sim_seed,
        batch=batch,
        device_passwords=passwords,
        service_credentials=service,
        on_progress=on_progress,
        stop_event=stop,
        on_plans=lambda plans: _discard(store_plans(settings, plans)),
        trackers=trackers,
        run=run,
    )


def _discard(_: object) -> None:
    return None


def store_plans(settings: Settings, plans: list[dict[str, Any]]) -> list[int]:
    """Store the simulated fleet's plans (as dispatch would) before the first van reports."""
    from core.plan import Plan
    from store.plans import store_plan

    with connect(settings.dsn(), autocommit=True) as conn:
        return [store_plan(conn, Plan.from_dict(p), "simulator")[0] for p in plans]


def control_tower_url(settings: Settings) -> str:
    """The page's URL with a new dispatcher token of the demo's tenant (``fleetstream token list`` shows it)."""
    from api.tokens import add_token

    with connect(settings.dsn(), autocommit=True) as conn:
        token, _ = add_token(conn, settings.tenant, "dispatcher", "demo")
    return f"{settings.api_url()}/?token={token}"


def _step(text: str) -> float:
    """Say what starts now (a set-up step can take a minute the first time); returns its start."""
    print(f"... {text}", flush=True)
    return time.monotonic()


def run_demo(settings: Settings, batch: bool = False) -> int:
    """Services up, schema, engine, simulated fleet; live progress; summary from TimescaleDB.

    Holds the state folder (:func:`fleetstream.state.exclusive_use`): a second demo, engine or
    test session on it is refused at once. The fleet drives fresh vehicle ids (:func:`next_run`)."""
    with exclusive_use(settings, "fleetstream demo"):
        return _run_demo(settings, batch)


def _run_demo(settings: Settings, batch: bool) -> int:
    started = time.monotonic()
    started_at = datetime.now(UTC)
    print(
        f"fleetstream demo: {settings.sim_vehicles} vehicles for {settings.sim_minutes:g} min "
        f"({settings.sim_speedup:g}x simulated time), tenant {settings.tenant!r}",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if settings.embedded_mqtt or settings.embedded_pg:
        _step("starting Mosquitto and TimescaleDB (the first time: a new database, about a minute)")
        services.up(settings)
    _step("migrating the schema")
    migrate(settings.dsn())
    run = next_run(settings)
    print(f"services and schema ready in {time.monotonic() - started:.1f} s", flush=True)
    if stop.is_set():  # Ctrl-C during set-up: nothing runs yet
        print("interrupted during set-up; services still running", flush=True)
        return 130
    _step(f"starting the engine ({settings.gateway_workers} gateway shards, the dataflow, delivery, the API)")
    engine = Engine(settings)
    engine.start()
    _step("waiting for the engine's processes to subscribe")
    engine.wait_ready()
    watcher = threading.Thread(target=engine.watch, args=(stop,), name="engine-watch", daemon=True)
    watcher.start()  # restart what dies (the page's API too) while the demo runs
    if settings.engine_api:
        print(f"control tower (live while the demo runs): {control_tower_url(settings)}", flush=True)
    progress: dict[str, int] = {}
    result: dict[str, Any] = {}

    def drive() -> None:
        result.update(simulate(settings, batch=batch, stop=stop, progress=progress, run=run))

    _step(f"loading the road network and driving vehicles {run}veh-001 .. (progress every second)")
    sim = threading.Thread(target=drive, name="simulator", daemon=True)
    sim.start()
    tty = sys.stdout.isatty()
    try:
        with connect(settings.dsn(), autocommit=True) as conn:
            first = prev = _sample(conn, 0, settings.tenant, started_at)
            fleet_done_at = None
            while not stop.is_set():
                stop.wait(1.0)
                cur = _sample(conn, progress.get("published", 0), settings.tenant, started_at)
                line = _progress_line(first, prev, cur)
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
                if not sim.is_alive():  # fleet done: wait until everything is stored and processed
                    fleet_done_at = fleet_done_at or time.monotonic()
                    if cur.stored == prev.stored and cur.processed >= cur.tenant_rows:
                        break
                    if time.monotonic() - fleet_done_at > _SETTLE_TIMEOUT_S:
                        print(
                            f"\nthe dataflow had not caught up {_SETTLE_TIMEOUT_S:.0f} s after the fleet "
                            f"finished (backlog {cur.tenant_rows - cur.processed}); summarising anyway",
                            flush=True,
                        )
                        break
                prev = cur
    finally:
        interrupted = stop.is_set()
        stop.set()
        print("\n... stopping the simulator and the engine", flush=True)
        sim.join(30)
        watcher.join(5)
        engine.stop()
    print("\nsimulator: " + json.dumps(result or {"stopped": "interrupted before the fleet's summary"}, default=str))
    print(f"\nTimescaleDB received for tenant {settings.tenant!r} during this run:")
    for key, value in fleet_summary(settings, settings.tenant, started_at).items():
        print(f"  {key}: {json.dumps(value, default=str)}")
    print()
    print(format_commands(connection_commands(settings, settings.tenant), settings.tenant))
    print(
        f"\n{'interrupted' if interrupted else 'done'} in {time.monotonic() - started:.0f} s; services still running "
        f"(stop them with: {cli_command()} services down)"
    )
    return 0
