"""``fleetstream evaluate --eta``: ETA accuracy at 5, 15 and 30 minutes before arrival, on simulated days.

The fleet (``FleetSimulator`` on Helsinki's roads, rush-hour congestion by place and
local time) drives ``days`` consecutive training days (seed ``seed + d``, one plan
version per day, vans starting over ``stagger_s`` from 08:00 local) and then one test
day (the next date, seed ``seed + 1000``: other stops, other traffic). Everything is in
process: the simulator's GPS fixes become the positions frame and its true arrival
times the arrivals (no broker, no database; ``fleetstream train eta`` is the path
through TimescaleDB). Speed profiles, detour factor and model are trained on the
training days with ``training.eta``; the test day's fixes are replayed through the
same ``EtaTracker`` with those profiles, giving at each horizon the estimate made at
the last fix at or before ``arrival - horizon``:

- model:     the trained correction of the profile estimate (what the engine serves);
- profile:   the speed-profile estimate alone;
- untrained: the engine with nothing trained (one constant speed, the default detour factor);
- straight:  straight-line metres through the stops x the learned detour factor / the learned
             mean trip speed (the simple baseline);
- naive:     straight-line metres / current speed (none while the van stands: below 1 m/s).

``--scenario sparse`` simulates the training and test days as real trackers report (a fix
every 30 s with jitter, no device speed, tunnels and dead zones): speeds are then derived.

Scoring (``score_eta``, pure): per horizon, on the rows where the naive baseline
answers (all compared on the same rows), MAE in seconds and MAPE in percent of the true
time to arrival; and the MAE of the others over every row. Targets: the model's MAE at
least 30 % below the naive one and below the profile's, the untrained engine's and the
straight baseline's, at every horizon (``eta_targets_missed``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h3.api.basic_int as h3
import polars as pl

from core.contract import GpsFix
from core.plan import Plan
from core.settings import Settings
from models.roads import RoadNetwork
from sim.simulator import AnomalyPlan, FleetSimulator, RawMessage, Realism
from store.history import EtaHistory

__all__ = [
    "EVAL_HORIZONS_S",
    "EtaEvalDay",
    "baselines_missed",
    "eta_targets_missed",
    "format_baselines_table",
    "format_eta_table",
    "run_eta_evaluation",
    "score_eta",
    "simulated_history",
]

EVAL_HORIZONS_S: tuple[float, ...] = (300.0, 900.0, 1800.0)
FIRST_DAY = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # a Monday, 08:00 in Helsinki
TEST_SEED_OFFSET = 1000
NAIVE_GAIN = 0.30  # the model's MAE must be at least this share below the naive one


@dataclass(frozen=True)
class EtaEvalDay:
    """One simulated day: its start (UTC), simulator seed and the plan version its plans get."""

    start: datetime
    seed: int
    version: int


def simulated_history(
    network: RoadNetwork,
    days: Sequence[EtaEvalDay],
    vehicles: int,
    *,
    tenant: str = "demo",
    stagger_s: float = 9 * 3600.0,
    gps_period_s: float = 5.0,
    anomalies: AnomalyPlan | None = None,
    resolution: int = 9,
    realism: Realism | None = None,
) -> EtaHistory:
    """The fixes, true (first) arrivals and plans of ``vehicles`` vans on each of ``days``.

    Fixes as the devices sent them (noise, offline gaps delivered late: fix times are
    true), each once; ``h3_cell`` at ``resolution``; ``plan_version`` = the day's version.
    """
    anomalies = anomalies if anomalies is not None else AnomalyPlan(malformed_rate=0.0, duplicate_rate=0.0)
    tenants, vids, times, lats, lons, speeds = [], [], [], [], [], []
    arrivals: list[tuple[str, str, str, int, datetime]] = []
    plans: list[Plan] = []
    for day in days:
        sim = FleetSimulator(
            network,
            vehicles=vehicles,
            seed=day.seed,
            start=day.start,
            gps_period_s=gps_period_s,
            anomalies=anomalies,
            tenant=tenant,
            stagger_s=stagger_s,
            realism=realism,
        )
        for event in sim.events():
            fix = event.item
            if event.duplicate or isinstance(fix, RawMessage) or not isinstance(fix, GpsFix):
                continue
            tenants.append(tenant)
            vids.append(fix.vehicle)
            times.append(fix.fix_time)
            lats.append(fix.lat)
            lons.append(fix.lon)
            speeds.append(fix.speed_mps)
        for label in sim.labels():
            if label["kind"] == "stop_visit" and label["arrival"] is not None:
                arrivals.append(
                    (tenant, label["vehicle"], label["stop_id"], day.version, datetime.fromisoformat(label["arrival"]))
                )
        for body in sim.contract_plans():
            plans.append(Plan.from_dict({**body, "version": day.version}))
    cells = [h3.latlng_to_cell(lat, lon, resolution) for lat, lon in zip(lats, lons, strict=True)]
    positions = pl.DataFrame(
        {
            "tenant": tenants,
            "vehicle_id": vids,
            "fix_time": times,
            "lat": lats,
            "lon": lons,
            "speed_mps": speeds,
            "h3_cell": cells,
        },
        schema={
            "tenant": pl.String,
            "vehicle_id": pl.String,
            "fix_time": pl.Datetime("us", "UTC"),
            "lat": pl.Float64,
            "lon": pl.Float64,
            "speed_mps": pl.Float64,
            "h3_cell": pl.Int64,
        },
    )
    arrival_frame = pl.DataFrame(
        arrivals,
        schema={
            "tenant": pl.String,
            "vehicle_id": pl.String,
            "stop_id": pl.String,
            "plan_version": pl.Int64,
            "at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )
    return EtaHistory(positions, arrival_frame, plans)


def _mean(series: pl.Series) -> float:
    value = series.mean()
    assert isinstance(value, (int, float))
    return float(value)


def score_eta(rows: pl.DataFrame, horizons_s: Sequence[float] = EVAL_HORIZONS_S) -> list[dict[str, Any]]:
    """Per horizon: errors of ``model_s``, ``profile_s`` and ``naive_s`` against ``label_s``.

    ``rows`` has ``horizon_s``, ``label_s`` (true seconds to arrival, > 0) and the three
    estimates (``naive_s`` null where it has no answer). Keys: horizon_s, rows, naive_rows;
    ``<name>_mae_s`` and ``<name>_mape_pct`` for model, profile, naive over the rows where
    the naive baseline answers; ``model_mae_all_s``, ``profile_mae_all_s`` over every row
    (None where there are no rows).
    """
    out: list[dict[str, Any]] = []
    others = [n for n in ("untrained", "straight") if f"{n}_s" in rows.columns]
    for h in horizons_s:
        at = rows.filter((pl.col("horizon_s") == float(h)) & (pl.col("label_s") > 0))
        common = at.filter(pl.col("naive_s").is_not_null() & pl.col("naive_s").is_finite())
        entry: dict[str, Any] = {"horizon_s": float(h), "rows": at.height, "naive_rows": common.height}
        for name in ("model", "profile", "naive"):
            err = (common[f"{name}_s"] - common["label_s"]).abs()
            entry[f"{name}_mae_s"] = _mean(err) if common.height else None
            entry[f"{name}_mape_pct"] = _mean(err / common["label_s"]) * 100.0 if common.height else None
        for name in ("model", "profile", *others):
            err = (at[f"{name}_s"] - at["label_s"]).abs()
            entry[f"{name}_mae_all_s"] = _mean(err) if at.height else None
            entry[f"{name}_mape_all_pct"] = _mean(err / at["label_s"]) * 100.0 if at.height else None
        out.append(entry)
    return out


def eta_targets_missed(table: list[dict[str, Any]], naive_gain: float = NAIVE_GAIN) -> list[str]:
    """The targets a scored table misses (empty = all met); see the module docstring."""
    missed = []
    for e in table:
        h = f"{e['horizon_s'] / 60:g} min"
        model, naive, profile = e["model_mae_s"], e["naive_mae_s"], e["profile_mae_s"]
        if model is None or naive is None or profile is None:
            missed.append(f"{h}: no rows to score")
            continue
        if model > (1.0 - naive_gain) * naive:
            missed.append(f"{h}: model MAE {model:.0f} s is not {naive_gain:.0%} below naive {naive:.0f} s")
        if model >= profile or (e["profile_mae_all_s"] is not None and e["model_mae_all_s"] >= e["profile_mae_all_s"]):
            missed.append(f"{h}: model MAE {model:.0f} s is not below the profile's {profile:.0f} s")
    return missed + [m for m in baselines_missed(table) if m not in missed]


def baselines_missed(table: list[dict[str, Any]]) -> list[str]:
    """Horizons where the model's MAE over every row is not below the untrained engine's and
    the straight baseline's (empty: it beats both everywhere)."""
    missed = []
    for e in table:
        h = f"{e['horizon_s'] / 60:g} min"
        if e["model_mae_all_s"] is None:
            missed.append(f"{h}: no rows to score")
            continue
        for name in ("untrained", "straight"):
            other = e.get(f"{name}_mae_all_s")
            if other is not None and e["model_mae_all_s"] >= other:
                missed.append(f"{h}: model MAE {e['model_mae_all_s']:.0f} s is not below the {name} {other:.0f} s")
    return missed


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_baselines_table(table: list[dict[str, Any]]) -> str:
    """MAE (and MAPE) over every row: the model against the untrained engine and the straight baseline."""
    lines = [
        "| before arrival | rows | MAE model | MAE untrained engine | MAE straight x detour / mean speed "
        "| MAE profile | MAPE model | MAPE untrained | MAPE straight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lines.append(
            f"| {e['horizon_s'] / 60:g} min | {e['rows']} | {_f(e['model_mae_all_s'], '.0f')} s "
            f"| {_f(e.get('untrained_mae_all_s'), '.0f')} s | {_f(e.get('straight_mae_all_s'), '.0f')} s "
            f"| {_f(e['profile_mae_all_s'], '.0f')} s | {_f(e.get('model_mape_all_pct'), '.1f')} % "
            f"| {_f(e.get('untrained_mape_all_pct'), '.1f')} % | {_f(e.get('straight_mape_all_pct'), '.1f')} % |"
        )
    return "\n".join(lines)


