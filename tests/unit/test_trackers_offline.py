"""Offline: nothing received for a while (server clock), resolved when data returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import alert_id
from pipelines.trackers.offline import OfflineTracker

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_offline_opens_after_the_gap_and_resolves_on_the_next_reading() -> None:
    o = OfflineTracker("acme", "van-1", AnalyticsConfig())
    assert o.next_timer() is None and o.on_timer(at(10_000)) == []  # never heard from: not offline
    assert o.update(at(0), at(-1), h3_cell=42) == []
    assert o.update(at(5), at(4)) == []
    assert o.next_timer() == at(305)
    assert o.on_timer(at(304)) == []
    (opened,) = o.on_timer(at(305))
    assert opened.id == alert_id("acme", "van-1", "offline", at(4))  # the newest fix time heard
    assert (opened.status, opened.start, opened.h3_cell, opened.details) == ("open", at(4), 42, {"threshold_s": 300.0})
    assert o.on_timer(at(900)) == [] and o.next_timer() is None  # one alert for the whole gap
    (resolved,) = o.update(at(1200), at(400))
    assert resolved == opened.resolve(at(1200), gap_s=1195.0, first_fix_time="2026-11-23T08:06:40.000Z")
    assert o.update(at(1201), at(1200)) == []


def test_a_gap_jumped_over_by_the_clock_is_reported_open_and_resolved_at_once() -> None:
    from core.contract import GpsFix
    from pipelines.trackers.vehicle import VehicleAnalytics
    from pipelines.vehicle_state import StoredReading

    va = VehicleAnalytics("acme", "van-1")
    first = GpsFix("acme", "van-1", 1, at(0), 60.17, 24.94, speed_mps=0.0)
    back = GpsFix("acme", "van-1", 2, at(900), 60.17, 24.94, speed_mps=0.0)
    assert va.update(StoredReading(first, None, at(0), 0, 1), at(0)) == []
    # no on_timer in between (the clock went from 0 s to 900 s in one batch)
    out = [
        (a.type, a.status, a.start, a.end)
        for a in va.update(StoredReading(back, None, at(900), 0, 2), at(900))
        if a.type == "offline"
    ]
    assert out == [("offline", "open", at(0), None), ("offline", "resolved", at(0), at(900))]
