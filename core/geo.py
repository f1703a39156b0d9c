"""Small geodesy on the WGS84 sphere approximation. Degrees in, metres out.

Distances use the haversine formula on a sphere of the mean Earth radius (error
< 0.5 % against the ellipsoid). Polyline offsets project each segment onto a local
plane around the point (equirectangular), which is exact to well under a metre for
the segment lengths of road routes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EARTH_RADIUS_M",
    "M_PER_DEG_LAT",
    "PolylinePosition",
    "bearing_deg",
    "cumulative_lengths_m",
    "destination",
    "distance_to_segment_m",
    "haversine_m",
    "in_circle",
    "locate_on_polyline",
    "offset",
]

EARTH_RADIUS_M = 6_371_008.8
_RAD = math.pi / 180.0
_M_PER_DEG = EARTH_RADIUS_M * _RAD  # metres per degree of latitude
M_PER_DEG_LAT = _M_PER_DEG

LatLon = tuple[float, float]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points given in degrees."""
    p1, p2 = lat1 * _RAD, lat2 * _RAD
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin((lon2 - lon1) * _RAD / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1, p2, dl = lat1 * _RAD, lat2 * _RAD, (lon2 - lon1) * _RAD
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def destination(lat: float, lon: float, bearing: float, distance_m: float) -> LatLon:
    """The point ``distance_m`` metres from (lat, lon) along initial ``bearing`` degrees."""
    d = distance_m / EARTH_RADIUS_M
    p1, l1, b = lat * _RAD, lon * _RAD, bearing * _RAD
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def offset(lat: float, lon: float, north_m: float, east_m: float) -> LatLon:
    """The point ``north_m`` north and ``east_m`` east of (lat, lon); for offsets of a few km."""
    return lat + north_m / _M_PER_DEG, lon + east_m / (_M_PER_DEG * math.cos(lat * _RAD))


def in_circle(lat: float, lon: float, centre_lat: float, centre_lon: float, radius_m: float) -> bool:
    """Whether the point lies within ``radius_m`` metres of the centre (boundary included)."""
    return haversine_m(lat, lon, centre_lat, centre_lon) <= radius_m


def distance_to_segment_m(lat: float, lon: float, a: LatLon, b: LatLon) -> float:
    """Shortest distance in metres from the point to the segment a-b (local plane around the point)."""
    kx = _M_PER_DEG * math.cos(lat * _RAD)
    ax, ay = (a[1] - lon) * kx, (a[0] - lat) * _M_PER_DEG
    bx, by = (b[1] - lon) * kx, (b[0] - lat) * _M_PER_DEG
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    f = 0.0 if length2 == 0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + f * dx, ay + f * dy)


@dataclass(frozen=True, slots=True)
class PolylinePosition:
    """Where a point lies relative to a polyline.

    ``cross_track_m``: distance to the nearest point of the line (metres, >= 0);
    ``along_m``: distance along the line from its start to that nearest point (metres);
    ``segment``: index of the segment holding it (segment i joins points i and i+1).
    """

    cross_track_m: float
    along_m: float
    segment: int


def locate_on_polyline(
    lat: float, lon: float, line: Sequence[LatLon] | np.ndarray, cumulative_m: np.ndarray | None = None
) -> PolylinePosition:
    """Cross-track distance to, and progress along, a polyline of (lat, lon) degrees.

    ``cumulative_m`` (optional, metres from the start to each vertex) saves recomputing
    segment lengths when the same line is queried often.
    """
    pts = np.asarray(line, dtype=float)
    if len(pts) < 2:
        raise ValueError("a polyline needs at least two points")
    kx = _M_PER_DEG * math.cos(lat * _RAD)
    x = (pts[:, 1] - lon) * kx
    y = (pts[:, 0] - lat) * _M_PER_DEG
    ax, ay, dx, dy = x[:-1], y[:-1], np.diff(x), np.diff(y)
    length2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(length2 > 0, -(ax * dx + ay * dy) / length2, 0.0)
    f = np.clip(f, 0.0, 1.0)
    dist = np.hypot(ax + f * dx, ay + f * dy)
    i = int(np.argmin(dist))
    if cumulative_m is None:
        cumulative_m = cumulative_lengths_m(pts)
    seg_len = float(cumulative_m[i + 1] - cumulative_m[i])
    return PolylinePosition(float(dist[i]), float(cumulative_m[i]) + float(f[i]) * seg_len, i)


def cumulative_lengths_m(line: Sequence[LatLon] | np.ndarray) -> np.ndarray:
    """Metres from the first vertex to each vertex of a polyline (haversine per segment)."""
    pts = np.asarray(line, dtype=float)
    lat, lon = np.radians(pts[:, 0]), np.radians(pts[:, 1])
    a = np.sin(np.diff(lat) / 2) ** 2 + np.cos(lat[:-1]) * np.cos(lat[1:]) * np.sin(np.diff(lon) / 2) ** 2
    seg = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))
    return np.concatenate(([0.0], np.cumsum(seg)))
