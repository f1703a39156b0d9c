"""Analytics benchmark: stored-and-analysed readings/s with every tracker on, against the same
engine without analytics, in one run.

A seeded simulated fleet (plans, stops, anomalies: the trackers do their real work) is
queued in the broker as batch messages while the engine is stopped; then the engine
drains it, five times on five copies of the backlog (other tenants):

1. gateway only: time from the first reading received to the last commit;
2. gateway + basic dataflow (per-vehicle state): to the last reading processed;
3. gateway + analytics dataflow without ETAs (all trackers, H3 minutes, alerts, stop events);
4. the same with live ETAs and predicted_late (``flow_eta``; no ETA model in the bench state
   folder: the constant-speed estimate), writing ETA updates too;
5. the same as 4 with the dataflow as a Bytewax cluster of two processes (``flow_processes``);
   on two cores shared with the gateway shards and PostgreSQL.

Two rates per round: the gateway's stored-readings rate (first reading received to the
last one committed) while that round's dataflow runs beside it on the same backlog, and
the end-to-end rate (to the last reading the dataflow processed). Both are divided by
the gateway-only rate: round 4's stored rate against it is the "the engine with ETAs on
keeps its stored-readings rate" figure, its end-to-end rate the analytics' cost.

It runs its own Mosquitto and TimescaleDB (state folder ``<state_dir>-bench``, ports
+2, the broker's TLS port too), emptied at the start, so the dataflow replays nothing but this backlog and the
main stack's data is never touched.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.contract import Reading, encode_batch
from core.plan import Plan
from core.settings import Settings
from edge.publisher import DevicePublisher
from fleetstream import credentials, services
from fleetstream.engine import Engine
from models.roads import RoadNetwork
from sim.simulator import AnomalyPlan, FleetSimulator, RawMessage
from store.db import connect, migrate, scalar
from store.plans import store_plan

__all__ = ["bench_settings", "run_analytics_benchmark"]

BATCH = 50
_TABLES = (
    "positions",
    "temperatures",
    "door_events",
    "device_seqs",
    "dead_letters",
    "dead_letter_digests",
    "plans",
    "alerts",
    "stop_events",
    "eta_updates",
    "cell_minutes",
    "vehicle_state",
    "vehicles",
    "gateway_shards",
    "device_status",
)


def bench_settings(settings: Settings) -> Settings:
    """The benchmark's own embedded stack beside the main one."""
    return replace(
        settings,
        state_dir=Path(f"{settings.state_dir}-bench"),
        mqtt_url="",
        pg_dsn="",
        mqtt_port=settings.mqtt_port + 2,
        mqtt_tls_port=settings.mqtt_tls_port + 2 if settings.mqtt_tls_port else 0,
        pg_port=settings.pg_port + 2,
        flow_port=settings.flow_port + 10,
    )


def _fleet(
    settings: Settings, tenant: str, vehicles: int, hours: float
) -> tuple[FleetSimulator, list[tuple[str, bytes]], int]:
    start = (datetime.now(UTC) - timedelta(hours=hours + 1)).replace(microsecond=0)
    sim = FleetSimulator(
        RoadNetwork.from_settings(settings),
        vehicles=vehicles,
        seed=3,
        start=start,
        tenant=tenant,
        anomalies=AnomalyPlan(malformed_rate=0.0, duplicate_rate=0.0),
        stagger_s=600.0,
    )
    pending: dict[str, list[Reading]] = {}
    messages: list[tuple[str, bytes]] = []
    readings = 0
    for event in sim.events(until=start + timedelta(hours=hours)):
        if isinstance(event.item, RawMessage) or event.duplicate:
            continue
        group = pending.setdefault(event.vehicle, [])
        group.append(event.item)
        readings += 1
        if len(group) == BATCH:
            messages.append(encode_batch(tenant, event.vehicle, group))
            pending[event.vehicle] = []
    messages += [encode_batch(tenant, v, g) for v, g in pending.items() if g]
    return sim, messages, readings


def _publish(settings: Settings, tenant: str, messages: list[tuple[str, bytes]], passwords: dict[str, str]) -> None:
    host, port = settings.mqtt_endpoint()
    pubs = {
        v: DevicePublisher(
            host,
            port,
            f"{tenant}.{v}",
            p,
            client_id=f"{tenant}.{v}",  # a device account may use no other id
            max_payload_bytes=settings.max_payload_bytes,
            max_pending=20_000,
        )
        for v, p in passwords.items()
    }
    try:
        for p in pubs.values():
            p.connect()
        for topic, payload in messages:
            pubs[topic.split("/")[2]].publish(topic, payload)
        if not all(p.flush(600) for p in pubs.values()):
            raise RuntimeError("backlog not acknowledged by the broker")
    finally:
        for p in pubs.values():
            p.close()


def _drain(settings: Settings, tenant: str, readings: int, flow: bool) -> tuple[float, float]:
    """Start the engine on the queued backlog. Returns seconds from the first reading received
    to the last one committed by the gateway (its stored-readings rate, with the dataflow, if
    any, running beside it), and to the last one processed by the dataflow (``flow``; else the
    same as the first)."""
    engine = Engine(
        settings, with_flow=flow, with_dispatch=False, with_delivery=False, with_api=False, with_listeners=False
    )
    with connect(settings.dsn(), autocommit=True) as conn:
        stored_before = int(scalar(conn, "SELECT coalesce(sum(stored), 0) FROM gateway_shards"))
    engine.start()
    try:
        deadline = time.monotonic() + 1800
        processed = "SELECT coalesce(sum(gps_count + temp_count + door_count), 0) FROM vehicle_state WHERE tenant = %s"
        stored = "SELECT coalesce(sum(stored), 0) FROM gateway_shards"  # this round's backlog alone is queued
        stored_at: float | None = None
        done = 0
        with connect(settings.dsn(), autocommit=True) as conn:
            while time.monotonic() < deadline:
                if stored_at is None and int(scalar(conn, stored)) - stored_before >= readings:
                    stored_at = time.time()
                if stored_at is not None:
                    if not flow:
                        done = readings
                        break
                    done = int(scalar(conn, processed, (tenant,)))
                    if done >= readings:
                        break
                time.sleep(0.05)
            done_at = time.time()
            first = scalar(
                conn, "SELECT extract(epoch FROM min(received_at)) FROM positions WHERE tenant = %s", (tenant,)
            )
        if stored_at is None or done < readings:
            raise RuntimeError(f"{tenant}: {done} of {readings} readings")
        return stored_at - float(first), done_at - float(first)
    finally:
        engine.stop()


