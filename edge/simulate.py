"""Drive the fleet simulator in scaled real time and publish it over MQTT.

The simulated clock runs ``speedup`` times faster than the wall clock, and it is
started in the past so that it reaches "now" exactly when the run ends: with
``D`` wall seconds and speedup ``k``, simulated second 0 is ``now - (k - 1) * D``.
A reading due at simulated time ``a`` is published at wall time
``W0 + (a - S0) / k``, which is never earlier than ``a``: no fix time is ever
ahead of the wall clock (the server rejects far-future fixes), and at
``speedup <= 1`` the simulated clock simply starts now.

Each vehicle publishes through its own :class:`DevicePublisher` with its own
credentials (username ``{tenant}.{vehicle}``) when ``device_passwords`` is given,
otherwise one shared publisher uses a service account. The plans are written to
``<state_dir>/sim/plans.json`` at the start, the ground-truth labels to
``<state_dir>/sim/labels.jsonl`` at the end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge.publisher import DevicePublisher
from edge.roads import RoadNetwork
from edge.simulator import AnomalyPlan, FleetSimulator, RawMessage, SimEvent
from fleetstream.settings import Settings
from ingest.contract import Reading, encode_batch, encode_single, format_time

__all__ = ["run_simulation", "simulated_clock"]

PROGRESS_EVERY_S = 1.0  # wall seconds between on_progress calls
BATCH_MAX_READINGS = 500  # per batch message; well under the contract's limits
FLUSH_TIMEOUT_S = 120.0  # at the end, how long to wait for every PUBACK (all publishers together)
STOPPED_FLUSH_TIMEOUT_S = 15.0  # the same after stop_event: finish quickly


def simulated_clock(wall_start: datetime, minutes: float, speedup: float) -> tuple[datetime, datetime]:
    """(simulated start, simulated end) for a run of ``minutes`` wall minutes at ``speedup``.

    The simulated end equals the wall end, so simulated time never passes the wall clock.
    """
    wall_s = minutes * 60.0
    sim_start = wall_start - timedelta(seconds=max(0.0, speedup - 1.0) * wall_s)
    return sim_start, sim_start + timedelta(seconds=speedup * wall_s)


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def _anomalies(settings: Settings, span_s: float) -> AnomalyPlan:
    p = settings.sim_anomaly_probability
    return AnomalyPlan(long_dwell=p, route_deviation=p, temp_excursion=p, door_away=p, offline=p,
                       malformed_rate=settings.sim_malformed_rate, duplicate_rate=settings.sim_duplicate_rate,
                       within_s=0.5 * span_s)


def run_simulation(settings: Settings, vehicles: int | None = None, minutes: float | None = None,
                   speedup: float | None = None, seed: int | None = None, batch: bool = False,
                   device_passwords: dict[str, str] | None = None,
                   service_credentials: tuple[str, str] | None = None,
                   on_progress: Callable[[dict[str, int]], None] | None = None,
                   stop_event: threading.Event | None = None,
                   network: RoadNetwork | None = None) -> dict[str, Any]:
    """Simulate ``vehicles`` for ``minutes`` wall minutes at ``speedup`` and publish everything.

    ``None`` arguments take the ``sim_*`` settings. ``batch`` sends each vehicle's
    readings as batch envelopes (every ~1 wall second) instead of one message each;
    malformed messages are always published raw and duplicates as a second single
    message. ``device_passwords`` maps vehicle id -> password (see
    ``edge.simulator.vehicle_ids``). ``on_progress`` gets running counts about once a
    second; ``stop_event`` ends the run early (everything accepted is still flushed).
    Returns a summary: readings published per type, malformed, duplicates, late
    (held back while offline), acknowledgements, and where plans and labels went.
    """
    vehicles = settings.sim_vehicles if vehicles is None else vehicles
    minutes = settings.sim_minutes if minutes is None else minutes
    speedup = settings.sim_speedup if speedup is None else speedup
    seed = settings.sim_seed if seed is None else seed
    if minutes <= 0 or speedup <= 0:
        raise ValueError("minutes and speedup must be > 0")
    stop_event = stop_event or threading.Event()
    if network is None:
        network = RoadNetwork.from_settings(settings)

    wall_start = datetime.now(UTC)
    mono_start = time.monotonic()
    sim_start, sim_end = simulated_clock(wall_start, minutes, speedup)
    span_s = (sim_end - sim_start).total_seconds()
    sim = FleetSimulator(network, vehicles=vehicles, seed=seed, start=sim_start,
                         gps_period_s=settings.sim_gps_period_s, tenant=settings.tenant,
                         anomalies=_anomalies(settings, span_s), stagger_s=min(300.0, 0.2 * span_s))
    out_dir = Path(settings.state_dir) / "sim"
    plans_path, labels_path = out_dir / "plans.json", out_dir / "labels.jsonl"
    _write_json_atomic(plans_path, {"tenant": settings.tenant, "seed": seed, "sim_start": format_time(sim_start),
                                    "sim_end": format_time(sim_end), "vehicles": sim.plans()})

    publishers = _connect_publishers(settings, sim.vehicle_ids, device_passwords, service_credentials)
    shared = publishers.get("")
    counts: Counter[str] = Counter()
    pending_batches: dict[str, list[Reading]] = {}
    last_batch = last_progress = time.monotonic()

    def publisher_for(vehicle: str) -> DevicePublisher:
        return shared or publishers[vehicle]

    def send_batches() -> None:
        for vehicle, readings in pending_batches.items():
            for i in range(0, len(readings), BATCH_MAX_READINGS):
                chunk = readings[i:i + BATCH_MAX_READINGS]
                publisher_for(vehicle).publish(*encode_batch(settings.tenant, vehicle, chunk))
                counts["messages"] += 1
        pending_batches.clear()

    def progress() -> dict[str, int]:
        snapshot = dict(counts)
        snapshot["acked"] = sum(p.acked for p in publishers.values())
        snapshot["pending"] = sum(p.pending for p in publishers.values())
        return snapshot

    def dispatch(event: SimEvent) -> None:
        item = event.item
        pub = publisher_for(event.vehicle)
        if isinstance(item, RawMessage):
            pub.publish(item.topic, item.payload)
            counts["malformed"] += 1
            counts["messages"] += 1
            return
        if event.late:  # the device stamps when it finally sent the held reading
            item = replace(item, device_time=event.at)
            counts["late"] += 1
        if event.duplicate:
            pub.publish(*encode_single(item))
            counts["duplicates"] += 1
            counts["messages"] += 1
            return
        counts[item.kind] += 1
        counts["published"] += 1
        if batch:
            pending_batches.setdefault(event.vehicle, []).append(item)
        else:
            pub.publish(*encode_single(item))
            counts["messages"] += 1

    def tick(now: float) -> None:
        nonlocal last_batch, last_progress
        if batch and now - last_batch >= settings.sim_batch_every_s:
            send_batches()
            last_batch = now
        if on_progress is not None and now - last_progress >= PROGRESS_EVERY_S:
            on_progress(progress())
            last_progress = now

    reached = sim_start
    stopped = False
    try:
        for event in sim.events(until=sim_end):
            due = mono_start + (event.at - sim_start).total_seconds() / speedup
            while (now := time.monotonic()) < due and not stop_event.is_set():
                tick(now)
                stop_event.wait(min(due - now, 0.1))
            if stop_event.is_set():
                stopped = True
                break
            dispatch(event)
            reached = event.at
            tick(time.monotonic())
        if not stopped:
            reached = sim_end
        send_batches()
        deadline = time.monotonic() + (STOPPED_FLUSH_TIMEOUT_S if stopped else FLUSH_TIMEOUT_S)
        flushed = all([p.flush(max(0.0, deadline - time.monotonic())) for p in publishers.values()])
    finally:
        for p in publishers.values():
            p.close()
    n_labels = sim.write_labels(labels_path, until=reached)
    labels = [json.loads(line) for line in labels_path.read_text(encoding="utf-8").splitlines()]
    summary: dict[str, Any] = {
        "tenant": settings.tenant, "vehicles": vehicles, "seed": seed, "speedup": speedup, "batch": batch,
        "sim_start": format_time(sim_start), "sim_reached": format_time(reached),
        "wall_s": round(time.monotonic() - mono_start, 1), "stopped": stopped,
        "readings": {kind: counts[kind] for kind in ("gps", "temp", "door")},
        "published": counts["published"], "malformed": counts["malformed"], "duplicates": counts["duplicates"],
        "late": counts["late"], "messages": counts["messages"],
        "acked": sum(p.acked for p in publishers.values()), "resent": sum(p.resent for p in publishers.values()),
        "refused": sum(p.refused for p in publishers.values()),
        "pending": sum(p.pending for p in publishers.values()), "flushed": flushed,
        "anomalies": dict(Counter(row["type"] for row in labels if row["kind"] == "anomaly")),
        "labels": str(labels_path), "label_rows": n_labels, "plans": str(plans_path),
    }
    if on_progress is not None:
        on_progress(progress())
    return summary


def _connect_publishers(settings: Settings, vehicles: list[str], device_passwords: dict[str, str] | None,
                        service_credentials: tuple[str, str] | None) -> dict[str, DevicePublisher]:
    """One connected publisher per vehicle (key: vehicle id), or one shared (key: "")."""
    host, port = settings.mqtt_endpoint()
    publishers: dict[str, DevicePublisher] = {}
    try:
        if device_passwords is not None:
            from fleetstream.credentials import device_username

            missing = [v for v in vehicles if v not in device_passwords]
            if missing:
                raise KeyError(f"no device password for {len(missing)} vehicles, e.g. {missing[0]}")
            for vehicle in vehicles:
                pub = DevicePublisher(host, port, device_username(settings.tenant, vehicle), device_passwords[vehicle],
                                      client_id=f"{settings.tenant}-{vehicle}", will=(settings.tenant, vehicle),
                                      session_expiry_s=settings.session_expiry_s,
                                      max_payload_bytes=settings.max_payload_bytes)
                pub.connect()
                publishers[vehicle] = pub
        else:
            username, password = service_credentials or settings.mqtt_credentials("simulator")
            pub = DevicePublisher(host, port, username, password, client_id=f"sim-{settings.tenant}",
                                  session_expiry_s=settings.session_expiry_s,
                                  max_payload_bytes=settings.max_payload_bytes, max_pending=50_000)
            pub.connect()
            publishers[""] = pub
    except BaseException:
        for p in publishers.values():
            p.close()
        raise
    return publishers
