"""The ETA model's training set, built from stored history: frames in, rows out (no database).

Inputs (polars frames, times UTC-aware):

- ``positions``: ``tenant, vehicle_id, fix_time, lat, lon, speed_mps, h3_cell`` (the
  ``positions`` hypertable; ``speed_mps`` may be null, ``h3_cell`` at resolution 9);
- ``arrivals``: ``tenant, vehicle_id, stop_id, at`` and optionally ``plan_version``
  (``stop_events`` with ``kind = 'arrival' AND NOT retracted``);
- ``plans``: the ``Plan`` objects those arrivals belong to (without a ``plan_version``
  column, a vehicle's highest version).

Positions need no device speed: where ``speed_mps`` is null it is derived from the
displacement since the vehicle's fix at least ``derive_min_span_s`` earlier, as the live
quality filter does (``derive_speeds``), for the speed profiles and the trip legs.

Every trip teaches the detour factor and the mean trip speed (``trip_legs``): a leg runs to
each arrival from the vehicle's first moving fix after its previous arrival (or, for the
first stop of a plan, within ``lead_s`` before it), so a one-stop plan (a taxi trip) counts.
Every visit to a stop whose plan gives no ``service_s`` teaches the time at a stop
(``stop_dwells``: arrival to the exit from its circle; the median of at least five), which
the ETA then adds for such stops (``EtaModels.service_s``).

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
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from statistics import median
from typing import Any

import polars as pl

from core.contract import GpsFix
from core.geo import EARTH_RADIUS_M, haversine_m
from core.plan import Plan
from core.thresholds import AnalyticsConfig, EtaConfig
from models import registry
from models.eta import FEATURES, EtaModel, train
from models.paths import fit_detour_factor
from models.profiles import MIN_SPEED_MPS, SpeedProfiles, build_speed_profiles, hour_of_week_expr
from pipelines.trackers.eta import EtaTracker, StopEstimate
from pipelines.trackers.quality import GpsQualityFilter

__all__ = [
    "HORIZONS_S",
    "EtaTraining",
    "build_training_rows",
    "derive_speeds",
    "detour_pairs",
    "mean_trip_speed",
    "stop_dwells",
    "train_eta_from_frames",
    "trip_legs",
    "typical_stop_dwell",
]

HORIZONS_S: tuple[float, ...] = (120, 300, 600, 900, 1800, 2700, 3600, 5400)
_KEY = ["tenant", "vehicle_id"]
_counter = itertools.count()


def _haversine(lat1: pl.Expr, lon1: pl.Expr, lat2: pl.Expr, lon2: pl.Expr) -> pl.Expr:
    p1, p2 = lat1.radians(), lat2.radians()
    a = ((p2 - p1) / 2).sin() ** 2 + p1.cos() * p2.cos() * ((lon2.radians() - lon1.radians()) / 2).sin() ** 2
    return 2 * EARTH_RADIUS_M * a.sqrt().clip(upper_bound=1.0).arcsin()


def derive_speeds(positions: pl.DataFrame, config: AnalyticsConfig = AnalyticsConfig()) -> pl.DataFrame:
    """``positions`` with a null ``speed_mps`` derived: metres from the vehicle's latest fix at least
    ``derive_min_span_s`` earlier, less ``derive_noise_m``, over the seconds between (null when
    that fix is more than ``derive_max_span_s`` back: across a gap the speed is unknown). Rows
    keep their order; a column ``speed_derived`` says which speeds were derived."""
    if positions.height == 0:
        return positions.with_columns(speed_derived=pl.lit(False))
    pos = positions.with_row_index("_row").sort(*_KEY, "fix_time")
    ref = pos.select(
        *_KEY, pl.col("fix_time").alias("_ref_time"), pl.col("lat").alias("_ref_lat"), pl.col("lon").alias("_ref_lon")
    )
    span = (pl.col("fix_time") - pl.col("_ref_time")).dt.total_microseconds() / 1e6
    metres = _haversine(pl.col("_ref_lat"), pl.col("_ref_lon"), pl.col("lat"), pl.col("lon"))
    derived = (
        pos.with_columns(_target=pl.col("fix_time") - pl.duration(microseconds=int(config.derive_min_span_s * 1e6)))
        .join_asof(ref, left_on="_target", right_on="_ref_time", by=_KEY, strategy="backward", check_sortedness=False)
        .with_columns(
            _derived=pl.when(span <= config.derive_max_span_s)
            .then((metres - config.derive_noise_m).clip(lower_bound=0.0) / span)
            .otherwise(None)
        )
    )
    return (
        derived.with_columns(
            speed_derived=pl.col("speed_mps").is_null() & pl.col("_derived").is_not_null(),
            speed_mps=pl.coalesce("speed_mps", "_derived"),
        )
        .sort("_row")
        .drop("_row", "_target", "_ref_time", "_ref_lat", "_ref_lon", "_derived")
    )


def trip_legs(
    positions: pl.DataFrame, arrivals: pl.DataFrame, lead_s: float = 3600.0
) -> list[tuple[float, float, float]]:
    """(straight-line metres, travelled metres, seconds) of every leg to an arrival: from the
    vehicle's first moving fix (``MIN_SPEED_MPS``, reported or derived) after its previous
    arrival, or within ``lead_s`` before this one when there is none (the first stop of a
    plan, a one-stop trip), to its last fix at or before the arrival. Travelled metres sum the
    steps between the leg's fixes, leaving out steps onto a standing fix: GPS noise while a
    vehicle serves a stop would otherwise add metres it never drove."""
    if positions.height == 0 or arrivals.height == 0:
        return []
    arr = (
        arrivals.select(*_KEY, "at")
        .sort(*_KEY, "at")
        .with_columns(prev_at=pl.col("at").shift(1).over(_KEY), leg=pl.int_range(pl.len()))
    )
    pos = derive_speeds(positions.select(*_KEY, "fix_time", "lat", "lon", "speed_mps")).sort(*_KEY, "fix_time")
    moving = pl.col("speed_mps").is_not_null() & (pl.col("speed_mps") >= MIN_SPEED_MPS)
    legs = (
        pos.join_asof(arr, left_on="fix_time", right_on="at", by=_KEY, strategy="forward", check_sortedness=False)
        .filter(
            pl.col("leg").is_not_null()
            & (pl.col("prev_at").is_null() | (pl.col("fix_time") > pl.col("prev_at")))
            & (pl.col("fix_time") >= pl.col("at") - pl.duration(microseconds=int(lead_s * 1e6)))
        )
        .with_columns(started=moving.cast(pl.Int8).cum_max().over("leg"))
        .filter(pl.col("started") == 1)
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
            seconds=(pl.col("fix_time").last() - pl.col("fix_time").first()).dt.total_microseconds() / 1e6,
        )
        .sort("leg")
    )
    return [(float(a), float(b), float(c)) for a, b, c in legs.select("straight", "travelled", "seconds").iter_rows()]


def _plan_lookup(
    plans: Iterable[Plan],
) -> tuple[dict[tuple[str, str, int], Plan], dict[tuple[str, str], Plan]]:
    """Plans by (tenant, vehicle, version), and each vehicle's highest version."""
    by_version = {(p.tenant, p.vehicle, p.version): p for p in plans}
    latest: dict[tuple[str, str], Plan] = {}
    for p in by_version.values():
        if (p.tenant, p.vehicle) not in latest or p.version > latest[(p.tenant, p.vehicle)].version:
            latest[(p.tenant, p.vehicle)] = p
    return by_version, latest


