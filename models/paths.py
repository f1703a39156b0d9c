"""The path still to drive to each remaining stop, and the travel time along it.

Three ways to get the path, best first:

- ``route``: along the plan's route polyline, from the vehicle's projection on it to
  each stop's projection (``RouteGeometry``, ``remaining_along_route``). Progress is
  monotone: a projection never lands behind ``min_progress_m``, so GPS noise or a
  route that passes the same street twice cannot send the vehicle backwards.
- ``network``: shortest paths on a ``models.roads.RoadNetwork`` from the vehicle's
  nearest node through the stops' nearest nodes (``NetworkPaths``, LRU-cached).
- ``straight``: great-circle legs times a detour factor learned from history
  (``straight_line``, ``fit_detour_factor``).

Whatever the path, it is cut into pieces of at most ``sample_m`` metres, each tagged
with the H3 cell of its midpoint (``SampledPath``); travel time is the sum of piece
length / profile speed at that cell and hour. Degrees WGS84, metres, seconds.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import median
from typing import TYPE_CHECKING, Any, NamedTuple

import h3.api.basic_int as h3
import numpy as np

from core.geo import EARTH_RADIUS_M, cumulative_lengths_m, haversine_m
from core.plan import Stop

if TYPE_CHECKING:
    from models.profiles import SpeedProfiles
    from models.roads import RoadNetwork

__all__ = [
    "DEFAULT_DETOUR_FACTOR",
    "NetworkPaths",
    "Projection",
    "RemainingPath",
    "RouteGeometry",
    "SampledPath",
    "fit_detour_factor",
    "remaining_along_route",
    "route_geometry",
    "sample_path",
    "straight_line",
]

LatLon = tuple[float, float]
DEFAULT_DETOUR_FACTOR = 1.3  # road / straight-line distance in a typical city grid, until history says otherwise
DETOUR_RANGE = (1.0, 3.0)
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
SAME_PLACE_M = 15.0  # projections this much further than the nearest are as good: GPS noise
_HOURS_KEPT = 6  # hour tables per path: the stops ahead of a vehicle span a few hours at most


# ---------------------------------------------------------------- sampled paths


@dataclass(slots=True)
class SampledPath:
    """A path as pieces: ``cum_m[i]`` metres from the start to piece i's start (one more
    entry than pieces), ``cells[i]`` the H3 cell of piece i's midpoint.

    Travel times per hour of week are cached on the object (for the profiles they were
    computed with), so a path shared by many queries is costed once per hour.
    """

    cum_m: list[float]
    cells: list[int]
    _profiles: Any = field(default=None, repr=False, compare=False)
    _times: dict[int, tuple[array[float], array[float]]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def length_m(self) -> float:
        return self.cum_m[-1]

    def _table(self, profiles: SpeedProfiles, hour: int) -> tuple[array[float], array[float]]:
        """(cumulative seconds at each piece start, speed of each piece) at ``hour``."""
        if profiles is not self._profiles:
            self._profiles, self._times = profiles, {}
        table = self._times.get(hour)
        if table is None:
            speeds = array("d", profiles.speeds(self.cells, hour))
            cum_s = array("d", [0.0])
            total = 0.0
            for i, v in enumerate(speeds):
                total += (self.cum_m[i + 1] - self.cum_m[i]) / v
                cum_s.append(total)
            if len(self._times) >= _HOURS_KEPT:
                self._times.pop(next(iter(self._times)))
            table = self._times[hour] = (cum_s, speeds)
        return table

    def time_at(self, profiles: SpeedProfiles, hour: int, along_m: float) -> float:
        """Seconds from the path's start to ``along_m`` metres along it, at the profile speeds of ``hour``."""
        cum_m = self.cum_m
        if not self.cells or along_m <= 0.0:
            return 0.0
        cum_s, speeds = self._table(profiles, hour)
        if along_m >= cum_m[-1]:
            return cum_s[-1]
        i = bisect_right(cum_m, along_m) - 1
        return cum_s[i] + (along_m - cum_m[i]) / speeds[i]

    def travel_s(self, profiles: SpeedProfiles, hour: int, from_m: float = 0.0, to_m: float | None = None) -> float:
        """Seconds to drive from ``from_m`` to ``to_m`` metres along the path (default: to its end)."""
        end = self.cum_m[-1] if to_m is None else to_m
        if end <= from_m:
            return 0.0
        return self.time_at(profiles, hour, end) - self.time_at(profiles, hour, from_m)


