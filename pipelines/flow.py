"""The engine's dataflow, one named step per concern, top to bottom.

Built by a factory that takes its source and sinks, so tests pass Bytewax's
``TestingSource`` / ``TestingSink`` and call ``run_main``.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from pipelines.vehicle_state import StoredReading, VehicleState, VehicleSummary

__all__ = ["build_flow"]


def _vehicle_state(state: VehicleState | None, item: StoredReading) -> tuple[VehicleState, VehicleSummary]:
    if state is None:
        state = VehicleState(item.reading.tenant, item.reading.vehicle)
    return state, state.update(item)


def build_flow(source: Source[StoredReading], vehicle_state_sink: Sink[Any], flow_id: str = "fleetstream") -> Dataflow:
    """readings (commit order) → key by vehicle → per-vehicle state → vehicle_state sink."""
    flow = Dataflow(flow_id)
    readings = op.input("committed_readings", flow, source)
    by_vehicle = op.key_on("key_by_vehicle", readings, lambda item: item.key)
    summaries = op.stateful_map("vehicle_state", by_vehicle, _vehicle_state)
    op.output("vehicle_state_out", op.map("drop_key", summaries, lambda kv: kv[1]), vehicle_state_sink)
    return flow