def run_analytics_benchmark(main: Settings, vehicles: int = 100, hours: float = 2.0) -> dict[str, Any]:
    """Print the rounds' rates and their ratios; returns them."""
    settings = bench_settings(main)
    services.up(settings)
    try:
        return _rounds(settings, vehicles, hours)
    finally:
        services.down(settings)


def _rounds(settings: Settings, vehicles: int, hours: float) -> dict[str, Any]:
    migrate(settings.dsn())
    with connect(settings.dsn(), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(_TABLES)}")
    run_id = int(time.time())
    rounds = (
        ("gateway only", False, 0, 0),
        ("gateway + basic dataflow", True, 0, 0),
        ("gateway + analytics, no ETAs", True, 1, 0),
        ("gateway + analytics + ETAs", True, 1, 1),
        ("the same, 2 flow processes", True, 1, 2),  # flow_processes 2: a Bytewax cluster
    )
    figures: list[tuple[str, int, float, float]] = []
    for i, (name, flow, analytics, etas) in enumerate(rounds):
        tenant = f"a{run_id}r{i}"
        sim, messages, readings = _fleet(settings, tenant, vehicles, hours)
        passwords = credentials.add_devices(settings, tenant, sim.vehicle_ids)
        with connect(settings.dsn(), autocommit=True) as conn:
            for plan in sim.contract_plans():
                store_plan(conn, Plan.from_dict(plan), "bench")
        shutil.rmtree(settings.recovery_dir, ignore_errors=True)  # the flow starts on this backlog alone
        with connect(settings.dsn(), autocommit=True) as conn:  # ... and skips earlier rounds' rows
            for table in ("positions", "temperatures", "door_events", "device_seqs", "plans"):
                conn.execute(f"DELETE FROM {table} WHERE tenant <> %s", (tenant,))
            conn.execute("VACUUM ANALYZE positions, temperatures, door_events")
        primer = Engine(
            settings, with_flow=False, with_dispatch=False, with_delivery=False, with_api=False, with_listeners=False
        )  # the shards' sessions: the broker queues the backlog
        primer.start()
        primer.wait_ready()
        primer.stop()
        _publish(settings, tenant, messages, passwords)
        drain = replace(settings, flow_analytics=analytics, flow_eta=min(etas, 1), flow_processes=max(1, etas))
        stored_s, done_s = _drain(drain, tenant, readings, flow)
        figures.append((name, readings, stored_s, done_s))
    base = figures[0][1] / figures[0][2]
    print(
        f"\nfleetstream analytics benchmark — {vehicles} simulated vans, {hours:g} h of driving, "
        f"batch messages of {BATCH}, backlog drained by the engine"
    )
    print(
        "stored/s: the gateway's stored-readings rate (first reading received to last committed) with that "
        "dataflow running beside it; analysed/s: end to end, to the last reading processed by the dataflow"
    )
    print(
        f"{'engine':<32}{'readings':>9}{'stored/s':>10}{'÷ gw only':>10}{'seconds':>9}{'analysed/s':>11}"
        f"{'÷ gw only':>10}"
    )
    for name, readings, stored_s, done_s in figures:
        stored_rate, rate = readings / stored_s, readings / done_s
        print(
            f"{name:<32}{readings:>9,}{stored_rate:>10,.0f}{stored_rate / base:>10.2f}{done_s:>9.1f}{rate:>11,.0f}"
            f"{rate / base:>10.2f}"
        )
    rates = {name: round(r / s) for name, r, _, s in figures}
    stored_rates = {name: round(r / s) for name, r, s, _ in figures}
    analytics_rate = figures[2][1] / figures[2][3]
    eta_rate = figures[3][1] / figures[3][3]
    basic_rate = figures[1][1] / figures[1][3]
    eta_stored_rate = figures[3][1] / figures[3][2]
    summary = {
        "rates": rates,
        "stored_rates": stored_rates,
        "analytics_vs_gateway_only": round(analytics_rate / base, 3),
        "analytics_vs_basic_flow": round(analytics_rate / basic_rate, 3),
        "etas_vs_gateway_only": round(eta_rate / base, 3),
        "etas_vs_analytics": round(eta_rate / analytics_rate, 3),
        "stored_with_etas_vs_gateway_only": round(eta_stored_rate / base, 3),
        "etas_2_processes_vs_1": round(figures[4][1] / figures[4][3] / eta_rate, 3),
    }
    with connect(settings.dsn(), autocommit=True) as conn:
        summary["eta_updates"] = int(scalar(conn, "SELECT count(*) FROM eta_updates"))
        summary["corrections"] = int(
            scalar(conn, "SELECT coalesce(sum(corrections), 0) FROM vehicle_state WHERE tenant = %s", (f"a{run_id}r3",))
        )
    print(json.dumps(summary))
    return summary
