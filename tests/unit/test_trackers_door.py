"""Doors: opened away from any stop, and open too long on a refrigerated load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.contract import DoorEvent, GpsFix
from core.geo import offset
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.door import DoorTracker
from pipelines.trackers.events import alert_id
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def door(s: float, is_open: bool, name: str = "rear") -> DoorEvent:
    return DoorEvent("acme", "van-1", int(s), at(s), name, is_open)


def test_door_opened_away_from_a_stop_raises_a_security_alert_until_closed() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), at_stop=True, refrigerated=False, h3_cell=1) == []
    assert d.update(door(60, False), at_stop=True, refrigerated=False, h3_cell=1) == []
    (opened,) = d.update(door(100, True), at_stop=False, refrigerated=False, h3_cell=2)
    assert opened.id == alert_id("acme", "van-1", "door_open_away", at(100), subject="rear")
    assert (opened.type, opened.severity, opened.h3_cell, opened.details) == (
        "door_open_away",
        "critical",
        2,
        {"door": "rear"},
    )
    assert d.update(door(110, True), at_stop=False, refrigerated=False, h3_cell=2) == []  # repeated "open"
    (closed,) = d.update(door(160, False), at_stop=False, refrigerated=False, h3_cell=2)
    assert closed == opened.resolve(at(160), open_s=60.0)


def test_unknown_location_raises_nothing() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), at_stop=None, refrigerated=False, h3_cell=None) == []


def test_refrigerated_door_open_too_long_fires_from_the_timer() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(0, True), at_stop=True, refrigerated=True, h3_cell=5)
    d.update(door(10, True, "side"), at_stop=True, refrigerated=False, h3_cell=5)
    assert d.next_timer() == at(300)
    assert d.on_timer(at(299)) == []
    (too_long,) = d.on_timer(at(300))
    assert (too_long.type, too_long.start, too_long.details) == (
        "door_open_too_long",
        at(0),
        {"door": "rear", "limit_s": 300.0},
    )
    assert d.next_timer() is None
    (closed,) = d.update(door(420, False), at_stop=True, refrigerated=True, h3_cell=5)
    assert (closed.id, closed.status, closed.end, closed.details["open_s"]) == (too_long.id, "resolved", at(420), 420.0)


def _gps(seq: int, s: float, east: float) -> StoredReading:
    lat, lon = offset(LAT, LON, 0.0, east)
    return StoredReading(GpsFix("acme", "van-1", seq, at(s), lat, lon, speed_mps=0.0), None, at(s), 0, seq)


def _door(seq: int, s: float, is_open: bool) -> StoredReading:
    return StoredReading(DoorEvent("acme", "van-1", seq, at(s), "rear", is_open), None, at(s), 0, seq)


def test_door_away_from_stop_through_the_whole_pipeline() -> None:
    plan = Plan("acme", "van-1", 1, (Stop("s1", LAT, LON, 75.0),), temp_range_c=(2.0, 8.0))
    va = VehicleAnalytics("acme", "van-1", plan=plan)
    items = [_gps(1, 0, 0.0), _door(2, 5, True), _door(3, 65, False)]  # at the stop: fine
    items += [_gps(4, 100, 500.0), _door(5, 105, True), _gps(6, 110, 500.0), _door(7, 200, False)]  # 500 m away
    items += [_gps(8, 300, 500.0)]
    out = []
    for item in items:
        out += va.update(item, item.received_at)
    out += va.on_timer(at(400))
    assert [(e.type, e.status, e.start, e.end) for e in out if hasattr(e, "type")] == [
        ("door_open_away", "open", at(105), None),
        ("door_open_away", "resolved", at(105), at(200)),
    ]
