"""PredictedLateTracker: opened by an ETA past the window end, resolved by an ETA back inside
or by the arrival; one condition one alert; stops without a window are never late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.plan import Stop
from pipelines.trackers.events import Alert, EtaUpdate, alert_id, eta_update_id
from pipelines.trackers.late import PredictedLateTracker

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
S1 = Stop("s1", 60.17, 24.94, window_end=T0 + timedelta(minutes=30))
S2 = Stop("s2", 60.18, 24.95, window_end=T0 + timedelta(minutes=60))
S3 = Stop("s3", 60.19, 24.96)  # no window


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def eta(s: float, stop: Stop, eta_s: float) -> EtaUpdate:
    """An update predicted at fix time ``s`` that the stop is reached at ``eta_s`` (seconds after T0)."""
    return EtaUpdate(eta_update_id("acme", "van-1", stop.id, 1, at(s)), "acme", "van-1", stop.id, 1, at(s), at(eta_s))


def test_late_eta_opens_one_alert_and_an_eta_back_inside_resolves_it() -> None:
    tracker = PredictedLateTracker("acme", "van-1")
    stops = (S1, S2, S3)
    assert tracker.update(at(0), [eta(0, S1, 1500), eta(0, S2, 3000), eta(0, S3, 9000)], stops) == []

    opened = tracker.update(at(60), [eta(60, S1, 1860)], stops, h3_cell=42)  # 60 s past 08:30
    assert opened == [
        Alert(
            alert_id("acme", "van-1", "predicted_late", at(60), "s1"),
            "predicted_late",
            "warning",
            "acme",
            "van-1",
            "s1",
            42,
            at(60),
            None,
            "open",
            {
                "eta": "2026-11-23T08:31:00.000Z",
                "window_end": "2026-11-23T08:30:00.000Z",
                "late_s": 60.0,
                "plan_version": 1,
                "margin_s": 0.0,
            },
        )
    ]
    # still late, later still: the same condition, nothing new
    assert tracker.update(at(120), [eta(120, S1, 2000)], stops) == []
    # exactly at the window end is in time
    resolved = tracker.update(at(180), [eta(180, S1, 1800)], stops)
    assert resolved == [opened[0].resolve(at(180), reason="eta_inside", eta="2026-11-23T08:30:00.000Z")]
    assert resolved[0].status == "resolved" and tracker.open == {}
    # late again later: a second condition, a second alert (new start, new id)
    again = tracker.update(at(300), [eta(300, S1, 1900)], stops)
    assert [(a.id, a.status, a.start) for a in again] == [
        (alert_id("acme", "van-1", "predicted_late", at(300), "s1"), "open", at(300))
    ]


def test_arrival_resolves_at_the_arrival_time_and_says_whether_it_was_late() -> None:
    tracker = PredictedLateTracker("acme", "van-1")
    opened = tracker.update(at(0), [eta(0, S1, 1900), eta(0, S2, 4000)], (S1, S2))
    assert [(a.stop_id, a.details["late_s"]) for a in opened] == [("s1", 100.0), ("s2", 400.0)]
    # s1 reached at 08:29:50 (confirmed at the fix of 08:30:20): the prediction did not come true
    done = tracker.update(at(1820), [], (S2,), arrivals={"s1": at(1790)})
    assert done == [opened[0].resolve(at(1790), reason="arrived", arrived_late=False)]
    # s2 dropped by a plan change: resolved at the fix time
    assert tracker.update(at(1900), [], ()) == [opened[1].resolve(at(1900), reason="not_remaining")]
    assert tracker.open == {}


def test_no_window_no_alert_and_retracted_updates_are_ignored() -> None:
    tracker = PredictedLateTracker("acme", "van-1")
    assert tracker.update(at(0), [eta(0, S3, 10**6)], (S3,)) == []
    assert tracker.update(at(0), [eta(0, S1, 4000).retract()], (S1,)) == []
    assert tracker.update(at(5), [eta(5, S2, 4000)], (S1,)) == []  # s2 is not among the stops to do


def test_the_margin_is_a_hysteresis_band() -> None:
    tracker = PredictedLateTracker("acme", "van-1", margin_s=60.0)
    assert tracker.update(at(0), [eta(0, S1, 1860)], (S1,)) == []  # 60 s late: inside the margin
    opened = tracker.update(at(10), [eta(10, S1, 1861)], (S1,))
    assert [(a.status, a.details["late_s"]) for a in opened] == [("open", 61.0)]
    assert tracker.update(at(20), [eta(20, S1, 1830)], (S1,)) == []  # 30 s late: still open
    assert [a.status for a in tracker.update(at(30), [eta(30, S1, 1799)], (S1,))] == ["resolved"]
