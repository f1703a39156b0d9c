"""Geofences: arrivals on evidence of stopping, at real sampling rates; boundary-interpolated
times; departures that do not flap, and that a vehicle entering the next stop confirms."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

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


def fix(
    s: float, east: float, north: float = 0.0, speed: float | None = 8.0, derived: bool = False, silence: float = 60.0
) -> CheckedFix:
    lat, lon = offset(LAT, LON, north, east)
    return CheckedFix(at(s), lat, lon, speed, 5.0, None, None, None, derived, silence)


def polar(s: float, r: float, angle_deg: float, speed: float = 8.0) -> CheckedFix:
    a = math.radians(angle_deg)
    return fix(s, r * math.cos(a), r * math.sin(a), speed)


def tracker(*stops: Stop) -> GeofenceTracker:
    g = GeofenceTracker("acme", "van-1", CFG)
    plan = Plan("acme", "van-1", 4, stops)
    g.set_plan(plan, StopIndex(plan.stops, CFG.cell_resolution, CFG.fence_exit_margin_m))
    return g


def feed(g: GeofenceTracker, fixes: list[CheckedFix]) -> list[tuple[str, str, float]]:
    return [(e.kind, e.stop_id, round((e.at - T0).total_seconds(), 2)) for f in fixes for e in g.update(f)]


def line(t0: float, every: float, x0: float, speed: float, until: float) -> list[CheckedFix]:
    """Fixes every ``every`` s from ``t0`` driving east from ``x0`` at ``speed`` m/s (reported)."""
    n = int((until - t0) // every) + 1
    return [fix(t0 + i * every, x0 + speed * i * every, 0.0, speed) for i in range(n)]


@pytest.mark.parametrize("every", [1.0, 5.0, 15.0, 30.0, 60.0])
def test_a_pass_through_at_speed_is_no_arrival_at_any_sampling_rate(every: float) -> None:
    g = tracker(Stop("s1", *offset(LAT, LON, 0, 1000), 50.0))
    assert feed(g, line(0, every, 0.0, 10.0, 300)) == []
    # the same without a device speed: each fix inside is judged on its time inside alone
    g = tracker(Stop("s1", *offset(LAT, LON, 0, 1000), 50.0))
    fixes = [
        fix((f.time - T0).total_seconds(), 10.0 * (f.time - T0).total_seconds(), speed=None)
        for f in line(0, every, 0, 10, 300)
    ]
    assert feed(g, fixes) == []


def test_circling_the_fence_does_not_flap_then_arrival_and_departure_are_exact() -> None:
    g = tracker(Stop("depot", LAT, LON, 75.0))
    # 10 minutes circling at 70 m / 85 m from the centre at 8 m/s: never 30 s inside in a row
    circling = [polar(s, 70.0 if (s // 10) % 2 == 0 else 85.0, s * 3) for s in range(0, 600, 5)]
    assert feed(g, circling) == []
    # drives in and stands: arrival on the first standing fix, at the boundary crossing
    assert feed(g, [fix(600, 100.0), fix(605, 50.0, speed=2.0)]) == []
    assert feed(g, [fix(610, 20.0, speed=0.0)]) == [("arrival", "depot", 602.5)]
    # wanders in the 75-95 m hysteresis band: still at the stop
    assert feed(g, [polar(s, 90.0, s, 0.5) for s in range(615, 900, 5)]) == []
    # leaves: at the crossing of the circle, once it has been out (beyond 95 m) for 60 s
    leave = [fix(900, 50.0), *[fix(s, 100.0 + 10 * (s - 905)) for s in range(905, 1000, 5)]]
    assert feed(g, leave) == [("departure", "depot", 902.5)]


def test_arrival_evidence_speed_derived_speed_or_time_inside_and_the_details() -> None:
    stop = Stop("s1", LAT, LON, 50.0, window_end=at(100), service_s=120.0)
    # device speed: one fix inside reporting a standstill
    g = tracker(stop)
    (arrival,) = [e for f in [fix(170, -130.0), fix(200, -10.0, speed=0.0)] for e in g.update(f)]
    assert arrival.id == stop_event_id("acme", "van-1", "arrival", "s1", 4, 1)
    assert arrival.at == at(190)  # 130 m -> 10 m in 30 s: the 50 m circle is crossed after 20 s
    assert arrival.details == {
        "plan_version": 4,
        "visit": 1,
        "window": "late",
        "evidence": "speed",
        "inside_s": 10.0,
        "fixes_inside": 1,
    }
    # a derived speed (no device speed) under 1 m/s
    g = tracker(stop)
    events = [e for f in [fix(170, -130.0, speed=None), fix(200, -10.0, speed=0.4, derived=True)] for e in g.update(f)]
    assert [(e.kind, e.details["evidence"]) for e in events] == [("arrival", "derived_speed")]
    # no speed at all: seen inside 30 s, boundary to boundary (two fixes 30 s apart inside 50 m)
    g = tracker(stop)
    fixes = [fix(170, -130.0, speed=None), fix(200, -10.0, speed=None), fix(230, 20.0, speed=None)]
    (arrival,) = [e for f in fixes for e in g.update(f)]
    assert (arrival.at, arrival.details["evidence"], arrival.details["inside_s"]) == (at(190), "time_inside", 40.0)
    # one fix inside, crawling through: judged when it leaves, on the interpolated exit; a single fix
    # inside must show twice arrival_min_inside_s (straight lines between sparse fixes cut corners)
    g = tracker(stop)
    crawl = [fix(0, -80.0, speed=None), fix(50, 0.0, speed=None), fix(100, 80.0, speed=None)]
    out = [e for f in crawl for e in g.update(f)]
    assert [(e.kind, round((e.at - T0).total_seconds(), 3)) for e in out] == [("arrival", 18.75)]
    assert out[0].details["inside_s"] == 62.5  # in at 18.75 s, out at 81.25 s
    assert g.visit is not None and feed(g, [fix(160, 500.0, speed=None)]) == [("departure", "s1", 81.25)]
    g = tracker(stop)  # the same 30 s apart: 37.5 s inside with one fix is no arrival
    assert feed(g, [fix(0, -80.0, speed=None), fix(30, 0.0, speed=None), fix(60, 80.0, speed=None)]) == []


def test_no_arrival_from_silence_and_no_interpolation_across_one() -> None:
    g = tracker(Stop("s1", LAT, LON, 75.0))
    assert feed(g, [fix(0, 300), fix(5, 10)]) == []
    assert g.next_timer() is None  # a device that goes quiet has shown nothing
    # after 10 minutes of silence it is seen standing inside: the arrival is the first fix seen inside
    g = tracker(Stop("s1", LAT, LON, 75.0))
    assert feed(g, [fix(0, 300), fix(600, 10, speed=0.0)]) == [("arrival", "s1", 600.0)]
    # it reappears far away after a silence: it left after the last fix seen inside
    assert feed(g, [fix(660, 5, speed=0.0), fix(1200, 2000.0)]) == []
    assert g.on_timer(at(1260))[0].at == at(660)


def test_entering_the_next_stops_fence_confirms_the_departure_at_30_s_sampling() -> None:
    a = Stop("a", *offset(LAT, LON, 0, 0), 40.0)
    b = Stop("b", *offset(LAT, LON, 0, 100), 40.0)
    c = Stop("c", *offset(LAT, LON, 0, 200), 40.0)
    g = tracker(a, b, c)
    # a bus without device speed, a fix every 30 s: stands 60 s at each stop, 100 m apart
    fixes = [
        fix(0, -300, speed=None),
        fix(30, -5, speed=None),
        fix(60, 3, speed=None),
        fix(90, 98, speed=None),  # in b: the visit to a is over
        fix(120, 104, speed=None),
        fix(150, 197, speed=None),
        fix(180, 203, speed=None),
        fix(210, 500, speed=None),
    ]
    out = feed(g, fixes)
    assert [(kind, stop) for kind, stop, _ in out] == [
        ("arrival", "a"),
        ("departure", "a"),
        ("arrival", "b"),
        ("departure", "b"),
        ("arrival", "c"),
    ]
    departures = [e for e in out if e[0] == "departure"]
    assert all(d[2] < arrival[2] for d, arrival in zip(departures, [out[2], out[4]], strict=True))
    assert g.visit is not None and g.visit.stop.id == "c" and g.finished()


def test_nearest_of_overlapping_fences_finished_plans_and_next_stop_in_plan_order() -> None:
    a = Stop("a", *offset(LAT, LON, 0, 0), 100.0)
    b = Stop("b", *offset(LAT, LON, 0, 120), 100.0)
    c = Stop("c", *offset(LAT, LON, 0, 2000), 100.0)
    g = tracker(a, b, c)
    assert g.next_stop() == a
    assert feed(g, [fix(0, 80, speed=0.0)]) == [("arrival", "b", 0.0)]
    assert g.next_stop() == a and g.remaining_stops() == (a, c)
    # the last stop (plan order) reached: the plan is finished, a is skipped, not still to do
    assert feed(g, [fix(100, 1000), fix(130, 2000, speed=0.0)]) == [
        ("departure", "b", 0.0),
        ("arrival", "c", 127.0),
    ]
    assert g.finished() and g.remaining_stops() == () and g.next_stop() is None


def test_a_second_visit_needs_twice_the_time_inside_not_a_red_light() -> None:
    g = tracker(Stop("s1", LAT, LON, 50.0), Stop("far", *offset(LAT, LON, 0, 5000), 50.0))
    assert feed(g, [fix(0, -200), fix(10, 0, speed=0.0)]) == [("arrival", "s1", 7.5)]
    assert feed(g, [fix(100, 400), fix(170, 700)]) == [("departure", "s1", 10.0)]  # 90 s apart: a silence
    # back past it later: held 20 s at a light inside, standing: no second visit
    assert feed(g, [fix(300, -200), fix(310, -10, speed=0.0), fix(320, -5, speed=0.0), fix(330, 200)]) == []
    # then really stopping there: 60 s seen inside
    out = feed(g, [fix(500, -200), *[fix(510 + 10 * k, 0, speed=0.0) for k in range(7)]])
    assert out == [("arrival", "s1", 507.5)] and g.arrivals["s1"] == 2


def test_a_round_that_starts_at_the_depot_it_ends_at_is_not_over_at_its_start() -> None:
    depot = Stop("depot", LAT, LON, 50.0)
    g = tracker(Stop("s1", *offset(LAT, LON, 0, 2000), 50.0), depot)
    assert feed(g, [fix(s, 0, speed=0.0) for s in range(0, 120, 30)]) == []  # loading at the depot
    assert not g.finished() and g.remaining_stops() == g.plan.stops
    out = feed(g, [fix(200, 1000), fix(300, 2000, speed=0.0), fix(400, 1000), fix(500, 0, speed=0.0)])
    assert [(k, s) for k, s, _ in out] == [("arrival", "s1"), ("departure", "s1"), ("arrival", "depot")]
    assert g.finished()
