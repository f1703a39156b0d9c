"""Unplanned dwell of a bus at real sampling rates: a fix every ~25 s, no device speed, stops
150 m apart with 35 m fences. The pauses that went unnoticed: pulling out of a stop and
waiting 70 m on (no motion change there: too slow and too close for a start), stopping just
past a stop it drove through (the fix before the first slow one lies in that stop's exit
band), and the same pause delivered late in one burst after a link cut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.contract import GpsFix
from core.geo import offset
from core.plan import Plan, Stop
from pipelines.trackers.events import Alert, Event, StopEvent
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94
R = 35.0  # fence radius, m


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def east(m: float) -> tuple[float, float]:
    return offset(LAT, LON, 0.0, m)


STOPS = tuple(Stop(f"s{i}", *east(150.0 * i), R) for i in range(4))  # 0, 150, 300, 450 m east
PLAN = Plan("acme", "bus-1", 1, STOPS)


def fixes(track: list[tuple[float, float]], received: dict[float, float] | None = None) -> list[StoredReading]:
    """(time s, metres east) -> readings without speed, received 1 s after their fix time
    (or at ``received[time]``)."""
    out = []
    for seq, (s, x) in enumerate(track, 1):
        fix = GpsFix("acme", "bus-1", seq, at(s), *east(x), accuracy_m=5.0)
        rx = (received or {}).get(s, s + 1.0)
        out.append(StoredReading(fix, None, at(rx), 0, seq))
    return out


def run(items: list[StoredReading], until: float) -> list[tuple[float, Event]]:
    """Feed in receive order with a clock ticking every 2 s; returns (clock s, event)."""
    va = VehicleAnalytics("acme", "bus-1", plan=PLAN)
    out: list[tuple[float, Event]] = []
    clock = 0.0
    for item in sorted(items, key=lambda i: i.received_at):
        rx = (item.received_at - T0).total_seconds()
        while clock + 2.0 < rx:
            clock += 2.0
            out += [(clock, e) for e in va.on_timer(at(clock))]
        clock = max(clock, rx)
        out += [(clock, e) for e in va.update(item, at(clock))]
    while clock < until:
        clock += 2.0
        out += [(clock, e) for e in va.on_timer(at(clock))]
    return out


def dwells(events: list[tuple[float, Event]]) -> list[tuple[float, str, float, float | None]]:
    """(clock s, status, start s, end s) of the unplanned_dwell alerts."""
    return [
        (s, e.status, (e.start - T0).total_seconds(), (e.end - T0).total_seconds() if e.end else None)
        for s, e in events
        if isinstance(e, Alert) and e.type == "unplanned_dwell"
    ]


def kinds(events: list[tuple[float, Event]]) -> list[tuple[str, str]]:
    return [(e.kind, e.stop_id) for _, e in events if isinstance(e, StopEvent)]


def every_25s(start: float, end: float, where: float, wobble: float = 2.0) -> list[tuple[float, float]]:
    """Standing at ``where`` m east from ``start`` to ``end`` s, a fix every 25 s (a few metres of noise)."""
    out, s, i = [], start, 0
    while s < end:
        out.append((s, where + (wobble if i % 2 else -wobble)))
        s, i = s + 25.0, i + 1
    return out


def pull_out_and_wait() -> list[tuple[float, float]]:
    """Arrive at s0, stand 75 s, creep 72 m on at ~2 m/s (derived speed under the start
    speed, short of the start distance) and wait there from ~150 s to 1050 s, then on to s1."""
    track = [(0.0, -260.0), (25.0, -60.0)]
    track += every_25s(50.0, 125.0, 0.0)  # in the s0 fence, standing
    track += [(125.0, 40.0)]  # pulling out: 40 m in 25 s, the exit band
    track += every_25s(150.0, 1050.0, 72.0)  # the pause: 72 m from s0, 78 m from s1
    track += [(1050.0, 150.0)] + every_25s(1075.0, 1200.0, 150.0)  # at s1
    track += [(1200.0, 300.0)] + every_25s(1225.0, 1400.0, 300.0)  # at s2
    return track


def test_pulling_out_of_a_stop_and_waiting_beside_it_is_an_unplanned_dwell() -> None:
    out = run(fixes(pull_out_and_wait()), 1500.0)
    assert ("departure", "s0") in kinds(out) and ("arrival", "s1") in kinds(out)
    (opened, _, start, _), (_, resolved, start2, end) = dwells(out)
    assert resolved == "resolved" and start2 == start
    # from leaving the s0 fence (between 100 s at its centre and 125 s 40 m on, in its exit band)
    assert 100.0 < start <= 125.0
    # opened once seen standing for 600 s (plus the 10 s reorder wait), not before
    assert start + 600.0 <= opened <= start + 600.0 + 25.0 + 10.0 + 2.0
    assert end is not None and 1025.0 <= end <= 1050.0  # arrival at s1 ends it


def test_the_same_pause_delivered_late_after_a_link_cut_is_raised_when_it_arrives() -> None:
    track = pull_out_and_wait()
    # the link is cut from 200 s to 975 s: the agent's outbox delivers those fixes at 980 s
    received = {s: 980.0 for s, _ in track if 200.0 <= s <= 975.0}
    out = run(fixes(track, received), 1500.0)
    offline = [(s, e.status) for s, e in out if isinstance(e, Alert) and e.type == "offline"]
    assert offline[0][1] == "open" and offline[-1] == (980.0, "resolved")  # a connectivity fact
    (opened, _, start, _), (_, resolved, _, end) = dwells(out)
    # the late fixes show it stood there all along: raised as they arrive, dated as live
    assert 100.0 < start <= 125.0 and 980.0 <= opened <= 985.0
    assert resolved == "resolved" and end is not None and 1025.0 <= end <= 1050.0


@pytest.mark.parametrize("stand_at", [60.0, 66.0])
def test_stopping_just_past_a_stop_driven_through_is_an_unplanned_dwell(stand_at: float) -> None:
    # through s0 at ~4 m/s (one fix inside: no arrival), the next fix 44 m on in s0's exit band,
    # then standing at stand_at m: the first slow fix dates the stop from the fix in the band
    track = [(0.0, -300.0), (25.0, -100.0), (50.0, 0.0), (75.0, 44.0)]
    track += every_25s(100.0, 1000.0, stand_at)
    track += [(1000.0, 150.0)] + every_25s(1025.0, 1200.0, 150.0)
    track += [(1200.0, 300.0)] + every_25s(1225.0, 1400.0, 300.0)
    out = run(fixes(track), 1500.0)
    assert ("arrival", "s0") not in kinds(out)  # a pass-through
    (opened, _, start, _), (_, resolved, _, end) = dwells(out)
    assert start == 75.0  # stopped since the fix before the first slow one (it was already there)
    assert start + 600.0 <= opened <= start + 600.0 + 25.0 + 10.0 + 2.0
    assert resolved == "resolved" and end is not None and 975.0 <= end <= 1000.0


def test_waiting_in_the_exit_band_of_the_stop_just_served_is_not_dwelling_away() -> None:
    # stops, pulls 45 m on (still in the s0 band: circle + margin) and waits there 15 min
    track = [(0.0, -260.0), (25.0, -60.0)]
    track += every_25s(50.0, 125.0, 0.0)
    track += every_25s(125.0, 1050.0, 45.0, wobble=1.0)
    track += [(1050.0, 150.0)] + every_25s(1075.0, 1200.0, 150.0)
    out = run(fixes(track), 1300.0)
    assert dwells(out) == []  # the visit is still open: it is at the stop (long_dwell's business)
    assert ("departure", "s0") in kinds(out)
