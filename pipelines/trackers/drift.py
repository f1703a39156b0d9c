"""Route drift: off the planned route for a distance and a time, unless on a planned detour.

On route / off route
    The route polyline becomes an H3 corridor: the cells (``corridor_resolution``)
    the line passes through plus a ``corridor_k`` grid disk. A fix is on route when
    it is inside a stop's fence, inside the corridor, or within ``drift_distance_m``
    of the polyline (cross-track distance). The corridor is the fast path: with the
    defaults (resolution 10, k = 1) every corridor cell lies within about 300 m of the
    line (256-296 m measured at four latitudes), inside ``drift_distance_m`` = 350 m,
    so the corridor only saves the polyline arithmetic on the common on-route fix and
    the rule is, in effect, the distance rule. Keep that relation when changing them.

Alert
    Off route continuously (planned-detour fixes excepted) for
    ``drift_min_duration_s`` -> ``route_drift`` starting where it left: at the first
    off-route fix, dated back to the crossing of ``drift_distance_m`` on the move from the
    last fix on route (interpolated, not across a silence);
    resolved when back on route for ``drift_resolve_s`` (end = first on-route fix).
    Both debounces are also confirmed by ``on_timer`` when the device goes quiet.

Planned detour (no alert)
    A vehicle that leaves the route to drive straight to its next stop (a closed
    road, a shortcut the driver knows) is not drifting. An off-route fix is a
    planned detour while all of these hold:

    1. there is a next stop (the first planned stop not yet arrived at);
    2. the fix lies within ``detour_max_offset_m`` of the straight segment from where
       the vehicle left the route (its last on-route fix) to that stop;
    3. its distance to the stop is at most ``detour_slack_m`` more than the closest it
       has been since leaving the route: it keeps closing in, with slack for bends.

    The excuse is provisional. The first fix that breaks (2) or (3) ends the detour for
    good (until the vehicle is back on route) and the whole excursion counts as drift
    from its first off-route fix: the alert starts there, and opens at once if the
    excursion is already ``drift_min_duration_s`` old. So a vehicle heading away from
    the stop, or wandering sideways, alerts as if there had been no excuse, while one
    cutting a corner towards the stop never does. Without a route there is no
    drift tracking at all (straight lines between stops are not roads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import h3.api.basic_int as h3
import numpy as np

from core.geo import (
    PolylinePosition,
    cumulative_lengths_m,
    distance_to_segment_m,
    haversine_m,
    locate_on_polyline,
)
from core.plan import Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert
from pipelines.trackers.quality import CheckedFix

__all__ = ["RouteCorridor", "RouteDriftTracker"]


class RouteCorridor:
    """A route polyline ((lat, lon) degrees) as a set of H3 cells plus the line itself.

    Immutable and shared between checkpoints; pickles as its recipe and is rebuilt on load.
    """

    def __init__(self, route: Sequence[tuple[float, float]], resolution: int, k: int) -> None:
        self.route = tuple((float(lat), float(lon)) for lat, lon in route)
        if len(self.route) < 2:
            raise ValueError("a route needs at least two points")
        self.resolution, self.k = resolution, k
        self._points = np.asarray(self.route, dtype=float)
        self._cumulative = cumulative_lengths_m(self._points)
        step = h3.average_hexagon_edge_length(resolution, "m") / 2
        line_cells: set[int] = set()
        for (lat1, lon1), (lat2, lon2) in zip(self.route, self.route[1:], strict=False):
            n = max(1, math.ceil(haversine_m(lat1, lon1, lat2, lon2) / step))
            for i in range(n + 1):
                f = i / n
                line_cells.add(h3.latlng_to_cell(lat1 + f * (lat2 - lat1), lon1 + f * (lon2 - lon1), resolution))
        cells: set[int] = set()
        for cell in line_cells:
            cells.update(h3.grid_disk(cell, k))
        self.cells = frozenset(cells)

    @property
    def length_m(self) -> float:
        """Length of the route in metres."""
        return float(self._cumulative[-1])

    def contains(self, lat: float, lon: float) -> bool:
        """Whether the point's cell is in the corridor."""
        return h3.latlng_to_cell(lat, lon, self.resolution) in self.cells

    def locate(self, lat: float, lon: float) -> PolylinePosition:
        """Cross-track distance (m) to the route and progress along it (m from its start)."""
        return locate_on_polyline(lat, lon, self._points, self._cumulative)

    def __reduce__(self) -> tuple[Any, ...]:
        return RouteCorridor, (self.route, self.resolution, self.k)


@dataclass(slots=True)
class _Detour:
    stop: Stop
    from_lat: float
    from_lon: float
    closest_m: float
    broken: bool = False


