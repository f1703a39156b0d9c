"""Arrival at and departure from planned stops (circles), debounced.

- Arrival: continuously inside a stop's circle for ``arrival_min_inside_s``; the
  arrival time is the first fix inside. A vehicle circling the fence, or passing
  through it, never stays inside long enough and raises nothing.
- Departure: continuously outside the circle plus ``fence_exit_margin_m`` for
  ``departure_min_outside_s``; the departure time is the first fix outside. The
  margin is a hysteresis band, so jitter on the edge does not flap.
- Both are also confirmed by ``on_timer`` when the device goes quiet.

Overlapping fences: the nearest centre wins; while a visit is open other fences are
ignored. Stops are looked up through an H3 index, so a fix costs O(1) whatever the
number of stops. After a plan change an open visit keeps its stop's geometry until
departure; arrival counts per stop id carry over (a stop done in version 1 is done in
version 2 if it keeps its id).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import h3.api.basic_int as h3

from core.contract import format_time
from core.geo import M_PER_DEG_LAT, haversine_m
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import StopEvent, stop_event_id
from pipelines.trackers.quality import CheckedFix

__all__ = ["GeofenceTracker", "StopIndex"]


class StopIndex:
    """Stops by the H3 cells (resolution ``resolution``) their circle plus ``margin_m`` can touch.

    Immutable and shared between checkpoints; pickles as its recipe and is rebuilt on load.
    """

    def __init__(self, stops: Sequence[Stop], resolution: int, margin_m: float) -> None:
        self.stops = tuple(stops)
        self.resolution = resolution
        self.margin_m = margin_m
        self.cells: dict[str, int] = {}  # stop id -> cell of its centre
        by_cell: dict[int, list[Stop]] = {}
        for stop in self.stops:
            centre = h3.latlng_to_cell(stop.lat, stop.lon, resolution)
            self.cells[stop.id] = centre
            c_lat, c_lon = h3.cell_to_latlng(centre)
            # circumradius of the cell, padded for the grid's distortion
            e = 1.1 * max(haversine_m(c_lat, c_lon, lat, lon) for lat, lon in h3.cell_to_boundary(centre))
            # cells k rings away have centres at least 1.5 * k * e apart
            k = math.ceil((stop.radius_m + margin_m + 2 * e) / (1.5 * e))
            for cell in h3.grid_disk(centre, k):
                by_cell.setdefault(cell, []).append(stop)
        self._by_cell = {cell: tuple(found) for cell, found in by_cell.items()}

    def containing(self, lat: float, lon: float, cell: int | None = None, margin_m: float = 0.0) -> Stop | None:
        """The nearest stop whose circle grown by ``margin_m`` (<= the index margin) holds the point."""
        if cell is None or h3.get_resolution(cell) != self.resolution:
            cell = h3.latlng_to_cell(lat, lon, self.resolution)
        best: Stop | None = None
        best_d = math.inf
        for stop in self._by_cell.get(cell, ()):
            # a great circle is never shorter than its latitude difference: skip the stops whose
            # circle that alone puts out of reach (1 m of slack for rounding), before the haversine
            if abs(lat - stop.lat) * M_PER_DEG_LAT > stop.radius_m + margin_m + 1.0:
                continue
            d = haversine_m(lat, lon, stop.lat, stop.lon)
            if d <= stop.radius_m + margin_m and d < best_d:
                best, best_d = stop, d
        return best

    def __reduce__(self) -> tuple[Any, ...]:
        return StopIndex, (self.stops, self.resolution, self.margin_m)


@dataclass(slots=True)
class _Visit:
    stop: Stop
    plan_version: int
    number: int  # 1 for the first arrival at this stop id
    arrived_at: datetime
    out_since: datetime | None = None


class GeofenceTracker:
    """Stop visits of one vehicle; emits ``StopEvent`` arrivals and departures."""

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.plan: Plan | None = None
        self.index: StopIndex | None = None
        self.visit: _Visit | None = None
        self.arrivals: dict[str, int] = {}  # stop id -> arrivals so far
        self._candidate: tuple[Stop, datetime] | None = None  # first fix inside a stop, not yet an arrival

    def set_plan(self, plan: Plan | None, index: StopIndex | None) -> None:
        """Use a new plan from now on; a pending arrival is dropped, an open visit continues."""
        self.plan, self.index = plan, index
        self._candidate = None

    def update(self, fix: CheckedFix) -> list[StopEvent]:
        """Feed one usable fix; returns arrivals/departures it confirmed."""
        cfg = self.config
        out: list[StopEvent] = []
        visit = self.visit
        if visit is not None:
            served = visit.stop
            if haversine_m(fix.lat, fix.lon, served.lat, served.lon) <= served.radius_m + cfg.fence_exit_margin_m:
                visit.out_since = None
                return out
            if visit.out_since is None:
                visit.out_since = fix.time
            out += self.on_timer(fix.time)
            if self.visit is not None:
                return out
        stop = self.index.containing(fix.lat, fix.lon, fix.h3_cell) if self.index is not None else None
        if stop is None:
            self._candidate = None
        elif self._candidate is None or self._candidate[0].id != stop.id:
            self._candidate = (stop, fix.time)
        out += self.on_timer(fix.time)
        return out

    def on_timer(self, now: datetime) -> list[StopEvent]:
        """Confirm a pending arrival or departure whose minimum duration has passed."""
        cfg = self.config
        visit = self.visit
        if visit is not None:
            if visit.out_since is not None and now - visit.out_since >= timedelta(seconds=cfg.departure_min_outside_s):
                return [self._depart(visit, visit.out_since)]
            return []
        if self._candidate is not None and now - self._candidate[1] >= timedelta(seconds=cfg.arrival_min_inside_s):
            stop, since = self._candidate
            return [self._arrive(stop, since)]
        return []

    def next_timer(self) -> datetime | None:
        """Fix time at which a pending arrival or departure is confirmed."""
        cfg = self.config
        if self.visit is not None:
            if self.visit.out_since is None:
                return None
            return self.visit.out_since + timedelta(seconds=cfg.departure_min_outside_s)
        if self._candidate is not None:
            return self._candidate[1] + timedelta(seconds=cfg.arrival_min_inside_s)
        return None

    def remaining_stops(self) -> tuple[Stop, ...]:
        """Planned stops not yet arrived at, in plan order (the current visit excluded)."""
        if self.plan is None:
            return ()
        return tuple(s for s in self.plan.stops if s.id not in self.arrivals)

    def next_stop(self) -> Stop | None:
        """The first planned stop not yet arrived at."""
        for s in self.plan.stops if self.plan is not None else ():
            if s.id not in self.arrivals:
                return s
        return None

    def at_stop(self, lat: float, lon: float, cell: int | None) -> bool | None:
        """Whether the point is inside a stop circle plus the exit margin (raw, not debounced:
        a vehicle already 500 m away is not at the stop it has yet to be seen leaving);
        None when there is no plan to tell."""
        if self.index is None:
            return None
        return self.index.containing(lat, lon, cell, self.config.fence_exit_margin_m) is not None

    def _arrive(self, stop: Stop, at: datetime) -> StopEvent:
        assert self.plan is not None
        number = self.arrivals.get(stop.id, 0) + 1
        self.arrivals[stop.id] = number
        self.visit = _Visit(stop, self.plan.version, number, at)
        self._candidate = None
        window = None
        if stop.window_end is not None and at > stop.window_end:
            window = "late"
        elif stop.window_start is not None and at < stop.window_start:
            window = "early"
        elif stop.window_start is not None or stop.window_end is not None:
            window = "on_time"
        return StopEvent(
            stop_event_id(self.tenant, self.vehicle, "arrival", stop.id, self.plan.version, number),
            "arrival",
            self.tenant,
            self.vehicle,
            stop.id,
            at,
            {"plan_version": self.plan.version, "visit": number, "window": window},
        )

    def _depart(self, visit: _Visit, at: datetime) -> StopEvent:
        self.visit = None
        stop = visit.stop
        return StopEvent(
            stop_event_id(self.tenant, self.vehicle, "departure", stop.id, visit.plan_version, visit.number),
            "departure",
            self.tenant,
            self.vehicle,
            stop.id,
            at,
            {
                "plan_version": visit.plan_version,
                "visit": visit.number,
                "arrived_at": format_time(visit.arrived_at),
                "service_s": (at - visit.arrived_at).total_seconds(),
                "planned_service_s": stop.service_s,
            },
        )
