"""Analytics through kill -9: the alerts and stop events equal an uninterrupted run's, by id.

Real Mosquitto, real TimescaleDB, the real engine (gateway shards + analytics
dataflow with Bytewax recovery). A seeded simulated fleet in which every vehicle
has every anomaly (a long dwell, a route deviation, a temperature excursion, a
door opened away from a stop, an offline spell delivered late in a burst) is
published once with the engine left alone, and once, with the same tenant and ids
after that run's data is deleted, while the engine is SIGKILLed twice. The final
alerts (id, status, start, end) and stop events (id, time) must be the same sets.
Offline alerts are left out of the comparison: they are about when data was received,
which is exactly what a crash of the receiving side changes.

Which results the data decided is judged on both runs together: a result either run
detected (fleet clock) by the last fix must be in both, the same. A result's
``detected_at`` is when the engine got to it, not part of the result: after a crash,
late data is analysed by a replay later than it would have been live, so the same
result can be detected after the last fix in one run and before it in the other.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest

from core.contract import Reading, encode_batch
from core.plan import Plan
from edge.publisher import DevicePublisher
from fleetstream import credentials
from fleetstream.engine import Engine
from models.roads import RoadNetwork
from sim.simulator import AnomalyPlan, FleetSimulator, RawMessage
from store.db import migrate
from store.plans import store_plan
from tests.integration.test_no_loss import _kill_engine, _wait_for

pytestmark = pytest.mark.integration

VEHICLES = 6
# device_seqs too: it holds each stored reading's seq, and the next run sends the same ones
TABLES = (
    "positions",
    "temperatures",
    "door_events",
    "device_seqs",
    "plans",
    "alerts",
    "stop_events",
    "cell_minutes",
    "vehicle_state",
)


def _fleet(settings: Any, start: datetime, tenant: str = "crash") -> FleetSimulator:
    network = RoadNetwork.from_settings(settings)
    return FleetSimulator(
        network,
        vehicles=VEHICLES,
        seed=11,
        start=start,
        tenant=tenant,
        anomalies=AnomalyPlan.every(malformed_rate=0.0, duplicate_rate=0.0),
        stagger_s=120.0,
    )


def _chunks(sim: FleetSimulator) -> list[list[tuple[str, bytes]]]:
    """Every reading, in the order the fleet sends them: per 5 s of event time, one batch
    message per vehicle. Each chunk is acknowledged before the next is sent, as a live fleet
    would (separate device connections sent flat out reach the broker in any order: one van's
    whole day could land before another's first minute)."""
    out: list[list[tuple[str, bytes]]] = []
    pending: dict[str, list[Reading]] = {}
    flushed_at: datetime | None = None
    for event in sim.events():
        if isinstance(event.item, RawMessage) or event.duplicate:
            continue
        pending.setdefault(event.vehicle, []).append(event.item)
        if flushed_at is None or event.at - flushed_at >= timedelta(seconds=5):
            out.append([encode_batch(sim.tenant, v, rs) for v, rs in pending.items()])
            pending, flushed_at = {}, event.at
    out.append([encode_batch(sim.tenant, v, rs) for v, rs in pending.items() if rs])
    return out


class Results(NamedTuple):
    """What one run stored: id -> (row, detected_at) of every alert and stop event not retracted."""

    last_fix: datetime
    alerts: dict[str, tuple[tuple[Any, ...], datetime]]
    stops: dict[str, tuple[tuple[Any, ...], datetime]]
    too_late_readings: int


def _decided(a: Results, b: Results, table: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rows of ``table`` ("alerts" or "stops") that either run detected by the last fix, from
    each run (None: that run does not hold it). What is detected later was raised by the fleet
    clock following the wall clock after the data, which depends on how long we waited."""
    rows_a, rows_b = getattr(a, table), getattr(b, table)
    ids = {k for k, (_, at) in rows_a.items() if at <= a.last_fix}
    ids |= {k for k, (_, at) in rows_b.items() if at <= b.last_fix}
    return (
        {k: rows_a[k][0] if k in rows_a else None for k in ids},
        {k: rows_b[k][0] if k in rows_b else None for k in ids},
    )


def _run(
    settings: Any,
    db: Any,
    sim: FleetSimulator,
    passwords: dict[str, str],
    kills: tuple[float, ...],
    restart_with: Any = None,
) -> Results:
    """Publish the fleet through ``settings``' engine, SIGKILLed at each fraction of ``kills`` and
    started again; or (``restart_with``: other settings) stopped there and followed by an engine
    of those settings on the same state (the same recovery store)."""
    tenant = sim.tenant
    for table in TABLES:
        db.execute(f"DELETE FROM {table} WHERE tenant = %s", (tenant,))
    shutil.rmtree(settings.recovery_dir, ignore_errors=True)
    for plan in sim.contract_plans():
        store_plan(db, Plan.from_dict(plan), "test")
    chunks = _chunks(sim)
    readings = sum(len(m[1].split(b'"type"')) - 1 for chunk in chunks for m in chunk)
    engine = Engine(settings)
    engine.start()
    engine.wait_ready()
    host, port = settings.mqtt_endpoint()
    pubs = {}
    try:
        for vehicle, password in passwords.items():
            pubs[vehicle] = DevicePublisher(
                host,
                port,
                f"{tenant}.{vehicle}",
                password,
                client_id=f"{tenant}.{vehicle}",
                max_payload_bytes=settings.max_payload_bytes,
            )
            pubs[vehicle].connect()
        marks = [round(k * len(chunks)) for k in kills]
        for i, chunk in enumerate(chunks):
            if i in marks:
                time.sleep(1.0)  # let the flow take some of it, then kill it mid-stream
                if restart_with is None:
                    _kill_engine(engine)
                else:
                    engine.stop()
                    engine = Engine(restart_with)
                engine.start()
                # the fleet sends on once the gateway shards are back, as a live fleet would be only
                # seconds ahead: this one runs ~240 times real time, and what it sent meanwhile would
                # be each shard's share queued in the broker; the shard back first drains its share
                # first, the fleet clock follows it, and the other's readings come an hour of event
                # time late for a 15 s restart: past correction_window_s, not analysed (as documented)
                engine.wait_ready()
            for topic, payload in chunk:
                pubs[topic.split("/")[2]].publish(topic, payload)
            assert all(p.flush(60) for p in pubs.values())

        def processed() -> int:
            return db.execute(
                "SELECT coalesce(sum(gps_count + temp_count + door_count), 0) FROM vehicle_state WHERE tenant = %s",
                (tenant,),
            ).fetchone()[0]

        _wait_for(lambda: processed() == readings, 180, f"{readings} readings analysed (have {processed()})")
    finally:
        for p in pubs.values():
            p.close()
        engine.stop()
    # every result standing, with when it was detected (``_decided`` picks what the data decided)
    last_fix = db.execute("SELECT max(fix_time) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[0]
    alerts = {
        str(r[0]): (tuple(r[1:5]), r[5])
        for r in db.execute(
            "SELECT id, type, status, start_time, end_time, detected_at FROM alerts "
            "WHERE tenant = %s AND status <> 'retracted'",
            (tenant,),
        ).fetchall()
    }
    stops = {
        str(r[0]): (tuple(r[1:4]), r[4])
        for r in db.execute(
            "SELECT id, kind, stop_id, at, detected_at FROM stop_events WHERE tenant = %s AND NOT retracted",
            (tenant,),
        ).fetchall()
    }
    too_late = db.execute(
        "SELECT coalesce(sum(too_late_readings), 0) FROM vehicle_state WHERE tenant = %s", (tenant,)
    ).fetchone()[0]
    return Results(last_fix, alerts, stops, too_late)


def test_kill_9_mid_run_gives_the_alerts_and_arrivals_of_an_uninterrupted_run(services_settings, db) -> None:
    settings = services_settings
    migrate(settings.dsn())
    start = (datetime.now(UTC) - timedelta(hours=4)).replace(microsecond=0)
    sim = _fleet(settings, start)
    passwords = credentials.add_devices(settings, sim.tenant, sim.vehicle_ids)

    a = _run(settings, db, sim, passwords, kills=())
    b = _run(settings, db, sim, passwords, kills=(0.3, 0.6))
    assert a.last_fix == b.last_fix
    # every reading was analysed in both runs (none came later than the correction window)
    assert (a.too_late_readings, b.too_late_readings) == (0, 0)
    alerts_a, alerts_b = _decided(a, b, "alerts")
    stops_a, stops_b = _decided(a, b, "stops")

    types = {row[0] for row in alerts_a.values() if row is not None}
    assert {"unplanned_dwell", "route_drift", "temp_excursion", "door_open_away", "offline"} <= types, types
    assert sum(1 for row in stops_a.values() if row is not None and row[0] == "arrival") >= VEHICLES * 8
    assert stops_b == stops_a
    # offline is about when data was received, and a crash changes exactly that (the engine
    # was down for seconds): every other alert must be the same, by id, status, start and end
    offline = {k for k, v in [*alerts_a.items(), *alerts_b.items()] if v is not None and v[0] == "offline"}
    assert {k: v for k, v in alerts_b.items() if k not in offline} == {
        k: v for k, v in alerts_a.items() if k not in offline
    }
