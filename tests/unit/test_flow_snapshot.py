"""The analytics step's snapshot is a frozen copy of a vehicle's engine, never the live object."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

from core.contract import GpsFix
from core.thresholds import AnalyticsConfig
from pipelines.analytics import Resynced, VehicleEngine
from pipelines.clock import WorkerClock
from pipelines.flow import _resumed, _VehicleLogic
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def stored(seq: int) -> StoredReading:
    fix = GpsFix("acme", "van-1", seq, T0 + timedelta(seconds=seq), 60.17, 24.94, speed_mps=5.0)
    return StoredReading(fix, None, fix.fix_time, 0, seq)


def test_a_snapshot_does_not_move_with_the_engine() -> None:
    logic = _VehicleLogic(None, AnalyticsConfig(), WorkerClock(), timedelta(seconds=1), lambda: T0, None)
    logic.on_batch([[(stored(1), T0 + timedelta(seconds=1))]])
    snapshot = logic.snapshot()
    assert isinstance(snapshot, bytes)
    logic.on_batch([[(stored(2), T0 + timedelta(seconds=2)), (stored(3), T0 + timedelta(seconds=3))]])
    assert logic.engine is not None and logic.engine.basic.gps_count == 3
    resumed = _resumed(snapshot)
    assert resumed is not None and resumed.basic.gps_count == 1  # what it was when the snapshot was taken


def test_a_recovery_store_written_before_still_resumes() -> None:
    engine = VehicleEngine("acme", "van-1", AnalyticsConfig())
    assert _resumed(engine) is engine
    assert _resumed(None) is None
    assert isinstance(_resumed(pickle.dumps(engine)), VehicleEngine)


def test_a_vehicle_new_to_a_resumed_execution_disowns_what_the_crashed_run_stored() -> None:
    # the crash came before the vehicle's first snapshot: it starts afresh, and the crashed run may
    # have stored results for it from the same readings on
    config = AnalyticsConfig()
    logic = _VehicleLogic(None, config, WorkerClock(), timedelta(seconds=1), lambda: T0, None, resumed=True)
    first = logic.on_batch([[(stored(5), T0 + timedelta(seconds=5)), (stored(4), T0 + timedelta(seconds=5))]])
    [out], _ = first
    claim = out[0]
    assert isinstance(claim, Resynced)
    assert (claim.tenant, claim.vehicle) == ("acme", "van-1")
    assert logic.engine is not None
    assert set(claim.ids) == {e.id for e in logic.engine.analytics.emitted()}
    assert claim.horizon == T0 + timedelta(seconds=4) - timedelta(seconds=config.correction_window_s)
    [later], _ = logic.on_batch([[(stored(6), T0 + timedelta(seconds=6))]])
    assert not any(isinstance(o, Resynced) for o in later)  # once


def test_a_vehicle_new_to_a_first_execution_claims_nothing() -> None:
    logic = _VehicleLogic(None, AnalyticsConfig(), WorkerClock(), timedelta(seconds=1), lambda: T0, None)
    [out], _ = logic.on_batch([[(stored(1), T0 + timedelta(seconds=1))]])
    assert not any(isinstance(o, Resynced) for o in out)
