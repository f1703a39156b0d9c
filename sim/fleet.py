"""Drive the fleet simulator in scaled real time and publish it over MQTT.

The simulated clock runs ``speedup`` times faster than the wall clock, and it is
started in the past so that it reaches "now" exactly when the run ends: with
``D`` wall seconds and speedup ``k``, simulated second 0 is ``now - (k - 1) * D``.
A reading due at simulated time ``a`` is published at wall time
``W0 + (a - S0) / k``, which is never earlier than ``a``: no fix time is ever
ahead of the wall clock (the server rejects far-future fixes), and at
``speedup <= 1`` the simulated clock simply starts now.

When ``device_passwords`` is given, each vehicle is a real edge agent
(:class:`edge.agent.agent.Agent`, no sensors) with its own credentials (username
``{tenant}.{vehicle}``) and its own SQLite outbox under
``<state_dir>/sim/outbox/<vehicle>.sqlite`` (new every run): the simulator hands
each valid reading to the agent (sampling set to keep every reading), and the
agent's sender publishes the outbox as batch messages, deleting readings only on
PUBACK, exactly as on a van. The outbox numbers the readings (``seq``); a
simulated duplicate is sent again with the outbox's seq, and malformed messages
are published raw through the agent's own connection. Otherwise (a service
account, e.g. an external broker) one shared :class:`DevicePublisher` publishes
every reading itself, one message each or, with ``batch``, in batches. The plans are written to
``<state_dir>/sim/plans.json`` at the start (and in the engine's plan form to
``contract_plans.json``, handed to ``on_plans`` before anything is sent), the ground-truth labels to
``<state_dir>/sim/labels.jsonl`` at the end.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from core.contract import (
    GpsFix,
    Reading,
    TemperatureReading,
    device_username,
    encode_batch,
    encode_single,
    format_time,
)
from core.settings import Settings
from edge.agent.agent import Agent, reading_fields, to_reading
from edge.agent.config import (
    AgentConfig,
    BrokerConfig,
    DeviceConfig,
    GpsSensorConfig,
    OutboxConfig,
    SenderConfig,
    TemperatureSensorConfig,
)
from edge.agent.outbox import StoredReading
from edge.agent.sampling import (
    DoorSample,
    DoorSampler,
    GpsPolicy,
    GpsSample,
    Sample,
    TemperaturePolicy,
    TemperatureSample,
)
from edge.publisher import DevicePublisher
from models.roads import RoadNetwork
from sim.simulator import AnomalyPlan, FleetSimulator, RawMessage, Realism, SimEvent

__all__ = [
    "SCENARIOS",
    "run_simulation",
    "realism",
    "simulated_clock",
    "KEEP_EVERY_FIX",
    "KEEP_EVERY_TEMPERATURE",
    "VanSink",
]

log = logging.getLogger("fleetstream.sim.fleet")

PROGRESS_EVERY_S = 1.0  # wall seconds between on_progress calls
BATCH_MAX_READINGS = 500  # per batch message; well under the contract's limits
FLUSH_TIMEOUT_S = 120.0  # at the end, how long to wait for every PUBACK (all publishers together)
STOPPED_FLUSH_TIMEOUT_S = 15.0  # the same after stop_event: finish quickly
CONNECT_TIMEOUT_S = 10.0  # per simulated agent's first CONNACK
# the simulator already decides how often a van reports: its agents thin nothing
KEEP_EVERY_FIX = GpsPolicy(min_distance_m=0.0, min_turn_deg=0.0, moving_period_s=0.0, parked_period_s=0.0)
KEEP_EVERY_TEMPERATURE = TemperaturePolicy(period_s=0.0, thresholds_c=())


# Settings bundles of the simulated fleets (`--scenario`); explicit settings given with them win.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    # delivery vans as real trackers and phones report: every 30 s with jitter, no speed, tunnels and
    # dead zones, noise in the urban canyon, and shifts that end at the depot with the device going quiet
    "sparse": {
        "sim_gps_period_s": 30.0,
        "sim_period_jitter": 0.3,
        "sim_no_speed_share": 1.0,
        "sim_gaps_per_hour": 1.0,
        "sim_silence_share": 0.2,
        "sim_canyon_sigma_m": 6.0,
        "sim_depot_stop": 1,
        "sim_depot_stay_s": 900.0,
    },
    # buses: stops 80-150 m apart, a quarter passed through, a fix every 20-30 s, half without
    # speed, the shift ending at the terminal
    "bus": {
        "sim_bus": 1,
        "sim_gps_period_s": 20.0,
        "sim_period_max_s": 30.0,
        "sim_period_jitter": 0.2,
        "sim_no_speed_share": 0.5,
        "sim_gaps_per_hour": 0.5,
        "sim_canyon_sigma_m": 4.0,
        "sim_depot_stay_s": 900.0,
    },
}


def realism(settings: Settings) -> Realism:
    """The simulated fleet's ``Realism`` from the ``sim_*`` settings."""
    period = (settings.sim_gps_period_s, max(settings.sim_gps_period_s, settings.sim_period_max_s))
    return Realism(
        period_s=period if settings.sim_period_max_s > 0 else None,
        period_jitter=settings.sim_period_jitter,
        no_speed_share=settings.sim_no_speed_share,
        gaps_per_hour=settings.sim_gaps_per_hour,
        silence_share=settings.sim_silence_share,
        canyon_sigma_m=settings.sim_canyon_sigma_m,
        depot_stop=bool(settings.sim_depot_stop),
        depot_stay_s=(60.0, settings.sim_depot_stay_s),
        bus=bool(settings.sim_bus),
        pass_through_share=settings.sim_pass_through_share,
    )


