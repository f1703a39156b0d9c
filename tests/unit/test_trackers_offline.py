"""Offline: nothing received for a while (server clock), resolved when data returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.trackers.config import AnalyticsConfig
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
    assert opened.id == alert_id("acme", "van-1", "offline", at(5))
    assert (opened.status, opened.start, opened.h3_cell, opened.details) == ("open", at(5), 42, {"threshold_s": 300.0})
    assert o.on_timer(at(900)) == [] and o.next_timer() is None  # one alert for the whole gap
    (resolved,) = o.update(at(1200), at(400))
    assert resolved == opened.resolve(at(1200), gap_s=1195.0, first_fix_time="2026-11-23T08:06:40.000Z")
    assert o.update(at(1201), at(1200)) == []
