"""Remaining paths: along a straight north-south route (where metres are exactly R * delta-latitude),
monotone progress, a route that passes the same street twice, straight lines with a detour
factor, its fit, sampled travel times, and shortest paths on a tiny road network."""

from __future__ import annotations

import math

import networkx as nx
import pytest

from core.geo import EARTH_RADIUS_M, offset
from core.plan import Stop
from models.paths import (
    DEFAULT_DETOUR_FACTOR,
    NetworkPaths,
    RouteGeometry,
    fit_detour_factor,
    remaining_along_route,
    sample_path,
    straight_line,
)
from models.profiles import SpeedProfiles
from models.roads import RoadNetwork

LON = 24.94
ROUTE = [(60.0 + i * 0.001, LON) for i in range(11)]  # 10 segments due north, ~111.2 m each


def m(dlat: float) -> float:
    """Metres along a meridian for ``dlat`` degrees: what haversine gives exactly."""
    return EARTH_RADIUS_M * math.radians(dlat)


def stop(stop_id: str, lat: float, east_m: float = 0.0) -> Stop:
    la, lo = offset(lat, LON, 0.0, east_m)
    return Stop(stop_id, la, lo)


class HourlyProfiles:
    """10 m/s at hour 8, 5 m/s at any other hour, everywhere."""

    def speed(self, cell: int, hour: int) -> float:
        return 10.0 if hour == 8 else 5.0

    def speeds(self, cells: list[int], hour: int) -> list[float]:
        return [self.speed(c, hour) for c in cells]


def test_metres_along_the_route_from_the_projection_to_each_stop() -> None:
    stops = [stop("s1", 60.004, east_m=30.0), stop("s2", 60.008, east_m=-10.0)]
    here = offset(60.002, LON, 0.0, -20.0)
    path = remaining_along_route(ROUTE, here, stops)
    assert path.progress_m == pytest.approx(m(0.002))
    assert path.cross_track_m == pytest.approx(20.0, abs=0.01)
    assert path.stops == [("s1", pytest.approx(m(0.002))), ("s2", pytest.approx(m(0.006)))]
    assert path.behind == []
    assert path.points[0] == pytest.approx((60.002, LON)) and path.points[-1] == pytest.approx((60.008, LON))
    assert path.points[1:-1] == ROUTE[3:8]  # the vertices in between


def test_progress_never_goes_backwards() -> None:
    stops = [stop("s1", 60.001), stop("s2", 60.004)]
    path = remaining_along_route(ROUTE, (60.0015, LON), stops, min_progress_m=m(0.003))
    assert path.progress_m == pytest.approx(m(0.003))  # GPS put it behind: it stays where it got to
    assert path.cross_track_m == pytest.approx(m(0.0015), rel=1e-6)
    assert path.stops == [("s1", 0.0), ("s2", pytest.approx(m(0.001)))]
    assert path.behind == ["s1"]


def test_a_route_that_passes_the_same_street_twice_keeps_stop_order() -> None:
    out_and_back = ROUTE + ROUTE[-2::-1]  # north 10 segments, then south the same way
    g = RouteGeometry(out_and_back)
    assert g.length_m == pytest.approx(m(0.020))
    along = g.stop_progress([stop("s1", 60.008), stop("s2", 60.004)])
    assert along == {"s1": pytest.approx(m(0.008)), "s2": pytest.approx(m(0.016))}  # s2 on the way back
    assert g.project(60.005, LON).along_m == pytest.approx(m(0.005))
    assert g.project(60.005, LON, m(0.012)).along_m == pytest.approx(m(0.015))
    # a search window stops the projection leaping ahead
    near = g.project(60.0055, LON, m(0.001), m(0.003))
    assert near.along_m == pytest.approx(m(0.003)) and near.cross_track_m == pytest.approx(m(0.0025), rel=1e-6)


def test_straight_line_times_the_detour_factor() -> None:
    legs = straight_line((60.0, LON), [stop("a", 60.001), stop("b", 60.003)], detour_factor=1.5)
    assert legs == [("a", pytest.approx(1.5 * m(0.001))), ("b", pytest.approx(1.5 * m(0.003)))]


