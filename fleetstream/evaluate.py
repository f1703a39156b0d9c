"""``fleetstream evaluate``: the simulator's labelled anomalies through the real engine, scored.

Services up, schema, a fresh tenant; the engine (gateway shards + analytics dataflow)
runs while a simulated fleet of edge agents drives on Helsinki's road network with
injected, labelled anomalies. When everything sent has been analysed, the alerts and
stop events stored in TimescaleDB are scored against the simulator's ground truth
(``fleetstream/evaluation.py``) and printed; the report is also written as JSON to
``<state_dir>/eval/report-<tenant>.json``. Exit code 1 when a target is missed.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from core.settings import Settings
from fleetstream import services
from fleetstream.demo import simulate
from fleetstream.engine import Engine
from fleetstream.evaluation import format_report, report_passes, score
from store.db import connect, migrate, scalar

__all__ = ["EVALUATION_DEFAULTS", "run_evaluation"]

# the default scenario: a fleet big and anomalous enough for stable rates, sped up to fit minutes
EVALUATION_DEFAULTS = {"sim_vehicles": 100, "sim_minutes": 6.0, "sim_speedup": 20.0, "sim_anomaly_probability": 0.5}


def _thresholds(settings: Settings) -> dict[str, float]:
    return {
        "unplanned_dwell": settings.unplanned_dwell_s,
        "route_drift": settings.drift_min_duration_s,
        "temp_excursion": settings.excursion_min_s,
        "door_open_away": 0.0,
        "offline": settings.offline_after_s,
    }


def _processed(conn: Any, tenant: str) -> tuple[int, int]:
    stored = sum(
        scalar(conn, f"SELECT count(*) FROM {t} WHERE tenant = %s", (tenant,))
        for t in ("positions", "temperatures", "door_events")
    )
    seen = scalar(
        conn,
        "SELECT coalesce(sum(gps_count + temp_count + door_count), 0) FROM vehicle_state WHERE tenant = %s",
        (tenant,),
    )
    return int(stored), int(seen)


def _rows(conn: Any, sql: str, tenant: str) -> list[dict[str, Any]]:
    cur = conn.execute(sql, (tenant,))
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def run_evaluation(settings: Settings, quiet: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Run the scenario in ``settings`` (its ``sim_*`` knobs); returns (report, missed targets)."""
    settings = replace(settings, tenant=f"eval{int(time.time())}")

    def say(*parts: object) -> None:
        if not quiet:
            print(*parts, flush=True)

    say(
        f"fleetstream evaluate: {settings.sim_vehicles} vans, {settings.sim_minutes:g} min at "
        f"{settings.sim_speedup:g}x ({settings.sim_minutes * settings.sim_speedup:g} simulated minutes), "
        f"anomaly probability {settings.sim_anomaly_probability:g}, seed {settings.sim_seed}, tenant {settings.tenant}"
    )
    if settings.embedded_mqtt or settings.embedded_pg:
        services.up(settings)
    migrate(settings.dsn())
    engine = Engine(settings, with_api=False)  # scored from the tables; no page to serve
    engine.start()
    engine.wait_ready()
    progress: dict[str, int] = {}
    try:
        result = simulate(settings, progress=progress)
        with connect(settings.dsn(), autocommit=True) as conn:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                stored, seen = _processed(conn, settings.tenant)
                if stored and seen >= stored:
                    break
                time.sleep(0.5)
            time.sleep(2 * settings.flow_epoch_s)  # the last sink batch
            alerts = _rows(
                conn,
                "SELECT id, type, vehicle_id, status, start_time, end_time, detected_at FROM alerts WHERE tenant = %s",
                settings.tenant,
            )
            stops = _rows(
                conn,
                "SELECT kind, vehicle_id, stop_id, visit, at, retracted FROM stop_events WHERE tenant = %s",
                settings.tenant,
            )
    finally:
        engine.stop()
    labels = [json.loads(line) for line in Path(result["labels"]).read_text(encoding="utf-8").splitlines()]
    report = score(
        labels, alerts, stops, sim_end=datetime.fromisoformat(result["sim_reached"]), thresholds=_thresholds(settings)
    )
    report.update(
        tenant=settings.tenant,
        readings=result["readings"],
        seed=settings.sim_seed,
        vehicles=settings.sim_vehicles,
        speedup=settings.sim_speedup,
    )
    missed = report_passes(report)
    out = Path(settings.state_dir) / "eval" / f"report-{settings.tenant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    say("\n" + format_report(report))
    say(f"\nreport: {out}")
    say(
        "targets met (precision and recall >= 0.95, median delay within 30 s of the threshold)"
        if not missed
        else "targets missed:\n  " + "\n  ".join(missed)
    )
    return report, missed
