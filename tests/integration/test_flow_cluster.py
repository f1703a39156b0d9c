"""The dataflow as a Bytewax cluster of two processes gives the results of one, by id.

Real Mosquitto, real TimescaleDB, the real engine. The seeded fleet of the crash test
(every vehicle has every anomaly: a long dwell, a route deviation, a temperature
excursion, a door opened away from a stop, an offline spell delivered late in a burst)
is published once to an engine whose dataflow is one process and once, with the same
tenant and ids after that run's data is deleted, to one whose dataflow is a cluster of
two (``flow_processes`` 2). Every alert (id, type, status, start, end), offline included,
and every stop event (id, kind, stop, time) the data decided must be the same.

The fleet clock is stamped on the worker that reads the source, before the items are
keyed, and each worker's timers follow the stamps it receives (``WorkerClock``): the
vehicles of the second process get their dwell and offline alerts from timers, with no
new data, only if that holds. The test checks both processes held vehicles.

Rescaling: an engine whose two-process dataflow is stopped halfway through the same fleet,
followed by one whose dataflow is one process on the same recovery store (Bytewax's
stop-start rescaling), gives the same results again.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from fleetstream import credentials
from store.db import migrate
from tests.integration.test_analytics_crash import _decided, _fleet, _run

pytestmark = pytest.mark.integration


def _vehicles_per_process(settings: Any) -> dict[str, float]:
    """pid -> vehicles held, from the dataflow processes' metrics files of the last engine."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.metrics_dir))
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.name == "fleetstream_flow_vehicles":
            for sample in family.samples:
                out[sample.labels["pid"]] = out.get(sample.labels["pid"], 0.0) + sample.value
    return out


def test_two_processes_give_the_results_of_one(services_settings, db) -> None:
    settings = services_settings
    migrate(settings.dsn())
    start = (datetime.now(UTC) - timedelta(hours=4)).replace(microsecond=0)
    sim = _fleet(settings, start, tenant="cluster")
    passwords = credentials.add_devices(settings, sim.tenant, sim.vehicle_ids)

    one = _run(settings, db, sim, passwords, kills=())
    two_settings = replace(settings, flow_processes=2)
    two = _run(two_settings, db, sim, passwords, kills=())
    held = {pid: n for pid, n in _vehicles_per_process(two_settings).items() if n > 0}
    # both processes analysed vehicles (the other processes report none; the source also replays
    # the earlier tests' tenants, whose vehicles count too)
    assert len(held) == 2, held
    assert sum(held.values()) >= len(sim.vehicle_ids)

    assert one.last_fix == two.last_fix
    assert (one.too_late_readings, two.too_late_readings) == (0, 0)
    alerts_1, alerts_2 = _decided(one, two, "alerts")
    stops_1, stops_2 = _decided(one, two, "stops")
    types = {row[0] for row in alerts_1.values() if row is not None}
    assert {"unplanned_dwell", "route_drift", "temp_excursion", "door_open_away", "offline"} <= types, types
    assert sum(1 for row in stops_1.values() if row is not None and row[0] == "arrival") >= len(sim.vehicle_ids) * 8
    assert stops_2 == stops_1
    _same_but_offline(alerts_1, alerts_2)

    # stop-start rescaling, 2 processes -> 1, halfway through the fleet's data
    rescaled = _run(two_settings, db, sim, passwords, kills=(0.5,), restart_with=settings)
    assert rescaled.too_late_readings == 0
    alerts_1, alerts_r = _decided(one, rescaled, "alerts")
    stops_1, stops_r = _decided(one, rescaled, "stops")
    assert stops_r == stops_1
    _same_but_offline(alerts_1, alerts_r)


def _same_but_offline(a: dict[str, Any], b: dict[str, Any]) -> None:
    offline = {k for k, v in [*a.items(), *b.items()] if v is not None and v[0] == "offline"}
    assert {k: v for k, v in b.items() if k not in offline} == {k: v for k, v in a.items() if k not in offline}
    count = [sum(1 for k in offline if rows.get(k) is not None) for rows in (a, b)]
    assert min(count) > 0 and abs(count[0] - count[1]) <= max(2, count[0] // 10), count
