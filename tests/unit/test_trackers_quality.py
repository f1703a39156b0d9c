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
    assert opened.details == {
        "lat": fixes[3].lat,
        "lon": fixes[3].lon,
        "implied_speed_mps": implied,
        "limit_mps": 60.0,
    }
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


def checked(fixes: list[GpsFix]) -> list:
    q = GpsQualityFilter("acme", "van-1", AnalyticsConfig())
    return [q.update(f, None)[0] for f in fixes]


def test_a_missing_speed_and_heading_are_derived_over_at_least_10_s() -> None:
    # 30 s sampling, 10 m/s east, no device speed: (300 m - 5 m of noise) / 30 s
    out = checked([fix(30 * i, 300.0 * i, speed=None) for i in range(4)])
    assert out[0].speed_mps is None and not out[0].speed_derived
    assert [round(c.speed_mps, 2) for c in out[1:]] == [9.83, 9.83, 9.83]
    assert all(c.speed_derived and c.heading_deg is not None and abs(c.heading_deg - 90.0) < 1 for c in out[1:])
    # a reported speed is kept; only the missing heading is derived
    kept = checked([fix(0, 0.0, speed=4.0), fix(30, 120.0, speed=4.0)])[1]
    assert (kept.speed_mps, kept.speed_derived, round(kept.heading_deg or 0)) == (4.0, False, 90)


def test_parked_jitter_at_1_hz_derives_a_standstill_and_a_gap_derives_nothing() -> None:
    # 1 Hz, standing, the position wandering 4 m: no speed for the first 10 s, then about 0
    wander = [fix(s, 4.0 * (s % 2), 3.0 * (s % 3 == 0), speed=None) for s in range(60)]
    out = checked(wander)
    assert all(c.speed_mps is None for c in out[:10])
    assert all(c.speed_mps is not None and c.speed_mps < 0.2 and c.heading_deg is None for c in out[10:])
    # across more than derive_max_span_s (120 s) the speed is unknown, then derived again
    out = checked(
        [
            fix(0, 0.0, speed=None),
            fix(30, 300.0, speed=None),
            fix(230, 2300.0, speed=None),
            fix(260, 2600.0, speed=None),
        ]
    )
    assert [c.speed_mps is not None for c in out] == [False, True, False, True]


def test_the_reporting_cadence_sets_the_longest_gap_still_counted_as_seen() -> None:
    cfg = AnalyticsConfig()
    every_5 = checked([fix(5 * i, 50.0 * i) for i in range(20)])
    assert every_5[-1].silence_s == cfg.silence_min_s  # 2 x 5 s is under the 60 s floor
    every_60 = checked([fix(60 * i, 500.0 * i) for i in range(20)])
    assert round(every_60[-1].silence_s) == 120  # twice the interval
    # one 20-minute silence in a 30 s cadence barely moves it (each sample is capped at 4x the estimate)
    spell = checked([fix(30 * i, 300.0 * i) for i in range(20)] + [fix(1770 + 30 * i, 300.0 * i) for i in range(1, 3)])
    assert spell[19].silence_s == 60.0 and spell[20].silence_s < 120.0 and spell[21].silence_s < 100.0
    # a heartbeat slower than offline_after_s is capped there
    slow = checked([fix(600 * i, 10.0 * i) for i in range(10)])
    assert slow[-1].silence_s == cfg.offline_after_s
