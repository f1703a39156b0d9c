"""Live ETAs to every remaining stop of a vehicle's plan, re-emitted only when they move.

For each usable fix, with the stops still to do (plan order)::

    ETA(stop i) = fix time
                + what is left of the service at a stop the vehicle is at
                + travel time to stop 1, + service at 1, + travel 1 -> 2, ... up to stop i
                (+ extra time while in traffic; then the model's correction, if any)

Service at a stop is the plan's ``service_s``; a stop without one (0) takes the learned
time at a stop (``EtaModels.stop_dwell_s``, ``train eta``), or nothing when none was learned.

Path (``details["method"]``):
    ``route``    along the plan's route from the vehicle's projection on it (monotone:
                 never behind the progress already made; searched up to
                 ``search_ahead_m + max_speed_mps * seconds since the last fix`` ahead,
                 or anywhere ahead when that finds only far-off road). Off the route
                 (further than ``off_route_m``) the way back to it is the cross-track
                 distance times the detour factor.
    ``network``  shortest paths on the registered road network (``NetworkPaths``).
    ``straight`` straight legs times the learned detour factor.
Travel time is summed over pieces of the path: length / profile speed for the piece's
H3 cell and the UTC hour of week at which the leg starts (the clock moves on along
the chain, service times included). Without registered profiles one speed,
``default_speed_mps``, applies everywhere.

What the vehicle is doing (``details["state"]``):
    ``parked``   speed below ``parked_speed_mps`` for ``parked_after_s``: nothing extra
                 is added and the current speed is not used (the profile speaks).
    ``traffic``  moving, but the smoothed speed is under ``traffic_ratio`` of the profile
                 speed where it is: the next ``traffic_horizon_m`` are timed at the
                 smoothed speed instead.
    ``moving``   otherwise.

Model: with an ``EtaModel`` registered its correction multiplies the profile estimate;
it runs at most every ``model_every_s`` of fix time per vehicle, or when the remaining
stops change; in between the last correction factors apply. It is asked only about the
stops within ``model_max_ahead_s`` (the times ahead it was trained on); those beyond keep
the correction of the last stop within. An estimate runs at most every
``estimate_every_s`` (when the stops to do change, at once): the cost per fix is the
cost of an estimate (and of a model run) times how often they run. ``details["naive_eta_s"]`` is straight-line metres / current
speed (above 1 m/s), the baseline the evaluation compares against.

Re-emission: an ``EtaUpdate`` for a stop goes out when the stop is new (first fix,
new plan version, re-entered the remaining list) or its ETA (rounded to the second)
moved by more than ``reemit_s`` from the last one emitted for it. Each carries a new
id (``eta_update_id``: stop, plan version, fix time), so the sink keeps the history.

State is a few numbers per stop: the plan is shared (pass the very ``Plan`` object the
vehicle holds), route geometry and leg caches are rebuilt after unpickling, and models
live in ``models.registry``. Replays are deterministic as long as the registered models
do not change in between.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

import h3.api.basic_int as h3
import numpy as np

from core.geo import M_PER_DEG_LAT as _M_PER_DEG
from core.geo import haversine_m
from core.plan import Plan, Stop
from core.thresholds import EtaConfig
from models import registry
from models.eta import features
from models.paths import Projection, RouteGeometry, SampledPath, route_geometry, sample_path
from models.profiles import SpeedProfiles
from pipelines.trackers.events import EtaUpdate, Event, eta_update_id
from pipelines.trackers.quality import CheckedFix

__all__ = ["EtaTracker", "StopEstimate", "hour_of_week_at"]


class StopEstimate(NamedTuple):
    """One remaining stop's estimate at a fix: ``eta_s`` seconds from the fix time (the
    model's when there is one, else the profile's), the parts, and the feature row.

    ``straight_s`` is the simple baseline: straight-line metres through the stops in order
    times the detour factor, over the learned mean trip speed (``EtaModels.mean_speed_mps``,
    stops and waits included; ``default_speed_mps`` when none was learned)."""

    stop_id: str
    eta_s: float
    remaining_m: float
    profile_s: float
    model_s: float | None
    naive_s: float | None
    method: str
    state: str
    off_route: bool
    row: list[float]  # the model's features (empty when the estimate did not need them: see observe)
    straight_s: float = math.nan
    stops_before: int = 0


def hour_of_week_at(epoch_s: float) -> int:
    """UTC hour of week (0 = Monday 00 UTC) of a time given in seconds since 1970 (a Thursday)."""
    return (int(epoch_s // 3600) + 72) % 168


@lru_cache(maxsize=8)
def _constant_profiles(speed_mps: float, resolution: int) -> SpeedProfiles:
    return SpeedProfiles.constant(speed_mps, resolution)


@lru_cache(maxsize=512)
def _plan_route(
    route: tuple[tuple[float, float], ...], stops: tuple[Stop, ...], resolution: int, sample_m: float
) -> tuple[RouteGeometry, dict[str, float]]:
    geometry = route_geometry(route, resolution, sample_m)
    return geometry, geometry.stop_progress(stops)


_TRANSIENT = ("_route", "_legs")


class EtaTracker:
    """ETAs of one vehicle's remaining stops (the ``EtaHook`` of ``VehicleTrackers``)."""

    def __init__(self, tenant: str, vehicle: str, config: EtaConfig = EtaConfig()) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.plan: Plan | None = None
        self.progress_m = 0.0  # metres along the plan's route reached (monotone)
        self.anchored = False  # progress found on this route at least once
        self.last: tuple[float, float, float] | None = None  # (epoch s, lat, lon) of the last fix
        self.speed_mps: float | None = None  # smoothed speed
        self.slow_since: datetime | None = None  # first fix of the current standing spell
        self.at_stop: tuple[str, float, float, float, float, float] | None = (
            None  # id, lat, lon, radius, service, since
        )
        self.prev_ids: tuple[str, ...] | None = None
        self.emitted: dict[str, float] = {}  # stop id -> last ETA emitted (epoch s)
        self.model_at: float | None = None  # epoch s of the last model run
        self.model_ratio: dict[str, float] = {}  # stop id -> last model log ratio
        self.estimated_at: float | None = None  # epoch s of the last estimate (estimate_every_s)
        self.projected: tuple[float, float, float, float, float] | None = None  # t, lat, lon, along, cross
        self._route: tuple[RouteGeometry, dict[str, float]] | None = None
        self._legs: dict[tuple[str, str, float], SampledPath] = {}

    # ------------------------------------------------------------ pickling: no caches, no models

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("estimated_at", None)  # state pickled before the throttle existed
        self.__dict__.setdefault("projected", None)
        self._route, self._legs = None, {}

    # ------------------------------------------------------------ the hook

    def set_plan(self, plan: Plan | None) -> None:
        """Follow a plan change: progress survives if the route is the same, emitted ETAs
        only if the version is (a new version's stops are all new)."""
        old = self.plan
        if plan is None or old is None or plan.route != old.route:
            self.progress_m, self.anchored, self.projected = 0.0, False, None
        if plan is None or old is None or plan.version != old.version:
            self.emitted = {}
        self.plan = plan
        self.prev_ids = None
        self.model_at, self.model_ratio = None, {}
        self.estimated_at = None
        self._route, self._legs = None, {}

    def update(
        self, fix: CheckedFix, remaining: tuple[Stop, ...], visit: tuple[Stop, datetime] | None = None
    ) -> list[Event]:
        """Take one usable fix, the stops still to do and the stop being visited (with its
        arrival time; its planned service is still to come); returns the ETAs that changed enough.

        With ``estimate_every_s``, a fix within that long of the last estimate only moves the
        vehicle's motion state on (unless the stops to do changed): the estimate is most of
        the cost of a fix, and an ETA some seconds old is as good as new.
        """
        every = self.config.estimate_every_s
        if every > 0 and self.estimated_at is not None and self.plan is not None and remaining:
            t_s = fix.time.timestamp()
            if t_s - self.estimated_at < every:
                ids = tuple(s.id for s in remaining)
                if self.prev_ids == ids:
                    self._motion(fix, t_s)
                    self._stop_service(fix, remaining, t_s, visit, ids)
                    return []
        self.estimated_at = fix.time.timestamp()
        estimates = self.observe(fix, remaining, visit, feature_rows=False)
        plan = self.plan
        if plan is None:
            return []
        cfg = self.config
        out: list[Event] = []
        t_s = fix.time.timestamp()
        for e in estimates:
            eta_s = float(round(t_s + e.eta_s))
            last = self.emitted.get(e.stop_id)
            if last is not None and abs(eta_s - last) <= cfg.reemit_s:
                continue
            self.emitted[e.stop_id] = eta_s
            details = {
                "remaining_m": round(e.remaining_m, 1),
                "profile_eta_s": round(e.profile_s, 1),
                "model_eta_s": None if e.model_s is None else round(e.model_s, 1),
                "naive_eta_s": None if e.naive_s is None else round(e.naive_s, 1),
                "straight_eta_s": round(e.straight_s, 1),
                "method": e.method,
                "state": e.state,
                "off_route": e.off_route,
                "stops_before": e.stops_before,
            }
            out.append(
                EtaUpdate(
                    eta_update_id(self.tenant, self.vehicle, e.stop_id, plan.version, fix.time),
                    self.tenant,
                    self.vehicle,
                    e.stop_id,
                    plan.version,
                    fix.time,
                    datetime.fromtimestamp(eta_s, UTC),
                    details,
                )
            )
        live = {e.stop_id for e in estimates}
        if self.emitted.keys() - live:  # done or dropped: forget, so a stop that comes back is new
            self.emitted = {k: v for k, v in self.emitted.items() if k in live}
        return out

    def on_timer(self, now: datetime) -> list[Event]:
        """No timers: ETAs move with fixes."""
        return []

    def next_timer(self) -> datetime | None:
        return None

    # ------------------------------------------------------------ the estimate

    def observe(
        self,
        fix: CheckedFix,
        remaining: tuple[Stop, ...],
        visit: tuple[Stop, datetime] | None = None,
        feature_rows: bool = True,
    ) -> list[StopEstimate]:
        """Advance the state with one fix and estimate every remaining stop, emitting nothing
        (``update`` adds the re-emit rule; training replays history through this). The model's
        feature rows are built only when the model runs, or with ``feature_rows`` (training)."""
        cfg = self.config
        t_s = fix.time.timestamp()
        speed_now, dt = self._motion(fix, t_s)
        service_left = self._stop_service(fix, remaining, t_s, visit)
        remaining = remaining[: cfg.max_stops]  # a plan of thousands of stops costs no more per fix
        if self.plan is None or not remaining:
            self.emitted, self.model_ratio = {}, {}
            return []
        models = registry.current(cfg.models)
        profiles = models.profiles or _constant_profiles(cfg.default_speed_mps, cfg.cell_resolution)
        detour = models.detour_factor
        hour = hour_of_week_at(t_s)
        cell = fix.h3_cell if fix.h3_cell is not None else h3.latlng_to_cell(fix.lat, fix.lon, cfg.cell_resolution)
        here_mps = profiles.speed(cell, hour)
        standing_s = (fix.time - self.slow_since).total_seconds() if self.slow_since is not None else 0.0
        smoothed = self.speed_mps
        if standing_s >= cfg.parked_after_s and self.slow_since is not None:
            state = "parked"
        elif (
            self.slow_since is None
            and smoothed is not None
            and smoothed >= cfg.parked_speed_mps
            and smoothed < cfg.traffic_ratio * here_mps
        ):
            state = "traffic"
        else:
            state = "moving"

        # (stop, metres of its leg, its path, from, to metres along it: None = the whole) per stop in order
        lead_m, cross_m, off_route = 0.0, 0.0, False
        legs: list[tuple[Stop, float, SampledPath, float | None, float | None]] = []
        passed: list[Stop] = []
        if self.plan.route is not None:
            method = "route"
            geometry, stop_along = self._plan_geometry()
            here = self._project(geometry, fix, dt)
            cross_m = here.cross_track_m
            off_route = cross_m > cfg.off_route_m
            if off_route:
                lead_m = cross_m * detour
            at = here.along_m
            sampled = geometry.sampled
            for s in remaining:
                a = stop_along.get(s.id)
                if a is None or a < here.along_m:
                    passed.append(s)  # skipped (its place on the route is behind) or not on this plan
                    continue
                legs.append((s, a - at, sampled, at, a))
                at = a
        elif models.network is not None:
            method = "network"
            lead_m, paths = models.network.legs((fix.lat, fix.lon), remaining)
            legs = [(s, p.length_m, p, None, None) for s, p in zip(remaining, paths, strict=True)]
        else:
            method = "straight"
            prev: Stop | None = None
            for s in remaining:
                p = self._straight_leg(fix, prev, s, detour)
                legs.append((s, p.length_m, p, None, None))
                prev = s

        dwell = models.stop_dwell_s or 0.0  # for the stops without planned service
        clock = t_s + service_left + lead_m / here_mps
        metres, service_before = lead_m, service_left
        rows: list[tuple[Stop, float, float, float]] = []  # stop, metres, profile s, service before
        slow_pace = 1.0 / smoothed - 1.0 / here_mps if state == "traffic" and smoothed else 0.0
        horizon = cfg.traffic_horizon_m
        for s, leg_m, path, frm, to in legs:
            metres += leg_m
            hour_then = (int(clock // 3600) + 72) % 168  # hour_of_week_at, inline: once per stop and estimate
            clock += path.travel_s(profiles, hour_then, frm or 0.0, to)
            rows.append(
                (s, metres, clock - t_s + (metres if metres < horizon else horizon) * slow_pace, service_before)
            )
            service = s.service_s or dwell
            clock += service
            service_before += service
        # straight metres from the fix to each stop: a local flat-earth approximation (well under
        # 0.1 % off over a city; a haversine per stop and fix is a fair share of an estimate's cost)
        kx = _M_PER_DEG * math.cos(math.radians(fix.lat))
        beeline = {s.id: math.hypot((s.lon - fix.lon) * kx, (s.lat - fix.lat) * _M_PER_DEG) for s in remaining}
        for s in passed:
            m = beeline[s.id] * detour
            rows.append((s, m, service_left + m / here_mps, service_left))
        model = models.model
        due = model is not None and self._model_due(rows, t_s)
        table = (
            [features(m, p, smoothed, i, hour, standing_s, cross_m, sb) for i, (_, m, p, sb) in enumerate(rows)]
            if feature_rows
            else None
        )
        X = None
        if due:
            # the model knows the times ahead it was trained on (model_max_ahead_s): it is asked about
            # the stops within them only (the others keep the correction of the last one within)
            ahead = cfg.model_max_ahead_s
            near = [i for i, r in enumerate(rows) if r[2] <= ahead] or [0]
            speed = math.nan if smoothed is None else smoothed
            # the model's rows in FEATURES order (as features() would build them), in one go
            X = np.array(
                [(rows[i][1], rows[i][2], speed, i, hour, standing_s, cross_m, rows[i][3]) for i in near], dtype=float
            )
        ratios = self._model_ratios(model, rows, near if due else [], X, t_s)
        passed_ids = {s.id for s in passed}
        pace = detour / (models.mean_speed_mps or cfg.default_speed_mps)
        straight: dict[str, float] = {}
        prev_stop: Stop | None = None
        chain = 0.0
        for s in remaining:
            chain += beeline[s.id] if prev_stop is None else self._between(prev_stop, s)
            straight[s.id] = chain * pace
            prev_stop = s
        moving = speed_now is not None and speed_now > cfg.parked_speed_mps
        out: list[StopEstimate] = []
        for i, (s, m, profile_s, _) in enumerate(rows):
            model_s = profile_s * math.exp(ratios[s.id]) if ratios is not None else None
            naive_s = beeline[s.id] / speed_now if moving and speed_now is not None else None
            eta_s = model_s if model_s is not None else profile_s
            out.append(
                StopEstimate(
                    s.id,
                    max(0.0, eta_s),
                    m,
                    profile_s,
                    model_s,
                    naive_s,
                    "straight" if s.id in passed_ids else method,
                    state,
                    off_route,
                    table[i] if table is not None else [],
                    straight[s.id],
                    i,
                )
            )
        return out

    # ------------------------------------------------------------ parts

    def _motion(self, fix: CheckedFix, t_s: float) -> tuple[float | None, float | None]:
        """Update the smoothed speed and standing spell; (speed now m/s or None, seconds since the last fix)."""
        cfg = self.config
        speed = fix.speed_mps
        dt = None
        if self.last is not None:
            dt = t_s - self.last[0]
            if speed is None and dt > 0:
                speed = haversine_m(self.last[1], self.last[2], fix.lat, fix.lon) / dt
        if speed is not None:
            prev = self.speed_mps
            self.speed_mps = speed if prev is None else prev + cfg.speed_smoothing * (speed - prev)
            if speed < cfg.parked_speed_mps:
                if self.slow_since is None:
                    self.slow_since = fix.time
            else:
                self.slow_since = None
        self.last = (t_s, fix.lat, fix.lon)
        return speed, dt

    def _stop_service(
        self,
        fix: CheckedFix,
        remaining: tuple[Stop, ...],
        t_s: float,
        visit: tuple[Stop, datetime] | None,
        ids: tuple[str, ...] | None = None,
    ) -> float:
        """Seconds of service left at the stop being visited (``visit``, else the one that just
        left the remaining list: training replays know arrivals only), 0 once the vehicle left
        it; planned service, or the learned time at a stop where the plan gives none."""
        if ids is None:
            ids = tuple(s.id for s in remaining)
        if visit is not None:
            stop, arrived = visit
            service = registry.current(self.config.models).service_s(stop)
            self.at_stop = (stop.id, stop.lat, stop.lon, stop.radius_m, service, arrived.timestamp())
        elif self.prev_ids is not None and self.plan is not None and ids != self.prev_ids:
            gone = [i for i in self.prev_ids if i not in ids]
            if gone:
                try:
                    s = self.plan.stop(gone[-1])
                except KeyError:
                    s = None
                if s is not None:
                    service = registry.current(self.config.models).service_s(s)
                    self.at_stop = (s.id, s.lat, s.lon, s.radius_m, service, t_s)
        self.prev_ids = ids
        if self.at_stop is None:
            return 0.0
        _, lat, lon, radius, service, since_s = self.at_stop
        if haversine_m(fix.lat, fix.lon, lat, lon) > radius + self.config.leave_stop_m:
            self.at_stop = None
            return 0.0
        return max(0.0, service - (t_s - since_s))

    def _plan_geometry(self) -> tuple[RouteGeometry, dict[str, float]]:
        if self._route is None:
            assert self.plan is not None and self.plan.route is not None
            cfg = self.config
            self._route = _plan_route(self.plan.route, self.plan.stops, cfg.cell_resolution, cfg.sample_m)
        return self._route

    def _project(self, geometry: RouteGeometry, fix: CheckedFix, dt: float | None) -> Projection:
        cfg = self.config
        t_s = fix.time.timestamp()
        last = self.projected
        if last is not None and self.anchored:
            if (
                abs(fix.lat - last[1]) * _M_PER_DEG < cfg.reproject_m
                and abs(fix.lon - last[2]) * _M_PER_DEG * math.cos(math.radians(fix.lat)) < cfg.reproject_m
            ):
                return Projection(last[3], last[4], -1)  # standing (GPS noise): where it was
            dt = t_s - last[0]  # the search window grows with the time since the last projection
        if not self.anchored or dt is None:
            here = geometry.project(fix.lat, fix.lon, self.progress_m)
        else:
            window = self.progress_m + cfg.search_ahead_m + cfg.max_speed_mps * max(0.0, dt)
            here = geometry.project(fix.lat, fix.lon, self.progress_m, window)
            if here.cross_track_m > cfg.off_route_m:
                # rejoined the route further on than a vehicle could have driven along it?
                wide = geometry.project(fix.lat, fix.lon, self.progress_m)
                if wide.cross_track_m <= cfg.off_route_m:
                    here = wide
        self.progress_m, self.anchored = here.along_m, True
        self.projected = (t_s, fix.lat, fix.lon, here.along_m, here.cross_track_m)
        return here

    def _between(self, a: Stop, b: Stop) -> float:
        """Great-circle metres between two stops (cached with the straight legs)."""
        key = (a.id, b.id, -1.0)
        leg = self._legs.get(key)
        if leg is None:
            if len(self._legs) > 64:
                self._legs.clear()
            leg = self._legs[key] = SampledPath([0.0, haversine_m(a.lat, a.lon, b.lat, b.lon)], [])
        return leg.cum_m[-1]

    def _straight_leg(self, fix: CheckedFix, prev: Stop | None, stop: Stop, detour: float) -> SampledPath:
        cfg = self.config
        if prev is None:  # from the vehicle: changes every fix
            return sample_path(((fix.lat, fix.lon), (stop.lat, stop.lon)), cfg.cell_resolution, cfg.sample_m, detour)
        key = (prev.id, stop.id, detour)
        leg = self._legs.get(key)
        if leg is None:
            if len(self._legs) > 64:
                self._legs.clear()
            leg = self._legs[key] = sample_path(
                ((prev.lat, prev.lon), (stop.lat, stop.lon)), cfg.cell_resolution, cfg.sample_m, detour
            )
        return leg

    def _model_due(self, rows: list[tuple[Stop, float, float, float]], t_s: float) -> bool:
        """Whether the model runs now: never yet, ``model_every_s`` since, or other stops to do."""
        known = self.model_ratio
        return (
            self.model_at is None
            or t_s - self.model_at >= self.config.model_every_s
            or len(rows) != len(known)
            or any(r[0].id not in known for r in rows)
        )

    def _model_ratios(
        self,
        model: Any,
        rows: list[tuple[Stop, float, float, float]],
        near: list[int],
        X: np.ndarray | None,
        t_s: float,
    ) -> dict[str, float] | None:
        """The model's log ratio per stop: predicted now for the rows ``near`` (``X``, when the
        model is due), else the last ones; stops beyond ``near`` take the last prediction."""
        if model is None:
            self.model_at, self.model_ratio = None, {}
            return None
        if X is not None:
            predicted = model.predict_log_ratio(X).tolist()
            ratio = {rows[i][0].id: v for i, v in zip(near, predicted, strict=True)}
            last = predicted[-1]
            self.model_ratio = {r[0].id: ratio.get(r[0].id, last) for r in rows}
            self.model_at = t_s
        return self.model_ratio
