"""A deterministic delivery-fleet simulation on a real road network (pure: no MQTT, no clock).

Each vehicle leaves its depot, drives the quickest paths to 8-15 ordered delivery
stops at 0.6-1.1 of the speed limit, slowed further by rush-hour congestion that
depends on the local time of day and the place (``congestion_factor``), serves each
stop (rear door opened after arrival and closed before leaving), and returns. Its
device reports GPS every ``gps_period_s``, a reefer probe every 30 s and every door
change, numbered by one ``seq`` per vehicle across all streams, starting at 0.

Anomalies are planned up front from the seed and labelled (ground truth for the
analytics): ``long_dwell``, ``route_deviation``, ``temp_excursion``, ``door_away``,
``offline`` (readings held back, then delivered late in a burst), ``malformed``
(raw payloads the contract rejects) and ``duplicate`` (a message sent twice).

``Realism`` makes the fleet look like real vehicles (all off by default: the ideal
device above): a reporting interval and jitter per van (e.g. 5 to 60 s), devices that
send no speed or heading, signal gaps (tunnels) and long silences (dead zones) whose
readings are lost, GPS noise that grows in the urban canyon near the centre, plans that
end at the depot (the shift ends there and the device goes quiet), and bus-like routes:
stops every 80-150 m along one long road path, some passed through without stopping.

Ground truth per stop visit (``labels``): the true arrival and departure at the stop
point, and the fence crossings (``fence_entry``, ``fence_exit``: the noise-free track
entering and leaving the stop's circle, the engine's definition), the seconds it stood
there (``stood_s``) and ``pass_through`` (the plan's stop was driven through without
stopping). Lost readings are ``silence`` rows.

Everything is a function of ``seed``: the same arguments give the same stream.
Simulated times are UTC datetimes quantised to milliseconds; internally, seconds
since ``start``.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading, encode_single, format_time
from models.roads import RoadNetwork, RoadPath, bearing_deg, distance_to_polyline_m, haversine_m

__all__ = [
    "ANOMALY_TYPES",
    "AnomalyLabel",
    "AnomalyPlan",
    "FleetSimulator",
    "RawMessage",
    "Realism",
    "SimEvent",
    "congestion_factor",
    "vehicle_ids",
]

ANOMALY_TYPES = ("long_dwell", "route_deviation", "temp_excursion", "door_away", "offline", "malformed", "duplicate")
MALFORMED_REASONS = ("bad_json", "not_finite", "out_of_range", "vehicle_mismatch", "missing_field")

DOOR_ID = "rear"
PROBE_ID = "reefer-1"
TEMP_PERIOD_S = 30.0
SETPOINT_C = 4.0  # reefer setpoint; the allowed range is TEMP_RANGE_C
TEMP_RANGE_C = (2.0, 8.0)
STOP_RADIUS_M = 50.0
WINDOW_BEFORE_S, WINDOW_AFTER_S = 600.0, 1200.0  # delivery window around the planned arrival
GPS_SIGMA_M = 3.5  # per axis: about 5 m horizontal RMS
# A labelled route deviation is ground truth only if it is a deviation by the product's
# definition: further than the engine's drift distance (150 m) from the planned route
# (the whole route, as the engine sees it) for clearly longer than its 60 s. A span near
# that threshold (DEVIATION_AMBIGUOUS_S up to DEVIATION_MIN_S) is labelled "ambiguous":
# alerting and staying silent are both right, so an evaluation counts it neither way.
DEVIATION_M = 150.0
DEVIATION_MIN_S = 90.0
DEVIATION_AMBIGUOUS_S = 30.0
# Back within DEVIATION_M for less than this (the engine's drift_resolve_s) does not end a
# deviation: an open drift alert stays open, so the two spans are one label.
DEVIATION_REJOIN_S = 30.0
# A detour node lies at least this far from the planned route: well past DEVIATION_M, so
# the labelled span has room to last (a van at 30 km/h covers the extra 200 m and back in
# about 50 s) and GPS noise cannot blur it into the threshold.
DETOUR_MIN_OFF_ROUTE_M = 350.0
# A labelled excursion is above TEMP_RANGE_C for at least the engine's 300 s plus two probe
# readings; a shorter one is "ambiguous". Back under the limit by less than TEMP_CLEAR_C (the
# engine's excursion_clear_c) does not end one.
EXCURSION_MIN_S = 360.0
TEMP_CLEAR_C = 0.5
DETOUR_TRIES = 12  # detour nodes tried per leg before giving up on a deviation there
DEFAULT_START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
# Congestion (``congestion_factor``): rush hours in local time, felt most on main roads
# (limit >= 40 km/h) and near the city centre (Helsinki central railway station).
LOCAL_TIME = ZoneInfo("Europe/Helsinki")
RUSH_HOURS = ((8.0, 1.0), (16.5, 1.25))  # (peak local hour, spread in hours)
CENTRE = (60.1710, 24.9414)
CENTRE_SCALE_M = 600.0


def congestion_factor(local_hour: float, lat: float, lon: float, limit_kmh: float) -> float:
    """Share of the uncongested speed (0.45-1.0) at local hour of day ``local_hour`` (0-24,
    fractional) on a road segment at ``lat``/``lon`` with speed limit ``limit_kmh``.

    Rush = a bell around each of ``RUSH_HOURS`` (1 at the peak); the slowdown at full rush
    is 15 % everywhere, +15 % on main roads and up to +25 % near ``CENTRE``. Deterministic
    (a property of the map and the clock, the same every day): history can learn it.
    """
    rush = max(math.exp(-0.5 * ((local_hour - peak) / spread) ** 2) for peak, spread in RUSH_HOURS)
    centre = math.exp(-((haversine_m(lat, lon, *CENTRE) / CENTRE_SCALE_M) ** 2))
    return 1.0 - rush * (0.15 + (0.15 if limit_kmh >= 40.0 else 0.0) + 0.25 * centre)


def vehicle_ids(count: int, run: str = "") -> list[str]:
    """The vehicle ids a fleet of ``count`` uses: ``veh-001`` ... (valid contract ids), each
    after ``run`` (a run id such as ``r3-``, so that a new run never continues a stored one)."""
    return [f"{run}veh-{i:03d}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class Realism:
    """How far the fleet's devices and routes are from the ideal 5 s reporter (off by default).

    Ranges are (low, high) drawn per van or per event; seconds, metres, probabilities."""

    period_s: tuple[float, float] | None = None  # per-van reporting interval (None: the simulator's gps_period_s)
    period_jitter: float = 0.0  # each interval varies uniformly by +- this share of the van's period
    no_speed_share: float = 0.0  # share of vans whose device sends no speed and no heading
    gaps_per_hour: float = 0.0  # signal gaps (tunnels) per van-hour on the road: everything sent is lost
    gap_s: tuple[float, float] = (20.0, 150.0)
    silence_share: float = 0.0  # share of vans with one long silence (a dead zone) on the road: lost
    silence_s: tuple[float, float] = (480.0, 900.0)  # past offline_after_s (300 s): each is an offline label
    canyon_sigma_m: float = 0.0  # extra GPS noise per axis at the centre, fading over CENTRE_SCALE_M
    depot_stop: bool = False  # the plan ends at the depot: the shift ends there, the device goes quiet
    depot_stay_s: tuple[float, float] = (60.0, 60.0)  # standing at the depot before going quiet
    bus: bool = False  # bus-like routes (no reefer, no door sensor): stops along one long road path
    stop_spacing_m: tuple[float, float] = (80.0, 150.0)
    stop_radius_m: float = 35.0  # fences of the bus stops (delivery stops keep STOP_RADIUS_M)
    pass_through_share: float = 0.25  # bus stops driven through without stopping
    bus_dwell_s: tuple[float, float] = (10.0, 120.0)  # standing at a served bus stop
    route_m: tuple[float, float] = (2500.0, 4000.0)  # length of a bus route


@dataclass(frozen=True)
class AnomalyPlan:
    """How often each anomaly happens. Probabilities per vehicle (at most one of each
    per vehicle), rates per valid reading; durations and distances as (low, high) ranges
    in seconds / metres. ``within_s`` limits anomaly start times to that many seconds
    after the vehicle's own start (so a short run still sees them)."""

    long_dwell: float = 0.1
    route_deviation: float = 0.1
    temp_excursion: float = 0.1
    door_away: float = 0.1
    offline: float = 0.1
    malformed_rate: float = 0.002
    duplicate_rate: float = 0.003
    within_s: float | None = None
    # Sized past the engine's thresholds, so that every injected anomaly is one by the
    # product's definition (otherwise it is no ground truth), with a margin for GPS noise,
    # 5 s fixes and 30 s probe readings:
    # - dwell: stopped >= 600 s away from stops is an unplanned dwell; 900 s at least.
    dwell_s: tuple[float, float] = (900.0, 1500.0)
    # - door away: alerted as soon as it opens; the span only needs a few fixes to place it.
    door_away_s: tuple[float, float] = (90.0, 240.0)
    # - offline: no data for >= 300 s; 480 s at least.
    offline_s: tuple[float, float] = (480.0, 900.0)
    # - excursion: above the range for >= 300 s. In ``_temperatures`` the probe heads for
    #   14 C (tau 300 s) during the fault, so it passes 8 C about 150 s in (14 - 10 e^(-t/300)),
    #   and after it cools back under 8 C within about 150 s: the time above is about the
    #   fault's length, 720 s at least, well over 300 s even from a warm start or a late reading.
    excursion_s: tuple[float, float] = (720.0, 1200.0)
    # - route deviation: more than 150 m from the planned route for >= 60 s. The detour node
    #   is this far from the planned leg (and DETOUR_MIN_OFF_ROUTE_M from the whole route);
    #   on the small Helsinki extract (about 1.2 x 1.6 km) 400-900 m still fits most legs.
    detour_m: tuple[float, float] = (400.0, 900.0)

    @classmethod
    def none(cls) -> AnomalyPlan:
        """A clean fleet: no anomalies at all."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def every(cls, **overrides: Any) -> AnomalyPlan:
        """Every vehicle gets every anomaly (tests); higher message fault rates."""
        return replace(cls(1.0, 1.0, 1.0, 1.0, 1.0, 0.01, 0.01), **overrides)


class RawMessage(NamedTuple):
    """A message published as-is: (topic, payload bytes, reason the gateway should give)."""

    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One thing the fleet sends, at simulated time ``at`` (UTC).

    ``item`` is a reading (``at >= fix_time``) or a ``RawMessage``. ``late`` marks a
    reading held back while its device was offline; ``duplicate`` the second copy of a
    message already yielded.
    """

    at: datetime
    vehicle: str
    item: Reading | RawMessage
    late: bool = False
    duplicate: bool = False


