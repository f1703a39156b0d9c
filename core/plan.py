"""A vehicle's delivery plan: ordered stops with time windows, and an optional route.

JSON form (what ``Plan.from_dict`` reads and ``Plan.to_dict`` writes)::

    {"tenant": "acme", "vehicle": "van-1", "version": 3,
     "stops": [{"id": "s1", "lat": 60.17, "lon": 24.94, "radius_m": 75,
                "window_start": "2026-11-22T08:00:00.000Z", "window_end": "2026-11-22T09:00:00.000Z",
                "service_s": 300}],
     "route": [[60.17, 24.94], [60.18, 24.95]],
     "temp_range_c": [2, 8]}

Degrees WGS84, metres, seconds; times RFC 3339 with an offset, held as UTC. Only
``tenant``, ``vehicle``, ``version`` and ``stops`` are required. ``version`` is a
revision number that the plan store bumps on every change (stop events carry it).
``temp_range_c`` is the load's allowed range in degrees Celsius; absent means the
load is not refrigerated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from core.contract import ContractError, format_time, printable_name
from core.geo import haversine_m

__all__ = ["Plan", "PlanError", "PlanLimits", "Stop"]

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # tenant and vehicle ids, as devices have them (core/contract.py)


class PlanError(ValueError):
    """A plan that cannot be used; the message names the offending field (e.g. ``stops[2].lat``)."""


def _number(obj: dict[str, Any], key: str, path: str, lo: float, hi: float, default: float | None = None) -> float:
    raw = obj.get(key, default)
    if raw is None:
        raise PlanError(f"{path}{key}: required")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise PlanError(f"{path}{key}: must be a finite number, got {repr(raw)[:40]}")
    try:
        finite = math.isfinite(raw)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise PlanError(f"{path}{key}: must be a finite number, got {repr(raw)[:40]}")
    value = float(raw)  # an int past a float's range raises OverflowError here: not a number we take
    if not lo <= value <= hi:
        raise PlanError(f"{path}{key}: {raw} is outside [{lo}, {hi}]")
    return value


def _time(obj: dict[str, Any], key: str, path: str) -> datetime | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise PlanError(f"{path}{key}: must be an RFC 3339 string")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise PlanError(f"{path}{key}: {raw[:40]!r} is not RFC 3339") from None
    if value.tzinfo is None:
        raise PlanError(f"{path}{key}: {raw!r} has no UTC offset")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is in year 10000 in UTC
        raise PlanError(f"{path}{key}: {raw!r} is outside years 1-9999 in UTC") from None


def _text(obj: dict[str, Any], key: str, path: str) -> str:
    raw = obj.get(key)
    if not isinstance(raw, str) or not 0 < len(raw) <= 128:
        shown = f"{raw[:40]!r}..." if isinstance(raw, str) else repr(raw)[:40]
        raise PlanError(f"{path}{key}: must be a string of 1-128 characters, got {shown}")
    return _printable(raw, f"{path}{key}")


def _printable(raw: str, what: str) -> str:
    try:
        return printable_name(raw, what)
    except ContractError as exc:
        raise PlanError(exc.detail) from None


def _id(obj: dict[str, Any], key: str) -> str:
    raw = obj.get(key)
    if not isinstance(raw, str) or not _ID.fullmatch(raw):
        raise PlanError(f"{key}: must be an id of [A-Za-z0-9_-]{{1,64}}, got {repr(raw)[:40]}")
    return raw


def _no_extra(obj: dict[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise PlanError(f"{path or 'plan'}: unknown field(s) {', '.join(extra)}")


@dataclass(frozen=True, slots=True)
class Stop:
    """A planned stop: a circle (centre in degrees, ``radius_m`` metres), an optional UTC
    time window, the planned service time ``service_s`` in seconds, and an optional
    ``name`` people know it by ("" when the plan gives none)."""

    id: str
    lat: float
    lon: float
    radius_m: float = 75.0
    window_start: datetime | None = None
    window_end: datetime | None = None
    service_s: float = 0.0
    name: str = ""

    def __setstate__(self, state: Any) -> None:
        # slots pickle their fields as a list in field order; stops pickled before ``name``
        # existed have one fewer (later fields take their defaults)
        values = dict(zip((f.name for f in fields(self)), state, strict=False))
        for f in fields(self):
            object.__setattr__(self, f.name, values.get(f.name, f.default))

    def __post_init__(self) -> None:
        if not 0 < len(self.id) <= 128:
            raise PlanError(f"stop id {self.id[:40]!r}: must be 1-128 characters")
        _printable(self.id, "stop id")
        if not -90 <= self.lat <= 90 or not -180 <= self.lon <= 180:
            raise PlanError(f"stop {self.id}: ({self.lat}, {self.lon}) is not a WGS84 position")
        if not 0 < self.radius_m <= 10_000:
            raise PlanError(f"stop {self.id}: radius_m {self.radius_m} is outside (0, 10000]")
        if self.service_s < 0:
            raise PlanError(f"stop {self.id}: service_s must be >= 0")
        for t in (self.window_start, self.window_end):
            if t is not None and t.tzinfo is None:
                raise PlanError(f"stop {self.id}: window times must be timezone-aware")
        if self.window_start and self.window_end and self.window_end < self.window_start:
            raise PlanError(f"stop {self.id}: window_end is before window_start")

    @classmethod
    def from_dict(cls, obj: Any, path: str = "") -> Stop:
        """Parse one stop object; raises PlanError naming the field."""
        if not isinstance(obj, dict):
            raise PlanError(f"{path or 'stop'}: must be an object")
        prefix = f"{path}." if path else ""
        _no_extra(obj, {"id", "name", "lat", "lon", "radius_m", "window_start", "window_end", "service_s"}, path)
        return cls(
            _text(obj, "id", prefix),
            _number(obj, "lat", prefix, -90, 90),
            _number(obj, "lon", prefix, -180, 180),
            _number(obj, "radius_m", prefix, 1, 10_000, default=75.0),
            _time(obj, "window_start", prefix),
            _time(obj, "window_end", prefix),
            _number(obj, "service_s", prefix, 0, 86_400, default=0.0),
            _text(obj, "name", prefix) if obj.get("name") is not None else "",
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (times as RFC 3339 UTC; absent windows left out)."""
        out: dict[str, Any] = {
            "id": self.id,
            "lat": self.lat,
            "lon": self.lon,
            "radius_m": self.radius_m,
            "service_s": self.service_s,
        }
        if self.name:
            out["name"] = self.name
        if self.window_start is not None:
            out["window_start"] = format_time(self.window_start)
        if self.window_end is not None:
            out["window_end"] = format_time(self.window_end)
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    """Stops in planned order, an optional route polyline of (lat, lon) degrees, and the
    load's temperature range in degrees Celsius (None = not refrigerated)."""

    tenant: str
    vehicle: str
    version: int
    stops: tuple[Stop, ...]
    route: tuple[tuple[float, float], ...] | None = None
    temp_range_c: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for key in ("tenant", "vehicle"):  # they become topics, MQTT usernames and database keys
            if not _ID.fullmatch(getattr(self, key)):
                raise PlanError(f"{key}: must be an id of [A-Za-z0-9_-]{{1,64}}, got {getattr(self, key)[:40]!r}")
        # accept lists from callers; hold tuples so plans compare and hash by value
        object.__setattr__(self, "stops", tuple(self.stops))
        if self.route is not None:
            object.__setattr__(self, "route", tuple((float(lat), float(lon)) for lat, lon in self.route))
        if self.temp_range_c is not None:
            object.__setattr__(self, "temp_range_c", (float(self.temp_range_c[0]), float(self.temp_range_c[1])))
        ids = [s.id for s in self.stops]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise PlanError(f"stops: duplicate id(s) {', '.join(dup)}")
        if self.version < 0:
            raise PlanError("version: must be >= 0")
        if self.route is not None:
            if len(self.route) < 2:
                raise PlanError("route: needs at least two points")
            for i, (lat, lon) in enumerate(self.route):
                if not -90 <= lat <= 90 or not -180 <= lon <= 180:
                    raise PlanError(f"route[{i}]: ({lat}, {lon}) is not a WGS84 position")
        if self.temp_range_c is not None and not self.temp_range_c[0] < self.temp_range_c[1]:
            raise PlanError("temp_range_c: must be [low, high] with low < high")

    def stop(self, stop_id: str) -> Stop:
        """The stop with this id (KeyError when absent)."""
        for s in self.stops:
            if s.id == stop_id:
                return s
        raise KeyError(stop_id)

    @classmethod
    def from_dict(cls, obj: Any) -> Plan:
        """Parse and validate the JSON form; every problem raises PlanError naming the field."""
        if not isinstance(obj, dict):
            raise PlanError("plan: must be an object")
        _no_extra(obj, {"tenant", "vehicle", "version", "stops", "route", "temp_range_c"}, "")
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise PlanError(f"version: must be an integer >= 0, got {version!r}")
        raw_stops = obj.get("stops")
        if not isinstance(raw_stops, list):
            raise PlanError("stops: must be a list")
        stops = tuple(Stop.from_dict(s, f"stops[{i}]") for i, s in enumerate(raw_stops))
        route = None
        raw_route = obj.get("route")
        if raw_route is not None:
            if not isinstance(raw_route, list):
                raise PlanError("route: must be a list of [lat, lon] pairs")
            points = []
            for i, p in enumerate(raw_route):
                if not isinstance(p, (list, tuple)) or len(p) != 2:
                    raise PlanError(f"route[{i}]: must be a [lat, lon] pair")
                pair = {"lat": p[0], "lon": p[1]}
                points.append(
                    (_number(pair, "lat", f"route[{i}].", -90, 90), _number(pair, "lon", f"route[{i}].", -180, 180))
                )
            route = tuple(points)
        temp = None
        raw_temp = obj.get("temp_range_c")
        if raw_temp is not None:
            if not isinstance(raw_temp, (list, tuple)) or len(raw_temp) != 2:
                raise PlanError("temp_range_c: must be [low, high]")
            pair = {"low": raw_temp[0], "high": raw_temp[1]}
            temp = (_number(pair, "low", "temp_range_c.", -100, 150), _number(pair, "high", "temp_range_c.", -100, 150))
        return cls(_id(obj, "tenant"), _id(obj, "vehicle"), version, stops, route, temp)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``Plan.from_dict(plan.to_dict()) == plan``."""
        out: dict[str, Any] = {
            "tenant": self.tenant,
            "vehicle": self.vehicle,
            "version": self.version,
            "stops": [s.to_dict() for s in self.stops],
        }
        if self.route is not None:
            out["route"] = [[lat, lon] for lat, lon in self.route]
        if self.temp_range_c is not None:
            out["temp_range_c"] = list(self.temp_range_c)
        return out


@dataclass(frozen=True)
class PlanLimits:
    """The most work one plan may cause: stops, and a route's points, total length and longest
    segment (kilometres). A plan past one is refused (``check``); Settings ``plan_max_*``."""

    max_stops: int = 500
    max_route_points: int = 5000
    max_route_km: float = 500.0
    max_segment_km: float = 50.0

    def check(self, plan: Plan) -> None:
        """Raise PlanError naming the limit ``plan`` is past."""
        if len(plan.stops) > self.max_stops:
            raise PlanError(f"stops: {len(plan.stops)} stops, more than the limit of {self.max_stops}")
        if plan.route is None:
            return
        if len(plan.route) > self.max_route_points:
            raise PlanError(f"route: {len(plan.route)} points, more than the limit of {self.max_route_points}")
        total_km = 0.0
        for i, ((lat1, lon1), (lat2, lon2)) in enumerate(zip(plan.route, plan.route[1:], strict=False)):
            km = haversine_m(lat1, lon1, lat2, lon2) / 1000
            if km > self.max_segment_km:
                raise PlanError(
                    f"route[{i}]-route[{i + 1}]: {km:.1f} km, longer than the limit of {self.max_segment_km} km"
                )
            total_km += km
            if total_km > self.max_route_km:
                raise PlanError(f"route: longer than the limit of {self.max_route_km} km (at route[{i + 1}])")
