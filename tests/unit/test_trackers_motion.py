"""Motion: hysteresis between moving and stopped, robust to parked jitter."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from core.geo import offset
from core.thresholds import AnalyticsConfig
from pipelines.trackers.motion import MotionChange, MotionTracker
from pipelines.trackers.quality import CheckedFix

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def fix(s: float, east: float, north: float = 0.0, speed: float | None = None) -> CheckedFix:
    lat, lon = offset(LAT, LON, north, east)
    return CheckedFix(at(s), lat, lon, speed, 5.0, None)


def feed(tracker: MotionTracker, fixes: list[CheckedFix]) -> list[tuple[bool, datetime]]:
    return [(c.moving, c.since) for f in fixes for c in tracker.update(f)]


def test_drive_stop_drive_with_exact_transition_times() -> None:
    m = MotionTracker(AnalyticsConfig())
    drive = [fix(s, 10.0 * s, speed=10.0) for s in range(0, 65, 5)]  # 0..60 s, 600 m east
    parked = [fix(s, 600.0 + (s % 3), speed=0.0) for s in range(65, 305, 5)]
    leave = [fix(s, 600.0 + 9.0 * (s - 300), speed=9.0) for s in range(305, 330, 5)]
    assert feed(m, drive) == [(True, at(0))]  # two fast fixes: moving since the first
    # calm for 60 s: stopped since the fix before the first slow one (it was already there at 60 s)
    assert feed(m, parked) == [(False, at(60))]
    assert m.anchor is not None and m.anchor.time == at(60)
    # 305: 45 m away at 9 m/s; 310: 90 m away, second fast fix -> moving since the first fast fix
    assert feed(m, leave) == [(True, at(305))]


def test_parked_jitter_and_speed_spikes_never_make_it_move() -> None:
    rng = random.Random(7)
    m = MotionTracker(AnalyticsConfig())
    fixes = []
    for s in range(0, 1800, 5):
        r, a = rng.uniform(0, 20), rng.uniform(0, 2 * math.pi)  # 0-20 m around the parking spot
        speed = 3.5 if s > 60 and rng.random() < 0.05 else rng.uniform(0.0, 0.9)  # Doppler spikes
        fixes.append(fix(s, r * math.cos(a), r * math.sin(a), speed))
    changes = feed(m, fixes)
    assert changes == [(False, at(0))]
    assert sum(1 for f in fixes if f.speed_mps == 3.5) >= 10  # the spikes really were there


def test_a_stop_is_confirmed_by_the_timer_when_the_device_goes_quiet() -> None:
    m = MotionTracker(AnalyticsConfig())
    feed(m, [fix(0, 0, speed=10.0), fix(5, 50, speed=10.0), fix(10, 80, speed=0.0)])
    assert m.next_timer() == at(70)
    assert m.on_timer(at(69)) == []
    lat, lon = offset(LAT, LON, 0, 80)
    assert m.on_timer(at(70)) == [MotionChange(False, at(10), lat, lon, None)]
    assert m.next_timer() is None


def test_a_crawl_without_speed_counts_by_displacement() -> None:
    m = MotionTracker(AnalyticsConfig())
    feed(m, [fix(s, 0.0) for s in range(0, 65, 5)])
    assert m.moving is False
    # no speed reported: 30 m per fix -> leaves the 50 m stop radius at 60 m, moving at 90 m (>= 80)
    assert feed(m, [fix(65 + 5 * i, 30.0 * (i + 1)) for i in range(3)]) == [(True, at(70))]


def test_a_creep_to_a_new_spot_moves_the_anchor_and_the_start_dates_from_leaving_it() -> None:
    m = MotionTracker(AnalyticsConfig())
    assert feed(m, [fix(s, 0.0, speed=0.0) for s in range(0, 65, 5)]) == [(False, at(0))]
    # pulls 60 m on at 0.5 m/s (slow, short of the 80 m start distance) and waits there 5 min
    creep = [fix(s, 0.5 * (s - 60), speed=0.5) for s in range(65, 185, 5)]
    wait = [fix(s, 60.0 + (s % 3), speed=0.0) for s in range(185, 485, 5)]
    assert feed(m, creep + wait) == []  # it stood throughout: no transition
    assert m.anchor is not None and m.anchor.time == at(165)  # the first slow fix beyond 50 m
    # leaves at 9 m/s: moving since the first fast fix, not since the creep crossed 50 m
    leave = [fix(s, 60.0 + 9.0 * (s - 480), speed=9.0) for s in range(485, 510, 5)]
    assert feed(m, leave) == [(True, at(485))]
