"""``fleetstream evaluate --traces``: the trackers on real drives, thinned to sparse sampling,
scored against what the dense recording shows.

Each trace (``TRACE_SPECS``: real drives recorded every 1 to 10 s, from Debian source
packages, fetched by ``traces.py``) is one trip, cut at the end of its last standstill (the
shift ends there). Its plan, placed on the recording itself (the traces are nowhere near the
simulator's map):

- a *real* stop (radius ``radius_m``) at each standstill of the dense trace (slower than
  1 m/s for more than 20 s, ``sim.recordings.dense_stops``); the last is the plan's last stop;
- *pass-through* stops on the trace's own path where it never stood, not even for a moment
  (no dense fix slower than 1 m/s within the radius + 10 m: a red light inside a fence
  looks like a stop to any sampling): ``spacing_m`` before and after each real stop along
  the path (stops 100 m apart, as on a bus line), and every ``every_m`` elsewhere.

The engine (``VehicleAnalytics`` with that plan, no device speed: it is derived) sees the
trace subsampled to a fix every 5, 15, 30 and 60 s (the first fix at or after each tick,
from three phase offsets of the grid), each received 1 s after its fix time, then two hours
of silence. The truth comes from the dense trace: each real stop's fence entry and exit
(interpolated at the circle) and how long it stood.

Scored per sampling period over all traces and offsets:

- arrivals: recall over the real stops of ``detect_min_stood_s`` or more (a fix every 30 s
  sees two standing fixes only in a stop of a minute or more), and over all real stops;
  precision (an arrival at a pass-through stop, or a repeated one, is false); arrival,
  departure and dwell (departure - arrival) errors against the dense truth;
- false alerts: every alert is false on these trips (none stood 10 minutes away from a
  stop, none went offline); those at the shift's end (after the last stop's entry) and the
  others, by type.

Targets (``trace_targets_missed``): at 30 s, arrival recall (stops of a minute or more) and
precision at least 0.95; no false alert at a shift's end or in a silence at any period.

A logger that pauses while the vehicle stands (``TraceSpec.pauses``: the Longford rounds,
a fix every 10 s while moving and none at a stop) shows each stop as a silence: the
engine, for which silence is no evidence, misses the stops where its only fix inside
comes after the pause, and raises ``offline`` when a pause outlasts ``offline_after_s``.
Those trips are scored in a table of their own, without targets (their stops' truth is
as good as the fixes around the pause).

ETAs (``eta_on_trips``): at 30 s sampling without device speed, each motor-vehicle trip
(``TraceSpec.motor``) in turn is held out and the ETA set is trained on the others (a
plan of their real stops, no service given, no route: straight legs x the learned detour
factor), at each of three phases of the sampling grid; the held-out trip's estimates 5,
15 and 30 minutes before each real arrival (the dense fence entry) are scored: the trained
model, the untrained engine and the straight baseline (``fleetstream/eta_evaluation.py``).
Target: the model's MAE below both baselines' at every horizon. The same with the bicycle
among the trips is reported too (a fleet's model learns from its own vehicles).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.contract import GpsFix
from core.geo import haversine_m
from core.plan import Plan, Stop
from core.settings import Settings
from fleetstream.traces import TraceUnavailable, fetch
from pipelines.run import analytics_config
from pipelines.trackers.events import Alert, StopEvent
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading
from sim.recordings import DenseStop, Fix, dense_speeds, dense_stops, parse, sessions, subsample

__all__ = [
    "PERIODS_S",
    "TRACE_SPECS",
    "TraceSpec",
    "TraceTrip",
    "format_trace_table",
    "run_trace_evaluation",
    "score_periods",
    "trace_targets_missed",
    "trace_trips",
]

PERIODS_S: tuple[float, ...] = (5.0, 15.0, 30.0, 60.0)
TARGET_PERIOD_S = 30.0


@dataclass(frozen=True)
class TraceSpec:
    """A recording and which part of it is one trip: the ``session`` (cut at gaps over 300 s)
    or time ``windows`` (seconds after its first fix); ``every_s``: how often it recorded
    (sampling periods shorter than that are not scored on it); ``motor``: a motor vehicle
    (only those are in the ETA evaluation); ``pauses``: the logger stops recording while the
    vehicle stands (its trips are scored apart, see the module docstring)."""

    file: str
    label: str
    session: int = 0
    windows: tuple[tuple[float, float], ...] = ()
    every_s: float = 1.0
    motor: bool = True
    pauses: bool = False


TRACE_SPECS: tuple[TraceSpec, ...] = (
    TraceSpec("sbn-v13.gpx", "car, Delft - Den Haag, 1 Hz"),
    TraceSpec("josm-1433.nmea", "car, Bradford, 1 Hz"),
    TraceSpec("gtrnctr_power.tcx", "bicycle, Palo Alto, 1 Hz", motor=False),
    TraceSpec("mjolby.gpx", "car, Mjolby - Linkoping, 3 s", windows=((0, 2160), (7200, 8400), (13260, 19241))),
    # one day's rounds around Drumlish and Longford (Ireland), a fix every 10 s, paused at stops
    *(TraceSpec("drumlish.gpx", "car, Longford, 10 s", session=k, every_s=10.0, pauses=True) for k in range(6)),
)


@dataclass
class TraceTrip:
    """One trip of a recording with its plan: the dense fixes (cut at its last standstill), the
    real stops (the plan's stops that the dense trace stood at, by stop id) and the plan."""

    name: str
    fixes: list[Fix]
    plan: Plan
    real: dict[str, DenseStop] = field(default_factory=dict)
    every_s: float = 1.0
    motor: bool = True
    pauses: bool = False


def _along(fixes: Sequence[Fix]) -> list[float]:
    out = [0.0]
    for a, b in zip(fixes, fixes[1:], strict=False):
        out.append(out[-1] + haversine_m(a.lat, a.lon, b.lat, b.lon))
    return out


def _trip(
    name: str, fixes: list[Fix], radius_m: float, spacing_m: float, every_m: float, tenant: str, min_minutes: float
) -> TraceTrip | None:
    stops = dense_stops(fixes)
    if not stops:
        return None
    fixes = [f for f in fixes if f.time <= stops[-1].end]  # the shift ends at its last standstill
    if (fixes[-1].time - fixes[0].time).total_seconds() < 60.0 * min_minutes:
        return None
    along = _along(fixes)
    times = [f.time for f in fixes]
    real: dict[str, DenseStop] = {}
    plan_stops: list[Stop] = []
    for k, st in enumerate(stops):
        # a standstill in a fence already placed (a queue creeping on, a second visit) is no new stop
        if any(haversine_m(st.lat, st.lon, s.lat, s.lon) < 2 * radius_m for s in plan_stops):
            continue
        stop = Stop(f"{name}-r{k + 1:02d}", st.lat, st.lon, radius_m)
        plan_stops.append(stop)
        real[stop.id] = st
    last = plan_stops[-1]

    # where it was ever slower than 1 m/s, even for a moment (a red light): no place for a pass-through
    slow = [f for f, v in zip(fixes, dense_speeds(fixes), strict=True) if v is not None and v < 1.0]

    def clear(lat: float, lon: float) -> bool:
        near = any(haversine_m(lat, lon, s.lat, s.lon) < 2 * radius_m for s in plan_stops)
        stood = any(haversine_m(lat, lon, f.lat, f.lon) < radius_m + 10 for f in slow)
        return not near and not stood

    def point_at(d: float) -> tuple[float, float] | None:
        if d <= 0 or d >= along[-1]:
            return None
        i = max(0, min(len(along) - 2, next(j for j, a in enumerate(along) if a >= d) - 1))
        seg = along[i + 1] - along[i]
        f = (d - along[i]) / seg if seg > 0 else 0.0
        return fixes[i].lat + f * (fixes[i + 1].lat - fixes[i].lat), fixes[i].lon + f * (
            fixes[i + 1].lon - fixes[i].lon
        )

    wanted: list[float] = []
    for st in real.values():
        i = min(len(times) - 1, max(0, next((j for j, t in enumerate(times) if t >= st.start), len(times) - 1)))
        wanted += [along[i] - spacing_m, along[i] + spacing_m]
    wanted += [every_m * k for k in range(1, int(along[-1] // every_m) + 1)]
    passes: list[Stop] = []
    for d in sorted(wanted):
        p = point_at(d)
        if p is not None and clear(*p) and all(haversine_m(*p, s.lat, s.lon) >= 2 * radius_m for s in passes):
            passes.append(Stop(f"{name}-p{len(passes) + 1:02d}", p[0], p[1], radius_m))

    # in the order the trip meets them, the last real stop last (the shift ends there)
    def first_near(s: Stop) -> int:
        return next((j for j, f in enumerate(fixes) if haversine_m(f.lat, f.lon, s.lat, s.lon) <= radius_m), len(fixes))

    ordered = sorted([s for s in [*plan_stops, *passes] if s is not last], key=first_near) + [last]
    plan = Plan(tenant, name, 1, tuple(ordered))
    return TraceTrip(name, fixes, plan, real)


def trace_trips(
    specs: Sequence[TraceSpec] = TRACE_SPECS,
    *,
    radius_m: float = 35.0,
    spacing_m: float = 100.0,
    every_m: float = 400.0,
    tenant: str = "traces",
    min_minutes: float = 10.0,
) -> tuple[list[TraceTrip], list[str]]:
    """The trips of the recordings (fetched when missing; trips shorter than ``min_minutes`` to
    their last standstill are left out), and why any recording was left out."""
    trips: list[TraceTrip] = []
    skipped: list[str] = []
    for spec in specs:
        try:
            path = fetch(spec.file)
        except TraceUnavailable as exc:
            skipped.append(f"{spec.file}: {exc}")
            continue
        fixes = parse(spec.file, path.read_text(encoding="utf-8", errors="replace"))
        stem = spec.file.split(".")[0]
        if spec.windows:
            t0 = fixes[0].time
            pieces = [[f for f in fixes if a <= (f.time - t0).total_seconds() < b] for a, b in spec.windows]
            names = [f"{stem}-{k + 1}" for k in range(len(pieces))] if len(pieces) > 1 else [stem]
        else:
            cut = sessions(fixes)
            if spec.session >= len(cut):
                skipped.append(f"{spec.file}: no session {spec.session} (it has {len(cut)})")
                continue
            pieces = [cut[spec.session]]
            names = [f"{stem}-s{spec.session + 1}" if sum(s.file == spec.file for s in specs) > 1 else stem]
        for name, piece in zip(names, pieces, strict=True):
            trip = _trip(name, piece, radius_m, spacing_m, every_m, tenant, min_minutes)
            if trip is not None:
                trip.every_s, trip.motor, trip.pauses = spec.every_s, spec.motor, spec.pauses
                trips.append(trip)
    return trips, skipped


# ---------------------------------------------------------------- running the engine on a trip


def _crossing(st: Stop, a: Fix, b: Fix, entering: bool) -> datetime:
    kx = 111_195.0 * math.cos(math.radians(st.lat))
    ax, ay = (a.lon - st.lon) * kx, (a.lat - st.lat) * 111_195.0
    dx, dy = (b.lon - st.lon) * kx - ax, (b.lat - st.lat) * 111_195.0 - ay
    qa, qb, qc = dx * dx + dy * dy, 2.0 * (ax * dx + ay * dy), ax * ax + ay * ay - st.radius_m**2
    disc = qb * qb - 4 * qa * qc
    span = (b.time - a.time).total_seconds()
    if qa <= 0 or disc < 0 or span <= 0:
        return b.time if entering else a.time
    f = ((-qb - math.sqrt(disc)) if entering else (-qb + math.sqrt(disc))) / (2 * qa)
    return a.time + timedelta(seconds=min(1.0, max(0.0, f)) * span)


def _fence_truth(trip: TraceTrip, stop: Stop, dense: DenseStop) -> tuple[datetime, datetime | None]:
    """The dense trace's entry into and exit from ``stop``'s circle around its standstill there."""
    fixes = trip.fixes
    i = next(j for j, f in enumerate(fixes) if f.time >= dense.start)
    while i > 0 and haversine_m(fixes[i - 1].lat, fixes[i - 1].lon, stop.lat, stop.lon) <= stop.radius_m:
        i -= 1
    entry = _crossing(stop, fixes[i - 1], fixes[i], True) if i > 0 else fixes[0].time
    j = max(k for k, f in enumerate(fixes) if f.time <= dense.end)
    while j + 1 < len(fixes) and haversine_m(fixes[j + 1].lat, fixes[j + 1].lon, stop.lat, stop.lon) <= stop.radius_m:
        j += 1
    leave = _crossing(stop, fixes[j], fixes[j + 1], False) if j + 1 < len(fixes) else None
    return entry, leave


def run_trip(
    trip: TraceTrip, period_s: float, offset_s: float, settings: Settings, device_speed: bool = False
) -> tuple[list[StopEvent], list[Alert], int]:
    """The engine's stop events and alerts for the trip thinned to ``period_s`` from ``offset_s``
    (``device_speed``: keep the recorded speed; otherwise none, it is derived), then two hours
    of silence; and the number of fixes it saw."""
    config = analytics_config(settings)
    va = VehicleAnalytics(trip.plan.tenant, trip.name, config, plan=trip.plan)
    seen = subsample(trip.fixes, period_s, offset_s)
    events: list[Any] = []
    for seq, f in enumerate(seen):
        fix = GpsFix(
            trip.plan.tenant,
            trip.name,
            seq,
            f.time,
            f.lat,
            f.lon,
            speed_mps=f.speed_mps if device_speed else None,
            heading_deg=f.heading_deg if device_speed else None,
            accuracy_m=f.accuracy_m,
        )
        now = f.time + timedelta(seconds=1)
        events += va.update(StoredReading(fix, None, now, 0, seq), now)
        if (due := va.next_timer()) is not None and due <= now:
            events += va.on_timer(now)
    end = seen[-1].time + timedelta(hours=2) if seen else trip.fixes[-1].time
    while (due := va.next_timer()) is not None and due <= end:
        events += va.on_timer(due)
    stop_events = [e for e in events if isinstance(e, StopEvent) and not e.retracted]
    latest: dict[str, Alert] = {}
    for e in events:
        if isinstance(e, Alert):
            latest[e.id] = e
    return stop_events, [a for a in latest.values() if a.status != "retracted"], len(seen)


# ---------------------------------------------------------------- scoring


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if q == 0.5:
        return float(statistics.median(values))
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def score_trip(
    trip: TraceTrip, stop_events: list[StopEvent], alerts: list[Alert], detect_min_stood_s: float = 60.0
) -> dict[str, Any]:
    """Counts and errors of one run of a trip (summed over runs by ``score_periods``)."""
    arrivals = {(e.stop_id, e.details.get("visit", 1)): e for e in stop_events if e.kind == "arrival"}
    departures = {(e.stop_id, e.details.get("visit", 1)): e for e in stop_events if e.kind == "departure"}
    last = trip.plan.stops[-1]
    out: dict[str, Any] = {
        "must": 0,
        "must_found": 0,
        "real": 0,
        "real_found": 0,
        "arrivals": len(arrivals),
        "false_arrivals": 0,
        "arrival_errors": [],
        "departure_errors": [],
        "dwell_errors": [],
        "evidence": Counter(e.details.get("evidence") for e in arrivals.values()),
    }
    for (stop_id, visit), _event in arrivals.items():
        if stop_id not in trip.real or visit != 1:
            out["false_arrivals"] += 1
    stops = {s.id: s for s in trip.plan.stops}
    for stop_id, dense in trip.real.items():
        entry, leave = _fence_truth(trip, stops[stop_id], dense)
        must = dense.dwell_s >= detect_min_stood_s
        found = arrivals.get((stop_id, 1))
        out["real"] += 1
        out["must"] += must
        if found is None:
            continue
        out["real_found"] += 1
        out["must_found"] += must
        out["arrival_errors"].append((found.at - entry).total_seconds())
        gone = departures.get((stop_id, 1))
        if gone is not None and leave is not None:
            out["departure_errors"].append((gone.at - leave).total_seconds())
            out["dwell_errors"].append(((gone.at - found.at) - (leave - entry)).total_seconds())
    shift_end = _fence_truth(trip, last, trip.real[last.id])[0]
    out["false_alerts"] = Counter(a.type for a in alerts)
    out["end_of_shift"] = Counter(a.type for a in alerts if a.start >= shift_end)
    return out


def score_periods(runs: dict[float, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per sampling period: the runs' counts summed, recall, precision, error quantiles."""
    table = []
    for period, scored in sorted(runs.items()):
        total: dict[str, Any] = {
            k: sum(s[k] for s in scored)
            for k in ("must", "must_found", "real", "real_found", "arrivals", "false_arrivals")
        }
        arr = [e for s in scored for e in s["arrival_errors"]]
        dep = [e for s in scored for e in s["departure_errors"]]
        dwell = [e for s in scored for e in s["dwell_errors"]]
        false: Counter[str] = Counter()
        end: Counter[str] = Counter()
        evidence: Counter[str] = Counter()
        for s in scored:
            false.update(s["false_alerts"])
            end.update(s["end_of_shift"])
            evidence.update(s["evidence"])
        table.append(
            {
                "period_s": period,
                "runs": len(scored),
                **total,
                "recall": total["must_found"] / total["must"] if total["must"] else None,
                "recall_all": total["real_found"] / total["real"] if total["real"] else None,
                "precision": 1 - total["false_arrivals"] / total["arrivals"] if total["arrivals"] else None,
                "arrival_median_s": _q(arr, 0.5),
                "arrival_median_abs_s": _q([abs(e) for e in arr], 0.5),
                "arrival_p95_abs_s": _q([abs(e) for e in arr], 0.95),
                "departure_median_abs_s": _q([abs(e) for e in dep], 0.5),
                "dwell_median_s": _q(dwell, 0.5),
                "dwell_median_abs_s": _q([abs(e) for e in dwell], 0.5),
                "false_alerts": dict(sorted(false.items())),
                "end_of_shift": dict(sorted(end.items())),
                "evidence": dict(sorted((str(k), v) for k, v in evidence.items())),
            }
        )
    return table


def trace_targets_missed(table: list[dict[str, Any]], target_period_s: float = TARGET_PERIOD_S) -> list[str]:
    """The targets a scored table misses (empty: all met); see the module docstring."""
    missed = []
    for row in table:
        p = f"{row['period_s']:g} s"
        if row["end_of_shift"]:
            missed.append(f"{p}: false alerts at the shift's end {row['end_of_shift']}")
        silence = {k: v for k, v in row["false_alerts"].items() if k in ("offline", "unplanned_dwell", "long_dwell")}
        if silence:
            missed.append(f"{p}: false offline or dwell alerts {silence}")
        if row["period_s"] == target_period_s:
            for what in ("recall", "precision"):
                if row[what] is None or row[what] < 0.95:
                    missed.append(f"{p}: arrival {what} {row[what]} < 0.95")
    return missed


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_trace_table(table: list[dict[str, Any]]) -> str:
    lines = [
        "| fix every | runs | arrival recall (stops >= 60 s) | recall (all stops > 20 s) | precision (arrivals) "
        "| arrival error median / median abs / p95 abs | departure median abs | dwell error median / median abs "
        "| false alerts (at shift end) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['period_s']:g} s | {r['runs']} | {_f(r['recall'], '.3f')} ({r['must_found']}/{r['must']}) "
            f"| {_f(r['recall_all'], '.3f')} ({r['real_found']}/{r['real']}) "
            f"| {_f(r['precision'], '.3f')} ({r['arrivals'] - r['false_arrivals']}/{r['arrivals']}) "
            f"| {_f(r['arrival_median_s'], '+.1f')} / {_f(r['arrival_median_abs_s'], '.1f')} / "
            f"{_f(r['arrival_p95_abs_s'], '.1f')} s | {_f(r['departure_median_abs_s'], '.1f')} s "
            f"| {_f(r['dwell_median_s'], '+.1f')} / {_f(r['dwell_median_abs_s'], '.1f')} s "
            f"| {sum(r['false_alerts'].values())} ({sum(r['end_of_shift'].values())}) |"
        )
    return "\n".join(lines)


def evaluate_trips(
    trips: Sequence[TraceTrip],
    settings: Settings,
    periods_s: Sequence[float] = PERIODS_S,
    phases: int = 3,
    device_speed: bool = False,
) -> list[dict[str, Any]]:
    """Score every trip at every period from ``phases`` offsets of the sampling grid."""
    runs: dict[float, list[dict[str, Any]]] = {}
    for period in periods_s:
        for trip in trips:
            if period < trip.every_s:
                continue  # it never recorded that often
            for k in range(phases):
                events, alerts, _ = run_trip(trip, period, period * k / phases, settings, device_speed)
                runs.setdefault(period, []).append(score_trip(trip, events, alerts))
    return score_periods(runs)


def _eta_frames(trips: Sequence[TraceTrip], period_s: float, offset_s: float = 0.0) -> tuple[Any, Any, list[Plan]]:
    """Positions (thinned from ``offset_s``, no device speed), true arrivals (the dense fence
    entries) and plans (the real stops in the order met, no route) of ``trips``, as
    ``training.eta`` reads them."""
    import h3.api.basic_int as h3
    import polars as pl

    rows, arrivals, plans = [], [], []
    for trip in trips:
        stops = {s.id: s for s in trip.plan.stops}
        real = sorted(trip.real.items(), key=lambda kv: kv[1].start)
        plan_stops = tuple(stops[stop_id] for stop_id, _ in real)
        plans.append(Plan(trip.plan.tenant, trip.name, 1, plan_stops))
        for stop_id, dense in real:
            arrivals.append((trip.plan.tenant, trip.name, stop_id, 1, _fence_truth(trip, stops[stop_id], dense)[0]))
        for f in subsample(trip.fixes, period_s, offset_s):
            rows.append((trip.plan.tenant, trip.name, f.time, f.lat, f.lon, None, h3.latlng_to_cell(f.lat, f.lon, 9)))
    positions = pl.DataFrame(
        rows,
        schema={
            "tenant": pl.String,
            "vehicle_id": pl.String,
            "fix_time": pl.Datetime("us", "UTC"),
            "lat": pl.Float64,
            "lon": pl.Float64,
            "speed_mps": pl.Float64,
            "h3_cell": pl.Int64,
        },
        orient="row",
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
    return positions, arrival_frame, plans


def eta_on_trips(
    trips: Sequence[TraceTrip], period_s: float = TARGET_PERIOD_S, phases: int = 3
) -> list[dict[str, Any]]:
    """Leave-one-trip-out ETA accuracy at ``period_s`` sampling, the rows of ``phases`` offsets
    of the sampling grid pooled (see the module docstring)."""
    import polars as pl

    from fleetstream.eta_evaluation import EVAL_HORIZONS_S, score_eta
    from models.eta import FEATURES
    from models.paths import DEFAULT_DETOUR_FACTOR
    from training.eta import build_training_rows, train_eta_from_frames

    scored = []
    for offset in (period_s * k / phases for k in range(phases)):
        for held in trips:
            positions, arrivals, plans = _eta_frames([t for t in trips if t is not held], period_s, offset)
            training = train_eta_from_frames(positions, arrivals, plans, random_state=0)
            t_pos, t_arr, t_plans = _eta_frames([held], period_s, offset)
            rows = build_training_rows(
                t_pos,
                t_arr,
                t_plans,
                profiles=training.profiles,
                detour_factor=training.detour_factor,
                horizons_s=EVAL_HORIZONS_S,
                mean_speed_mps=training.mean_speed_mps,
                stop_dwell_s=training.stop_dwell_s,
            )
            if rows.height == 0:
                continue
            untrained = build_training_rows(
                t_pos, t_arr, t_plans, profiles=None, detour_factor=DEFAULT_DETOUR_FACTOR, horizons_s=EVAL_HORIZONS_S
            ).select("trip", "stop_id", "horizon_s", pl.col("profile_s").alias("untrained_s"))
            rows = rows.with_columns(
                model_s=pl.Series(training.model.predict(rows.select(FEATURES).to_numpy()), dtype=pl.Float64)
            ).join(untrained, on=["trip", "stop_id", "horizon_s"], how="left")
            scored.append(rows)
    return score_eta(pl.concat(scored)) if scored else []


def run_trace_evaluation(
    settings: Settings, say: Callable[[str], Any] = print, periods_s: Sequence[float] = PERIODS_S
) -> tuple[dict[str, Any], list[str]]:
    """Fetch, run, score and print; the report also lands in ``<state_dir>/eval/trace-report.json``."""
    began = time.perf_counter()
    trips, skipped = trace_trips()
    for reason in skipped:
        say(f"left out: {reason}")
    if not trips:
        return {"skipped": skipped}, ["no trace could be fetched"]
    say(
        "fleetstream evaluate --traces: "
        + "; ".join(
            f"{t.name} ({len(t.fixes)} fixes, {(t.fixes[-1].time - t.fixes[0].time).total_seconds() / 60:.0f} min, "
            f"{len(t.real)} real stops, {len(t.plan.stops) - len(t.real)} pass-through)"
            for t in trips
        )
    )
    dense = [t for t in trips if not t.pauses]
    paused = [t for t in trips if t.pauses]
    table = evaluate_trips(dense, settings, periods_s)
    with_speed = evaluate_trips(
        [t for t in dense if any(f.speed_mps is not None for f in t.fixes)], settings, periods_s, device_speed=True
    )
    paused_table = evaluate_trips(paused, settings, periods_s) if paused else []
    missed = trace_targets_missed(table)
    from fleetstream.eta_evaluation import baselines_missed, format_baselines_table

    etas: list[dict[str, Any]] = []
    etas_all: list[dict[str, Any]] = []
    try:
        etas = eta_on_trips([t for t in trips if t.motor])
        etas_all = eta_on_trips(trips)
    except ValueError as exc:  # too few rows to train on
        missed.append(f"ETAs not scored: {exc}")
    else:
        missed += [f"ETAs at {TARGET_PERIOD_S:g} s: {m}" for m in baselines_missed(etas)]
    report = {
        "trips": [
            {"name": t.name, "fixes": len(t.fixes), "real": len(t.real), "stops": len(t.plan.stops)} for t in trips
        ],
        "skipped": skipped,
        "no_device_speed": table,
        "with_device_speed": with_speed,
        "paused_logger": paused_table,
        "etas_30s": etas,
        "etas_30s_all_trips": etas_all,
        "missed": missed,
        "seconds": round(time.perf_counter() - began, 1),
    }
    out = Path(settings.state_dir) / "eval" / "trace-report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    say("\nno device speed (derived):\n" + format_trace_table(table))
    if with_speed:
        say("\nwith the recorded device speed (the traces that have one):\n" + format_trace_table(with_speed))
    if paused_table:
        say(
            "\na logger that pauses while the vehicle stands (" + ", ".join(t.name for t in paused) + "; "
            "no target: a silence at each stop, see the module docstring):\n" + format_trace_table(paused_table)
        )
    if etas:
        say(
            f"\nETAs at {TARGET_PERIOD_S:g} s sampling on the motor-vehicle trips, each held out and the set "
            "trained on the others (no route: straight legs x detour):\n" + format_baselines_table(etas)
        )
    if etas_all:
        say("\nthe same with the bicycle among them (no target):\n" + format_baselines_table(etas_all))
    say(f"\nreport: {out} ({report['seconds']} s)")
    say("targets met" if not missed else "targets missed:\n  " + "\n  ".join(missed))
    return report, missed
