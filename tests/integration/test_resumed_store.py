"""A vehicle the dataflow had not snapshotted when it crashed: on restart it starts afresh, and
what the crashed run stored for it that the replay does not emit again is retracted.

Real TimescaleDB, the real sink (``AnalyticsStore``) and the analytics dataflow under
``run_main``; the crashed run's results are stored through the same sink first.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from bytewax.testing import TestingSource, run_main

from core.settings import Settings
from pipelines.analytics import EventOut, PlanUpdate
from pipelines.connectors import AnalyticsStore
from pipelines.flow import build_analytics_flow
from pipelines.trackers.events import StopEvent, new_alert, stop_event_id
from pipelines.vehicle_state import StoredReading
from store.db import migrate
from store.plans import store_plan
from tests.flow.test_analytics_flow import fixed_wall, with_cells
from tests.integration.test_eta import as_tenant
from tests.unit.test_trackers_vehicle import PLAN, T0, delivery_day

pytestmark = pytest.mark.integration


def test_a_vehicle_new_to_a_resumed_run_retracts_what_the_crashed_run_stored(
    services_settings: Settings, db: Any
) -> None:
    migrate(services_settings.dsn())
    tenant = f"rs{uuid.uuid4().hex[:8]}"
    plan = replace(PLAN, tenant=tenant)
    store_plan(db, plan, "test")
    # what a crashed run stored after its last snapshot: an opening later readings disproved, an
    # arrival its replay would not make; and an older result, from before the readings replayed
    disproved = new_alert("door_open_too_long", tenant, "van-1", T0 + timedelta(seconds=300), subject="rear")
    no_visit = StopEvent(
        stop_event_id(tenant, "van-1", "arrival", "s1", 1, 2), "arrival", tenant, "van-1", "s1",
        T0 + timedelta(seconds=500), {"plan_version": 1, "visit": 2},
    )  # fmt: skip
    older = new_alert("door_open_away", tenant, "van-1", T0 - timedelta(hours=3), subject="rear")
    older = older.resolve(T0 - timedelta(hours=3) + timedelta(seconds=60))
    sink = AnalyticsStore(services_settings.dsn()).build("analytics_store", 0, 1)
    sink.write_batch([EventOut(e, T0) for e in (disproved, no_visit, older)])
    sink.close()

    def stored() -> dict[str, Any]:
        alerts = db.execute("SELECT id, status FROM alerts WHERE tenant = %s", (tenant,)).fetchall()
        stops = db.execute("SELECT id, retracted FROM stop_events WHERE tenant = %s", (tenant,)).fetchall()
        return {str(k): v for k, v in [*alerts, *stops]}

    items: list[StoredReading | PlanUpdate] = [
        PlanUpdate(plan, 1, T0),
        *as_tenant(with_cells(delivery_day().items), tenant),
    ]
    for resumed in (False, True):
        store = AnalyticsStore(services_settings.dsn())
        run_main(build_analytics_flow(TestingSource(items), store, wall=fixed_wall, resumed=resumed))
        rows = stored()
        # a first execution owns no earlier results; a resumed one disowns the crashed run's
        assert rows[disproved.id] == ("retracted" if resumed else "open")
        assert rows[no_visit.id] is resumed
        assert rows[older.id] == "resolved"  # older than what the replay covers: left alone
        assert sum(1 for k, v in rows.items() if v is False and k != no_visit.id) == 3  # the day's stop events
