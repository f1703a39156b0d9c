"""The analytics dataflow with TestingSource/TestingSink and run_main: plans in the stream,
the fleet clock driven by the data (not the wall clock), outputs, recovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bytewax.testing import TestingSink, TestingSource, run_main

from pipelines.analytics import EventOut, PlanUpdate
from pipelines.cells import CellMinute
from pipelines.flow import build_analytics_flow
from pipelines.trackers.events import StopEvent
from pipelines.vehicle_state import StoredReading, VehicleSummary
from tests.unit.test_trackers_vehicle import PLAN, T0, delivery_day

WALL = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # days after the data: a replay, or a simulation


def fixed_wall() -> datetime:
    return WALL


def with_cells(items: list[StoredReading]) -> list[StoredReading]:
    import h3.api.basic_int as h3

    from ingest.contract import GpsFix

    return [StoredReading(i.reading, h3.latlng_to_cell(i.reading.lat, i.reading.lon, 9), i.received_at, 0,
                          i.shard_seq) if isinstance(i.reading, GpsFix) else i for i in items]


def run(readings: list[object], plans: list[object]) -> list[object]:
    out: list[object] = []
    run_main(build_analytics_flow(TestingSource([*plans, *readings]), TestingSink(out), wall=fixed_wall))
    return out


def stop_events(out: list[object]) -> list[tuple[str, str, float]]:
    return [(o.event.kind, o.event.stop_id, (o.event.at - T0).total_seconds())
            for o in out if isinstance(o, EventOut) and isinstance(o.event, StopEvent)]


def test_a_replayed_day_gives_its_stop_events_on_event_time() -> None:
    # the wall clock is days later and frozen: only the data can move the fleet clock
    out = run(with_cells(delivery_day().items), [PlanUpdate(PLAN, 1, T0 - timedelta(hours=1))])
    assert stop_events(out) == [("arrival", "s1", 95.0), ("departure", "s1", 410.0), ("arrival", "s2", 695.0)]
    detected = {o.event.kind + o.event.stop_id: o.detected_at for o in out
                if isinstance(o, EventOut) and isinstance(o.event, StopEvent)}
    # raised when the fleet clock passed the debounce plus the reorder wait, not at wall time
    assert detected["arrivals1"] == T0 + timedelta(seconds=135)
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
    flow = build_analytics_flow(TestingSource([*plans, *items[:half], TestingSource.ABORT(), *items[half:]]),
                                TestingSink(flow_out), wall=fixed_wall)
    config = RecoveryConfig(str(tmp_path))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    assert sorted(set(stop_events(flow_out))) == sorted(set(stop_events(run(items, plans))))
