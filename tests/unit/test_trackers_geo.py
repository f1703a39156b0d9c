"""Geodesy helpers: distances, bearings, offsets to a polyline, circles."""

from __future__ import annotations

import pytest

from core.geo import (
    EARTH_RADIUS_M,
    bearing_deg,
    destination,
    distance_to_segment_m,
    haversine_m,
    in_circle,
    locate_on_polyline,
    offset,
)

LAT, LON = 60.17, 24.94  # Helsinki


def p(east_m: float, north_m: float) -> tuple[float, float]:
    return offset(LAT, LON, north_m, east_m)


def test_haversine_one_degree_of_meridian() -> None:
    assert haversine_m(0, 0, 1, 0) == pytest.approx(EARTH_RADIUS_M * 3.141592653589793 / 180, rel=1e-12)
    assert haversine_m(LAT, LON, LAT, LON) == 0.0


def test_bearings_of_the_four_directions() -> None:
    assert bearing_deg(0, 0, 1, 0) == pytest.approx(0.0)
    assert bearing_deg(0, 0, 0, 1) == pytest.approx(90.0)
    assert bearing_deg(0, 0, -1, 0) == pytest.approx(180.0)
    assert bearing_deg(0, 0, 0, -1) == pytest.approx(270.0)


def test_destination_and_offset_agree_with_haversine() -> None:
    lat, lon = destination(LAT, LON, 45.0, 1000.0)
    assert haversine_m(LAT, LON, lat, lon) == pytest.approx(1000.0, abs=1e-6)
    assert bearing_deg(LAT, LON, lat, lon) == pytest.approx(45.0, abs=1e-6)
    assert haversine_m(LAT, LON, *p(0, 100)) == pytest.approx(100.0, abs=0.01)
    assert haversine_m(LAT, LON, *p(300, 400)) == pytest.approx(500.0, abs=0.05)


def test_distance_to_segment_inside_and_beyond_the_ends() -> None:
    a, b = p(0, 0), p(1000, 0)
    assert distance_to_segment_m(*p(500, 50), a, b) == pytest.approx(50.0, abs=0.05)
    assert distance_to_segment_m(*p(1030, 40), a, b) == pytest.approx(50.0, abs=0.05)
    assert distance_to_segment_m(*p(-30, 0), a, a) == pytest.approx(30.0, abs=0.05)


def test_cross_track_and_progress_along_an_l_shaped_route() -> None:
    line = [p(0, 0), p(1000, 0), p(1000, 1000)]
    first = locate_on_polyline(*p(500, -30), line)
    assert (first.segment, round(first.cross_track_m, 1), round(first.along_m)) == (0, 30.0, 500)
    second = locate_on_polyline(*p(1020, 300), line)
    assert (second.segment, round(second.cross_track_m, 1), round(second.along_m)) == (1, 20.0, 1300)
    with pytest.raises(ValueError):
        locate_on_polyline(LAT, LON, [p(0, 0)])


def test_point_in_circle_includes_the_boundary_region() -> None:
    assert in_circle(*p(0, 74.9), LAT, LON, 75.0)
    assert not in_circle(*p(0, 75.1), LAT, LON, 75.0)
