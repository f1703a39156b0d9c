"""The analytics flow's input step: the fleet clock stamped in stream order, one group per vehicle
and input batch; and each worker's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bytewax.testing import TestingSink, TestingSource, run_main

from core.contract import GpsFix
from pipelines.analytics import PlanUpdate, VehicleSummary
from pipelines.clock import FleetClock, WorkerClock
from pipelines.flow import _FleetClockStamp, _in_event_order, build_analytics_flow
from pipelines.vehicle_state import StoredReading
from tests.unit.test_trackers_vehicle import PLAN

T0 = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
WALL = T0 + timedelta(minutes=30)


def fix(vehicle: str, seq: int, s: float, received: float | None = None) -> StoredReading:
    reading = GpsFix("acme", vehicle, seq, T0 + timedelta(seconds=s), 60.17, 24.94 + s * 1e-5, speed_mps=5.0)
    at = T0 + timedelta(seconds=s if received is None else received)
    return StoredReading(reading, None, at, 0, seq)


def test_a_batch_is_stamped_in_stream_order_and_grouped_by_vehicle_in_order_of_first_appearance() -> None:
    stamp = _FleetClockStamp(FleetClock(), lambda: WALL)
    batch = [fix("van-2", 1, 10), fix("van-1", 1, 12), fix("van-2", 2, 15), fix("van-1", 2, 20)]
    groups = stamp(batch)
    assert [key for key, _ in groups] == ["acme/van-2", "acme/van-1"]
    assert [item.reading.seq for item, _ in groups[0][1]] == [1, 2]
    stamps = [now for _, group in groups for _, now in group]
    assert all(now is not None for now in stamps)
    # the clock stood where each item was in the stream: van-2's second fix saw the clock at 15 s
    assert [now for _, now in groups[0][1]] == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=15)]


def test_a_worker_clock_follows_the_stamps_it_receives_then_the_wall_clock() -> None:
    clock = WorkerClock(idle_grace_s=5)
    assert clock.now("acme", WALL) is None
    clock.seen("acme", T0, WALL)
    assert clock.now("acme", WALL + timedelta(seconds=5)) == T0  # within the grace: the last stamp
    assert clock.now("acme", WALL + timedelta(seconds=65)) == T0 + timedelta(seconds=60)
    clock.seen("acme", T0 + timedelta(seconds=10), WALL + timedelta(seconds=66))  # an older stamp arrives
    assert clock.now("acme", WALL + timedelta(seconds=66)) == T0 + timedelta(seconds=60)  # never backwards
    clock.seen("acme", T0 - timedelta(seconds=1), WALL)
    assert clock.now("other", WALL) is None


def test_a_vehicles_readings_between_plan_revisions_are_taken_in_fix_time_order_with_a_clock_that_never_runs_back() -> (
    None
):
    plan = PlanUpdate(PLAN, 1, T0)
    t = [T0 + timedelta(seconds=k) for k in range(6)]
    group = [
        (fix("v", 3, 30), t[1]),
        (fix("v", 1, 10), t[2]),
        (plan, t[3]),
        (fix("v", 5, 50), t[4]),
        (fix("v", 4, 40), t[5]),
    ]
    ordered = _in_event_order(group)
    assert [item.reading.seq if isinstance(item, StoredReading) else None for item, _ in ordered] == [1, 3, None, 4, 5]
    assert [now for _, now in ordered] == [t[2], t[2], t[3], t[5], t[5]]


def _shard_fix(vehicle: str, seq: int, s: float, shard: int, received: float) -> StoredReading:
    reading = GpsFix("acme", vehicle, seq, T0 + timedelta(seconds=s), 60.17, 24.94 + s * 1e-5, speed_mps=5.0)
    return StoredReading(reading, None, T0 + timedelta(seconds=received), shard, seq)


def _drained(batches: int) -> VehicleSummary:
    """A van's two batch messages (50 fixes 5 s apart each) committed by two shards out of order:
    shard 1 commits message k + 1 before shard 0 commits k (shard 0 carries another van too);
    read in ``batches`` input batches. The van's last summary."""
    other = [_shard_fix("van-2", k, 5.0 * k, 0, 240) for k in range(40)]
    k0 = [_shard_fix("van-1", k, 5.0 * k, 0, 260) for k in range(50)]
    k1 = [_shard_fix("van-1", 50 + k, 5.0 * (50 + k), 1, 255) for k in range(50)]
    items = [*other, *k1, *k0]
    out: list[object] = []
    source = TestingSource(items, batch_size=len(items) // batches + 1)
    run_main(build_analytics_flow(source, TestingSink(out), wall=lambda: WALL, eta=None))
    return [o for o in out if isinstance(o, VehicleSummary) and o.vehicle == "van-1"][-1]


def test_messages_committed_out_of_order_in_one_poll_need_no_replay() -> None:
    one, apart = _drained(batches=1), _drained(batches=3)
    assert one.gps_count == apart.gps_count == 100
    assert one.corrections == 0  # taken in fix-time order: nothing ran past message k
    assert apart.corrections >= 1  # k + 1 read a poll before k: k is replayed


def test_a_worker_clock_measures_its_rate_so_a_sleeping_vehicle_wakes_when_its_timer_is_due() -> None:
    clock = WorkerClock(idle_grace_s=5)
    assert clock.seconds_to("acme", T0, WALL) is None
    clock.seen("acme", T0, WALL)
    assert clock.seconds_to("acme", T0 + timedelta(seconds=30), WALL) == 30.0  # real time until measured
    clock.seen("acme", T0 + timedelta(seconds=100), WALL + timedelta(seconds=5))  # a fleet replayed at 20x
    assert clock.seconds_to("acme", T0 + timedelta(seconds=300), WALL + timedelta(seconds=5)) == 10.0


def test_a_vehicle_sleeps_until_its_next_timer_within_one_to_ten_ticks() -> None:
    from core.thresholds import AnalyticsConfig
    from pipelines.flow import _VehicleLogic

    clock, wall = WorkerClock(), [WALL]
    logic = _VehicleLogic(None, AnalyticsConfig(), clock, timedelta(seconds=1), lambda: wall[0], None)
    assert logic.notify_at() is None  # no vehicle yet
    stamp = T0 + timedelta(seconds=5)
    logic.on_batch([[(fix("van-1", 1, 5), stamp)]])
    due = logic.engine.next_timer() if logic.engine is not None else None
    assert due is not None  # its reorder buffer holds the fix for reorder_max_delay_s
    wake = logic.notify_at()
    assert wake == WALL + timedelta(seconds=min(max((due - stamp).total_seconds(), 1.0), 10.0))
    logic.on_notify()
    wall[0] = WALL + timedelta(seconds=30)  # the fleet went quiet: its clock follows the wall
    later = logic.notify_at()
    assert later is not None and wall[0] + timedelta(seconds=1) <= later <= wall[0] + timedelta(seconds=10)
