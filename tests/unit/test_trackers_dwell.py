"""Dwell: long dwell at a stop against a baseline, unplanned dwell away from stops,
raised from on_timer when no more data arrives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from core.contract import GpsFix
from core.geo import offset
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.dwell import DwellTracker, hour_of_week
from pipelines.trackers.events import Alert, StopEvent, alert_id
from pipelines.trackers.motion import MotionChange
from pipelines.trackers.quality import CheckedFix
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday
LAT, LON = 60.17, 24.94
CELL = 617700169958293503


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def baseline(h3_cell: int, hour: int) -> float | None:
    """Typical dwell: 400 s in CELL on Mondays 08-09 UTC, unknown elsewhere."""
    return 400.0 if (h3_cell, hour) == (CELL, 8) else None


def arrival(s: float, stop_id: str = "s1") -> StopEvent:
    return StopEvent(f"arr-{stop_id}", "arrival", "acme", "van-1", stop_id, at(s))


def departure(s: float, stop_id: str = "s1") -> StopEvent:
    return StopEvent(f"dep-{stop_id}", "departure", "acme", "van-1", stop_id, at(s))


def test_hour_of_week_is_utc_from_monday() -> None:
    assert hour_of_week(T0) == 8
    assert hour_of_week(datetime(2026, 11, 29, 23, 59, tzinfo=UTC)) == 167
    assert hour_of_week(datetime(2026, 11, 23, 1, 30, tzinfo=timezone(timedelta(hours=2)))) == 167  # Sunday 23:30 UTC


def seen(
    d: DwellTracker, s0: float, s1: float, every: float = 30.0, where: tuple[float, float] = (60.2, 24.9)
) -> list[Alert]:
    """Fixes standing at ``where`` every ``every`` s from ``s0`` to ``s1`` (a 30 s reporting cadence)."""
    out: list[Alert] = []
    s = s0
    while s <= s1:
        out += d.observe(CheckedFix(at(s), *where, 0.0, 5.0, CELL, None, None, True, 60.0))
        out += d.on_timer(at(s))
        s += every
    return out


def test_long_dwell_against_the_baseline_and_its_fixed_fallback() -> None:
    d = DwellTracker("acme", "van-1", AnalyticsConfig())
    seen(d, 0, 0)
    assert d.on_stop_event(arrival(0), CELL, baseline) == []
    assert d.next_timer() is None  # 800 s to see: more than one cadence away
    assert seen(d, 30, 750) == []
    assert d.next_timer() == at(800)  # max(300, 2 x 400 s), the last 50 s within the cadence
    assert d.on_timer(at(799)) == []
    (opened,) = d.on_timer(at(800))
    assert opened == Alert(
        alert_id("acme", "van-1", "long_dwell", at(0), "s1"),
        "long_dwell",
        "warning",
        "acme",
        "van-1",
        "s1",
        CELL,
        at(0),
        None,
        "open",
        {"threshold_s": 800.0, "baseline_s": 400.0},
    )
    assert d.on_timer(at(900)) == []  # one alert per condition
    (resolved,) = d.on_stop_event(departure(1000), CELL, baseline)
    assert resolved == opened.resolve(at(1000), service_s=1000.0)
    # another hour of the week: no baseline, the fixed 30 minutes apply
    seen(d, 3600, 3600)
    d.on_stop_event(arrival(3600), CELL, baseline)
    seen(d, 3630, 5370)
    assert d.next_timer() == at(3600 + 1800)
    # the plan's last stop is the end of the shift: not timed
    d = DwellTracker("acme", "van-1", AnalyticsConfig())
    seen(d, 0, 0)
    d.on_stop_event(arrival(0, "last"), CELL, baseline, timed=False)
    assert seen(d, 30, 7200) == [] and d.next_timer() is None


def test_unplanned_dwell_away_from_stops_only_while_stops_remain() -> None:
    d = DwellTracker("acme", "van-1", AnalyticsConfig())
    seen(d, 100, 100)
    stopped = MotionChange(False, at(100), 60.2, 24.9, CELL)
    assert d.on_motion(stopped, at_stop=True, stops_remaining=True, baseline=None) == []
    assert d.next_timer() is None
    assert d.on_motion(stopped, at_stop=False, stops_remaining=False, baseline=None) == []
    assert d.next_timer() is None
    d.on_motion(stopped, at_stop=False, stops_remaining=True, baseline=None)
    assert seen(d, 130, 670) == []
    assert d.next_timer() == at(700)
    (opened,) = d.on_timer(at(700))
    assert (opened.type, opened.start, opened.stop_id, opened.details) == (
        "unplanned_dwell",
        at(100),
        None,
        {"threshold_s": 600.0, "baseline_s": None, "lat": 60.2, "lon": 24.9},
    )
    (resolved,) = d.on_motion(MotionChange(True, at(900), 60.2, 24.9, CELL), None, True, None)
    assert resolved == opened.resolve(at(900), duration_s=800.0)


def test_silence_is_not_evidence_of_dwelling() -> None:
    d = DwellTracker("acme", "van-1", AnalyticsConfig())
    seen(d, 100, 100)
    d.on_motion(MotionChange(False, at(100), 60.2, 24.9, CELL), at_stop=False, stops_remaining=True, baseline=None)
    seen(d, 130, 400)  # seen standing 300 s, then nothing for 20 minutes
    assert d.next_timer() is None and d.on_timer(at(1600)) == []
    # back at the same place: only the cadence's 60 s of the gap counts as seen (360 s of 600)
    seen(d, 1600, 1600)
    assert d.away is not None and d.away.seen_s == 360.0
    seen(d, 1630, 1810)
    assert d.next_timer() == at(1840)
    # seen there until the alert, then it reappears 2 km away after a silence: it left after the last fix
    assert [a.type for a in d.on_timer(at(1840))] == ["unplanned_dwell"]
    seen(d, 1870, 1870)
    (resolved,) = seen(d, 3000, 3000, where=(60.22, 24.9))
    assert (resolved.status, resolved.end, resolved.details["left_during_silence"]) == ("resolved", at(1870), True)
    assert d.away is None


def _fix(seq: int, s: float, east: float, speed: float) -> StoredReading:
    lat, lon = offset(LAT, LON, 0.0, east)
    return StoredReading(GpsFix("acme", "van-1", seq, at(s), lat, lon, speed_mps=speed), None, at(s + 1), 0, seq)


def test_unplanned_dwell_fires_from_on_timer_between_fixes_not_from_silence() -> None:
    plan = Plan("acme", "van-1", 1, (Stop("far", *offset(LAT, LON, 5000, 0)),))
    va = VehicleAnalytics("acme", "van-1", plan=plan)
    readings = [_fix(i, 5 * i, 50.0 * i, 10.0) for i in range(20)]  # drives east until 95 s
    readings += [_fix(20 + i, 100 + 30 * i, 1000.0, 0.0) for i in range(21)]  # stopped 100..700 s, every 30 s
    for r in readings:
        assert va.update(r, r.received_at) == []
    # let the runtime follow next_timer(): record what fires at which server time
    fired = []
    now = va.next_timer()
    while now is not None and now <= at(2000):
        fired += [(now, e.type, e.status, e.start) for e in va.on_timer(now)]
        now = va.next_timer()
    assert fired == [
        (at(710), "unplanned_dwell", "open", at(100)),  # stopped since 100 s + 600 s, + 10 s reorder wait
        (at(1001), "offline", "open", at(700)),  # nothing received for 300 s; it starts at the last fix (700 s)
    ]
    # the same stop seen for 300 s, then silent: the silence does not make it a dwell
    va = VehicleAnalytics("acme", "van-1", plan=plan)
    for r in readings[:31]:
        va.update(r, r.received_at)
    fired = []
    now = va.next_timer()
    while now is not None and now <= at(4000):
        fired += [(now, e.type) for e in va.on_timer(now)]
        now = va.next_timer()
    assert fired == [(at(701), "offline")]
