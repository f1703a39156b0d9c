"""ETA training benchmark: a simulated week of a delivery fleet in TimescaleDB, then
``fleetstream train eta`` on it, timed.

The week (``vehicles`` vans x ``days`` days, the ETA evaluation's simulated days: rush
hours, plans, true arrivals) is written straight into the tables the engine fills:
``positions`` and the arrivals in ``stop_events`` with ``COPY ... FROM STDIN (FORMAT
csv)`` from polars (the CSV is written by polars in bulk, so no Python runs per row;
with binary COPY every row would be a Python ``write_row`` call), and each day's plan
through ``store_plan`` (the store numbers the revisions 1..days, as the arrivals say).
Then the training runs exactly as ``fleetstream train eta`` does (read from the
database, build, train, publish), and the phases are printed.

It runs on its own embedded TimescaleDB beside the main one (state folder
``<state_dir>-bench``, ports +2, as the analytics benchmark; its earlier rows of the
bench tenant deleted first) and publishes the trained set to
``<state_dir>-bench/eta-bench-models``, not where an engine would load it.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from core.settings import Settings
from fleetstream import services
from fleetstream.bench.analytics import bench_settings
from fleetstream.eta_evaluation import FIRST_DAY, EtaEvalDay, simulated_history
from fleetstream.train_eta import run_train_eta
from models.roads import RoadNetwork
from store.db import connect, migrate
from store.history import EtaHistory
from store.plans import store_plan

__all__ = ["load_history", "run_eta_benchmark"]

TENANT = "etabench"
_SHARD = 99  # no gateway shard has this number: the replay index never confuses these rows with live ones


def _copy_csv(conn: Any, table: str, frame: pl.DataFrame) -> None:
    buf = io.BytesIO()
    frame.write_csv(buf, include_header=False)
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(buf.getvalue())


def _ts(column: str) -> pl.Expr:
    return pl.col(column).dt.strftime("%Y-%m-%d %H:%M:%S%.6f+00").alias(column)


def load_history(conn: Any, history: EtaHistory) -> dict[str, int]:
    """Write ``history`` into ``positions``, ``stop_events`` (arrivals) and ``plans``; returns row counts.

    ``conn`` must be idle (autocommit): plans are stored one transaction each.
    """
    pos = (
        history.positions.with_row_index("shard_seq")
        .with_columns(
            _ts("fix_time"),
            pl.col("fix_time").alias("received_at"),
            seq=pl.col("shard_seq").cast(pl.Int64),
            shard=pl.lit(_SHARD, pl.Int16),
        )
        .with_columns(_ts("received_at"))
    )
    pos = pos.select(
        "fix_time",
        "tenant",
        "vehicle_id",
        "seq",
        "lat",
        "lon",
        "speed_mps",
        "h3_cell",
        "received_at",
        "shard",
        "shard_seq",
    )
    stops = {(p.tenant, p.vehicle, p.version, s.id): s for p in history.plans for s in p.stops}
    arr = history.arrivals
    ids = [
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-arrival/{t}/{v}/{pv}/{s}"))
        for t, v, pv, s in arr.select("tenant", "vehicle_id", "plan_version", "stop_id").iter_rows()
    ]
    windows = [stops[key] for key in arr.select("tenant", "vehicle_id", "plan_version", "stop_id").iter_rows()]
    events = arr.with_columns(
        id=pl.Series(ids),
        kind=pl.lit("arrival"),
        visit=pl.lit(1),
        window_start=pl.Series([s.window_start for s in windows], dtype=pl.Datetime("us", "UTC")),
        window_end=pl.Series([s.window_end for s in windows], dtype=pl.Datetime("us", "UTC")),
        detected_at=pl.col("at"),
    )
    events = events.with_columns(on_time=pl.col("at").is_between(pl.col("window_start"), pl.col("window_end")))
    events = events.with_columns(_ts("at"), _ts("window_start"), _ts("window_end"), _ts("detected_at")).select(
        "id",
        "kind",
        "tenant",
        "vehicle_id",
        "stop_id",
        "plan_version",
        "visit",
        "at",
        "window_start",
        "window_end",
        "on_time",
        "detected_at",
    )
    with conn.transaction():
        _copy_csv(conn, "positions", pos)
        _copy_csv(conn, "stop_events", events)
    for plan in sorted(history.plans, key=lambda p: (p.vehicle, p.version)):
        version, _ = store_plan(conn, plan, "bench")
        if version != plan.version:
            raise RuntimeError(f"{plan.vehicle}: the store numbered day {plan.version}'s plan {version}")
    return {"positions": pos.height, "arrivals": events.height, "plans": len(history.plans)}


def run_eta_benchmark(main: Settings, vehicles: int = 50, days: int = 7) -> int:
    """Simulate, load, train from the database; prints the figures. Exit code: 0 when the training
    took under a minute, 1 otherwise (or when it failed)."""
    settings = bench_settings(main)
    services.up(settings)
    try:
        migrate(settings.dsn())
        with connect(settings.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM positions WHERE tenant = %s", (TENANT,))
            conn.execute("DELETE FROM stop_events WHERE tenant = %s", (TENANT,))
            conn.execute("DELETE FROM plans WHERE tenant = %s", (TENANT,))
        began = time.perf_counter()
        week = [EtaEvalDay(FIRST_DAY + timedelta(days=d), main.sim_seed + d, d + 1) for d in range(days)]
        history = simulated_history(
            RoadNetwork.from_settings(main), week, vehicles, tenant=TENANT, gps_period_s=main.sim_gps_period_s
        )
        simulated = time.perf_counter()
        with connect(settings.dsn(), autocommit=True) as conn:
            counts = load_history(conn, history)
            conn.execute("ANALYZE positions")
            conn.execute("ANALYZE stop_events")
        loaded = time.perf_counter()
        # published beside, not in, <state_dir>-bench/models/eta: the analytics benchmark's engine runs model-less
        code, summary = run_train_eta(
            settings, TENANT, say=lambda *_: None, models_dir=Path(settings.state_dir) / "eta-bench-models"
        )
        if code != 0:
            print(f"training failed: {summary}")
            return 1
    finally:
        services.down(settings)
    figures = {
        "vehicles": vehicles,
        "days": days,
        **counts,
        "simulate_s": round(simulated - began, 1),
        "load_s": round(loaded - simulated, 1),
        "load_rows_per_s": round((counts["positions"] + counts["arrivals"]) / (loaded - simulated)),
        "train_read_s": summary["load_s"],
        "train_fit_s": summary["train_s"],
        "train_save_s": summary["save_s"],
        "train_total_s": summary["total_s"],
        "training_rows": summary["rows"],
        "version": summary["version"],
        "metrics": summary["metrics"],
    }
    print(f"\nfleetstream ETA training benchmark — {vehicles} vans x {days} simulated days in TimescaleDB")
    print(f"  simulated            {figures['simulate_s']:>7.1f} s")
    print(
        f"  loaded into the DB   {figures['load_s']:>7.1f} s  ({counts['positions']:,} positions, "
        f"{counts['arrivals']:,} arrivals, {counts['plans']} plans; {figures['load_rows_per_s']:,} rows/s)"
    )
    print(
        f"  fleetstream train eta{summary['total_s']:>7.1f} s  (read {summary['load_s']:.1f} s, "
        f"profiles + rows + model {summary['train_s']:.1f} s, save {summary['save_s']:.1f} s; "
        f"{summary['rows']:,} training rows)"
    )
    print(json.dumps(figures, default=str))
    within = summary["total_s"] < 60.0
    print("target met: training under a minute" if within else "target missed: training took a minute or more")
    return 0 if within else 1
