"""The analytics dataflow with TestingSource/TestingSink and run_main: plans in the stream,
the fleet clock driven by the data (not the wall clock), outputs, recovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bytewax.testing import TestingSink, TestingSource, run_main

from core.thresholds import AnalyticsConfig, EtaConfig
from pipelines.analytics import EventOut, PlanUpdate
from pipelines.cells import CellMinute
from pipelines.flow import build_analytics_flow
from pipelines.trackers.events import Alert, StopEvent
from pipelines.vehicle_state import StoredReading, VehicleSummary
from tests.unit.test_trackers_vehicle import PLAN, T0, delivery_day

WALL = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # days after the data: a replay, or a simulation


def fixed_wall() -> datetime:
    return WALL


def with_cells(items: list[StoredReading]) -> list[StoredReading]:
    import h3.api.basic_int as h3

    from core.contract import GpsFix

    return [
        StoredReading(i.reading, h3.latlng_to_cell(i.reading.lat, i.reading.lon, 9), i.received_at, 0, i.shard_seq)
        if isinstance(i.reading, GpsFix)
        else i
        for i in items
    ]


def run(readings: list[object], plans: list[object]) -> list[object]:
    out: list[object] = []
    # an ETA estimate at every fix (the default is every 15 s), so each step below is visible
    run_main(
        build_analytics_flow(
            TestingSource([*plans, *readings]), TestingSink(out), wall=fixed_wall, eta=EtaConfig(estimate_every_s=0.0)
        )
    )
    return out


def stop_events(out: list[object]) -> list[tuple[str, str, float]]:
    return [
        (o.event.kind, o.event.stop_id, (o.event.at - T0).total_seconds())
        for o in out
        if isinstance(o, EventOut) and isinstance(o.event, StopEvent)
    ]


def test_a_replayed_day_gives_its_stop_events_on_event_time() -> None:
    # the wall clock is days later and frozen: only the data can move the fleet clock
    out = run(with_cells(delivery_day().items), [PlanUpdate(PLAN, 1, T0 - timedelta(hours=1))])
    assert stop_events(out) == [("arrival", "s1", 92.5), ("departure", "s1", 407.5), ("arrival", "s2", 692.5)]
    detected = {
        o.event.kind + o.event.stop_id: o.detected_at
        for o in out
        if isinstance(o, EventOut) and isinstance(o.event, StopEvent)
    }
    # raised when the fleet clock passed the first standing fix (105 s) plus the reorder wait, not at wall time
    assert detected["arrivals1"] == T0 + timedelta(seconds=115)
    final = [o for o in out if isinstance(o, VehicleSummary)][-1]
    assert (final.plan_version, final.next_stop_id, final.stops_remaining, final.motion) == (1, None, 0, "stopped")


def test_without_a_plan_there_are_no_stop_events_but_h3_minutes_are_kept() -> None:
    out = run(with_cells(delivery_day().items), [])
    assert stop_events(out) == []
    cells = [o for o in out if isinstance(o, CellMinute)]
    last = {(c.minute, c.h3_cell): c for c in cells}  # the sink keeps the last row per key
    assert sum(c.fixes for c in last.values()) == sum(1 for i in delivery_day().items)
    standing = sum(c.stopped_s for c in last.values())
    # parked 100..400 s at s1 and 700..820 s at s2, a fix every 5 s
    assert standing == 420.0


def test_resume_after_abort_gives_the_uninterrupted_stop_events(tmp_path) -> None:
    from bytewax.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)
    items = with_cells(delivery_day().items)
    plans = [PlanUpdate(PLAN, 1, T0)]
    half = len(items) // 2
    flow_out: list[object] = []
    flow = build_analytics_flow(
        TestingSource([*plans, *items[:half], TestingSource.ABORT(), *items[half:]]),
        TestingSink(flow_out),
        wall=fixed_wall,
    )
    config = RecoveryConfig(str(tmp_path))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    assert sorted(set(stop_events(flow_out))) == sorted(set(stop_events(run(items, plans))))


def test_live_etas_and_a_predicted_late_alert_from_the_stream() -> None:
    from dataclasses import replace

    from pipelines.trackers.events import Alert, EtaUpdate, alert_id, eta_update_id
    from tests.unit.test_trackers_vehicle import S1, S2

    # s2 must be reached by 08:10; parked at s1 (no service time planned), the van runs late
    plan = replace(PLAN, stops=(S1, replace(S2, window_end=T0 + timedelta(seconds=600))))
    out = run(with_cells(delivery_day().items), [PlanUpdate(plan, 1, T0)])
    etas = [o for o in out if isinstance(o, EventOut) and isinstance(o.event, EtaUpdate)]
    # along the route at the constant 8 m/s (no models registered): s1 at 1000 m, s2 at 4000 m
    first = etas[0]
    assert first.event == EtaUpdate(
        eta_update_id("acme", "van-1", "s1", 1, T0),
        "acme",
        "van-1",
        "s1",
        1,
        T0,
        T0 + timedelta(seconds=125),
        first.event.details,
    )
    assert first.stop is not None and first.stop["window_end"] is None
    s2 = [
        ((o.event.at - T0).total_seconds(), (o.event.eta - T0).total_seconds(), o.event.details["state"])
        for o in etas
        if o.event.stop_id == "s2"
    ]
    assert s2 == [
        (0.0, 500.0, "moving"),
        (5.0, 603.0, "traffic"),
        (10.0, 497.0, "moving"),
        (185.0, 560.0, "parked"),
        (250.0, 625.0, "parked"),
        (315.0, 690.0, "parked"),
        (380.0, 755.0, "parked"),
        (405.0, 878.0, "traffic"),
        (410.0, 772.0, "moving"),
        (655.0, 711.0, "moving"),
    ]
    alerts = [o for o in out if isinstance(o, EventOut) and isinstance(o.event, Alert)]
    # 90 s past the window at 315 s (past the 60 s margin; 625 at 250 s was within it), resolved on arrival
    start = T0 + timedelta(seconds=315)
    assert [
        (a.event.id, a.event.type, a.event.status, a.event.stop_id, a.event.start, a.event.end) for a in alerts
    ] == [
        (alert_id("acme", "van-1", "predicted_late", start, "s2"), "predicted_late", "open", "s2", start, None),
        (
            alert_id("acme", "van-1", "predicted_late", start, "s2"),
            "predicted_late",
            "resolved",
            "s2",
            start,
            T0 + timedelta(seconds=692.5),
        ),
    ]
    details = alerts[1].event.details
    assert {k: details[k] for k in ("eta", "window_end", "late_s", "plan_version", "reason", "arrived_late")} == {
        "eta": "2026-11-23T08:11:30.000Z",
        "window_end": "2026-11-23T08:10:00.000Z",
        "late_s": 90.0,
        "plan_version": 1,
        "reason": "arrived",
        "arrived_late": True,
    }
    # the context (pipelines/trackers/context.py): minutes late against the margin, one line
    assert (details["value"], details["threshold"], details["unit"], details["stop_relation"]) == (
        1.5,
        1.0,
        "min",
        "late_for",
    )
    assert details["summary"] == (
        "van-1: predicted 1.5 min late at stop s2 (window ends 08:10 UTC); resolved after 6.3 min"
    )
    assert alerts[0].detected_at == T0 + timedelta(seconds=325)  # the reorder wait after the fix


def _final_results(out: list[object]) -> dict[str, tuple[object, ...]]:
    """The last version of each alert and stop event by id, as a sink upserting on the id keeps it."""
    last: dict[str, tuple[object, ...]] = {}
    for o in out:
        if isinstance(o, EventOut) and isinstance(o.event, (Alert, StopEvent)):
            e = o.event
            last[e.id] = (e.status, e.start, e.end) if isinstance(e, Alert) else (e.kind, e.at, e.retracted)
    return last


def test_a_late_reading_behind_the_snapshot_is_replayed_with_the_store_s_readings(tmp_path) -> None:
    """After an abort, a door opening from before the snapshot (at the first stop) arrives: the resumed vehicle
    reloads the readings its snapshot left out (``history``) and replays; the results are the
    uninterrupted run's. Without the store the reading is counted too late, not analysed."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    from core.contract import DoorEvent

    items = with_cells(delivery_day().items)
    half = len(items) // 2
    last = items[-1]
    late = StoredReading(
        DoorEvent("acme", "van-1", 9999, T0 + timedelta(seconds=100), "rear", True),
        None,
        last.received_at + timedelta(seconds=1),
        0,
        last.shard_seq + 1,
    )
    everything = [*items, late]
    plans = [PlanUpdate(PLAN, 1, T0)]
    cold = AnalyticsConfig(temp_range_c=(2.0, 8.0))  # a refrigerated load: its doors are watched

    def store(tenant: str, vehicle: str, start: datetime, end: datetime) -> list[StoredReading]:
        return [i for i in everything if start <= i.reading.fix_time <= end]

    def resumed(history: object, folder: str) -> list[object]:
        (tmp_path / folder).mkdir()
        init_db_dir(tmp_path / folder, 1)
        out: list[object] = []
        flow = build_analytics_flow(
            TestingSource([*plans, *items[:half], TestingSource.ABORT(), *items[half:], late]),
            TestingSink(out),
            cold,
            wall=fixed_wall,
            history=history,  # type: ignore[arg-type]
        )
        config = RecoveryConfig(str(tmp_path / folder))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
        run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
        return out

    straight: list[object] = []
    run_main(build_analytics_flow(TestingSource([*plans, *everything]), TestingSink(straight), cold, wall=fixed_wall))
    expected = _final_results(straight)
    # the late door opening raises an alert; never heard closed, it closed unheard when the van drove off
    opened = T0 + timedelta(seconds=100)
    assert any(v[0] == "resolved" and v[1] == opened for v in expected.values()), (
        "the late door opening raises an alert"
    )

    with_store = resumed(store, "with")
    assert _final_results(with_store) == expected
    final = [o for o in with_store if isinstance(o, VehicleSummary)][-1]
    assert final.too_late_readings == 0 and final.corrections >= 1

    without = resumed(None, "without")
    final = [o for o in without if isinstance(o, VehicleSummary)][-1]
    assert final.too_late_readings == 1
    assert _final_results(without) != expected
