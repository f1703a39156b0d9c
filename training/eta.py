"""The ETA model's training set, built from stored history: frames in, rows out (no database).

Inputs (polars frames, times UTC-aware):

- ``positions``: ``tenant, vehicle_id, fix_time, lat, lon, speed_mps, h3_cell`` (the
  ``positions`` hypertable; ``speed_mps`` may be null, ``h3_cell`` at resolution 9);
- ``arrivals``: ``tenant, vehicle_id, stop_id, at`` and optionally ``plan_version``
  (``stop_events`` with ``kind = 'arrival' AND NOT retracted``);
- ``plans``: the ``Plan`` objects those arrivals belong to (without a ``plan_version``
  column, a vehicle's highest version).

One trip = one vehicle's plan version. Its fixes, from ``max(horizons_s) + warmup_s``
before its first arrival to its last, are replayed in fix-time order through the
same ``GpsQualityFilter`` and ``EtaTracker.observe`` that serve live (so training and
serving features cannot drift apart), with the stops whose arrival is still ahead
as the remaining stops. For every arrival and horizon ``h`` the row is the estimate
made at the last usable fix at or before ``arrival - h`` (none when that fix is more
than ``tolerance_s`` older): the tracker's ``FEATURES``, the label
``label_s`` = seconds from that fix to the arrival, and the ``naive_s`` baseline.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from core.contract import GpsFix
from core.geo import EARTH_RADIUS_M
from core.plan import Plan
from core.thresholds import AnalyticsConfig, EtaConfig
from models import registry
from models.eta import FEATURES, EtaModel, train
from models.paths import fit_detour_factor
from models.profiles import MIN_SPEED_MPS, SpeedProfiles, build_speed_profiles, hour_of_week_expr
from pipelines.trackers.eta import EtaTracker, StopEstimate
from pipelines.trackers.quality import GpsQualityFilter

__all__ = ["HORIZONS_S", "EtaTraining", "build_training_rows", "detour_pairs", "train_eta_from_frames"]

HORIZONS_S: tuple[float, ...] = (120, 300, 600, 900, 1800, 2700, 3600, 5400)
_KEY = ["tenant", "vehicle_id"]
_counter = itertools.count()


def _haversine(lat1: pl.Expr, lon1: pl.Expr, lat2: pl.Expr, lon2: pl.Expr) -> pl.Expr:
    p1, p2 = lat1.radians(), lat2.radians()
    a = ((p2 - p1) / 2).sin() ** 2 + p1.cos() * p2.cos() * ((lon2.radians() - lon1.radians()) / 2).sin() ** 2
    return 2 * EARTH_RADIUS_M * a.sqrt().clip(upper_bound=1.0).arcsin()


def detour_pairs(positions: pl.DataFrame, arrivals: pl.DataFrame) -> list[tuple[float, float]]:
    """(straight-line metres, travelled metres) of every leg between two consecutive arrivals
    of a vehicle: first to last fix of the leg, and the sum of the steps between its fixes.

    Steps onto a fix reporting a standing speed (below ``MIN_SPEED_MPS``) are left out: GPS
    noise while a van serves a stop would otherwise add metres it never drove.
    """
    arr = (
        arrivals.select(*_KEY, "at")
        .sort(*_KEY, "at")
        .with_columns(next_at=pl.col("at").shift(-1).over(_KEY), leg=pl.int_range(pl.len()))
    )
    pos = positions.select(*_KEY, "fix_time", "lat", "lon", "speed_mps").sort(*_KEY, "fix_time")
    # sorted by (vehicle, time) above: within each vehicle the asof keys are in order
    legs = (
        pos.join_asof(arr, left_on="fix_time", right_on="at", by=_KEY, strategy="backward", check_sortedness=False)
        .filter(
            pl.col("leg").is_not_null() & pl.col("next_at").is_not_null() & (pl.col("fix_time") <= pl.col("next_at"))
        )
        .with_columns(
            step=_haversine(
                pl.col("lat").shift(1).over("leg"), pl.col("lon").shift(1).over("leg"), pl.col("lat"), pl.col("lon")
            ).fill_null(0.0)
            * (pl.col("speed_mps").is_null() | (pl.col("speed_mps") >= MIN_SPEED_MPS)).cast(pl.Float64)
        )
        .group_by("leg")
        .agg(
            travelled=pl.col("step").sum(),
            straight=_haversine(
                pl.col("lat").first(), pl.col("lon").first(), pl.col("lat").last(), pl.col("lon").last()
            ),
        )
        .sort("leg")
    )
    return [(float(s), float(t)) for s, t in legs.select("straight", "travelled").iter_rows()]


def build_training_rows(
    positions: pl.DataFrame,
    arrivals: pl.DataFrame,
    plans: Iterable[Plan],
    *,
    profiles: SpeedProfiles | None,
    detour_factor: float,
    horizons_s: Sequence[float] = HORIZONS_S,
    tolerance_s: float = 60.0,
    warmup_s: float = 600.0,
    eta_config: EtaConfig = EtaConfig(),
    analytics_config: AnalyticsConfig = AnalyticsConfig(),
) -> pl.DataFrame:
    """One row per (arrival, horizon) with a fix close enough before it; see the module docstring.

    Columns: tenant, vehicle_id, plan_version, trip, stop_id, horizon_s, fix_time,
    the ``FEATURES``, label_s, naive_s (null when the vehicle was too slow), method, state.
    """
    by_version = {(p.tenant, p.vehicle, p.version): p for p in plans}
    latest: dict[tuple[str, str], Plan] = {}
    for p in by_version.values():
        if (p.tenant, p.vehicle) not in latest or p.version > latest[(p.tenant, p.vehicle)].version:
            latest[(p.tenant, p.vehicle)] = p
    if "plan_version" not in arrivals.columns:
        arrivals = arrivals.join(
            pl.DataFrame(
                [(t, v, p.version) for (t, v), p in latest.items()],
                schema={"tenant": pl.String, "vehicle_id": pl.String, "plan_version": pl.Int64},
                orient="row",
            ),
            on=_KEY,
            how="inner",
        )
    name = f"training-{next(_counter)}"
    registry.set_models(name, profiles=profiles, detour_factor=detour_factor, model=None, network=None)
    config = replace(eta_config, models=name)
    fixes = {
        key: frame.sort("fix_time").select("fix_time", "lat", "lon", "speed_mps", "h3_cell").rows()
        for key, frame in positions.partition_by(_KEY, as_dict=True).items()
    }
    rows: list[dict[str, Any]] = []
    try:
        trips = arrivals.sort("at").partition_by([*_KEY, "plan_version"], as_dict=True)
        for (tenant, vehicle, version), trip in sorted(trips.items()):
            plan = by_version.get((tenant, vehicle, version))
            vehicle_fixes = fixes.get((tenant, vehicle))
            if plan is None or not vehicle_fixes:
                continue
            arrived = {s: t for s, t in trip.select("stop_id", "at").iter_rows() if _in(plan, s)}
            rows += _replay(plan, vehicle_fixes, arrived, horizons_s, tolerance_s, warmup_s, config, analytics_config)
    finally:
        registry.clear(name)
    schema: dict[str, Any] = {
        "tenant": pl.String,
        "vehicle_id": pl.String,
        "plan_version": pl.Int64,
        "trip": pl.String,
        "stop_id": pl.String,
        "horizon_s": pl.Float64,
        "fix_time": pl.Datetime("us", "UTC"),
        **{f: pl.Float64 for f in FEATURES},
        "label_s": pl.Float64,
        "naive_s": pl.Float64,
        "method": pl.String,
        "state": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def _in(plan: Plan, stop_id: str) -> bool:
    return any(s.id == stop_id for s in plan.stops)


def _replay(
    plan: Plan,
    fixes: list[tuple[Any, ...]],
    arrived: dict[str, datetime],
    horizons_s: Sequence[float],
    tolerance_s: float,
    warmup_s: float,
    config: EtaConfig,
    analytics: AnalyticsConfig,
) -> list[dict[str, Any]]:
    """Feed one trip's fixes through the live quality filter and ETA tracker; rows at the horizons."""
    if not arrived:
        return []
    start = min(arrived.values()) - timedelta(seconds=max(horizons_s) + warmup_s)
    end = max(arrived.values())
    times = [f[0] for f in fixes]
    lo, hi = bisect_left(times, start), bisect_left(times, end)
    # (moment, stop id, horizon), in moment order: each wants the last usable fix at or before the moment
    wanted = sorted(
        (at - timedelta(seconds=h), stop_id, float(h)) for stop_id, at in arrived.items() for h in horizons_s
    )
    quality = GpsQualityFilter(plan.tenant, plan.vehicle, analytics)
    tracker = EtaTracker(plan.tenant, plan.vehicle, config)
    tracker.set_plan(plan)
    trip = f"{plan.tenant}/{plan.vehicle}/{plan.version}"
    out: list[dict[str, Any]] = []
    last: tuple[datetime, dict[str, StopEstimate]] | None = None
    k = 0

    def take_until(t: datetime | None) -> None:
        nonlocal k
        while k < len(wanted) and (t is None or wanted[k][0] < t):
            moment, stop_id, h = wanted[k]
            k += 1
            if last is None or (moment - last[0]).total_seconds() > tolerance_s:
                continue
            e = last[1].get(stop_id)
            if e is not None:
                out.append(
                    {
                        "tenant": plan.tenant,
                        "vehicle_id": plan.vehicle,
                        "plan_version": plan.version,
                        "trip": trip,
                        "stop_id": stop_id,
                        "horizon_s": h,
                        "fix_time": last[0],
                        **dict(zip(FEATURES, e.row, strict=True)),
                        "label_s": (arrived[stop_id] - last[0]).total_seconds(),
                        "naive_s": e.naive_s,
                        "method": e.method,
                        "state": e.state,
                    }
                )

    for seq, (t, lat, lon, speed, cell) in enumerate(fixes[lo:hi]):
        checked, _ = quality.update(
            GpsFix(plan.tenant, plan.vehicle, seq, t, lat, lon, None if speed is None else float(speed)), cell
        )
        if not checked.usable:
            continue
        take_until(t)
        remaining = tuple(s for s in plan.stops if s.id not in arrived or arrived[s.id] > t)
        last = (t, {e.stop_id: e for e in tracker.observe(checked, remaining)})
    take_until(None)
    return out


