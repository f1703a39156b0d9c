"""``fleetstream evaluate``: the simulator's labelled anomalies through the real engine, scored.

Services up, schema, a fresh tenant; the engine (gateway shards + analytics dataflow)
runs while a simulated fleet of edge agents drives on Helsinki's road network with
injected, labelled anomalies. When everything sent has been analysed, the alerts and
stop events stored in TimescaleDB are scored against the simulator's ground truth
(``fleetstream/evaluation.py``) and printed; the report is also written as JSON to
``<state_dir>/eval/report-<tenant>.json``. Exit code 1 when a target is missed.

Scenarios (``--scenario``, ``sim.fleet.SCENARIOS``): ``default`` (the ideal 5 s reporter),
``sparse`` (30 s with jitter, no device speed, tunnels and dead zones, urban-canyon noise,
shifts ending at the depot) and ``bus`` (stops 80-150 m apart, pass-throughs). Each run
also reads the flow's ``flow_lag`` rows of its own wall-clock span: how far the analytics
ran behind and, when it stalled, what took the time (``pipelines/meter.py``). Several
seeds and repeats (``run_evaluations``) report each run and the worst of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import Settings
from fleetstream import services
from fleetstream.demo import simulate
from fleetstream.engine import Engine
from fleetstream.evaluation import format_report, lag_report, report_passes, score, worst
from store.db import connect, migrate, scalar

__all__ = ["EVALUATION_DEFAULTS", "run_evaluation", "run_evaluations", "scenario_settings"]

# a fleet big and anomalous enough for stable rates, sped up to fit minutes; timers woken every
# 200 ms of wall time, 4 s of simulated time at 20x (the engine's 1 s tick would be 20 s of it)
EVALUATION_DEFAULTS: dict[str, float] = {
    "sim_vehicles": 100,
    "sim_minutes": 6.0,
    "sim_speedup": 20.0,
    "sim_anomaly_probability": 0.5,
    "flow_tick_ms": 200,
}
# delivery rounds take 1.5-2.5 h: the sparse scenario runs 3 simulated hours, so most shifts end in it
SCENARIO_MINUTES = {"default": 6.0, "sparse": 9.0, "bus": 6.0}


def _thresholds(settings: Settings) -> dict[str, float]:
    return {
        "unplanned_dwell": settings.unplanned_dwell_s,
        "route_drift": settings.drift_min_duration_s,
        "temp_excursion": settings.excursion_min_s,
        "door_open_away": 0.0,
        "offline": settings.offline_after_s,
        "door_open_too_long": settings.door_open_max_s,
    }


def scenario_settings(settings: Settings, scenario: str = "default", **given: Any) -> Settings:
    """``settings`` with the evaluation's defaults, then the scenario's bundle, then ``given``
    (None values are ignored)."""
    from sim.fleet import SCENARIOS

    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    values: dict[str, Any] = {**EVALUATION_DEFAULTS, "sim_minutes": SCENARIO_MINUTES.get(scenario, 6.0)}
    values.update(SCENARIOS[scenario])
    values.update({k: v for k, v in given.items() if v is not None})
    return replace(settings, **values)


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


def run_evaluation(
    settings: Settings, quiet: bool = False, scenario: str = "default"
) -> tuple[dict[str, Any], list[str]]:
    """Run the fleet in ``settings`` (its ``sim_*`` knobs, ``scenario`` names them in the report);
    returns (report, missed targets)."""
    settings = replace(settings, tenant=f"eval{int(time.time())}")

    def say(*parts: object) -> None:
        if not quiet:
            print(*parts, flush=True)

    say(
        f"fleetstream evaluate: {settings.sim_vehicles} vans, {settings.sim_minutes:g} min at "
        f"{settings.sim_speedup:g}x ({settings.sim_minutes * settings.sim_speedup:g} simulated minutes), "
        f"anomaly probability {settings.sim_anomaly_probability:g}, seed {settings.sim_seed}, tenant {settings.tenant}, "
        f"scenario {scenario}"
    )
    if settings.embedded_mqtt or settings.embedded_pg:
        services.up(settings)
    migrate(settings.dsn())
    began_wall = datetime.now(UTC)
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
                "SELECT id, type, vehicle_id, status, start_time, end_time, detected_at, details FROM alerts "
                "WHERE tenant = %s",
                settings.tenant,
            )
            lag = _rows(
                conn,
                "SELECT * FROM flow_lag WHERE at >= %s ORDER BY at",
                began_wall,  # type: ignore[arg-type]
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
    report["flow_lag"] = lag_report(lag)
    report.update(
        tenant=settings.tenant,
        scenario=scenario,
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


def run_evaluations(
    settings: Settings, scenario: str, seeds: list[int], repeats: int = 1
) -> tuple[list[dict[str, Any]], list[str]]:
    """``run_evaluation`` for every seed, ``repeats`` times each; prints each run's missed
    targets and the worst figures over all runs; returns (reports, every missed target)."""
    reports: list[dict[str, Any]] = []
    missed_all: list[str] = []
    for seed in seeds:
        for repeat in range(repeats):
            report, missed = run_evaluation(replace(settings, sim_seed=seed), scenario=scenario)
            reports.append(report)
            missed_all += [f"seed {seed} run {repeat + 1}: {m}" for m in missed]
    if len(reports) > 1:
        summary = worst(reports)
        out = Path(settings.state_dir) / "eval" / f"worst-{scenario}-{int(time.time())}.json"
        out.write_text(json.dumps({"worst": summary, "runs": reports}, indent=2, default=str), encoding="utf-8")
        print(f"\nworst of {len(reports)} runs ({scenario}; seeds {seeds} x {repeats}):")
        print(json.dumps(summary, indent=1, default=str))
        print(f"report: {out}")
        print("all targets met in every run" if not missed_all else "targets missed:\n  " + "\n  ".join(missed_all))
    return reports, missed_all