def stop_dwells(
    positions: pl.DataFrame,
    arrivals: pl.DataFrame,
    plans: Iterable[Plan],
    *,
    silence_s: float = 120.0,
    leave_mps: float = 8.0,
    max_s: float = 3600.0,
) -> list[float]:
    """Seconds from each arrival at a stop whose plan gives no ``service_s`` to the vehicle's
    exit from the stop's circle: interpolated on the step from its last fix inside to its
    first fix outside, or across a silence (a step over ``silence_s``: many trackers go quiet
    while the vehicle stands) the moment it would have left at ``leave_mps`` to be where it
    was next seen. Visits not left within ``max_s`` (parked for the night) count not."""
    by_version, latest = _plan_lookup(plans)
    fixes = {
        key: frame.sort("fix_time").select("fix_time", "lat", "lon").rows()
        for key, frame in positions.partition_by(_KEY, as_dict=True).items()
    }
    times = {key: [f[0] for f in rows] for key, rows in fixes.items()}
    versioned = "plan_version" in arrivals.columns
    out: list[float] = []
    for row in arrivals.iter_rows(named=True):
        key = (row["tenant"], row["vehicle_id"])
        plan = by_version.get((*key, row["plan_version"])) if versioned else latest.get(key)
        stop = next((s for s in plan.stops if s.id == row["stop_id"]), None) if plan is not None else None
        if stop is None or stop.service_s > 0 or key not in fixes:
            continue
        at: datetime = row["at"]
        last_t, last_d = at, 0.0
        for t, lat, lon in fixes[key][bisect_right(times[key], at) :]:
            if (t - at).total_seconds() > max_s:
                break
            d = haversine_m(lat, lon, stop.lat, stop.lon)
            if d <= stop.radius_m:
                last_t, last_d = t, d
                continue
            step = (t - last_t).total_seconds()
            if step > silence_s:
                out_s = max((last_t - at).total_seconds(), (t - at).total_seconds() - (d - stop.radius_m) / leave_mps)
            else:
                share = (stop.radius_m - last_d) / (d - last_d) if d > last_d else 0.0
                out_s = (last_t - at).total_seconds() + share * step
            out.append(max(0.0, out_s))
            break
    return out