def sample_path(
    points: Sequence[LatLon],
    resolution: int = 9,
    sample_m: float = 100.0,
    scale: float = 1.0,
    lengths_m: Sequence[float] | None = None,
) -> SampledPath:
    """Cut a polyline of (lat, lon) degrees into pieces of at most about ``sample_m`` metres.

    A segment longer than ``sample_m`` is split into equal pieces; shorter consecutive
    segments (a road's curve, drawn as many short ones) are joined into pieces of about
    ``sample_m``, each tagged with the cell of the middle of its ends (one H3 lookup per
    piece, not per segment). Piece lengths are great-circle lengths times ``scale`` (a
    detour factor for straight legs), or, with ``lengths_m`` (one per segment, e.g. a road
    edge's length), those lengths split evenly over the segment's pieces.
    """
    cum = [0.0]
    cells: list[int] = []
    total = 0.0
    run_m = run_geo = 0.0  # the short segments joined so far: their length, and great-circle metres
    run_from: LatLon | None = None
    run_to: LatLon | None = None

    def flush() -> None:
        nonlocal total, run_m, run_geo, run_from, run_to
        if run_from is not None and run_to is not None and run_m > 0.0:
            mid = ((run_from[0] + run_to[0]) / 2, (run_from[1] + run_to[1]) / 2)
            cells.append(h3.latlng_to_cell(mid[0], mid[1], resolution))
            total += run_m
            cum.append(total)
        run_m = run_geo = 0.0
        run_from = run_to = None

    for j in range(len(points) - 1):
        (lat1, lon1), (lat2, lon2) = points[j], points[j + 1]
        d = haversine_m(lat1, lon1, lat2, lon2)
        seg = lengths_m[j] if lengths_m is not None else d * scale
        if seg <= 0.0:
            continue
        if sample_m <= 0 or d > sample_m:
            flush()
            n = max(1, math.ceil(d / sample_m)) if sample_m > 0 else 1
            for i in range(n):
                f = (i + 0.5) / n
                cells.append(h3.latlng_to_cell(lat1 + f * (lat2 - lat1), lon1 + f * (lon2 - lon1), resolution))
                total += seg / n
                cum.append(total)
            continue
        if run_from is None:
            run_from = (lat1, lon1)
        run_to = (lat2, lon2)
        run_m += seg
        run_geo += d
        if run_geo >= sample_m:
            flush()
    flush()
    return SampledPath(cum, cells)


# ---------------------------------------------------------------- along a route


class Projection(NamedTuple):
    """A point's nearest place on a route: metres along it, metres off it, segment index."""

    along_m: float
    cross_track_m: float
    segment: int


