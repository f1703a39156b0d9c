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
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import Any

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


def _fleet(settings: Any, start: datetime) -> FleetSimulator:
    network = RoadNetwork.from_settings(settings)
    return FleetSimulator(
        network,
        vehicles=VEHICLES,
        seed=11,
        start=start,
        tenant="crash",
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


def _run(
    settings: Any, db: Any, sim: FleetSimulator, passwords: dict[str, str], kills: tuple[float, ...]
) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
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
                client_id=f"{tenant}-{vehicle}",
                max_payload_bytes=settings.max_payload_bytes,
            )
            pubs[vehicle].connect()
        marks = [round(k * len(chunks)) for k in kills]
        for i, chunk in enumerate(chunks):
            if i in marks:
                time.sleep(1.0)  # let the flow take some of it, then kill it mid-stream
                _kill_engine(engine)
                engine.start()
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
    # what the data decided: results raised by the fleet clock after the last fix (the idle
    # clock following the wall clock) depend on how long we waited, not on the data
    last_fix = db.execute("SELECT max(fix_time) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[0]
    alerts = {
        str(r[0]): r[1:]
        for r in db.execute(
            "SELECT id, type, status, start_time, end_time FROM alerts WHERE tenant = %s AND status <> 'retracted' "
            "AND detected_at <= %s",
            (tenant, last_fix),
        ).fetchall()
    }
    stops = {
        str(r[0]): r[1:]
        for r in db.execute(
            "SELECT id, kind, stop_id, at FROM stop_events WHERE tenant = %s AND NOT retracted AND detected_at <= %s",
            (tenant, last_fix),
        ).fetchall()
    }
    return alerts, stops


def test_kill_9_mid_run_gives_the_alerts_and_arrivals_of_an_uninterrupted_run(services_settings, db) -> None:
    settings = services_settings
    migrate(settings.dsn())
    start = (datetime.now(UTC) - timedelta(hours=4)).replace(microsecond=0)
    sim = _fleet(settings, start)
    passwords = credentials.add_devices(settings, sim.tenant, sim.vehicle_ids)

    alerts_a, stops_a = _run(settings, db, sim, passwords, kills=())
    alerts_b, stops_b = _run(settings, db, sim, passwords, kills=(0.3, 0.6))

    types = {row[0] for row in alerts_a.values()}
    assert {"unplanned_dwell", "route_drift", "temp_excursion", "door_open_away", "offline"} <= types, types
    assert sum(1 for row in stops_a.values() if row[0] == "arrival") >= VEHICLES * 8
    assert set(stops_b) == set(stops_a)
    assert stops_b == stops_a
    # offline is about when data was received, and a crash changes exactly that (the engine
    # was down for seconds): every other alert must be the same, by id, status, start and end
    assert {k: v for k, v in alerts_b.items() if v[0] != "offline"} == {
        k: v for k, v in alerts_a.items() if v[0] != "offline"
    }