class VanSink(Protocol):
    """Where the events of some vans go instead of their edge agents (e.g. vans that carry a tracker
    speaking another protocol: ``fleetstream.sim_trackers.TrackerFleet``)."""

    vehicles: set[str]

    def dispatch(self, event: SimEvent) -> None: ...

    def tick(self, now: float) -> None: ...

    def progress(self) -> dict[str, int]: ...

    def finish(self, timeout: float) -> dict[str, Any]: ...

    def close(self) -> None: ...


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
    return AnomalyPlan(
        long_dwell=p,
        route_deviation=p,
        temp_excursion=p,
        door_away=p,
        offline=p,
        malformed_rate=settings.sim_malformed_rate,
        duplicate_rate=settings.sim_duplicate_rate,
        within_s=0.5 * span_s,
    )


def run_simulation(
    settings: Settings,
    vehicles: int | None = None,
    minutes: float | None = None,
    speedup: float | None = None,
    seed: int | None = None,
    batch: bool = False,
    device_passwords: dict[str, str] | None = None,
    service_credentials: tuple[str, str] | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    stop_event: threading.Event | None = None,
    network: RoadNetwork | None = None,
    on_plans: Callable[[list[dict[str, Any]]], None] | None = None,
    trackers: Callable[[Counter[str]], VanSink] | None = None,
    run: str = "",
) -> dict[str, Any]:
    """Simulate ``vehicles`` for ``minutes`` wall minutes at ``speedup`` and publish everything.

    ``None`` arguments take the ``sim_*`` settings. ``device_passwords`` maps vehicle
    id -> password (see ``sim.simulator.vehicle_ids``): each vehicle is then an edge
    agent with its own outbox, and the agents always send batch messages (``batch``
    has no effect there). Without it, one shared publisher (``service_credentials``)
    sends each reading as one message, or with ``batch`` as batch envelopes every
    ``sim_batch_every_s`` wall seconds. Malformed messages are always published raw
    and duplicates as a second single message. ``on_progress`` gets running counts
    about once a second; ``stop_event`` ends the run early (everything accepted is
    still flushed). Returns a summary: readings published per type, malformed,
    duplicates, late (held back while offline), acknowledgements, and where plans and
    labels went. ``trackers`` builds (given the run's counts) the sink of the vans that carry a
    tracker instead of the agent; their events go there. ``run`` starts every vehicle id
    (``sim.simulator.vehicle_ids``).
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
    sim = FleetSimulator(
        network,
        vehicles=vehicles,
        seed=seed,
        start=sim_start,
        gps_period_s=settings.sim_gps_period_s,
        tenant=settings.tenant,
        anomalies=_anomalies(settings, span_s),
        stagger_s=min(300.0, 0.2 * span_s),
        realism=realism(settings),
        run=run,
    )
    out_dir = Path(settings.state_dir) / "sim"
    plans_path, labels_path = out_dir / "plans.json", out_dir / "labels.jsonl"
    _write_json_atomic(
        plans_path,
        {
            "tenant": settings.tenant,
            "seed": seed,
            "sim_start": format_time(sim_start),
            "sim_end": format_time(sim_end),
            "vehicles": sim.plans(),
        },
    )
    contract_plans = sim.contract_plans()
    _write_json_atomic(out_dir / "contract_plans.json", contract_plans)
    if on_plans is not None:  # e.g. dispatch stores them before the first van reports
        on_plans(contract_plans)

    counts: Counter[str] = Counter()
    sink: _AgentFleet | _SharedPublisher | _Routed
    tracked = trackers(counts) if trackers is not None else None
    try:
        if device_passwords is not None:
            others = [v for v in sim.vehicle_ids if tracked is None or v not in tracked.vehicles]
            sink = _AgentFleet(settings, others, device_passwords, counts)
        elif service_credentials is None:
            raise ValueError("run_simulation needs device_passwords or service_credentials")
        else:
            sink = _SharedPublisher(settings, service_credentials, batch, counts)
    except BaseException:
        if tracked is not None:
            tracked.close()
        raise
    if tracked is not None:
        sink = _Routed(sink, tracked)
    last_progress = time.monotonic()

    def tick(now: float) -> None:
        nonlocal last_progress
        sink.tick(now)
        if on_progress is not None and now - last_progress >= PROGRESS_EVERY_S:
            on_progress(sink.progress())
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
            sink.dispatch(event)
            reached = event.at
            tick(time.monotonic())
        if not stopped:
            reached = sim_end
        delivery = sink.finish(STOPPED_FLUSH_TIMEOUT_S if stopped else FLUSH_TIMEOUT_S)
    finally:
        sink.close()
    n_labels = sim.write_labels(labels_path, until=reached)
    labels = [json.loads(line) for line in labels_path.read_text(encoding="utf-8").splitlines()]
    summary: dict[str, Any] = {
        "tenant": settings.tenant,
        "vehicles": vehicles,
        "vehicle_ids": f"{sim.vehicle_ids[0]} .. {sim.vehicle_ids[-1]}" if sim.vehicle_ids else "",
        "seed": seed,
        "speedup": speedup,
        "batch": batch or isinstance(sink, _AgentFleet) or isinstance(getattr(sink, "main", None), _AgentFleet),
        "sim_start": format_time(sim_start),
        "sim_reached": format_time(reached),
        "wall_s": round(time.monotonic() - mono_start, 1),
        "stopped": stopped,
        "readings": {kind: counts[kind] for kind in ("gps", "temp", "door")},
        "published": counts["published"],
        "malformed": counts["malformed"],
        "duplicates": counts["duplicates"],
        "late": counts["late"],
        **delivery,
        "anomalies": dict(Counter(row["type"] for row in labels if row["kind"] == "anomaly")),
        "labels": str(labels_path),
        "label_rows": n_labels,
        "plans": str(plans_path),
        "contract_plans": str(out_dir / "contract_plans.json"),
    }
    if on_progress is not None:
        on_progress(sink.progress())
    return summary


class _Routed:
    """The tracker vans' events to their sink, every other van's to the main one."""

    def __init__(self, main: _AgentFleet | _SharedPublisher, trackers: VanSink) -> None:
        self.main, self.trackers = main, trackers

    def dispatch(self, event: SimEvent) -> None:
        (self.trackers if event.vehicle in self.trackers.vehicles else self.main).dispatch(event)

    def tick(self, now: float) -> None:
        self.main.tick(now)
        self.trackers.tick(now)

    def progress(self) -> dict[str, int]:
        out = self.main.progress()
        for key, value in self.trackers.progress().items():
            out[key] = out.get(key, 0) + value
        return out

    def finish(self, timeout: float) -> dict[str, Any]:
        main = self.main.finish(timeout)
        trackers = self.trackers.finish(timeout)
        return {**main, **trackers, "flushed": bool(main.get("flushed")) and bool(trackers.get("tracker_flushed"))}

    def close(self) -> None:
        self.main.close()
        self.trackers.close()


# ---------------------------------------------------------------- vehicles as edge agents


def _to_sample(reading: Reading) -> Sample:
    """The sensor sample an agent would have taken for a simulated contract reading."""
    if isinstance(reading, GpsFix):
        return GpsSample(
            reading.fix_time,
            reading.lat,
            reading.lon,
            speed_mps=reading.speed_mps,
            heading_deg=reading.heading_deg,
            accuracy_m=reading.accuracy_m,
            alt_m=reading.alt_m,
        )
    if isinstance(reading, TemperatureReading):
        return TemperatureSample(reading.fix_time, reading.sensor, reading.celsius)
    return DoorSample(reading.fix_time, reading.door, reading.open)


def _as_stored(reading: Reading, seq: int) -> Reading:
    """``reading`` exactly as its agent stored it under ``seq`` (what a resend of it carries)."""
    kind, fields = reading_fields(_to_sample(reading))
    return to_reading(
        reading.tenant, reading.vehicle, StoredReading(seq, kind, format_time(reading.fix_time), fields, 0)
    )


class _EveryDoorEvent(DoorSampler):
    """Keeps every door event (the simulator only produces changes; nothing to thin)."""

    def update(self, sample: DoorSample) -> bool:
        return True


class _AgentFleet:
    """One edge agent per vehicle, without sensors: the simulator records, the agents send."""

    def __init__(
        self, settings: Settings, vehicles: list[str], passwords: dict[str, str], counts: Counter[str]
    ) -> None:
        missing = [v for v in vehicles if v not in passwords]
        if missing:
            raise KeyError(f"no device password for {len(missing)} vehicles, e.g. {missing[0]}")
        self.counts = counts
        self.outbox_dir = Path(settings.state_dir) / "sim" / "outbox"
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        for old in self.outbox_dir.glob("*.sqlite*"):  # a new fleet every run: no readings left from the last
            old.unlink()
        host, port = settings.mqtt_endpoint()
        sender = SenderConfig(
            batch_max_bytes=max(1024, min(SenderConfig().batch_max_bytes, settings.max_payload_bytes))
        )
        self.agents: dict[str, Agent] = {}
        self._seqs: dict[tuple[str, int], int] = {}  # (vehicle, simulator seq) -> outbox seq, for duplicates
        self._raw = 0
        self._closed = False
        try:
            for vehicle in vehicles:
                config = AgentConfig(
                    device=DeviceConfig(settings.tenant, vehicle),
                    broker=BrokerConfig(
                        host=host,
                        port=port,
                        username=device_username(settings.tenant, vehicle),
                        password=passwords[vehicle],
                        client_id=device_username(settings.tenant, vehicle),  # the only id it may use
                        session_expiry_s=settings.session_expiry_s,
                    ),
                    outbox=OutboxConfig(path=self.outbox_dir / f"{vehicle}.sqlite"),
                    sender=sender,
                    gps_sampling=KEEP_EVERY_FIX,
                    temp_sampling=KEEP_EVERY_TEMPERATURE,
                    gps=GpsSensorConfig(source="off"),
                    temperature=TemperatureSensorConfig(source="off"),
                )
                agent = Agent(config, sources={})
                agent.sampler.door = _EveryDoorEvent()
                self.agents[vehicle] = agent
                agent.publisher.connect(timeout=CONNECT_TIMEOUT_S)  # bad credentials fail here, not silently
                agent.start()
        except BaseException:
            self.close()
            raise

    def dispatch(self, event: SimEvent) -> None:
        agent, item, counts = self.agents[event.vehicle], event.item, self.counts
        if isinstance(item, RawMessage):
            self._publish_raw(agent, item.topic, item.payload)
            counts["malformed"] += 1
            return
        if event.late:  # held while offline; the agent stamps device_time when it sends it
            counts["late"] += 1
        if event.duplicate:  # the same reading sent twice: same (outbox) seq, same content
            seq = self._seqs.pop((event.vehicle, item.seq), None)
            if seq is not None:
                self._publish_raw(agent, *encode_single(_as_stored(item, seq)))
                counts["duplicates"] += 1
            return
        seq = agent.record(_to_sample(item))
        if seq is None:
            counts["not_recorded"] += 1
            return
        self._seqs[(event.vehicle, item.seq)] = seq
        counts[item.kind] += 1
        counts["published"] += 1

    def _publish_raw(self, agent: Agent, topic: str, payload: bytes) -> None:
        """A message outside the outbox, on the agent's own connection (string keys: never an agent batch's)."""
        self._raw += 1
        try:
            agent.publisher.publish(topic, payload, key=f"sim-raw-{self._raw}")
            self.counts["raw_messages"] += 1
        except (ValueError, TimeoutError) as exc:
            self.counts["raw_failed"] += 1
            log.warning("simulator: raw message for %s not published: %s", agent.vehicle, exc)

    def tick(self, now: float) -> None:
        pass  # the agents' senders run on their own

    def _in_outboxes(self) -> int:
        return sum(a.outbox.depth() for a in self.agents.values())

    def progress(self) -> dict[str, int]:
        snapshot = dict(self.counts)
        snapshot["acked"] = sum(a.publisher.acked for a in self.agents.values())
        if not self._closed:
            snapshot["pending"] = self._in_outboxes()
        return snapshot

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` s for every outbox to empty and every raw message's PUBACK, stop the agents."""
        deadline = time.monotonic() + timeout
        while self._in_outboxes() and time.monotonic() < deadline:
            time.sleep(0.1)
        pending = self._in_outboxes()
        flushed = pending == 0 and all(
            [a.publisher.flush(max(0.0, deadline - time.monotonic())) for a in self.agents.values()]
        )
        dropped = sum(sum(a.outbox.stats().dropped.values()) for a in self.agents.values())
        self.close()
        agents = list(self.agents.values())
        return {
            "messages": self.counts["raw_messages"] + sum(a.counters.published_messages for a in agents),
            "acked": sum(a.publisher.acked for a in agents),
            "resent": sum(a.publisher.resent for a in agents),
            "refused": sum(a.publisher.refused for a in agents),
            "pending": pending,
            "flushed": flushed,
            "outbox_dropped": dropped,
            "not_recorded": self.counts["not_recorded"],
            "raw_failed": self.counts["raw_failed"],
            "outboxes": str(self.outbox_dir),
        }

    def close(self) -> None:
        """Stop every agent (in parallel: each takes about a second)."""
        if self._closed:
            return
        self._closed = True
        threads = [
            threading.Thread(target=a.stop, kwargs={"drain_s": 1.0}, name=f"stop-{v}", daemon=True)
            for v, a in self.agents.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60.0)