class RouteDriftTracker:
    """Drift state of one vehicle against the current corridor."""

    _on_fix: CheckedFix | None = None  # class default: state pickled before it existed still loads

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.corridor: RouteCorridor | None = None
        self.alert: Alert | None = None
        self._last_on: tuple[float, float] | None = None  # last on-route position
        self._on_fix: CheckedFix | None = None  # the last on-route fix (when the route was left)
        self._left: CheckedFix | None = None  # first off-route fix of the current excursion
        self._left_offset_m = 0.0
        self._off: CheckedFix | None = None  # = _left once the excursion is not a planned detour
        self._max_offset_m = 0.0
        self._on_since: datetime | None = None  # first on-route fix while an alert is open
        self._detour: _Detour | None = None
        self._next_stop_id: str | None = None

    def set_plan(self, corridor: RouteCorridor | None, now: datetime) -> list[Alert]:
        """Switch to a new corridor at ``now``; with no route an open alert resolves."""
        self.corridor = corridor
        self._left, self._off, self._detour, self._on_since = None, None, None, None
        if corridor is None and self.alert is not None:
            resolved = self.alert.resolve(now, max_offset_m=round(self._max_offset_m, 1), plan_changed=True)
            self.alert = None
            return [resolved]
        return []

    def update(self, fix: CheckedFix, next_stop: Stop | None, at_stop: bool) -> list[Alert]:
        """Feed one usable fix with the next planned stop and whether it is inside a stop fence."""
        corridor = self.corridor
        if corridor is None:
            return []
        cfg = self.config
        self._next_stop_id = next_stop.id if next_stop is not None else None
        offset_m = 0.0
        on_route = at_stop or corridor.contains(fix.lat, fix.lon)
        if not on_route:
            offset_m = corridor.locate(fix.lat, fix.lon).cross_track_m
            on_route = offset_m <= cfg.drift_distance_m
        if on_route:
            self._last_on = (fix.lat, fix.lon)
            self._on_fix = fix
            self._left, self._off, self._detour = None, None, None
            if self.alert is not None and self._on_since is None:
                self._on_since = fix.time
            return self.on_timer(fix.time)
        self._on_since = None
        if self._left is None:
            self._left, self._left_offset_m = fix, offset_m
            if self.alert is None:
                self._max_offset_m = 0.0
        self._max_offset_m = max(self._max_offset_m, offset_m)
        if self._planned_detour(fix, next_stop):
            return []
        # not (or no longer) a planned detour: the whole excursion counts, from where it left the route
        if self._off is None:
            self._off = self._crossing(self._left, self._left_offset_m)
        return self.on_timer(fix.time)

    def _crossing(self, left: CheckedFix, offset_m: float) -> CheckedFix:
        """``left`` (the first fix off route), dated back to when the move from the last fix on
        route crossed ``drift_distance_m`` (constant speed between them; not across a silence):
        a fix every 30 s would otherwise date the excursion up to 30 s late."""
        on, corridor = self._on_fix, self.corridor
        if on is None or corridor is None:
            return left
        span = (left.time - on.time).total_seconds()
        if not 0 < span <= on.silence_s:
            return left
        on_m = corridor.locate(on.lat, on.lon).cross_track_m
        limit = self.config.drift_distance_m
        if not on_m < limit < offset_m:
            return left
        f = (limit - on_m) / (offset_m - on_m)
        return replace(left, time=on.time + timedelta(seconds=f * span))

    def _planned_detour(self, fix: CheckedFix, stop: Stop | None) -> bool:
        if stop is None:
            return False
        detour = self._detour
        if detour is None or detour.stop.id != stop.id:
            start = self._last_on if detour is None and self._last_on is not None else (fix.lat, fix.lon)
            detour = self._detour = _Detour(
                stop, start[0], start[1], haversine_m(start[0], start[1], stop.lat, stop.lon)
            )
        if detour.broken:
            return False
        cfg = self.config
        d = haversine_m(fix.lat, fix.lon, stop.lat, stop.lon)
        beeline = distance_to_segment_m(fix.lat, fix.lon, (detour.from_lat, detour.from_lon), (stop.lat, stop.lon))
        if d <= detour.closest_m + cfg.detour_slack_m and beeline <= cfg.detour_max_offset_m:
            detour.closest_m = min(detour.closest_m, d)
            return True
        detour.broken = True
        return False

    def on_timer(self, now: datetime) -> list[Alert]:
        """Open an alert whose off-route duration has passed, resolve one back on route long enough."""
        cfg = self.config
        off = self._off
        if self.alert is None and off is not None and now - off.time >= timedelta(seconds=cfg.drift_min_duration_s):
            self.alert = new_alert(
                "route_drift",
                self.tenant,
                self.vehicle,
                off.time,
                stop_id=self._next_stop_id,
                h3_cell=off.h3_cell,
                details={
                    "lat": off.lat,
                    "lon": off.lon,
                    "offset_m": round(self._left_offset_m, 1),
                    "max_offset_m": round(self._max_offset_m, 1),  # the furthest so far (the last fix's, or more)
                    "limit_m": cfg.drift_distance_m,
                },
            )
            return [self.alert]
        on_since = self._on_since
        if self.alert is not None and on_since is not None and now - on_since >= timedelta(seconds=cfg.drift_resolve_s):
            resolved = self.alert.resolve(on_since, max_offset_m=round(self._max_offset_m, 1))
            self.alert, self._on_since = None, None
            return [resolved]
        return []

    def next_timer(self) -> datetime | None:
        cfg = self.config
        if self.alert is None and self._off is not None:
            return self._off.time + timedelta(seconds=cfg.drift_min_duration_s)
        if self.alert is not None and self._on_since is not None:
            return self._on_since + timedelta(seconds=cfg.drift_resolve_s)
        return None