def format_eta_table(table: list[dict[str, Any]]) -> str:
    """The scored table as Markdown."""
    lines = [
        "| before arrival | rows (naive answers) | MAE model | MAE profile | MAE naive | model vs naive "
        "| MAPE model | MAPE profile | MAPE naive | all rows: MAE model / profile |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        gain = (
            None
            if not e["naive_mae_s"] or e["model_mae_s"] is None
            else (e["model_mae_s"] / e["naive_mae_s"] - 1.0) * 100.0
        )
        lines.append(
            f"| {e['horizon_s'] / 60:g} min | {e['rows']} ({e['naive_rows']}) | {_f(e['model_mae_s'], '.0f')} s "
            f"| {_f(e['profile_mae_s'], '.0f')} s | {_f(e['naive_mae_s'], '.0f')} s | {_f(gain, '+.0f')} % "
            f"| {_f(e['model_mape_pct'], '.1f')} % | {_f(e['profile_mape_pct'], '.1f')} % "
            f"| {_f(e['naive_mape_pct'], '.1f')} % "
            f"| {_f(e['model_mae_all_s'], '.0f')} s / {_f(e['profile_mae_all_s'], '.0f')} s |"
        )
    return "\n".join(lines)


def run_eta_evaluation(
    settings: Settings,
    vehicles: int | None = None,
    days: int | None = None,
    say: Callable[[str], Any] = print,
    scenario: str = "default",
) -> tuple[dict[str, Any], list[str]]:
    """Simulate, train, test, score and print; returns (report, missed targets). The report is
    also written to ``<state_dir>/eval/eta-report.json`` (``eta-report-<scenario>.json`` for another)."""
    from dataclasses import replace

    from sim.fleet import SCENARIOS, realism
    from training.eta import build_training_rows, train_eta_from_frames

    settings = replace(settings, **SCENARIOS[scenario])
    devices = realism(settings)

    vehicles = vehicles or settings.eta_eval_vehicles
    days = days or settings.eta_eval_days
    seed = settings.sim_seed
    began = time.perf_counter()
    network = RoadNetwork.from_settings(settings)
    train_days = [EtaEvalDay(FIRST_DAY + timedelta(days=d), seed + d, d + 1) for d in range(days)]
    test_day = EtaEvalDay(FIRST_DAY + timedelta(days=days), seed + TEST_SEED_OFFSET, days + 1)
    say(
        f"fleetstream evaluate --eta: {vehicles} vans, trained on {days} simulated days "
        f"({train_days[0].start:%Y-%m-%d}..{train_days[-1].start:%Y-%m-%d}, seeds {seed}..{seed + days - 1}), "
        f"tested on {test_day.start:%Y-%m-%d} (seed {test_day.seed})"
    )
    history = simulated_history(
        network, train_days, vehicles, tenant=settings.tenant, gps_period_s=settings.sim_gps_period_s, realism=devices
    )
    test = simulated_history(
        network, [test_day], vehicles, tenant=settings.tenant, gps_period_s=settings.sim_gps_period_s, realism=devices
    )
    simulated = time.perf_counter()
    training = train_eta_from_frames(history.positions, history.arrivals, history.plans, random_state=seed)
    trained = time.perf_counter()
    rows = build_training_rows(
        test.positions,
        test.arrivals,
        test.plans,
        profiles=training.profiles,
        detour_factor=training.detour_factor,
        horizons_s=EVAL_HORIZONS_S,
        mean_speed_mps=training.mean_speed_mps,
        stop_dwell_s=training.stop_dwell_s,
    )
    from models.eta import FEATURES
    from models.paths import DEFAULT_DETOUR_FACTOR

    model_s: Any = training.model.predict(rows.select(FEATURES).to_numpy()) if rows.height else []
    rows = rows.with_columns(model_s=pl.Series(model_s, dtype=pl.Float64))
    # the engine with nothing trained, on the same moments
    untrained = build_training_rows(
        test.positions,
        test.arrivals,
        test.plans,
        profiles=None,
        detour_factor=DEFAULT_DETOUR_FACTOR,
        horizons_s=EVAL_HORIZONS_S,
    ).select("trip", "stop_id", "horizon_s", pl.col("profile_s").alias("untrained_s"))
    rows = rows.join(untrained, on=["trip", "stop_id", "horizon_s"], how="left")
    table = score_eta(rows)
    missed = eta_targets_missed(table)
    report = {
        "scenario": scenario,
        "mean_speed_mps": training.mean_speed_mps,
        "vehicles": vehicles,
        "train_days": days,
        "seed": seed,
        "test_seed": test_day.seed,
        "test_day": test_day.start.isoformat(),
        "train_positions": history.positions.height,
        "train_arrivals": history.arrivals.height,
        "training_rows": training.rows.height,
        "test_arrivals": test.arrivals.height,
        "model_version": training.model.version,
        "model_metrics": training.model.metrics,
        "detour_factor": training.detour_factor,
        "table": table,
        "missed": missed,
        "simulate_s": round(simulated - began, 1),
        "train_s": round(trained - simulated, 1),
        "total_s": round(time.perf_counter() - began, 1),
    }
    out = (
        Path(settings.state_dir)
        / "eval"
        / ("eta-report.json" if scenario == "default" else f"eta-report-{scenario}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    say(
        f"simulated {history.positions.height + test.positions.height} fixes in {report['simulate_s']} s; "
        f"trained on {training.rows.height} rows ({history.arrivals.height} arrivals) in {report['train_s']} s; "
        f"detour factor {training.detour_factor:.2f}"
    )
    say("\n" + format_eta_table(table))
    say("\n" + format_baselines_table(table))
    say(
        "\nMAE in seconds, MAPE in % of the true time to arrival; the first columns on the rows where the naive "
        "baseline answers (the van moving), the last over every row."
    )
    say(f"report: {out}")
    say(
        "targets met (model MAE >= 30 % below naive, below profile, untrained and straight at every horizon)"
        if not missed
        else "targets missed:\n  " + "\n  ".join(missed)
    )
    return report, missed
