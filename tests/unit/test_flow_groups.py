"""The analytics flow's input step: the fleet clock stamped in stream order, one group per vehicle
and input batch; and each worker's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.contract import GpsFix
from pipelines.clock import FleetClock, WorkerClock
from pipelines.flow import _FleetClockStamp
from pipelines.vehicle_state import StoredReading

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
