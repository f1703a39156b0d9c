"""The dataflow with Bytewax's TestingSource/TestingSink and run_main."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

from bytewax.testing import TestingSink, TestingSource, run_main

from core.contract import DoorEvent, GpsFix, TemperatureReading
from pipelines.flow import build_flow
from pipelines.vehicle_state import StoredReading, VehicleState, VehicleSummary

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def stored(reading: GpsFix | TemperatureReading | DoorEvent, n: int) -> StoredReading:
    return StoredReading(reading, 617, T0 + timedelta(seconds=n), 0, n)


def stream() -> list[StoredReading]:
    items = [
        GpsFix("acme", "van-1", 0, T0, 60.10, 24.90, speed_mps=5.0),
        GpsFix("acme", "van-2", 0, T0, 60.20, 24.80),
        TemperatureReading("acme", "van-1", 1, T0 + timedelta(seconds=5), "reefer", 4.5),
        GpsFix("acme", "van-1", 2, T0 + timedelta(seconds=20), 60.11, 24.91, speed_mps=6.0),
        DoorEvent("acme", "van-1", 3, T0 + timedelta(seconds=25), "rear", True),
        # late: taken before the previous fix, arrives after it; must not move the last fix back
        GpsFix("acme", "van-1", 1, T0 + timedelta(seconds=10), 60.105, 24.905),
    ]
    return [stored(r, i + 1) for i, r in enumerate(items)]


def final_states(out: list[VehicleSummary]) -> dict[str, VehicleSummary]:
    return {s.vehicle: s for s in out}


def test_vehicle_state_keyed_by_vehicle() -> None:
    out: list[VehicleSummary] = []
    run_main(build_flow(TestingSource(stream()), TestingSink(out)))
    assert len(out) == 6  # one summary per reading
    van1 = final_states(out)["van-1"]
    assert (van1.gps_count, van1.temp_count, van1.door_count) == (3, 1, 1)
    assert (van1.last_fix_time, van1.lat, van1.lon) == (T0 + timedelta(seconds=20), 60.11, 24.91)
    assert van1.last_celsius == 4.5
    assert van1.open_doors == ("rear",)
    assert van1.last_received_at == T0 + timedelta(seconds=6)
    van2 = final_states(out)["van-2"]
    assert (van2.gps_count, van2.temp_count, van2.door_count, van2.open_doors) == (1, 0, 0, ())


def test_state_survives_pickling_for_recovery_snapshots() -> None:
    state = VehicleState("acme", "van-1")
    for item in stream():
        if item.reading.vehicle == "van-1":
            state.update(item)
    clone = pickle.loads(pickle.dumps(state))
    assert clone.summary() == state.summary()


def test_resume_after_abort_counts_every_reading_once(tmp_path) -> None:
    """Bytewax recovery: a crash mid-stream and a resume give the uninterrupted result."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)
    items = stream()
    inp: list[object] = [*items[:3], TestingSource.ABORT(), *items[3:]]
    out: list[VehicleSummary] = []
    flow = build_flow(TestingSource(inp), TestingSink(out))
    config = RecoveryConfig(str(tmp_path))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    assert len(out) == 3
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    uninterrupted: list[VehicleSummary] = []
    run_main(build_flow(TestingSource(items), TestingSink(uninterrupted)))
    assert final_states(out) == final_states(uninterrupted)
