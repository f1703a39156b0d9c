"""Route drift: raised after a distance and a time off route, resolved back on it,
and never raised on a planned detour straight to the next stop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import h3.api.basic_int as h3

from core.geo import offset
from core.plan import Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.drift import RouteCorridor, RouteDriftTracker
from pipelines.trackers.events import alert_id
from pipelines.trackers.quality import CheckedFix

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94
# The scenarios below are drawn to these wider thresholds (resolution 10: a corridor of about
# 200 m each side); the defaults are checked on their own in the first test.
CFG = AnalyticsConfig(
    corridor_resolution=10, drift_distance_m=350.0, drift_min_duration_s=120.0, detour_max_offset_m=400.0
)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def p(east: float, north: float) -> tuple[float, float]:
    return offset(LAT, LON, north, east)


ROUTE = (p(0, 0), p(3000, 0), p(3000, 3000))  # east 3 km, then north 3 km
STOP = Stop("s1", *p(3000, 3000), 75.0)


def fix(s: float, east: float, north: float) -> CheckedFix:
    return CheckedFix(at(s), *p(east, north), 10.0, 5.0, None)


def drift_tracker() -> RouteDriftTracker:
    d = RouteDriftTracker("acme", "van-1", CFG)
    d.set_plan(RouteCorridor(ROUTE, CFG.corridor_resolution, CFG.corridor_k), T0)
    return d


def feed(d: RouteDriftTracker, fixes: list[CheckedFix]) -> list[tuple[str, datetime, datetime | None]]:
    return [(a.status, a.start, a.end) for f in fixes for a in d.update(f, STOP, at_stop=False)]


def straight(s0: float, a: tuple[float, float], b: tuple[float, float], steps: int) -> list[CheckedFix]:
    """``steps`` fixes every 5 s from a towards b (b included)."""
    return [
        fix(s0 + 5 * i, a[0] + (b[0] - a[0]) * i / steps, a[1] + (b[1] - a[1]) * i / steps) for i in range(1, steps + 1)
    ]


def test_the_default_corridor_lies_inside_the_default_distance_threshold() -> None:
    default = AnalyticsConfig()
    corridor = RouteCorridor(ROUTE, default.corridor_resolution, default.corridor_k)
    reach = max(
        corridor.locate(lat, lon).cross_track_m for cell in corridor.cells for lat, lon in h3.cell_to_boundary(cell)
    )
    assert default.drift_distance_m / 2 < reach < default.drift_distance_m


def test_the_corridor_lies_inside_the_distance_threshold() -> None:
    corridor = RouteCorridor(ROUTE, CFG.corridor_resolution, CFG.corridor_k)
    reach = max(
        corridor.locate(lat, lon).cross_track_m for cell in corridor.cells for lat, lon in h3.cell_to_boundary(cell)
    )
    assert 150 < reach < CFG.drift_distance_m
    assert corridor.contains(*p(1500, 100)) and not corridor.contains(*p(1500, 600))
    assert round(corridor.length_m) == 6000


def test_drift_is_raised_after_two_minutes_off_route_and_resolved_back_on_it() -> None:
    d = drift_tracker()
    assert feed(d, straight(0, (0, 0), (1000, 0), 20)) == []  # on route, 5..100 s
    # 105 s: 1 km south of the route, heading away from the stop; stays off until 400 s
    away = [fix(105 + 5 * i, 1000 + 10 * i, -1000) for i in range(60)]
    events = feed(d, away)
    # it crossed 350 m at 101.75 s (0 m at 100 s, 1000 m at 105 s); confirmed by the fix at 225 s
    assert events == [("open", at(101.75), None)]
    back = [fix(405 + 5 * i, 1600 + 50 * i, 0) for i in range(10)]  # on the route again from 405 s
    assert feed(d, back) == [("resolved", at(101.75), at(405))]  # after 30 s back on route
    assert d.alert is None


def test_drift_alert_content() -> None:
    d = drift_tracker()
    feed(d, straight(0, (0, 0), (1000, 0), 20))
    (opened,) = [a for f in [fix(105 + 5 * i, 1000, -1000) for i in range(25)] for a in d.update(f, STOP, False)]
    assert opened.id == alert_id("acme", "van-1", "route_drift", at(101.75), "s1")
    assert (opened.type, opened.severity, opened.stop_id) == ("route_drift", "warning", "s1")
    assert opened.details["offset_m"] == 1000.0


def test_no_drift_on_a_planned_detour_straight_to_the_next_stop() -> None:
    d = drift_tracker()
    fixes = straight(0, (0, 0), (1000, 0), 20)
    # cut the corner: straight from (1000, 0) to the stop, ~1 km off the route in the middle, for 6 minutes
    fixes += straight(100, (1000, 0), (3000, 3000), 72)
    assert feed(d, fixes) == []
    assert d.alert is None


def test_a_detour_that_leaves_the_straight_line_is_drift_from_where_it_left_the_route() -> None:
    d = drift_tracker()
    corridor = RouteCorridor(ROUTE, CFG.corridor_resolution, CFG.corridor_k)
    fixes = straight(0, (0, 0), (1000, 0), 20)
    fixes += straight(100, (1000, 0), (1600, 900), 12)  # 105..160 s: on the straight line to the stop
    # 165 s: 500 m sideways off that line, then parallel to it (still closing in on the stop)
    fixes += straight(160, (1184, 1177), (1784, 2077), 20)
    left = next(f.time for f in fixes if corridor.locate(f.lat, f.lon).cross_track_m > CFG.drift_distance_m)
    assert left == at(125)  # 375 m north of the first leg
    crossed = crossing(corridor, fixes, left)
    assert at(120) < crossed < at(125)
    # the excuse broke at 165 s; the excursion began at 125 s (crossing 350 m just before), so the
    # alert opens 120 s later, at 245 s
    events = [(f.time, a.status, a.start) for f in fixes for a in d.update(f, STOP, at_stop=False)]
    assert events == [(at(245), "open", crossed)]


def test_heading_away_from_the_next_stop_is_drift_even_near_the_straight_line() -> None:
    d = drift_tracker()
    corridor = RouteCorridor(ROUTE, CFG.corridor_resolution, CFG.corridor_k)
    fixes = straight(0, (0, 0), (1000, 0), 20)
    fixes += straight(100, (1000, 0), (900, -1200), 40)  # backwards, south: further from the stop each fix
    left = next(f.time for f in fixes if corridor.locate(f.lat, f.lon).cross_track_m > CFG.drift_distance_m)
    assert left == at(160)
    assert feed(d, fixes) == [("open", crossing(corridor, fixes, left), None)]


def crossing(corridor: RouteCorridor, fixes: list[CheckedFix], left: datetime) -> datetime:
    """When the move from the fix before ``left`` to it crossed the drift distance (interpolated)."""
    i = next(k for k, f in enumerate(fixes) if f.time == left)
    a, b = fixes[i - 1], fixes[i]
    da, db = (corridor.locate(f.lat, f.lon).cross_track_m for f in (a, b))
    return a.time + (b.time - a.time) * ((CFG.drift_distance_m - da) / (db - da))


def test_no_route_means_no_drift_and_removing_it_resolves() -> None:
    d = drift_tracker()
    feed(d, straight(0, (0, 0), (1000, 0), 20))
    feed(d, [fix(105 + 5 * i, 1000, -1000) for i in range(30)])
    assert d.alert is not None
    (resolved,) = d.set_plan(None, at(300))
    assert (resolved.status, resolved.end, resolved.details["plan_changed"]) == ("resolved", at(300), True)
    assert feed(d, [fix(400, 1000, -2000)]) == []