# ---------------------------------------------------------------- one shared publisher (service account)


class _SharedPublisher:
    """Every vehicle's messages through one service-account publisher (external brokers)."""

    def __init__(
        self, settings: Settings, service_credentials: tuple[str, str], batch: bool, counts: Counter[str]
    ) -> None:
        host, port = settings.mqtt_endpoint()
        username, password = service_credentials
        self.settings, self.batch, self.counts = settings, batch, counts
        self.pub = DevicePublisher(
            host,
            port,
            username,
            password,
            client_id=f"sim-{settings.tenant}",
            session_expiry_s=settings.session_expiry_s,
            max_payload_bytes=settings.max_payload_bytes,
            max_pending=50_000,
        )
        self.pub.connect()
        self.pending_batches: dict[str, list[Reading]] = {}
        self.last_batch = time.monotonic()

    def send_batches(self) -> None:
        for vehicle, readings in self.pending_batches.items():
            for i in range(0, len(readings), BATCH_MAX_READINGS):
                chunk = readings[i : i + BATCH_MAX_READINGS]
                self.pub.publish(*encode_batch(self.settings.tenant, vehicle, chunk))
                self.counts["messages"] += 1
        self.pending_batches.clear()

    def dispatch(self, event: SimEvent) -> None:
        item, counts = event.item, self.counts
        if isinstance(item, RawMessage):
            self.pub.publish(item.topic, item.payload)
            counts["malformed"] += 1
            counts["messages"] += 1
            return
        if event.late:  # the device stamps when it finally sent the held reading
            item = replace(item, device_time=event.at)
            counts["late"] += 1
        if event.duplicate:
            self.pub.publish(*encode_single(item))
            counts["duplicates"] += 1
            counts["messages"] += 1
            return
        counts[item.kind] += 1
        counts["published"] += 1
        if self.batch:
            self.pending_batches.setdefault(event.vehicle, []).append(item)
        else:
            self.pub.publish(*encode_single(item))
            counts["messages"] += 1

    def tick(self, now: float) -> None:
        if self.batch and now - self.last_batch >= self.settings.sim_batch_every_s:
            self.send_batches()
            self.last_batch = now

    def progress(self) -> dict[str, int]:
        snapshot = dict(self.counts)
        snapshot["acked"], snapshot["pending"] = self.pub.acked, self.pub.pending
        return snapshot

    def finish(self, timeout: float) -> dict[str, Any]:
        self.send_batches()
        flushed = self.pub.flush(timeout)
        return {
            "messages": self.counts["messages"],
            "acked": self.pub.acked,
            "resent": self.pub.resent,
            "refused": self.pub.refused,
            "pending": self.pub.pending,
            "flushed": flushed,
            "outbox_dropped": 0,
        }

    def close(self) -> None:
        self.pub.close()