def test_detour_factor_is_the_clamped_median_ratio() -> None:
    # 100 m legs are noise and ignored; ratios 1.2, 1.4, 2.0
    assert fit_detour_factor([(1000, 1200), (1000, 1400), (500, 1000), (100, 900)]) == pytest.approx(1.4)
    assert fit_detour_factor([(1000, 500)]) == 1.0
    assert fit_detour_factor([(1000, 5000)]) == 3.0
    assert fit_detour_factor([]) == DEFAULT_DETOUR_FACTOR == 1.3


def test_sampled_travel_time_per_hour() -> None:
    line = [(60.0, LON), (60.0 + 250.0 / m(1.0), LON)]  # 250 m
    p = sample_path(line, sample_m=100.0)
    assert len(p.cells) == 3 and p.cum_m == pytest.approx([0.0, 250 / 3, 500 / 3, 250.0])
    hourly = HourlyProfiles()
    assert p.travel_s(hourly, 8) == pytest.approx(25.0)
    assert p.travel_s(hourly, 9) == pytest.approx(50.0)
    assert p.travel_s(hourly, 8, 50.0, 200.0) == pytest.approx(15.0)
    assert p.travel_s(hourly, 8, 200.0, 50.0) == 0.0
    assert sample_path(line, scale=1.3).length_m == pytest.approx(325.0)
    flat = SpeedProfiles.constant(12.5)
    assert p.travel_s(flat, 100) == pytest.approx(20.0)


def tiny_network() -> RoadNetwork:
    """A -> B -> C due north (~111 m each, 50 km/h) and a shorter but slow A -> C lane (200 m, 10 km/h), both ways."""
    g = nx.DiGraph()
    for node, lat in ((1, 60.0), (2, 60.001), (3, 60.002)):
        g.add_node(node, lat=lat, lon=LON)
    for u, v, length, kmh in ((1, 2, m(0.001), 50.0), (2, 3, m(0.001), 50.0), (1, 3, 200.0, 10.0)):
        for a, b in ((u, v), (v, u)):
            g.add_edge(a, b, length_m=length, speed_kmh=kmh, travel_s=length / (kmh / 3.6), geometry=None)
    return RoadNetwork(g)


def test_network_paths_follow_the_quickest_roads_and_cache_them() -> None:
    paths = NetworkPaths(tiny_network(), sample_m=100.0)
    here = offset(60.0, LON, 0.0, 30.0)
    lead, legs = paths.legs(here, [Stop("b", 60.001, LON), Stop("c", 60.002, LON)])
    assert lead == pytest.approx(30.0, abs=0.01)
    assert [leg.length_m for leg in legs] == [pytest.approx(m(0.001)), pytest.approx(m(0.001))]
    direct = paths.leg(1, 3)
    assert direct.length_m == pytest.approx(m(0.002))  # via B: longer than the lane, but quicker
    assert paths.leg(1, 3) is direct  # cached
    assert paths.leg(3, 3).length_m == 0.0


def test_noise_does_not_jump_a_vehicle_onto_the_second_pass_of_a_street() -> None:
    east = 1.0 / (m(1.0) * math.cos(math.radians(60.005)))  # degrees of longitude per metre here
    back = [(lat, LON + 8.0 * east) for lat, _ in ROUTE[::-1]]  # back south on a street 8 m east
    g = RouteGeometry(ROUTE + back)
    # on the way out, GPS 5 m east: the way back is nearer (3 m), but within SAME_PLACE_M: the first pass wins
    here = g.project(60.005, LON + 5.0 * east, 0.0, m(0.05))
    assert here.along_m == pytest.approx(m(0.005), abs=0.5) and here.cross_track_m == pytest.approx(5.0, abs=0.1)
    # far off the route, the nearest point of the first pass still answers (no sliding back along it)
    assert g.project(60.003, LON - 500.0 * east).along_m == pytest.approx(m(0.003), abs=0.5)