@dataclass(frozen=True)
class AnomalyLabel:
    """Ground truth for one anomaly; times in seconds since the simulation start."""

    vehicle: str
    type: str
    start_s: float
    end_s: float
    stop_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stop:
    id: str
    seq: int
    node: int  # -1: a point on the road (a bus stop)
    lat: float
    lon: float
    planned_arrival_s: float
    planned_service_s: float
    radius_m: float = STOP_RADIUS_M


@dataclass
class _Vehicle:
    """One vehicle's whole day, built up front (trajectory knots, doors, temperatures)."""

    index: int
    id: str
    depot: int
    stops: list[_Stop]
    planned_legs: list[RoadPath]
    start_s: float = 0.0
    end_s: float = 0.0
    # trajectory: straight moves between knots; equal positions mean standing still
    ts: list[float] = field(default_factory=list)
    lats: list[float] = field(default_factory=list)
    lons: list[float] = field(default_factory=list)
    doors: list[tuple[float, bool]] = field(default_factory=list)
    temps: list[tuple[float, float]] = field(default_factory=list)
    visits: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[AnomalyLabel] = field(default_factory=list)
    offline: list[tuple[float, float]] = field(default_factory=list)
    seg_speed: list[float] = field(default_factory=list)  # m/s per knot segment
    seg_heading: list[float] = field(default_factory=list)
    # the device (Realism): reporting interval, whether it sends a speed, what is lost
    period_s: float = 5.0
    sends_speed: bool = True
    lost: list[tuple[float, float]] = field(default_factory=list)  # (start, end) s: readings never delivered
    reefer: bool = True

    def knot(self, t: float, point: tuple[float, float]) -> None:
        self.ts.append(_ms(t))
        self.lats.append(point[0])
        self.lons.append(point[1])


def _ms(t: float) -> float:
    """Quantise seconds to whole milliseconds (what the contract's timestamps carry)."""
    return round(t * 1000.0) / 1000.0