class RouteGeometry:
    """A route polyline prepared once for many monotone projections and travel-time queries.

    Projection uses a local plane around the route's mean latitude (metres, exact to
    well under 1 % over a city); ``along_m`` values use great-circle segment lengths,
    as ``geo.locate_on_polyline`` does.
    """

    def __init__(self, route: Sequence[LatLon], resolution: int = 9, sample_m: float = 100.0) -> None:
        pts = np.asarray(route, dtype=float)
        if pts.ndim != 2 or len(pts) < 2:
            raise ValueError("a route needs at least two (lat, lon) points")
        self.points: tuple[LatLon, ...] = tuple((float(a), float(b)) for a, b in pts)
        self.cum = cumulative_lengths_m(pts)
        self._cum_list: list[float] = self.cum.tolist()
        self._lat0 = float(np.mean(pts[:, 0]))
        self._kx = _M_PER_DEG * math.cos(math.radians(self._lat0))
        x = pts[:, 1] * self._kx
        y = pts[:, 0] * _M_PER_DEG
        self._ax, self._ay = x[:-1], y[:-1]
        self._dx, self._dy = np.diff(x), np.diff(y)
        self._len2 = self._dx * self._dx + self._dy * self._dy
        # 1 / squared length (0 for a zero-length segment: its nearest point is its start), so a
        # projection needs no division, no np.where and no np.errstate (a few microseconds each)
        self._inv_len2 = np.divide(1.0, self._len2, out=np.zeros_like(self._len2), where=self._len2 > 0)
        self._seg_m = np.diff(self.cum)
        self.sampled = sample_path(self.points, resolution, sample_m)

    @property
    def length_m(self) -> float:
        return self._cum_list[-1]

    def project(
        self, lat: float, lon: float, min_progress_m: float = 0.0, max_progress_m: float | None = None
    ) -> Projection:
        """The nearest point of the route between ``min_progress_m`` and ``max_progress_m`` metres along it
        (on the earliest pass when the route passes within ``SAME_PLACE_M`` of that distance again).

        The result is never behind ``min_progress_m`` (a nearest point inside the first
        searched segment but before it is moved up to it).
        """
        cum = self._cum_list
        lo = max(0, min(len(cum) - 2, bisect_right(cum, min_progress_m) - 1))
        n = len(cum) - 1  # segments
        hi = n if max_progress_m is None else min(n, max(lo + 1, bisect_right(cum, max_progress_m)))
        px, py = lon * self._kx, lat * _M_PER_DEG
        ax, ay = self._ax[lo:hi] - px, self._ay[lo:hi] - py
        dx, dy = self._dx[lo:hi], self._dy[lo:hi]
        f = ax * dx
        f += ay * dy
        f *= self._inv_len2[lo:hi]
        np.negative(f, out=f)
        np.maximum(f, 0.0, out=f)  # as np.clip(f, 0, 1), without its Python-level wrapper
        np.minimum(f, 1.0, out=f)
        if min_progress_m > cum[lo] and self._seg_m[lo] > 0:
            f[0] = max(f[0], min(1.0, (min_progress_m - cum[lo]) / self._seg_m[lo]))
        dist2 = (ax + f * dx) ** 2 + (ay + f * dy) ** 2
        # where a route passes one street twice, GPS noise must not decide which pass the vehicle
        # is on (a leap ahead is for good): of the runs of segments about as near as the nearest
        # (within SAME_PLACE_M), take the first run, and its nearest point
        # (array methods and ufunc reductions: np.min, np.argmax... add a Python wrapper per call)
        near = math.sqrt(float(np.minimum.reduce(dist2))) + SAME_PLACE_M
        candidate = dist2 <= near * near
        first = int(candidate.argmax())
        rest = candidate[first:]
        k = int(rest.argmin())  # the first segment of the run that is not near (none if it is near)
        end = first + (len(rest) if rest[k] else k)
        i = first + int(dist2[first:end].argmin())
        seg = lo + i
        along = cum[seg] + float(f[i]) * float(self._seg_m[seg])
        return Projection(max(along, min(min_progress_m, cum[-1])), math.sqrt(float(dist2[i])), seg)

    def point_at(self, along_m: float) -> LatLon:
        """The (lat, lon) at ``along_m`` metres along the route (clamped to its ends)."""
        cum = self._cum_list
        if along_m <= 0.0:
            return self.points[0]
        if along_m >= cum[-1]:
            return self.points[-1]
        i = bisect_right(cum, along_m) - 1
        f = (along_m - cum[i]) / (cum[i + 1] - cum[i])
        (lat1, lon1), (lat2, lon2) = self.points[i], self.points[i + 1]
        return lat1 + f * (lat2 - lat1), lon1 + f * (lon2 - lon1)

    def points_between(self, from_m: float, to_m: float) -> list[LatLon]:
        """The route's polyline from ``from_m`` to ``to_m`` metres: both ends and the vertices between."""
        cum = self._cum_list
        inner = self.points[bisect_right(cum, from_m) : bisect_left(cum, to_m)]
        return [self.point_at(from_m), *inner, self.point_at(to_m)]

    def stop_progress(self, stops: Iterable[Stop], min_progress_m: float = 0.0) -> dict[str, float]:
        """Metres along the route of each stop's projection, taken in the given (plan) order:
        each at or after the one before, so a route visiting a street twice keeps its order."""
        out: dict[str, float] = {}
        progress = min_progress_m
        for stop in stops:
            progress = self.project(stop.lat, stop.lon, progress).along_m
            out[stop.id] = progress
        return out