def typical_stop_dwell(dwells: Sequence[float], min_visits: int = 5) -> float | None:
    """The median of ``dwells`` (``stop_dwells``); None with fewer than ``min_visits``."""
    return float(median(dwells)) if len(dwells) >= min_visits else None


def detour_pairs(positions: pl.DataFrame, arrivals: pl.DataFrame) -> list[tuple[float, float]]:
    """(straight-line metres, travelled metres) of every leg of ``trip_legs``."""
    return [(straight, travelled) for straight, travelled, _ in trip_legs(positions, arrivals)]


def mean_trip_speed(legs: Sequence[tuple[float, float, float]], min_straight_m: float = 200.0) -> float | None:
    """Travelled metres over seconds of the legs of at least ``min_straight_m`` (waits at lights
    and in traffic included, service at stops not): the simple baseline's speed (m/s)."""
    kept = [(t, s) for straight, t, s in legs if straight >= min_straight_m and s > 0]
    seconds = sum(s for _, s in kept)
    return sum(t for t, _ in kept) / seconds if seconds > 0 else None


def build_training_rows(
    positions: pl.DataFrame,
    arrivals: pl.DataFrame,
    plans: Iterable[Plan],
    *,
    profiles: SpeedProfiles | None,
    detour_factor: float,
    horizons_s: Sequence[float] = HORIZONS_S,
    mean_speed_mps: float | None = None,
    stop_dwell_s: float | None = None,
    tolerance_s: float = 60.0,
    warmup_s: float = 600.0,
    eta_config: EtaConfig = EtaConfig(),
    analytics_config: AnalyticsConfig = AnalyticsConfig(),
) -> pl.DataFrame:
    """One row per (arrival, horizon) with a fix close enough before it; see the module docstring.

    Columns: tenant, vehicle_id, plan_version, trip, stop_id, horizon_s, fix_time,
    the ``FEATURES``, label_s, naive_s (null when the vehicle was too slow), straight_s
    (straight metres x detour factor / ``mean_speed_mps``), method, state.
    """
    by_version, latest = _plan_lookup(plans)
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
    registry.set_models(
        name,
        profiles=profiles,
        detour_factor=detour_factor,
        model=None,
        network=None,
        mean_speed_mps=mean_speed_mps,
        stop_dwell_s=stop_dwell_s,
    )
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
        "straight_s": pl.Float64,
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
                        "straight_s": e.straight_s,
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
    mean_speed_mps: float | None = None
    stop_dwell_s: float | None = None


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
    between arrivals unless given), the time at a stop for stops without planned service
    (``stop_dwells``), the training rows, and the ``EtaModel`` fitted on them.

    The held-out split is by trip; ``metrics`` include the naive baseline's error
    (``naive_mae_s``) on the held-out rows where it answers. ValueError when there are
    too few rows to train.
    """
    plans = list(plans)
    if profiles is None:
        profiles = build_speed_profiles(derive_speeds(positions).with_columns(hour_of_week_expr("fix_time")))
    legs = trip_legs(positions, arrivals)
    if detour_factor is None:
        detour_factor = fit_detour_factor((straight, travelled) for straight, travelled, _ in legs)
    mean_speed = mean_trip_speed(legs)
    dwell = typical_stop_dwell(stop_dwells(positions, arrivals, plans))
    rows = build_training_rows(
        positions,
        arrivals,
        plans,
        profiles=profiles,
        detour_factor=detour_factor,
        horizons_s=horizons_s,
        mean_speed_mps=mean_speed,
        stop_dwell_s=dwell,
        eta_config=eta_config,
    )
    model = train(
        rows.select(FEATURES).to_numpy(),
        rows["label_s"].to_numpy(),
        groups=rows["trip"].to_list(),
        random_state=random_state,
        baselines={"naive": rows["naive_s"].to_list(), "straight": rows["straight_s"].to_list()},
        **train_options,
    )
    return EtaTraining(model, profiles, detour_factor, rows, mean_speed, dwell)