@dataclass
class EtaTraining:
    """What ``train_eta_from_frames`` produced: the parts to register, and the rows it used."""

    model: EtaModel
    profiles: SpeedProfiles
    detour_factor: float
    rows: pl.DataFrame


def train_eta_from_frames(
    positions: pl.DataFrame,
    arrivals: pl.DataFrame,
    plans: Iterable[Plan],
    *,
    profiles: SpeedProfiles | None = None,
    detour_factor: float | None = None,
    horizons_s: Sequence[float] = HORIZONS_S,
    random_state: int = 0,
    eta_config: EtaConfig = EtaConfig(),
    **train_options: Any,
) -> EtaTraining:
    """Speed profiles (from ``positions`` unless given), the detour factor (from the legs
    between arrivals unless given), the training rows, and the ``EtaModel`` fitted on them.

    The held-out split is by trip; ``metrics`` include the naive baseline's error
    (``naive_mae_s``) on the held-out rows where it answers. ValueError when there are
    too few rows to train.
    """
    plans = list(plans)
    if profiles is None:
        profiles = build_speed_profiles(positions.with_columns(hour_of_week_expr("fix_time")))
    if detour_factor is None:
        detour_factor = fit_detour_factor(detour_pairs(positions, arrivals))
    rows = build_training_rows(
        positions,
        arrivals,
        plans,
        profiles=profiles,
        detour_factor=detour_factor,
        horizons_s=horizons_s,
        eta_config=eta_config,
    )
    model = train(
        rows.select(FEATURES).to_numpy(),
        rows["label_s"].to_numpy(),
        groups=rows["trip"].to_list(),
        random_state=random_state,
        baselines={"naive": rows["naive_s"].to_list()},
        **train_options,
    )
    return EtaTraining(model, profiles, detour_factor, rows)
