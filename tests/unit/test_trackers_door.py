"""Doors: opened away from any stop, and open too long on a refrigerated load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.contract import DoorEvent, GpsFix
from core.geo import offset
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.door import DoorTracker
from pipelines.trackers.events import alert_id
from pipelines.trackers.quality import CheckedFix
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def door(s: float, is_open: bool, name: str = "rear") -> DoorEvent:
    return DoorEvent("acme", "van-1", int(s), at(s), name, is_open)


STOP, AWAY = 60.17, 60.20  # latitudes: at the stop, 3 km away


def fix(s: float, lat: float) -> CheckedFix:
    return CheckedFix(at(s), lat, LON, 0.0, 5.0, None)


def at_stop(lat: float, lon: float, cell: int | None) -> bool:
    return lat < 60.18


def unknown(lat: float, lon: float, cell: int | None) -> None:
    return None


def test_door_opened_away_from_a_stop_raises_a_security_alert_until_closed() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=False, h3_cell=1) == []
    assert d.update(door(60, False), fix(60, STOP), at_stop, refrigerated=False, h3_cell=1) == []
    (opened,) = d.update(door(100, True), fix(100, AWAY), at_stop, refrigerated=False, h3_cell=2)
    assert opened.id == alert_id("acme", "van-1", "door_open_away", at(100), subject="rear")
    assert (opened.type, opened.severity, opened.details) == ("door_open_away", "critical", {"door": "rear"})
    assert d.update(door(110, True), fix(100, AWAY), at_stop, refrigerated=False, h3_cell=2) == []  # repeated
    (closed,) = d.update(door(160, False), fix(100, AWAY), at_stop, refrigerated=False, h3_cell=2)
    assert closed == opened.resolve(at(160), open_s=60.0)


def test_an_opening_after_the_last_fix_is_placed_by_the_next_one() -> None:
    # a fix every 30 s: the last one out of town, the van standing at the stop when the door opens
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(95, True), fix(90, AWAY), at_stop, refrigerated=False, h3_cell=1) == []
    assert d.on_fix(fix(120, STOP), at_stop) == []  # still open at the next fix: it opened where that is
    # the other way round: the last fix at a stop, the door opened further on (where the next fix is)
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(95, True), fix(90, STOP), at_stop, refrigerated=False, h3_cell=1) == []
    (opened,) = d.on_fix(fix(120, AWAY), at_stop)
    assert (opened.type, opened.start) == ("door_open_away", at(95))
    # no fix within the cadence (silence_s, 60 s): the last position known decides
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(95, True), fix(90, AWAY), at_stop, refrigerated=False, h3_cell=1)
    assert d.next_timer() == at(155)
    (opened,) = d.on_timer(at(155))
    assert opened.start == at(95)
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(95, True), fix(90, STOP), at_stop, refrigerated=False, h3_cell=1)
    assert d.on_timer(at(155)) == [] and d.next_timer() is None


def test_an_opening_no_stop_was_within_reach_of_is_judged_at_once() -> None:
    # the last fix 3 km from the only stop, the door opens 20 s later: at 20 m/s (the default reach)
    # or 1.5 times the fix's speed, no van gets to a stop in 20 s
    def stop_within(lat: float, lon: float, metres: float) -> bool:
        return metres >= 3000.0

    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    (opened,) = d.update(door(110, True), fix(90, AWAY), at_stop, False, 1, stop_within)
    assert (opened.type, opened.start) == ("door_open_away", at(110))
    assert d.on_fix(fix(120, STOP), at_stop) == []  # placed already: the next fix changes nothing
    # 150 s after the fix the stop was within reach (3,000 m at 20 m/s): the next fix tells
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(240, True), fix(90, AWAY), at_stop, False, 1, stop_within) == []
    assert d.on_fix(fix(250, STOP), at_stop) == []
    # a fast van reaches further: 1.5 x 40 m/s x 60 s = 3,600 m
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    fast = CheckedFix(at(90), AWAY, LON, 40.0, 5.0, None)
    assert d.update(door(150, True), fast, at_stop, False, 1, stop_within) == []
    # without a plan there is no telling
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(110, True), fix(90, AWAY), unknown, False, 1, lambda *_: None) == []


def test_unknown_location_raises_nothing() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), None, at_stop, refrigerated=False, h3_cell=None) == []
    assert d.update(door(10, True, "side"), fix(10, AWAY), unknown, refrigerated=False, h3_cell=None) == []


def test_refrigerated_door_open_too_long_fires_from_the_timer_while_the_vehicle_is_heard() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5)
    d.update(door(10, True, "side"), fix(10, STOP), at_stop, refrigerated=False, h3_cell=5)
    assert d.next_timer() is None  # 300 s away: the vehicle must still be heard by then
    for s in range(30, 270, 30):
        d.hear(at(s), 60.0)
    assert d.next_timer() is None  # heard at 240 s: a report overdue by 300 s, it may be in a silence
    d.hear(at(270), 60.0)
    d.on_fix(fix(270, STOP), at_stop)
    assert d.next_timer() == at(300)  # heard and seen within a reporting interval (60 s / silence_factor 2)
    assert d.on_timer(at(299)) == []
    (too_long,) = d.on_timer(at(300))
    assert (too_long.type, too_long.start, too_long.details) == (
        "door_open_too_long",
        at(0),
        {"door": "rear", "limit_s": 300.0},
    )
    assert d.next_timer() is None
    for s in range(300, 420, 30):
        d.hear(at(s), 60.0)
    (closed,) = d.update(door(420, False), fix(400, STOP), at_stop, refrigerated=True, h3_cell=5)
    assert (closed.id, closed.status, closed.end, closed.details["open_s"]) == (too_long.id, "resolved", at(420), 420.0)


def test_after_a_silence_an_open_door_is_unknown_until_a_fix_shows_where_the_vehicle_is() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(0, True), fix(0, AWAY), at_stop, refrigerated=True, h3_cell=5)  # away: alert open
    d.hear(at(30), 60.0)
    assert d.next_timer() is None  # no too-long alert from the silence that follows
    assert d.hear(at(900), 60.0) == []  # back after 14.5 minutes: its "closed" may be lost
    assert d.next_timer() is None  # ... so nothing is judged until a fix says where the van is
    (resolved,) = d.on_fix(fix(900, STOP), at_stop)  # elsewhere: it closed and drove off unheard
    assert (resolved.type, resolved.end, resolved.details["silence"]) == ("door_open_away", at(30), True)
    assert d.open == {} and d.update(door(950, False), fix(900, AWAY), at_stop, refrigerated=True, h3_cell=5) == []


def test_a_door_open_through_a_silence_where_the_van_stood_stays_open() -> None:
    # a reefer door open at a stop while the van is in a dead zone: still there after it, still open
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5) == []
    d.hear(at(30), 60.0)
    assert d.hear(at(240), 60.0) == [] and d.next_timer() is None
    assert d.on_fix(fix(240, STOP), at_stop) == []
    for s in range(270, 540, 30):  # standing there, heard: the 300 s limit counts from the return
        d.hear(at(s), 60.0)
        assert d.on_fix(fix(s, STOP), at_stop) == [] and d.on_timer(at(s)) == []
    assert d.next_timer() == at(540)
    (too_long,) = d.on_timer(at(540))
    assert (too_long.type, too_long.start) == ("door_open_too_long", at(0))
    assert too_long.details["counted_from"] == at(240).isoformat()


def test_a_door_on_a_van_that_drove_off_was_closed_unheard() -> None:
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5) == []
    for s in range(30, 330, 30):
        d.hear(at(s), 60.0)
        d.on_fix(fix(s, STOP), at_stop)
    (too_long,) = d.on_timer(at(330))
    d.hear(at(350), 60.0)
    (closed,) = d.on_fix(fix(350, STOP + 0.002), at_stop)  # 220 m on, no "closed" heard
    assert (closed.id, closed.status, closed.end) == (too_long.id, "resolved", at(300))
    assert closed.details["closed_unheard"] is True and d.open == {}


def test_a_door_closed_in_a_silence_that_began_just_before_the_limit_raises_nothing() -> None:
    # open 245 s, then nothing: its "closed" at 275 s is lost in a dead zone, the van drives off
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    assert d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5) == []
    for s in range(30, 270, 30):
        d.hear(at(s), 60.0)
        assert d.on_fix(fix(s, STOP), at_stop) == []
    assert d.next_timer() is None and d.on_timer(at(300)) == []  # a report overdue: no alert yet
    assert d.hear(at(390), 60.0) == []  # back after the silence, elsewhere
    assert d.on_fix(fix(390, STOP + 0.003), at_stop) == [] and d.open == {}
    assert d.on_timer(at(400)) == [] and d.next_timer() is None


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


def test_a_door_on_a_van_heard_but_not_seen_at_the_limit_waits_for_the_next_fix() -> None:
    # temperatures come every 30 s, the last fix where it stood is 90 s old at the limit: its
    # "closed" may have been lost in a gap as it drove off; the next fix tells
    def opened() -> DoorTracker:
        d = DoorTracker("acme", "van-1", AnalyticsConfig())
        d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5)
        for s in range(30, 330, 30):
            d.hear(at(s), 60.0)
            if s <= 210:
                d.on_fix(fix(s, STOP), at_stop)
        return d

    drove_off = opened()
    assert drove_off.next_timer() == at(360) and drove_off.on_timer(at(300)) == []
    assert drove_off.on_fix(fix(310, STOP + 0.002), at_stop) == [] and drove_off.open == {}  # 220 m on
    stood = opened()
    assert stood.on_fix(fix(310, STOP), at_stop) == []  # still there: the limit is due
    (too_long,) = stood.on_timer(at(310))
    assert (too_long.type, too_long.start) == ("door_open_too_long", at(0))
    blind = opened()  # a GPS-blind loading dock: no fix comes, the limit a silence late
    assert blind.on_timer(at(359)) == []
    (too_long,) = blind.on_timer(at(360))
    assert too_long.start == at(0)


def test_a_too_long_alert_on_a_door_closed_unheard_before_the_limit_is_retracted() -> None:
    # its last fix where it stood came a second before the limit; the "closed" was lost as it
    # drove off: the next fix, elsewhere, shows the door was last known open before the limit
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5)
    for s in (*range(30, 300, 30), 299):
        d.hear(at(s), 60.0)
        d.on_fix(fix(s, STOP), at_stop)
    (too_long,) = d.on_timer(at(300))
    d.hear(at(326), 60.0)
    (withdrawn,) = d.on_fix(fix(326, STOP + 0.002), at_stop)  # 220 m on
    assert (withdrawn.id, withdrawn.status) == (too_long.id, "retracted") and d.open == {}


def test_a_too_long_alert_from_a_gps_blind_stop_is_retracted_when_the_van_shows_elsewhere() -> None:
    # no fix for minutes (a GPS-blind dock), the limit confirmed a silence after it; then the
    # van is seen elsewhere: by the last sign of it open (210 s), the door never reached it
    d = DoorTracker("acme", "van-1", AnalyticsConfig())
    d.update(door(0, True), fix(0, STOP), at_stop, refrigerated=True, h3_cell=5)
    for s in range(30, 390, 30):
        d.hear(at(s), 60.0)
        if s <= 210:
            d.on_fix(fix(s, STOP), at_stop)
    (too_long,) = d.on_timer(at(360))
    (withdrawn,) = d.on_fix(fix(390, STOP + 0.002), at_stop)  # 220 m on
    assert (withdrawn.id, withdrawn.status) == (too_long.id, "retracted") and d.open == {}
