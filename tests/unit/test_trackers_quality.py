"""GPS quality: jumps, poor accuracy, duplicates and parked jitter, each with a reason code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.contract import GpsFix
from core.geo import haversine_m, offset
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import alert_id
from pipelines.trackers.quality import GpsQualityFilter

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def fix(s: float, east: float, north: float = 0.0, speed: float | None = 10.0, acc: float | None = 5.0) -> GpsFix:
    lat, lon = offset(LAT, LON, north, east)
    return GpsFix("acme", "van-1", int(s), at(s), lat, lon, speed_mps=speed, accuracy_m=acc)


def run(fixes: list[GpsFix]) -> tuple[list[str | None], list[tuple[str, str, datetime, datetime | None]]]:
    q = GpsQualityFilter("acme", "van-1", AnalyticsConfig())
    flags, alerts = [], []
    for f in fixes:
        checked, events = q.update(f, None)
        flags.append(checked.flag)
        alerts += [(a.type, a.status, a.start, a.end) for a in events]
    return flags, alerts


def test_a_single_jump_is_flagged_and_raises_one_alert_resolved_by_the_next_good_fix() -> None:
    fixes = [fix(0, 0), fix(5, 50), fix(10, 100), fix(15, 150, 2000), fix(20, 200), fix(25, 250)]
    q = GpsQualityFilter("acme", "van-1", AnalyticsConfig())
    out = [q.update(f, 612345) for f in fixes]
    assert [c.flag for c, _ in out] == [None, None, None, "jump", None, None]
    (opened,) = out[3][1]
    (resolved,) = out[4][1]
    implied = round(haversine_m(fixes[2].lat, fixes[2].lon, fixes[3].lat, fixes[3].lon) / 5, 1)
    assert opened.id == resolved.id == alert_id("acme", "van-1", "gps_jump", at(15))
    assert (opened.type, opened.severity, opened.status, opened.start, opened.end, opened.h3_cell) == (
        "gps_jump",
        "info",
        "open",
        at(15),
        None,
        612345,
    )
    assert opened.details == {"lat": fixes[3].lat, "lon": fixes[3].lon, "implied_speed_mps": implied}
    assert (resolved.status, resolved.end) == ("resolved", at(20))
    assert resolved.details == {**opened.details, "relocated": False, "max_implied_speed_mps": implied}


def test_low_accuracy_and_duplicates_are_flagged_and_not_used_as_reference() -> None:
    flags, alerts = run([fix(0, 0), fix(5, 50, acc=250.0), fix(5, 50), fix(10, 100), fix(10, 100)])
    assert flags == [None, "low_accuracy", None, None, "duplicate"]
    assert alerts == []


def test_consistent_jumped_fixes_are_a_relocation() -> None:
    # the first fix was wrong (cold start): the receiver is really 5 km away
    flags, alerts = run([fix(0, 0), fix(5, 5000), fix(10, 5050), fix(15, 5100), fix(20, 5150)])
    assert flags == [None, "jump", "jump", None, None]
    assert alerts == [("gps_jump", "open", at(5), None), ("gps_jump", "resolved", at(5), at(15))]


def test_slow_fixes_within_the_jitter_radius_are_flagged_jitter_but_usable() -> None:
    q = GpsQualityFilter("acme", "van-1", AnalyticsConfig())
    q.update(fix(0, 0, speed=0.0), None)
    jitter, _ = q.update(fix(5, 8, 6, speed=0.3), None)
    driving, _ = q.update(fix(10, 20, 6, speed=4.0), None)
    assert (jitter.flag, jitter.usable) == ("jitter", True)
    assert (driving.flag, driving.usable) == (None, True)