@lru_cache(maxsize=512)
def route_geometry(route: tuple[LatLon, ...], resolution: int = 9, sample_m: float = 100.0) -> RouteGeometry:
    """``RouteGeometry`` of a route, built once per distinct route (shared by vehicles and replays)."""
    return RouteGeometry(route, resolution, sample_m)


@dataclass(frozen=True, slots=True)
class RemainingPath:
    """What is left to drive along a route.

    ``progress_m``: the position's projection, metres along the route (>= the
    ``min_progress_m`` given); ``cross_track_m``: metres from the position to it;
    ``stops``: (stop id, metres along the route from the position's projection to
    the stop's projection), in the order given; ``behind``: ids of stops whose
    projection is behind the position (listed with 0 m); ``points``: the route from
    the projection to the last stop's projection, (lat, lon) to sample cells from.
    """

    progress_m: float
    cross_track_m: float
    stops: list[tuple[str, float]]
    behind: list[str]
    points: list[LatLon]


def remaining_along_route(
    route: Sequence[LatLon], position: LatLon, stops: Sequence[Stop], min_progress_m: float = 0.0
) -> RemainingPath:
    """Metres along ``route`` from ``position`` to each of ``stops`` (see ``RemainingPath``).

    Stops are projected in order from the start of the route (each at or after the one
    before); the position is projected at or after ``min_progress_m``.
    """
    geometry = route_geometry(tuple((float(a), float(b)) for a, b in route))
    here = geometry.project(position[0], position[1], min_progress_m)
    at = geometry.stop_progress(stops)
    out = [(s.id, max(0.0, at[s.id] - here.along_m)) for s in stops]
    behind = [s.id for s in stops if at[s.id] < here.along_m]
    end = max([here.along_m, *at.values()])
    return RemainingPath(here.along_m, here.cross_track_m, out, behind, geometry.points_between(here.along_m, end))


# ---------------------------------------------------------------- straight line


def straight_line(
    position: LatLon, stops: Sequence[Stop], detour_factor: float = DEFAULT_DETOUR_FACTOR
) -> list[tuple[str, float]]:
    """(stop id, estimated road metres from ``position``) through ``stops`` in order:
    cumulative great-circle legs, each times ``detour_factor``."""
    out: list[tuple[str, float]] = []
    lat, lon = position
    total = 0.0
    for s in stops:
        total += haversine_m(lat, lon, s.lat, s.lon) * detour_factor
        out.append((s.id, total))
        lat, lon = s.lat, s.lon
    return out


def fit_detour_factor(pairs: Iterable[tuple[float, float]], min_straight_m: float = 200.0) -> float:
    """Median of travelled / straight-line metres over legs of at least ``min_straight_m``
    (shorter ones are GPS noise), clamped to [1.0, 3.0]; ``DEFAULT_DETOUR_FACTOR`` without data."""
    ratios = [
        travelled / straight
        for straight, travelled in pairs
        if straight >= min_straight_m and math.isfinite(travelled) and travelled > 0
    ]
    if not ratios:
        return DEFAULT_DETOUR_FACTOR
    return float(min(DETOUR_RANGE[1], max(DETOUR_RANGE[0], median(ratios))))


