"""Geofences: debounced arrivals and departures that do not flap when a vehicle circles."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from core.geo import offset
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import stop_event_id
from pipelines.trackers.geofence import GeofenceTracker, StopIndex
from pipelines.trackers.quality import CheckedFix

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94
CFG = AnalyticsConfig()


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def fix(s: float, east: float, north: float = 0.0) -> CheckedFix:
    lat, lon = offset(LAT, LON, north, east)
    return CheckedFix(at(s), lat, lon, 0.0, 5.0, None)


def polar(s: float, r: float, angle_deg: float) -> CheckedFix:
    a = math.radians(angle_deg)
    return fix(s, r * math.cos(a), r * math.sin(a))


def tracker(*stops: Stop, window_end: datetime | None = None) -> GeofenceTracker:
    g = GeofenceTracker("acme", "van-1", CFG)
    plan = Plan("acme", "van-1", 4, stops)
    g.set_plan(plan, StopIndex(plan.stops, CFG.cell_resolution, CFG.fence_exit_margin_m))
    return g


def feed(g: GeofenceTracker, fixes: list[CheckedFix]) -> list[tuple[str, str, datetime]]:
    return [(e.kind, e.stop_id, e.at) for f in fixes for e in g.update(f)]


def test_circling_the_fence_does_not_flap_then_arrival_and_departure_are_exact() -> None:
    g = tracker(Stop("depot", LAT, LON, 75.0))
    # 10 minutes circling at 70 m / 85 m from the centre: never 30 s inside in a row
    circling = [polar(s, 70.0 if (s // 10) % 2 == 0 else 85.0, s * 3) for s in range(0, 600, 5)]
    assert feed(g, circling) == []
    # goes in and stays: arrival at the first fix inside, confirmed 30 s later
    stay = [polar(s, 20.0, s) for s in range(600, 660, 5)]
    assert feed(g, stay[:6]) == []  # 600..625: not yet 30 s
    assert feed(g, stay[6:]) == [("arrival", "depot", at(600))]
    # wanders in the 75-95 m hysteresis band: still at the stop
    assert feed(g, [polar(s, 90.0, s) for s in range(660, 900, 5)]) == []
    # leaves: departure at the first fix beyond 95 m once it has been out for 60 s
    leave = [fix(s, 100.0 + 10 * (s - 900)) for s in range(900, 1000, 5)]
    assert feed(g, leave) == [("departure", "depot", at(900))]


def test_events_carry_ids_visit_numbers_service_time_and_window() -> None:
    g = tracker(Stop("s1", LAT, LON, 50.0, window_end=at(100), service_s=120.0))
    events = [e for f in [fix(s, 0) for s in range(200, 300, 5)] + [fix(300, 500), fix(400, 500)] for e in g.update(f)]
    arrival, departure = events
    assert arrival.id == stop_event_id("acme", "van-1", "arrival", "s1", 4, 1)
    assert arrival.details == {"plan_version": 4, "visit": 1, "window": "late"}
    assert departure.id == stop_event_id("acme", "van-1", "departure", "s1", 4, 1)
    assert departure.details == {
        "plan_version": 4,
        "visit": 1,
        "arrived_at": "2026-11-23T08:03:20.000Z",
        "service_s": 100.0,
        "planned_service_s": 120.0,
    }
    again = [e for f in [fix(s, 0) for s in range(500, 600, 5)] for e in g.update(f)]
    assert [(e.kind, e.details["visit"]) for e in again] == [("arrival", 2)]
    assert again[0].id == stop_event_id("acme", "van-1", "arrival", "s1", 4, 2)


def test_arrival_confirmed_by_timer_when_the_device_goes_quiet() -> None:
    g = tracker(Stop("s1", LAT, LON, 75.0))
    assert feed(g, [fix(0, 300), fix(5, 10)]) == []
    assert g.next_timer() == at(35)
    assert [(e.kind, e.at) for e in g.on_timer(at(35))] == [("arrival", at(5))]


def test_nearest_of_overlapping_fences_and_next_stop_in_plan_order() -> None:
    a = Stop("a", *offset(LAT, LON, 0, 0), 100.0)
    b = Stop("b", *offset(LAT, LON, 0, 120), 100.0)
    g = tracker(a, b)
    assert g.next_stop() == a
    assert feed(g, [fix(s, 80) for s in range(0, 40, 5)]) == [("arrival", "b", at(0))]
    assert g.next_stop() == a and g.remaining_stops() == (a,)
