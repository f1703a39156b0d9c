"""Arrival at and departure from planned stops (circles), judged on evidence that holds
at real sampling rates (a fix every 1 to 60 s, with or without a device speed).

Arrival
    A run of fixes inside a stop's circle is a *candidate*. It becomes an arrival on
    evidence that the vehicle stopped there, checked at every fix (``details["evidence"]``):

    - ``speed``: a fix inside reports a device speed under ``stop_speed_mps``;
    - ``derived_speed``: a fix inside without one has a derived speed (``quality.py``:
      displacement over at least ``derive_min_span_s``, noise taken off) under it;
    - ``time_inside``: seen inside for ``arrival_min_inside_s``, boundary to boundary: from
      the entry (interpolated on the segment from the last fix outside to the first fix
      inside) to the last fix inside, or, once the vehicle has left, to the exit
      interpolated the same way. So two fixes 30 s apart inside a 50 m circle are an
      arrival, and one fix inside between two far outside it is not. With a single fix
      inside the time must be twice as long: straight lines between fixes a minute apart
      cut the corners of a turn, so a vehicle that turned near the fence seems to crawl
      through it (on real drives thinned to 60 s, most such arrivals were false).

    A stop already visited is arrived at again only on twice that time inside (no speed
    evidence): a red light beside a stop served earlier is no second visit.

    A pass-through (one fix inside at speed, or several inside a large circle at speed)
    is no arrival. The arrival time is the interpolated entry, not the first fix inside.
    Across a silence (a gap longer than the fix's ``silence_s``) nothing is interpolated:
    the entry is the first fix seen inside and the exit the last one. No timer confirms an
    arrival: a device that goes quiet has shown nothing (silence is not evidence).
    ``details`` also carry ``inside_s`` (the seen time inside when it was confirmed) and
    ``fixes_inside``.

Departure
    Continuously outside the circle plus ``fence_exit_margin_m`` for
    ``departure_min_outside_s`` (a hysteresis band, so jitter on the edge does not flap;
    also confirmed by ``on_timer`` when the device goes quiet: it was seen leaving), or at
    once when a fix lies inside another stop's circle, nearer its centre (a vehicle cannot
    be at two stops 100 m apart). The departure time is the exit interpolated at the
    circle's boundary (the last fix inside across a silence). ``details["evidence"]``:
    ``outside`` or ``next_stop``.

Overlapping fences: the nearest centre wins. Stops are looked up through an H3 index, so
a fix costs O(1) whatever the number of stops. After a plan change an open visit keeps its
stop's geometry until departure; arrival counts per stop id carry over (a stop done in
version 1 is done in version 2 if it keeps its id).

A plan is *finished* once its last stop (plan order) has been arrived at: stops passed
by on the way are skipped, not still to do (``remaining_stops`` is then empty). The last
stop of a plan with several is arrived at only once the vehicle has been seen outside it
(a round that starts at the depot it ends at has not ended when it starts).
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
from pipelines.trackers.state import restore_fields

__all__ = ["GeofenceTracker", "StopIndex", "boundary_time"]


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


# A fix as the geofence remembers it: (UTC time, lat, lon, silence_s: the longest gap after it still seen)
_Seen = tuple[datetime, float, float, float]


def _seen(fix: CheckedFix) -> _Seen:
    return (fix.time, fix.lat, fix.lon, fix.silence_s)


def boundary_time(stop: Stop, a: _Seen, b: _Seen, entering: bool) -> datetime:
    """When the straight move from fix ``a`` to fix ``b`` crossed ``stop``'s circle: the first
    crossing when ``entering`` (a outside, b inside), else the last (a inside, b outside);
    constant speed between the fixes, in a local plane around the centre. Across a silence
    (the gap longer than ``a``'s silence_s) nothing is interpolated: ``b``'s time entering,
    ``a``'s leaving (the last time it was seen inside)."""
    ta, tb = a[0], b[0]
    span = (tb - ta).total_seconds()
    if span <= 0 or span > a[3]:
        return tb if entering else ta
    kx = M_PER_DEG_LAT * math.cos(math.radians(stop.lat))
    ax, ay = (a[2] - stop.lon) * kx, (a[1] - stop.lat) * M_PER_DEG_LAT
    dx, dy = (b[2] - stop.lon) * kx - ax, (b[1] - stop.lat) * M_PER_DEG_LAT - ay
    # |a + f d|^2 = r^2
    qa = dx * dx + dy * dy
    qb = 2.0 * (ax * dx + ay * dy)
    qc = ax * ax + ay * ay - stop.radius_m * stop.radius_m
    disc = qb * qb - 4.0 * qa * qc
    if qa <= 0.0 or disc < 0.0:
        return tb if entering else ta
    root = math.sqrt(disc)
    f = (-qb - root) / (2.0 * qa) if entering else (-qb + root) / (2.0 * qa)
    f = min(1.0, max(0.0, f))
    return ta + timedelta(seconds=f * span)


@dataclass(slots=True)
class _Candidate:
    """A run of fixes inside ``stop``'s circle, not yet an arrival."""

    stop: Stop
    entered: datetime  # interpolated entry
    last_in: _Seen  # the latest fix inside
    fixes: int = 1


@dataclass(slots=True)
class _Visit:
    stop: Stop
    plan_version: int
    number: int  # 1 for the first arrival at this stop id
    arrived_at: datetime
    out_since: datetime | None = None  # first fix outside the circle plus the margin
    last_in: _Seen | None = None  # the latest fix within the circle plus the margin
    left_at: datetime | None = None  # the exit interpolated at the circle's boundary

    def __setstate__(self, state: Any) -> None:  # states pickled before last_in / left_at existed
        restore_fields(self, state)

    def seen_in(self) -> _Seen:
        """The latest fix inside (a visit restored from an older state: the stop at its arrival)."""
        return self.last_in if self.last_in is not None else (self.arrived_at, self.stop.lat, self.stop.lon, 60.0)


class GeofenceTracker:
    """Stop visits of one vehicle; emits ``StopEvent`` arrivals and departures."""

    # class defaults: state pickled before they existed still loads
    _prev: _Seen | None = None
    away_from_final: bool = False

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.plan: Plan | None = None
        self.index: StopIndex | None = None
        self.visit: _Visit | None = None
        self.arrivals: dict[str, int] = {}  # stop id -> arrivals so far
        self._candidate: _Candidate | None = None
        self._prev = None  # the last usable fix (interpolates entries)
        self.away_from_final = False  # seen outside the plan's last stop since the plan began (the round began)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self._candidate, tuple):  # an older state's (stop, first fix inside): judged afresh
            self._candidate = None

    def set_plan(self, plan: Plan | None, index: StopIndex | None) -> None:
        """Use a new plan from now on; a pending arrival is dropped, an open visit continues."""
        self.plan, self.index = plan, index
        self._candidate = None
        self.away_from_final = False

    def update(self, fix: CheckedFix) -> list[StopEvent]:
        """Feed one usable fix; returns arrivals/departures it confirmed."""
        out: list[StopEvent] = []
        seen = _seen(fix)
        prev, self._prev = self._prev, seen
        if not self.away_from_final and self.plan is not None and self.plan.stops:
            last = self.plan.stops[-1]
            margin = last.radius_m + self.config.fence_exit_margin_m
            self.away_from_final = haversine_m(fix.lat, fix.lon, last.lat, last.lon) > margin
        visit = self.visit
        inside = self.index.containing(fix.lat, fix.lon, fix.h3_cell) if self.index is not None else None
        if inside is not None and not self.away_from_final and self._is_final(inside):
            inside = None  # at the depot the round starts from, which is also where it ends: not yet
        if visit is not None:
            served = visit.stop
            d = haversine_m(fix.lat, fix.lon, served.lat, served.lon)
            elsewhere = (
                inside is not None
                and inside.id != served.id
                and haversine_m(fix.lat, fix.lon, inside.lat, inside.lon) < d
            )
            if not elsewhere and d <= served.radius_m + self.config.fence_exit_margin_m:
                visit.last_in, visit.out_since, visit.left_at = seen, None, None
                return out
            if visit.out_since is None:
                visit.out_since = fix.time
                visit.left_at = boundary_time(served, visit.seen_in(), seen, entering=False)
            if elsewhere:  # in the next stop's circle: it has left this one
                out.append(self._depart(visit, "next_stop"))
            else:
                out += self.on_timer(fix.time)
            if self.visit is not None:
                return out
        cand = self._candidate
        if cand is not None and (inside is None or inside.id != cand.stop.id):
            # the run inside cand.stop ended: judge it on the time seen inside, boundary to boundary
            self._candidate = None
            left = boundary_time(cand.stop, cand.last_in, seen, entering=False)
            inside_s = (left - cand.entered).total_seconds()
            if inside_s >= self._time_needed(cand):
                out.append(self._arrive(cand, "time_inside", inside_s))
                assert self.visit is not None
                self.visit.out_since, self.visit.left_at = fix.time, left
                if inside is not None:
                    out.append(self._depart(self.visit, "next_stop"))
                if self.visit is not None:
                    return out
            cand = None
        if inside is None:
            return out
        if cand is None:
            entered = boundary_time(inside, prev, seen, entering=True) if prev is not None else fix.time
            cand = self._candidate = _Candidate(inside, entered, seen, 0)
        cand.last_in = seen
        cand.fixes += 1
        evidence = None
        again = inside.id in self.arrivals  # a red light by a stop already served is no second visit
        if not again and fix.speed_mps is not None and fix.speed_mps < self.config.stop_speed_mps:
            evidence = "derived_speed" if fix.speed_derived else "speed"
        inside_s = (fix.time - cand.entered).total_seconds()
        if evidence is None and inside_s >= self._time_needed(cand):
            evidence = "time_inside"
        if evidence is not None:
            out.append(self._arrive(cand, evidence, inside_s))
        return out

    def _time_needed(self, cand: _Candidate) -> float:
        """Seconds seen inside that make ``cand`` an arrival without a sign of stopping: twice
        ``arrival_min_inside_s`` with one fix inside (straight lines to its neighbours cut the
        corners of a turn near the fence, so the vehicle seems to crawl through it) or at a stop
        already visited (a second visit needs more than a red light beside it)."""
        single = cand.fixes < 2
        again = cand.stop.id in self.arrivals
        return self.config.arrival_min_inside_s * (2 if single or again else 1)

    def on_timer(self, now: datetime) -> list[StopEvent]:
        """Confirm a departure whose minimum time outside has passed (arrivals need fixes)."""
        visit = self.visit
        if visit is not None and visit.out_since is not None:
            if now - visit.out_since >= timedelta(seconds=self.config.departure_min_outside_s):
                return [self._depart(visit, "outside")]
        return []

    def next_timer(self) -> datetime | None:
        """Fix time at which a pending departure is confirmed."""
        if self.visit is not None and self.visit.out_since is not None:
            return self.visit.out_since + timedelta(seconds=self.config.departure_min_outside_s)
        return None

    def finished(self) -> bool:
        """Whether the plan is done: its last stop (plan order) arrived at, or every stop."""
        plan = self.plan
        if plan is None or not plan.stops:
            return False
        arrivals = self.arrivals
        if plan.stops[-1].id in arrivals:
            return True
        # stop ids are unique in a plan (core/plan.py): fewer arrivals than stops cannot be all of them
        return len(arrivals) >= len(plan.stops) and all(s.id in arrivals for s in plan.stops)

    def _is_final(self, stop: Stop) -> bool:
        plan = self.plan
        return plan is not None and len(plan.stops) > 1 and stop.id == plan.stops[-1].id

    def at_final_stop(self) -> bool:
        """Whether the last usable fix lay inside the plan's last stop's circle (with or without
        an arrival there: a device that goes quiet in it has ended its shift there), once the
        round has begun (it was seen away from that stop: a van at the depot before its round is
        not at the end of it)."""
        prev, plan = self._prev, self.plan
        if prev is None or plan is None or not plan.stops or not self.away_from_final:
            return False
        last = plan.stops[-1]
        return haversine_m(prev[1], prev[2], last.lat, last.lon) <= last.radius_m

    def remaining_stops(self) -> tuple[Stop, ...]:
        """Planned stops not yet arrived at, in plan order (the current visit excluded); none
        once the plan is finished (stops passed by on the way to the last one are skipped)."""
        if self.plan is None or self.finished():
            return ()
        return tuple(s for s in self.plan.stops if s.id not in self.arrivals)

    def next_stop(self) -> Stop | None:
        """The first planned stop not yet arrived at (None once the plan is finished)."""
        if self.plan is None or self.finished():
            return None
        for s in self.plan.stops:
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

    def stop_within(self, lat: float, lon: float, distance_m: float) -> bool | None:
        """Whether some stop's circle plus the exit margin lies within ``distance_m`` of the point
        (visited stops too: a vehicle may go back); None when there is no plan to tell."""
        if self.index is None:
            return None
        margin = self.config.fence_exit_margin_m
        for stop in self.index.stops:
            reach = distance_m + stop.radius_m + margin
            if abs(lat - stop.lat) * M_PER_DEG_LAT <= reach and haversine_m(lat, lon, stop.lat, stop.lon) <= reach:
                return True
        return False

    def stands_at_stop(self, lat: float, lon: float, cell: int | None) -> bool | None:
        """Whether a vehicle standing at the point stands at a stop, for dwell timing: inside a stop
        circle plus the exit margin while a visit is open (the band holds it there until it
        departs), else inside a circle. Standing in the band of a stop it never arrived at (a
        bus that pulled out of its stop and waits beside it, a queue behind it) is standing away;
        None when there is no plan to tell."""
        if self.index is None:
            return None
        margin = self.config.fence_exit_margin_m if self.visit is not None else 0.0
        return self.index.containing(lat, lon, cell, margin) is not None

    def _arrive(self, cand: _Candidate, evidence: str, inside_s: float) -> StopEvent:
        assert self.plan is not None
        stop, at = cand.stop, cand.entered
        number = self.arrivals.get(stop.id, 0) + 1
        self.arrivals[stop.id] = number
        self.visit = _Visit(stop, self.plan.version, number, at, last_in=cand.last_in)
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
            {
                "plan_version": self.plan.version,
                "visit": number,
                "window": window,
                "evidence": evidence,
                "inside_s": round(inside_s, 1),
                "fixes_inside": cand.fixes,
            },
        )

    def _depart(self, visit: _Visit, evidence: str) -> StopEvent:
        self.visit = None
        stop = visit.stop
        at = visit.left_at if visit.left_at is not None else visit.seen_in()[0]
        at = max(at, visit.arrived_at)
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
                "evidence": evidence,
            },
        )