# ---------------------------------------------------------------- road network


class NetworkPaths:
    """Quickest paths on a road network to stops, with bounded caches.

    For each stop node it keeps one reverse Dijkstra tree (every node's next hop
    towards it; LRU of ``trees`` stops), so the leg from wherever the vehicle now is
    costs a walk down the tree, not a search. Legs are ``SampledPath`` objects in an
    LRU of ``legs`` entries. The network is read, never changed; nodes are looked up
    with ``RoadNetwork.nearest_node``. Not pickled with tracker state: register it in
    ``models.registry``.
    """

    def __init__(
        self, network: RoadNetwork, resolution: int = 9, sample_m: float = 100.0, trees: int = 512, legs: int = 4096
    ) -> None:
        self.network = network
        self.resolution, self.sample_m = resolution, sample_m
        self._reverse = network.graph.reverse(copy=False)
        self._trees: OrderedDict[int, dict[int, int]] = OrderedDict()
        self._legs: OrderedDict[tuple[int, int], SampledPath] = OrderedDict()
        self._stop_nodes: OrderedDict[tuple[float, float], int] = OrderedDict()
        self._max_trees, self._max_legs = trees, legs

    def node_of(self, lat: float, lon: float) -> int:
        """The nearest node (memoised for stop positions)."""
        key = (lat, lon)
        node = self._stop_nodes.get(key)
        if node is None:
            node = self._stop_nodes[key] = self.network.nearest_node(lat, lon)
            if len(self._stop_nodes) > self._max_legs:
                self._stop_nodes.popitem(last=False)
        return node

    def _next_hops(self, target: int) -> dict[int, int]:
        tree = self._trees.get(target)
        if tree is not None:
            self._trees.move_to_end(target)
            return tree
        import networkx as nx  # only where a network is configured

        pred, _ = nx.dijkstra_predecessor_and_distance(self._reverse, target, weight="travel_s")
        tree = {node: hops[0] for node, hops in pred.items() if hops}
        self._trees[target] = tree
        if len(self._trees) > self._max_trees:
            self._trees.popitem(last=False)
        return tree

    def leg(self, a: int, b: int) -> SampledPath:
        """The quickest path from node ``a`` to node ``b``, sampled (empty when a == b)."""
        key = (a, b)
        found = self._legs.get(key)
        if found is not None:
            self._legs.move_to_end(key)
            return found
        graph = self.network.graph
        points: list[LatLon] = [self.network.coords(a)]
        lengths: list[float] = []
        hops = self._next_hops(b)
        node = a
        while node != b:
            nxt = hops.get(node)
            if nxt is None:  # unreachable (the network is strongly connected; be safe)
                points, lengths = [self.network.coords(a)], []
                break
            edge = graph[node][nxt]
            geom = edge.get("geometry") or (self.network.coords(node), self.network.coords(nxt))
            parts = [haversine_m(*p, *q) for p, q in zip(geom, geom[1:], strict=False)]
            scale = edge["length_m"] / max(sum(parts), 1e-9)
            points.extend(geom[1:])
            lengths.extend(p * scale for p in parts)
            node = nxt
        path = sample_path(points, self.resolution, self.sample_m, lengths_m=lengths)
        self._legs[key] = path
        if len(self._legs) > self._max_legs:
            self._legs.popitem(last=False)
        return path

    def legs(self, position: LatLon, stops: Sequence[Stop]) -> tuple[float, list[SampledPath]]:
        """(straight metres from ``position`` to its nearest node, one leg per stop in order)."""
        start = self.network.nearest_node(*position)
        lead = haversine_m(*position, *self.network.coords(start))
        out: list[SampledPath] = []
        node = start
        for s in stops:
            target = self.node_of(s.lat, s.lon)
            out.append(self.leg(node, target))
            node = target
        return lead, out