class FleetSimulator:
    """A seeded fleet on ``network``; :meth:`events` streams what the devices send.

    ``start`` is the UTC time of simulated second 0; vehicles start staggered over
    ``stagger_s`` seconds. ``gps_period_s`` is the fix interval in seconds.
    """

    def __init__(
        self,
        network: RoadNetwork,
        vehicles: int = 50,
        seed: int = 7,
        start: datetime = DEFAULT_START,
        gps_period_s: float = 5.0,
        anomalies: AnomalyPlan | None = None,
        tenant: str = "demo",
        stagger_s: float = 300.0,
        depots: int = 3,
        realism: Realism | None = None,
        run: str = "",
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        if gps_period_s <= 0:
            raise ValueError("gps_period_s must be > 0")
        self.network = network
        self.seed = seed
        start = start.astimezone(UTC)
        self.start = start.replace(microsecond=start.microsecond // 1000 * 1000)  # the wire carries milliseconds
        self.gps_period_s = gps_period_s
        self.anomalies = anomalies if anomalies is not None else AnomalyPlan()
        self.realism = realism if realism is not None else Realism()
        self.tenant = tenant
        self.stagger_s = stagger_s
        fleet_rng = random.Random(f"{seed}:fleet")
        self.depots = self._pick_spread(fleet_rng, depots, min_gap_m=400.0, avoid=[])
        self.vehicle_ids = vehicle_ids(vehicles, run)
        self._vehicles = [self._build_vehicle(i, vid) for i, vid in enumerate(self.vehicle_ids)]

    # ------------------------------------------------------------ public

    @property
    def end(self) -> datetime:
        """When the last vehicle stops reporting (UTC)."""
        return self._time(max((v.end_s for v in self._vehicles), default=0.0))

    def events(self, until: datetime | None = None) -> Iterator[SimEvent]:
        """Everything the fleet sends up to ``until`` (inclusive, UTC), ordered by ``at``.

        Restartable: each call replays the same stream from the beginning.
        """
        limit = math.inf if until is None else (until - self.start).total_seconds()
        streams = [self._vehicle_events(v, limit) for v in self._vehicles]
        # ties keep vehicle order: heapq.merge is stable
        for _, _, event in heapq.merge(*streams, key=lambda e: (e[0], e[1])):
            yield event

    def plans(self) -> list[dict[str, Any]]:
        """Per vehicle: depot, ordered stops (id, seq, lat, lon, radius_m, delivery window
        from 10 min before to 20 min after the planned arrival, planned service seconds)
        and the planned route polyline [[lat, lon], ...] (depot -> stops -> depot).
        JSON-serializable; times RFC 3339 UTC."""
        out = []
        for v in self._vehicles:
            route = self._planned_route(v)
            stops = []
            for s in self._plan_stops(v):
                stops.append(
                    {
                        "id": s.id,
                        "seq": s.seq,
                        "lat": s.lat,
                        "lon": s.lon,
                        "radius_m": s.radius_m,
                        "window_start": format_time(self._time(s.planned_arrival_s - WINDOW_BEFORE_S)),
                        "window_end": format_time(self._time(s.planned_arrival_s + WINDOW_AFTER_S)),
                        "planned_arrival": format_time(self._time(s.planned_arrival_s)),
                        "planned_service_s": s.planned_service_s,
                    }
                )
            depot_lat, depot_lon = self.network.coords(v.depot)
            out.append(
                {
                    "tenant": self.tenant,
                    "vehicle": v.id,
                    "depot": {"lat": depot_lat, "lon": depot_lon},
                    "start": format_time(self._time(v.start_s)),
                    "stops": stops,
                    "route_m": round(route.length_m, 1),
                    "route": [[round(lat, 6), round(lon, 6)] for lat, lon in route.points],
                }
            )
        return out

    def contract_plans(self) -> list[dict[str, Any]]:
        """Per vehicle, its plan in the engine's JSON form (``core.plan.Plan.from_dict``):
        stops with windows and planned service seconds, the planned route, the reefer's range."""
        out = []
        for plan in self.plans():
            out.append(
                {
                    "tenant": plan["tenant"],
                    "vehicle": plan["vehicle"],
                    "version": 1,
                    "stops": [
                        {
                            "id": s["id"],
                            "lat": s["lat"],
                            "lon": s["lon"],
                            "radius_m": s["radius_m"],
                            "window_start": s["window_start"],
                            "window_end": s["window_end"],
                            "service_s": s["planned_service_s"],
                        }
                        for s in plan["stops"]
                    ],
                    "route": plan["route"],
                    **({"temp_range_c": list(TEMP_RANGE_C)} if self._reefer(plan["vehicle"]) else {}),
                }
            )
        return out

    def _reefer(self, vehicle: str) -> bool:
        return not self.realism.bus

    def _plan_stops(self, v: _Vehicle) -> list[_Stop]:
        """The plan's stops: the deliveries (or bus stops), and the depot last when the shift ends there."""
        if not self.realism.depot_stop or self.realism.bus:
            return list(v.stops)
        lat, lon = self.network.coords(v.depot)
        back = v.visits[-1]["arrival"] if v.visits else v.end_s
        return [*v.stops, _Stop(f"{v.id}-depot", len(v.stops) + 1, v.depot, lat, lon, round(back, 3), 0.0)]

    def labels(self, until: datetime | None = None) -> list[dict[str, Any]]:
        """Ground truth up to ``until``: anomalies that started by then, stop visits
        (arrival/departure, null when not reached yet) and per-vehicle trips.
        Malformed and duplicate messages are found by replaying :meth:`events`."""
        limit = math.inf if until is None else (until - self.start).total_seconds()

        def when(t: float | None) -> str | None:
            return None if t is None or t > limit else format_time(self._time(t))

        rows: list[dict[str, Any]] = []
        for v in self._vehicles:
            if v.start_s > limit:
                continue
            plan_stops = self._plan_stops(v)
            rows.append(
                {
                    "kind": "trip",
                    "vehicle": v.id,
                    "start": when(v.start_s),
                    "end": when(v.end_s),  # the shift's end: the device goes quiet
                    "depot_return": when(v.visits[-1]["arrival"]) if v.visits and not self.realism.bus else None,
                    "last_stop": plan_stops[-1].id if plan_stops else None,
                    "period_s": round(v.period_s, 1),
                    "sends_speed": v.sends_speed,
                }
            )
            depot_id = plan_stops[-1].id if self.realism.depot_stop and not self.realism.bus else None
            for visit in v.visits:
                stop_id = visit["stop_id"] if visit["stop_id"] is not None else depot_id
                if stop_id is None:  # the return to a depot that is not in the plan
                    continue
                rows.append(
                    {
                        "kind": "stop_visit",
                        "vehicle": v.id,
                        "stop_id": stop_id,
                        "seq": visit["seq"] if visit["seq"] is not None else len(v.stops) + 1,
                        "arrival": when(visit["arrival"]),
                        "departure": when(visit["departure"]),
                        "door_open": when(visit["door_open"]),
                        "door_close": when(visit["door_close"]),
                        "fence_entry": when(visit.get("fence_entry")),
                        "fence_exit": when(visit.get("fence_exit")),
                        "stood_s": visit.get("stood_s"),
                        "pass_through": visit.get("pass_through", False),
                        "observable": visit.get("observable", True),
                    }
                )
            for t0, t1 in v.lost:
                if t0 <= limit:
                    rows.append({"kind": "silence", "vehicle": v.id, "start": when(t0), "end": when(t1)})
            for label in v.anomalies:
                if label.start_s <= limit:
                    rows.append(self._label_row(label))
        for event in self.events(until):
            if isinstance(event.item, RawMessage):
                at_s = (event.at - self.start).total_seconds()
                rows.append(
                    self._label_row(
                        AnomalyLabel(event.vehicle, "malformed", at_s, at_s, details={"reason": event.item.reason})
                    )
                )
            elif event.duplicate:
                at_s = (event.at - self.start).total_seconds()
                rows.append(
                    self._label_row(
                        AnomalyLabel(
                            event.vehicle,
                            "duplicate",
                            at_s,
                            at_s,
                            details={"seq": event.item.seq, "stream": event.item.kind},
                        )
                    )
                )
        return rows

    def write_labels(self, path: Path | str, until: datetime | None = None) -> int:
        """Write :meth:`labels` as JSON lines to ``path``; returns the number of lines."""
        rows = self.labels(until)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        return len(rows)

    # ------------------------------------------------------------ building

    def _time(self, t: float) -> datetime:
        return self.start + timedelta(milliseconds=round(t * 1000.0))

    def _local_hour(self, t: float) -> float:
        """Local (``LOCAL_TIME``) hour of day, fractional, at simulated second ``t``."""
        local = (self.start + timedelta(seconds=t)).astimezone(LOCAL_TIME)
        return local.hour + local.minute / 60.0 + local.second / 3600.0

    def _label_row(self, label: AnomalyLabel) -> dict[str, Any]:
        return {
            "kind": "anomaly",
            "vehicle": label.vehicle,
            "type": label.type,
            "start": format_time(self._time(label.start_s)),
            "end": format_time(self._time(label.end_s)),
            "stop_id": label.stop_id,
            "details": label.details,
        }

    def _planned_route(self, v: _Vehicle) -> RoadPath:
        route = v.planned_legs[0]
        for leg in v.planned_legs[1:]:
            route = route + leg
        return route

    def _pick_spread(
        self, rng: random.Random, count: int, min_gap_m: float, avoid: list[int], avoid_gap_m: float = 150.0
    ) -> list[int]:
        """``count`` distinct nodes at least ``min_gap_m`` apart and ``avoid_gap_m`` from ``avoid``."""
        net = self.network
        chosen: list[int] = []
        gap = min_gap_m
        attempts = 0
        while len(chosen) < count:
            node = net.random_node(rng)
            lat, lon = net.coords(node)
            ok = all(haversine_m(lat, lon, *net.coords(o)) >= gap for o in chosen)
            ok = ok and all(haversine_m(lat, lon, *net.coords(o)) >= avoid_gap_m for o in avoid)
            if ok:
                chosen.append(node)
            attempts += 1
            if attempts % 500 == 0:  # a small network: relax the spacing rather than loop forever
                gap *= 0.8
                avoid_gap_m *= 0.8
        return chosen

    def _build_vehicle(self, index: int, vid: str) -> _Vehicle:
        if self.realism.bus:
            v = self._build_bus(index, vid)
        else:
            v = self._build_delivery(index, vid)
        self._fence_truths(v)
        self._device(v)
        self._finish(v)
        return v

    def _fence_truths(self, v: _Vehicle) -> None:
        """Per visit, from the noise-free track: when it entered and left the stop's circle and
        how long it stood inside (a pass-through stands 0 s, unless held at a light there)."""
        by_id = {s.id: s for s in v.stops}
        for visit in v.visits:
            stop = by_id.get(visit["stop_id"]) if visit["stop_id"] is not None else None
            if stop is not None:
                point, radius = (stop.lat, stop.lon), stop.radius_m
            else:
                point, radius = self.network.coords(v.depot), STOP_RADIUS_M
            visit.update(_fence_truth(v, point, radius, visit["arrival"], visit["departure"]))

    def _device(self, v: _Vehicle) -> None:
        """The van's device (``Realism``): its reporting interval, whether it sends a speed, and
        what it loses (tunnels on the road, one long dead zone), away from labelled anomalies."""
        real = self.realism
        rng = random.Random(f"{self.seed}:{v.index}:device")
        v.period_s = rng.uniform(*real.period_s) if real.period_s is not None else self.gps_period_s
        v.sends_speed = rng.random() >= real.no_speed_share
        busy = [(a.start_s - 60.0, a.end_s + 60.0) for a in v.anomalies] + [
            (t0 - 60.0, t1 + 60.0) for t0, t1 in v.offline
        ]

        def free(t0: float, t1: float) -> bool:
            return all(t1 <= b0 or t0 >= b1 for b0, b1 in busy)

        lo, hi = v.start_s + 120.0, v.end_s - 120.0
        if real.silence_share > 0 and rng.random() < real.silence_share:
            span = rng.uniform(*real.silence_s)
            for _ in range(20):
                t0 = rng.uniform(lo, max(lo, hi - span))
                if t0 + span <= hi and free(t0, t0 + span):
                    v.lost.append((_ms(t0), _ms(t0 + span)))
                    busy.append((t0 - 60.0, t0 + span + 60.0))
                    v.anomalies.append(
                        AnomalyLabel(
                            v.id,
                            "offline",
                            _ms(t0),
                            _ms(t0 + span),
                            details={"lost": True, "duration_s": round(span, 3)},
                        )
                    )
                    break
        if real.gaps_per_hour > 0:
            for _ in range(int(rng.expovariate(1.0) * real.gaps_per_hour * (hi - lo) / 3600.0 + 0.5)):
                span = rng.uniform(*real.gap_s)
                t0 = rng.uniform(lo, max(lo, hi - span))
                if t0 + span <= hi and free(t0, t0 + span):
                    v.lost.append((_ms(t0), _ms(t0 + span)))
                    busy.append((t0 - 30.0, t0 + span + 30.0))
        v.lost.sort()
        for visit in v.visits:  # a visit the device said nothing about cannot be seen
            a = visit.get("fence_entry") or visit["arrival"]
            b = visit.get("fence_exit") or visit["departure"] or v.end_s
            visit["observable"] = all(b <= t0 or a >= t1 for t0, t1 in v.lost)

    def _build_delivery(self, index: int, vid: str) -> _Vehicle:
        net, plan = self.network, self.anomalies
        rng = random.Random(f"{self.seed}:{index}:plan")
        depot = self.depots[index % len(self.depots)]
        picked = self._pick_spread(rng, rng.randint(8, 15), min_gap_m=120.0, avoid=[depot])
        order = _nearest_neighbour_order(net, depot, picked)
        start_s = _ms(rng.uniform(0.0, self.stagger_s))
        depot_wait = rng.uniform(30.0, 120.0)

        # the plan: quickest legs at 85 % of the limits, planned service per stop
        legs = [net.shortest_path(a, b) for a, b in zip([depot, *order], [*order, depot], strict=True)]
        stops: list[_Stop] = []
        t = start_s + 60.0
        for i, (node, leg) in enumerate(zip(order, legs, strict=False)):
            t += leg.travel_s / 0.85
            service = float(rng.choice((180, 240, 300)))
            lat, lon = net.coords(node)
            stops.append(_Stop(f"{vid}-{i + 1:02d}", i + 1, node, lat, lon, round(t, 3), service))
            t += service
        v = _Vehicle(index, vid, depot, stops, legs, start_s=start_s)

        # which legs carry which anomaly (distinct legs, starting within plan.within_s)
        within = math.inf if plan.within_s is None else plan.within_s
        leg_starts = [start_s + 60.0] + [s.planned_arrival_s + s.planned_service_s for s in stops]
        free = [i for i, t0 in enumerate(leg_starts) if t0 - start_s <= within]
        keep_away = [net.coords(depot)] + [(s.lat, s.lon) for s in stops]
        leg_anomaly: dict[int, str] = {}
        leg_detour: dict[int, tuple[int, RoadPath]] = {}
        for kind in ("long_dwell", "route_deviation", "door_away"):
            # a pause needs a spot on the leg well away from every stop; a long dwell needs a stop
            # still to do (on the way home a van may park anywhere: that is no unplanned dwell)
            fits = [i for i in free if kind == "route_deviation" or _pause_spots(legs[i], keep_away)]
            if kind == "long_dwell":
                fits = [i for i in fits if i < len(stops)]
            if not (rng.random() < getattr(plan, kind) and fits):
                continue
            if kind == "route_deviation":
                # on this small map most legs have no room for a clear deviation: take the first
                # leg, in a seeded order, that has one (none at all: this vehicle gets none)
                rng.shuffle(fits)
                found = next(((i, d) for i in fits if (d := self._detour(rng, v, legs[i])) is not None), None)
                if found is None:
                    continue
                chosen, leg_detour[found[0]] = found
            else:
                chosen = fits[rng.randrange(len(fits))]
            free.remove(chosen)
            leg_anomaly[chosen] = kind
        want_offline = rng.random() < plan.offline
        want_excursion = rng.random() < plan.temp_excursion

        self._drive_day(v, rng, depot_wait, leg_anomaly, leg_detour)
        latest = min(v.start_s + within, v.end_s)
        if want_offline:
            span = rng.uniform(*plan.offline_s)
            t0 = _ms(rng.uniform(v.start_s + 120.0, max(v.start_s + 120.0, min(latest, v.end_s - span - 120.0))))
            t1 = _ms(min(t0 + span, v.end_s - 60.0))
            if t1 > t0:
                v.offline.append((t0, t1))
                v.anomalies.append(AnomalyLabel(vid, "offline", t0, t1, details={"duration_s": round(t1 - t0, 3)}))
        fault = None
        if want_excursion:
            span = rng.uniform(*plan.excursion_s)
            t0 = rng.uniform(v.start_s + 300.0, max(v.start_s + 300.0, min(latest, v.end_s - span - 300.0)))
            fault = (t0, t0 + span)
        self._temperatures(v, rng, fault)
        return v

    def _bus_path(self, rng: random.Random, depot: int) -> RoadPath:
        """A bus route from the depot through far waypoints, ``route_m`` long, that does not pass
        the same street twice (the best of a few seeded tries)."""
        net, (lo, hi) = self.network, self.realism.route_m
        best: tuple[float, RoadPath] | None = None
        for _ in range(30):
            path = net.shortest_path(depot, net.random_node(rng))
            while path.length_m < lo and len(path.points) >= 2:
                path = path + net.shortest_path(path.nodes[-1], net.random_node(rng))
            if len(path.points) < 3:
                continue
            # points within 40 m of each other but 200 m or more apart along the path: a street driven twice
            pts = np.asarray(path.points)
            y = pts[:, 0] * 111_195.0
            x = pts[:, 1] * 111_195.0 * math.cos(math.radians(float(pts[0, 0])))
            cum = np.concatenate([[0.0], np.cumsum(path.lengths_m)])
            near = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2 < 40.0**2
            twice = int((near & (np.abs(cum[:, None] - cum[None, :]) >= 200.0)).any(axis=1).sum())
            penalty = twice * 100.0 + max(0.0, path.length_m - hi)
            if best is None or penalty < best[0]:
                best = (penalty, path)
            if penalty == 0.0:
                break
        assert best is not None, "no bus route found on this network"
        return best[1]

    def _build_bus(self, index: int, vid: str) -> _Vehicle:
        """A bus: depot -> one long road path with stops every ``stop_spacing_m`` (the last, the
        terminal, is the plan's last stop), served or passed through; no reefer, no doors."""
        real, plan = self.realism, self.anomalies
        rng = random.Random(f"{self.seed}:{index}:plan")
        depot = self.depots[index % len(self.depots)]
        path = self._bus_path(rng, depot)
        cum = [0.0]
        for length in path.lengths_m:
            cum.append(cum[-1] + length)
        total = cum[-1]
        start_s = _ms(rng.uniform(0.0, self.stagger_s))
        places = []
        d = 150.0 + rng.uniform(*real.stop_spacing_m) / 2
        while d < total - 60.0:
            places.append(d)
            d += rng.uniform(*real.stop_spacing_m)
        places.append(total)
        stops: list[_Stop] = []
        t = start_s + 60.0
        planned_mps = sum(path.speeds_kmh) / len(path.speeds_kmh) / 3.6 * 0.7
        prev = 0.0
        for i, d in enumerate(places):
            t += (d - prev) / planned_mps
            lat, lon = _point_at(path, cum, d)
            stops.append(_Stop(f"{vid}-{i + 1:02d}", i + 1, -1, lat, lon, round(t, 3), 20.0, real.stop_radius_m))
            t += 20.0
            prev = d
        v = _Vehicle(index, vid, depot, stops, [path], start_s=start_s, reefer=False)
        served = {s.id: (s is stops[-1] or rng.random() >= real.pass_through_share) for s in stops}
        dwell = {s.id: rng.uniform(*real.bus_dwell_s) for s in stops}
        keep_away = [(s.lat, s.lon) for s in stops]
        pause = None
        spots = _pause_spots(path, keep_away, min_gap_m=real.stop_radius_m + 30.0)
        within = math.inf if plan.within_s is None else plan.within_s
        if spots and rng.random() < plan.long_dwell:
            pause = rng.choice(spots)
        self._drive_bus(v, rng, path, cum, places, served, dwell, pause, within)
        if rng.random() < plan.offline:
            latest = min(v.start_s + within, v.end_s)
            span = rng.uniform(*plan.offline_s)
            t0 = _ms(rng.uniform(v.start_s + 120.0, max(v.start_s + 120.0, min(latest, v.end_s - span - 120.0))))
            t1 = _ms(min(t0 + span, v.end_s - 60.0))
            if t1 > t0:
                v.offline.append((t0, t1))
                v.anomalies.append(AnomalyLabel(vid, "offline", t0, t1, details={"duration_s": round(t1 - t0, 3)}))
        return v

    def _drive_bus(
        self,
        v: _Vehicle,
        rng: random.Random,
        path: RoadPath,
        cum: list[float],
        places: list[float],
        served: dict[str, bool],
        dwell: dict[str, float],
        pause: int | None,
        within: float,
    ) -> None:
        """The bus's track: the path at 0.7-1.05 of the limits (and the rush), half speed over the
        30 m before and after a stop it serves, standing there; the shift ends at the terminal."""
        slow_m = 30.0
        marks = set(cum)
        for d, stop in zip(places, v.stops, strict=True):
            marks.add(d)
            if served[stop.id]:
                marks.update((max(0.0, d - slow_m), min(cum[-1], d + slow_m)))
        pause_d = cum[pause] if pause is not None else None
        ordered = sorted(marks)
        at_stop = {d: s for d, s in zip(places, v.stops, strict=True)}
        served_at = [d for d, s in zip(places, v.stops, strict=True) if served[s.id]]
        t = v.start_s
        depot_point = self.network.coords(v.depot)
        v.knot(t, depot_point)
        t += rng.uniform(30.0, 120.0)
        v.knot(t, depot_point)
        factor = rng.uniform(0.7, 1.05)
        k = 0
        for a, b in zip(ordered, ordered[1:], strict=False):
            while k + 1 < len(path.lengths_m) and cum[k + 1] <= a:
                k += 1
            mid = (a + b) / 2
            lat, lon = _point_at(path, cum, mid)
            speed = path.speeds_kmh[k] / 3.6 * factor * rng.uniform(0.92, 1.08)
            speed *= congestion_factor(self._local_hour(t), lat, lon, path.speeds_kmh[k])
            if any(abs(mid - d) < slow_m for d in served_at):
                speed *= 0.5
            t += (b - a) / speed
            point = _point_at(path, cum, b)
            v.knot(t, point)
            here = at_stop.get(b)
            if here is not None:
                stop = here
                stay = dwell[stop.id] if served[stop.id] else 0.0
                last = stop is v.stops[-1]
                if last:
                    stay = random.Random(f"{self.seed}:{v.index}:depot").uniform(*self.realism.depot_stay_s)
                arrival = _ms(t)
                if stay > 0:
                    t += stay
                    v.knot(t, point)
                v.visits.append(
                    {
                        "stop_id": stop.id,
                        "seq": stop.seq,
                        "arrival": arrival,
                        "departure": None if last else _ms(t),
                        "door_open": None,
                        "door_close": None,
                        "pass_through": not served[stop.id],
                    }
                )
                if last:
                    v.end_s = _ms(t)
                    break
            elif pause_d is not None and b == pause_d and b - cum[0] > 0 and t - v.start_s <= within:
                t = self._pause(v, rng, "long_dwell", t, point)
            elif b in cum and rng.random() < 0.03:
                t += rng.uniform(5.0, 40.0)  # traffic lights, giving way
                v.knot(t, point)

    def _drive_day(
        self,
        v: _Vehicle,
        rng: random.Random,
        depot_wait: float,
        leg_anomaly: dict[int, str],
        leg_detour: dict[int, tuple[int, RoadPath]],
    ) -> None:
        """Lay out the actual trajectory, door events and stop visits (``leg_detour``: the detour
        node and path driven instead of the planned leg, per leg index)."""
        net = self.network
        depot_point = net.coords(v.depot)
        keep_away = [depot_point] + [(s.lat, s.lon) for s in v.stops]
        t = v.start_s
        v.knot(t, depot_point)
        t += depot_wait
        v.knot(t, depot_point)
        targets = [*v.stops, None]  # None: back to the depot
        for leg_index, stop in enumerate(targets):
            kind = leg_anomaly.get(leg_index)
            path = v.planned_legs[leg_index]
            detour_node = None
            if leg_index in leg_detour:
                detour_node, path = leg_detour[leg_index]
            pause_at = None
            if kind in ("long_dwell", "door_away"):
                spots = _pause_spots(path, keep_away)
                pause_at = rng.choice(spots) if spots else None
            factor = rng.uniform(0.6, 1.1)  # traffic on this leg
            leg_start_knot = len(v.ts) - 1
            detour_at = None  # when the vehicle passes the detour node
            for k in range(len(path.lengths_m)):
                speed = path.speeds_kmh[k] / 3.6 * min(1.1, max(0.6, factor * rng.uniform(0.92, 1.08)))
                mid = path.points[k]
                speed *= congestion_factor(self._local_hour(t), mid[0], mid[1], path.speeds_kmh[k])
                t += path.lengths_m[k] / speed
                point = path.points[k + 1]
                v.knot(t, point)
                if detour_at is None and detour_node is not None and path.nodes[k + 1] == detour_node:
                    detour_at = _ms(t)
                last = k == len(path.lengths_m) - 1
                if (
                    not last
                    and path.nodes[k + 1] >= 0
                    and net.graph.out_degree(path.nodes[k + 1]) >= 2
                    and rng.random() < 0.05
                ):
                    t += rng.uniform(5.0, 40.0)  # traffic lights, giving way
                    v.knot(t, point)
                if pause_at is not None and k + 1 == pause_at:
                    t = self._pause(v, rng, kind or "", t, point)
            if kind == "route_deviation" and detour_at is not None:
                self._label_deviation(v, leg_start_knot, path, v.planned_legs[leg_index], stop, detour_at)
            # at the stop (or home at the depot)
            arrival = _ms(t)
            if stop is None:
                stay = 60.0
                if self.realism.depot_stop:  # the shift ends at the depot: it stands there, then goes quiet
                    stay = random.Random(f"{self.seed}:{v.index}:depot").uniform(*self.realism.depot_stay_s)
                v.end_s = _ms(t + stay)
                v.knot(v.end_s, depot_point)
                v.visits.append(
                    {
                        "stop_id": None,
                        "seq": None,
                        "arrival": arrival,
                        "departure": None,
                        "door_open": None,
                        "door_close": None,
                    }
                )
                break
            service = stop.planned_service_s * min(2.0, max(0.5, rng.lognormvariate(0.0, 0.3)))
            departure = _ms(arrival + service)
            door_open = _ms(arrival + rng.uniform(5.0, 20.0))
            door_close = _ms(departure - rng.uniform(5.0, 20.0))
            v.doors += [(door_open, True), (door_close, False)]
            v.knot(departure, (stop.lat, stop.lon))
            v.visits.append(
                {
                    "stop_id": stop.id,
                    "seq": stop.seq,
                    "arrival": arrival,
                    "departure": departure,
                    "door_open": door_open,
                    "door_close": door_close,
                }
            )
            t = departure

    def _pause(self, v: _Vehicle, rng: random.Random, kind: str, t: float, point: tuple[float, float]) -> float:
        """Stand still at ``point`` from ``t``: a long unplanned dwell, or a short stop with the door opened."""
        plan = self.anomalies
        if kind == "long_dwell":
            span = rng.uniform(*plan.dwell_s)
            v.anomalies.append(
                AnomalyLabel(
                    v.id,
                    "long_dwell",
                    _ms(t),
                    _ms(t + span),
                    details={"lat": point[0], "lon": point[1], "duration_s": round(span, 3)},
                )
            )
        else:
            span = rng.uniform(*plan.door_away_s)
            opened, closed = _ms(t + rng.uniform(5.0, 15.0)), _ms(t + span - rng.uniform(5.0, 15.0))
            v.doors += [(opened, True), (closed, False)]
            v.anomalies.append(
                AnomalyLabel(
                    v.id,
                    "door_away",
                    opened,
                    closed,
                    details={
                        "lat": point[0],
                        "lon": point[1],
                        "stopped_from": format_time(self._time(t)),
                        "stopped_until": format_time(self._time(t + span)),
                    },
                )
            )
        v.knot(t + span, point)
        return _ms(t + span)

    def _detour(self, rng: random.Random, v: _Vehicle, leg: RoadPath) -> tuple[int, RoadPath] | None:
        """A detour for the planned ``leg``: (the node it goes through, the path driven), or None
        when no clear one fits (the leg is then driven as planned, and nothing is labelled).

        The node is ``detour_m`` from the leg and DETOUR_MIN_OFF_ROUTE_M from the whole route,
        further from the next stop than the leg's start is (a detour closing in on the next stop
        is a planned detour to the engine, not drift), and the path through it stays beyond
        DEVIATION_M for at least DEVIATION_MIN_S even at the fastest the simulation drives
        (1.1 x the limits): so its labelled span is a deviation by the engine's definition.
        Candidates are tried in a seeded order, at most DETOUR_TRIES of them.
        """
        net, (lo, hi) = self.network, self.anomalies.detour_m
        if len(leg.points) < 2:
            return None
        off_leg = distance_to_polyline_m(net.node_coords, leg.points)
        candidates = np.flatnonzero((off_leg >= lo) & (off_leg <= hi))
        if len(candidates) == 0:
            return None
        route = self._planned_route(v).points
        off_route = distance_to_polyline_m(net.node_coords[candidates], route)
        goal = leg.points[-1]
        start_to_goal = haversine_m(*leg.points[0], *goal)
        to_goal = distance_to_polyline_m(net.node_coords[candidates], [goal])
        far = [int(c) for c in candidates[(off_route >= DETOUR_MIN_OFF_ROUTE_M) & (to_goal > start_to_goal + 100.0)]]
        rng.shuffle(far)
        first, last = leg.nodes[0], leg.nodes[-1]
        for c in far[:DETOUR_TRIES]:
            node = net.nodes[c]
            out = net.shortest_path(first, node)
            path = out + net.shortest_path(node, last)
            if _fastest_span_s(path, len(out.points) - 1, route) >= DEVIATION_MIN_S:
                return node, path
        return None

    def _label_deviation(
        self, v: _Vehicle, first_knot: int, path: RoadPath, planned: RoadPath, stop: _Stop | None, detour_at: float
    ) -> None:
        """Label the spans of this leg driven more than DEVIATION_M off the planned route.

        Each span runs from where the distance to the route crossed DEVIATION_M to where it
        came back (between knots, by linear interpolation). A detour may cross other legs of
        the route, so one detour can leave the route more than once: each span is judged on
        its own, as the engine does (its off-route debounce restarts on every on-route fix),
        except that a return shorter than DEVIATION_REJOIN_S joins two spans. Spans shorter
        than DEVIATION_AMBIGUOUS_S are not labelled (no drift definition sees them). The span
        through the detour node (chosen to head away from the next stop, so it is no planned
        detour to the engine) is the deviation when it lasts DEVIATION_MIN_S; any other span,
        or a shorter one, is labelled ambiguous: it may be heading for the next stop, which
        the engine rightly excuses as a planned detour.
        """
        points = list(zip(v.lats[first_knot:], v.lons[first_knot:], strict=True))
        times = v.ts[first_knot:]
        off = distance_to_polyline_m(points, self._planned_route(v).points)
        off_leg = distance_to_polyline_m(points, planned.points)

        def crossing(a: int, b: int) -> float:  # time the distance passed DEVIATION_M between knots a and b
            da, db = float(off[a]), float(off[b])
            frac = (DEVIATION_M - da) / (db - da) if db != da else 0.0
            return times[a] + frac * (times[b] - times[a])

        spans: list[list[Any]] = []  # [start s, end s, first knot, last knot]
        outside = np.flatnonzero(off > DEVIATION_M)
        runs = np.split(outside, np.flatnonzero(np.diff(outside) > 1) + 1) if len(outside) else []
        for run in runs:
            first, last = int(run[0]), int(run[-1])
            start = crossing(first - 1, first) if first > 0 else times[first]
            end = crossing(last + 1, last) if last + 1 < len(times) else times[last]
            if spans and start - spans[-1][1] < DEVIATION_REJOIN_S:
                if spans[-1][1] - spans[-1][0] >= DEVIATION_AMBIGUOUS_S:
                    spans[-1][1], spans[-1][3] = end, last
                    continue
                spans.pop()  # a blip just before: too short for any alert to be open, so it starts anew
            spans.append([start, end, first, last])
        for start, end, first, last in spans:
            if end - start < DEVIATION_AMBIGUOUS_S:
                continue
            a, b = int(first), int(last) + 1
            details: dict[str, Any] = {
                "max_off_leg_m": round(float(off_leg[a:b].max()), 1),
                "max_off_route_m": round(float(off[a:b].max()), 1),
                "detour_m": round(path.length_m - planned.length_m, 1),
            }
            if end - start < DEVIATION_MIN_S or not start <= detour_at <= end:
                details["ambiguous"] = True
            v.anomalies.append(
                AnomalyLabel(v.id, "route_deviation", _ms(start), _ms(end), stop.id if stop else None, details=details)
            )

    def _temperatures(self, v: _Vehicle, rng: random.Random, fault: tuple[float, float] | None) -> None:
        """Reefer probe every 30 s: slow drift around the setpoint, warming while the door is open,
        and a cooling fault (toward 14 C) during ``fault``."""
        doors = sorted(v.doors)
        door_times = [t for t, _ in doors]
        door_states = [state for _, state in doors]
        phase = rng.uniform(0.0, 2 * math.pi)
        t = _ms(v.start_s + rng.uniform(0.0, TEMP_PERIOD_S))
        celsius = SETPOINT_C + rng.gauss(0.0, 0.3)
        while t <= v.end_s:
            i = bisect.bisect_right(door_times, t) - 1
            door_open = i >= 0 and door_states[i]
            if fault and fault[0] <= t < fault[1]:
                target, tau = 14.0, 300.0
            elif door_open:
                target, tau = 12.0, 2400.0
            else:  # compressor cycling: +-0.5 C over 20 minutes
                target, tau = SETPOINT_C + 0.5 * math.sin(2 * math.pi * t / 1200.0 + phase), 240.0
            celsius = target + (celsius - target) * math.exp(-TEMP_PERIOD_S / tau) + rng.gauss(0.0, 0.03)
            reading = round(celsius + rng.gauss(0.0, 0.08), 2)
            v.temps.append((t, reading))
            t = _ms(t + TEMP_PERIOD_S)
        if fault:
            self._label_excursions(v, fault)

    def _label_excursions(self, v: _Vehicle, fault: tuple[float, float]) -> None:
        """Label the spans the probe read above the range from the fault on, each from the first
        reading above to the first reading back in range.

        A dip under the limit by less than TEMP_CLEAR_C (the engine's hysteresis) is still the
        same excursion; a rise after a deeper dip is another one (a door opened at a stop on a
        load still warm from the fault). A span shorter than EXCURSION_MIN_S is labelled
        ambiguous: the engine may or may not see an excursion in it.
        """
        high = TEMP_RANGE_C[1]
        runs: list[list[float]] = []  # [first reading above, last reading above, peak]
        current: list[float] | None = None
        for t, celsius in v.temps:
            if t < fault[0]:
                continue
            if celsius > high:
                if current is None:
                    current = [t, t, celsius]
                    runs.append(current)
                current[1], current[2] = t, max(current[2], celsius)
            elif celsius <= high - TEMP_CLEAR_C:
                current = None
        times = [tt for tt, _ in v.temps]
        for first, last, peak in runs:
            i = bisect.bisect_right(times, last)
            back = times[i] if i < len(times) else last
            details: dict[str, Any] = {
                "fault_start": format_time(self._time(fault[0])),
                "fault_end": format_time(self._time(fault[1])),
                "peak_celsius": peak,
                "limit_celsius": high,
            }
            if back - first < EXCURSION_MIN_S:
                details["ambiguous"] = True
            v.anomalies.append(AnomalyLabel(v.id, "temp_excursion", first, back, details=details))

    def _finish(self, v: _Vehicle) -> None:
        """Per-segment speed (m/s) and heading of the trajectory."""
        v.doors.sort()
        for i in range(len(v.ts) - 1):
            dt = v.ts[i + 1] - v.ts[i]
            dist = haversine_m(v.lats[i], v.lons[i], v.lats[i + 1], v.lons[i + 1])
            moving = dt > 0 and dist > 0.01
            v.seg_speed.append(dist / dt if moving else 0.0)
            v.seg_heading.append(bearing_deg(v.lats[i], v.lons[i], v.lats[i + 1], v.lons[i + 1]) if moving else 0.0)
        v.anomalies.sort(key=lambda a: a.start_s)

    # ------------------------------------------------------------ streaming

    def _vehicle_events(self, v: _Vehicle, limit: float) -> Iterator[tuple[float, int, SimEvent]]:
        """One vehicle's messages as (at seconds, vehicle index, event), ordered by ``at``."""
        noise = random.Random(f"{self.seed}:{v.index}:noise")
        faults = random.Random(f"{self.seed}:{v.index}:faults")
        plan = self.anomalies

        def gps_times() -> Iterator[tuple[float, int, Any]]:
            jitter = self.realism.period_jitter
            if jitter <= 0:
                k = 0
                while (t := _ms(v.start_s + k * v.period_s)) <= v.end_s:
                    yield t, 0, None
                    k += 1
                return
            clock = random.Random(f"{self.seed}:{v.index}:clock")
            at = v.start_s
            while (t := _ms(at)) <= v.end_s:
                yield t, 0, None
                at += v.period_s * (1.0 + clock.uniform(-jitter, jitter))

        lost = v.lost

        merged = heapq.merge(gps_times(), ((t, 1, c) for t, c in v.temps), ((t, 2, o) for t, o in v.doors))
        held: list[tuple[float, SimEvent]] = []
        windows = list(v.offline)
        knot = 0
        seq = 0
        for t, kind, value in merged:
            # a device that came back online delivers what it held, in order, at reconnection
            while windows and t >= windows[0][1]:
                t1 = windows.pop(0)[1]
                if t1 > limit:
                    return
                for _, event in held:
                    yield t1, v.index, replace(event, at=self._time(t1), late=True)
                held.clear()
            if t > limit:
                break
            if lost and any(t0 <= t < t1 for t0, t1 in lost):
                continue  # a tunnel or a dead zone: never delivered
            fix_time = self._time(t)
            reading: Reading
            if kind == 0:
                while knot < len(v.ts) - 2 and v.ts[knot + 1] <= t:
                    knot += 1
                reading = self._gps_fix(v, knot, t, fix_time, seq, noise)
            elif kind == 1:
                reading = TemperatureReading(self.tenant, v.id, seq, fix_time, PROBE_ID, value)
            else:
                reading = DoorEvent(self.tenant, v.id, seq, fix_time, DOOR_ID, value)
            seq += 1
            out = [SimEvent(fix_time, v.id, reading)]
            if faults.random() < plan.duplicate_rate:
                out.append(SimEvent(fix_time, v.id, reading, duplicate=True))
            if isinstance(reading, GpsFix) and faults.random() < plan.malformed_rate:
                raw = _malformed(reading, faults.choice(MALFORMED_REASONS), self.vehicle_ids)
                out.append(SimEvent(fix_time, v.id, raw))
            if windows and windows[0][0] <= t:
                held.extend((t, e) for e in out)
                continue
            for event in out:
                yield t, v.index, event
        # the stream ended while offline: the held readings come once the device reconnects
        if held and windows and windows[0][1] <= limit:
            t1 = windows[0][1]
            for _, event in held:
                yield t1, v.index, replace(event, at=self._time(t1), late=True)

    def _gps_fix(self, v: _Vehicle, i: int, t: float, fix_time: datetime, seq: int, rng: random.Random) -> GpsFix:
        """A noisy fix on segment ``i`` of the trajectory at time ``t``."""
        if t <= v.ts[0] or len(v.ts) < 2:
            lat, lon, speed, heading = v.lats[0], v.lons[0], 0.0, 0.0
        else:
            t0, t1 = v.ts[i], v.ts[i + 1]
            frac = min(1.0, max(0.0, (t - t0) / (t1 - t0))) if t1 > t0 else 1.0
            lat = v.lats[i] + (v.lats[i + 1] - v.lats[i]) * frac
            lon = v.lons[i] + (v.lons[i + 1] - v.lons[i]) * frac
            speed, heading = v.seg_speed[i], v.seg_heading[i]
        sigma = GPS_SIGMA_M
        canyon = self.realism.canyon_sigma_m
        if canyon > 0:  # the urban canyon: multipath grows towards the dense centre
            sigma += canyon * math.exp(-((haversine_m(lat, lon, *CENTRE) / CENTRE_SCALE_M) ** 2))
        lat += rng.gauss(0.0, sigma) / 111_195.0
        lon += rng.gauss(0.0, sigma) / (111_195.0 * math.cos(math.radians(lat)))
        accuracy = round(max(2.0, rng.gauss(sigma * 1.4, 1.0)), 1)
        alt = round(12.0 + rng.gauss(0.0, 2.0), 1)
        reported: float | None
        if speed > 0:
            reported = round(max(0.0, speed + rng.gauss(0.0, 0.3)), 2)
            bearing: float | None = round((heading + rng.gauss(0.0, 3.0)) % 360.0, 1) % 360.0
        else:
            reported, bearing = round(abs(rng.gauss(0.0, 0.1)), 2), None
        if not v.sends_speed:
            reported, bearing = None, None
        return GpsFix(
            self.tenant,
            v.id,
            seq,
            fix_time,
            round(lat, 7),
            round(lon, 7),
            speed_mps=reported,
            heading_deg=bearing,
            accuracy_m=accuracy,
            alt_m=alt,
        )


# ---------------------------------------------------------------- helpers


def _crossing(v: _Vehicle, point: tuple[float, float], radius: float, i: int, j: int, entering: bool) -> float:
    """When the straight move from knot i to knot j crosses the circle (first crossing entering,
    last leaving), in a local plane around the circle's centre."""
    kx = 111_195.0 * math.cos(math.radians(point[0]))
    ax, ay = (v.lons[i] - point[1]) * kx, (v.lats[i] - point[0]) * 111_195.0
    dx, dy = (v.lons[j] - point[1]) * kx - ax, (v.lats[j] - point[0]) * 111_195.0 - ay
    qa, qb, qc = dx * dx + dy * dy, 2.0 * (ax * dx + ay * dy), ax * ax + ay * ay - radius * radius
    disc = qb * qb - 4.0 * qa * qc
    if qa <= 0.0 or disc < 0.0:
        return v.ts[j] if entering else v.ts[i]
    f = ((-qb - math.sqrt(disc)) if entering else (-qb + math.sqrt(disc))) / (2.0 * qa)
    f = min(1.0, max(0.0, f))
    return _ms(v.ts[i] + f * (v.ts[j] - v.ts[i]))


def _fence_truth(
    v: _Vehicle, point: tuple[float, float], radius: float, arrival: float, departure: float | None
) -> dict[str, Any]:
    """``fence_entry`` / ``fence_exit`` (s; None when it never left) and ``stood_s`` inside the circle
    around the visit that reached ``point`` at ``arrival`` and left it at ``departure``."""
    ts = v.ts

    def inside(k: int) -> bool:
        return haversine_m(v.lats[k], v.lons[k], *point) <= radius

    i = max(0, bisect.bisect_left(ts, arrival - 1e-6))
    while i > 0 and inside(i - 1):
        i -= 1
    entry = _crossing(v, point, radius, i - 1, i, entering=True) if i > 0 else ts[0]
    j = bisect.bisect_right(ts, (departure if departure is not None else arrival) + 1e-6) - 1
    while j + 1 < len(ts) and inside(j + 1):
        j += 1
    leave = _crossing(v, point, radius, j, j + 1, entering=False) if j + 1 < len(ts) else None
    stood = sum(
        ts[k + 1] - ts[k]
        for k in range(i, min(j, len(ts) - 1))
        if v.lats[k] == v.lats[k + 1] and v.lons[k] == v.lons[k + 1] and inside(k)
    )
    return {"fence_entry": entry, "fence_exit": leave, "stood_s": round(stood, 1)}


def _point_at(path: RoadPath, cum: list[float], d: float) -> tuple[float, float]:
    """The (lat, lon) ``d`` metres along ``path`` (``cum``: cumulative metres at its points)."""
    k = min(len(path.lengths_m) - 1, max(0, bisect.bisect_right(cum, d) - 1))
    seg = cum[k + 1] - cum[k]
    f = (d - cum[k]) / seg if seg > 0 else 0.0
    (lat1, lon1), (lat2, lon2) = path.points[k], path.points[k + 1]
    return lat1 + f * (lat2 - lat1), lon1 + f * (lon2 - lon1)


def _nearest_neighbour_order(net: RoadNetwork, depot: int, stops: Sequence[int]) -> list[int]:
    """Visit order: always the closest remaining stop (straight line), starting at the depot."""
    left = list(stops)
    order: list[int] = []
    here = net.coords(depot)
    while left:
        nxt = min(left, key=lambda n: haversine_m(*here, *net.coords(n)))
        left.remove(nxt)
        order.append(nxt)
        here = net.coords(nxt)
    return order


def _fastest_span_s(path: RoadPath, at: int, route: Sequence[tuple[float, float]]) -> float:
    """Seconds ``path`` stays beyond DEVIATION_M of ``route`` around its point ``at``, driven at
    1.1 x the speed limits (the fastest the simulation drives); 0 when that point is not beyond."""
    off = distance_to_polyline_m(path.points, route)
    if off[at] <= DEVIATION_M:
        return 0.0
    a = b = at
    while a > 0 and off[a - 1] > DEVIATION_M:
        a -= 1
    while b + 1 < len(off) and off[b + 1] > DEVIATION_M:
        b += 1
    return float(sum(path.lengths_m[k] / (path.speeds_kmh[k] / 3.6 * 1.1) for k in range(a, b)))


def _pause_spots(path: RoadPath, keep_away: list[tuple[float, float]], min_gap_m: float = 100.0) -> list[int]:
    """Point indices in the middle of ``path`` at least ``min_gap_m`` from every stop and the depot."""
    n = len(path.points)
    if n < 3:
        return []
    middle = range(max(1, n // 5), max(2, n - n // 5 - 1))
    return [i for i in middle if all(haversine_m(*path.points[i], *p) >= min_gap_m for p in keep_away)]


def _malformed(fix: GpsFix, reason: str, fleet: list[str]) -> RawMessage:
    """A broken copy of ``fix``'s message that the contract rejects with ``reason``."""
    topic, payload = encode_single(fix)
    body = json.loads(payload)
    if reason == "bad_json":
        return RawMessage(topic, payload[: len(payload) // 2], reason)
    if reason == "not_finite":
        body["lat"] = float("nan")  # json.dumps writes NaN, which is not JSON
    elif reason == "out_of_range":
        body["lat"] = 91.0 + abs(body["lat"]) % 1.0
    elif reason == "vehicle_mismatch":
        others = [vid for vid in fleet if vid != fix.vehicle] or ["veh-000"]
        body["vehicle"] = others[fix.seq % len(others)]
    else:
        del body["fix_time"]
    return RawMessage(topic, json.dumps(body, separators=(",", ":")).encode(), reason)
