"""The engine's dataflows, one named step per concern, top to bottom.

Built by factories that take their sources and sinks, so tests pass Bytewax's
``TestingSource`` / ``TestingSink`` and call ``run_main``.

``build_analytics_flow`` (the engine's)::

    plan revisions + committed readings ─ fleet clock, group by vehicle ─ vehicle analytics ─ flatten ─ store
                   (one poll: one batch)      (one item per vehicle and poll)  (timers, trackers, H3 minutes)

Plans and readings come through one source (``connectors.CommittedReadings``), each
poll's new plan revisions ahead of its readings: as two inputs they would race, and a
plan stored before its van reports must apply from the first reading.

``build_flow`` is the basic flow (per-vehicle state only), kept as the benchmark's
reference and for ``flow_analytics = 0``.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from core.metrics import FLEET_CLOCK_LAG, FLOW_VEHICLES, LATE_READINGS, REPLAYS, TOO_LATE_READINGS
from core.thresholds import AnalyticsConfig, EtaConfig
from pipelines.analytics import Output, PlanUpdate, Resynced, VehicleEngine
from pipelines.clock import FleetClock, WorkerClock
from pipelines.meter import METER
from pipelines.trackers.vehicle import StoreReadings
from pipelines.vehicle_state import StoredReading, VehicleState, VehicleSummary

__all__ = ["build_analytics_flow", "build_flow"]

Wall = Callable[[], datetime]


def _wall() -> datetime:
    return datetime.now(UTC)


def _vehicle_state(state: VehicleState | None, item: StoredReading) -> tuple[VehicleState, VehicleSummary]:
    if state is None:
        state = VehicleState(item.reading.tenant, item.reading.vehicle)
    return state, state.update(item)


def _reading(item: StoredReading | PlanUpdate) -> StoredReading | None:
    return item if isinstance(item, StoredReading) else None


def build_flow(
    source: Source[StoredReading | PlanUpdate], vehicle_state_sink: Sink[Any], flow_id: str = "fleetstream"
) -> Dataflow:
    """readings (commit order; plan revisions are skipped) → key by vehicle → per-vehicle state
    → vehicle_state sink."""
    flow = Dataflow(flow_id)
    inputs = op.input("committed_readings", flow, source)
    readings = op.filter_map("readings_only", inputs, _reading)
    by_vehicle = op.key_on("key_by_vehicle", readings, lambda item: item.key)
    summaries = op.stateful_map("vehicle_state", by_vehicle, _vehicle_state)
    op.output("vehicle_state_out", op.map("drop_key", summaries, lambda kv: kv[1]), vehicle_state_sink)
    return flow


Stamped = tuple[StoredReading | PlanUpdate, datetime | None]  # an item and the fleet clock where it stood
Group = list[Stamped]  # one vehicle's items of one input batch, in stream order


class _FleetClockStamp:
    """Advances the fleet clock in stream order, stamps each item with it, and groups an input
    batch by vehicle: ``(key, [(item, clock), ...])`` per vehicle, in order of first appearance.

    Stamping must happen before the items are keyed: Bytewax hands a stateful step a batch
    grouped by key, so one vehicle's whole backlog would move a clock kept there past every
    other vehicle's readings in the same batch. It runs on the worker that reads the source
    (there is one partition), so a tenant has one clock whatever the number of processes.
    One item per vehicle and batch (not per reading) is what crosses into the keyed step:
    Bytewax's cost per item is paid once per vehicle and poll. Reports each tenant's
    fleet-clock lag (wall minus fleet clock) at most once a second of wall time.
    """

    def __init__(self, clock: FleetClock, wall: Wall) -> None:
        self.clock, self.wall = clock, wall
        self._reported: dict[str, datetime] = {}

    def __call__(self, batch: list[StoredReading | PlanUpdate]) -> list[tuple[str, Group]]:
        wall = self.wall()
        clock = self.clock
        groups: dict[str, Group] = {}
        tenants: set[str] = set()
        # the clock as it stood when the batch came: a fleet silent for longer than the idle grace
        # has its clock running with the wall (its timers fired on it), and what it sends after the
        # silence (an outbox burst) is behind that clock, not the clock's new start
        for tenant in {item.reading.tenant for item in batch if isinstance(item, StoredReading)}:
            clock.now(tenant, wall)
        for item in batch:
            if isinstance(item, PlanUpdate):
                stamped: Stamped = (item, clock.now(item.plan.tenant, wall))
            else:
                tenant = item.reading.tenant
                clock.observe(tenant, item.shard, item.reading.fix_time, item.received_at, wall)
                stamped = (item, clock.now(tenant, wall))
                tenants.add(tenant)
            group = groups.get(item.key)
            if group is None:
                groups[item.key] = [stamped]
            else:
                group.append(stamped)
        for tenant in tenants:
            last = self._reported.get(tenant)
            now = clock.now(tenant, wall)
            if now is not None and (last is None or wall - last >= _REPORT_EVERY):
                self._reported[tenant] = wall
                FLEET_CLOCK_LAG.labels(tenant).set((wall - now).total_seconds())
        return list(groups.items())


_REPORT_EVERY = timedelta(seconds=1)
_MAX_SLEEP_TICKS = 10  # a vehicle with a timer pending sleeps at most this many ticks (flow_tick_ms)


def _in_event_order(group: Group) -> Group:
    """The group's items with each run of readings between plan revisions sorted by fix time
    (stable), each item carrying the latest clock stamp up to it (a vehicle's clock never
    runs backwards).

    Two gateway shards draining a backlog (or a device's outbox burst) commit a vehicle's
    consecutive batch messages out of order: shard 1 commits message k + 1 before shard 0
    commits k. Taken in stream order, k + 1 moves the vehicle past k, and the whole of k
    costs a late-data replay; read in one poll, taken in fix-time order they are just in
    order. Readings that came in order keep their order and their own stamps, so a gap the
    clock jumped over inside one poll is still seen as one (``offline``).
    """
    ordered: Group = []
    run: Group = []

    def flush() -> None:
        run.sort(key=_pair_fix_time)
        ordered.extend(run)
        run.clear()

    for pair in group:
        if isinstance(pair[0], PlanUpdate):
            flush()
            ordered.append(pair)
        else:
            run.append(pair)
    flush()
    out: Group = []
    latest: datetime | None = None
    for item, now in ordered:
        if now is not None and (latest is None or now > latest):
            latest = now
        out.append((item, latest if now is not None else None))
    return out


def _pair_fix_time(pair: Stamped) -> datetime:
    item = pair[0]
    assert isinstance(item, StoredReading)
    return item.reading.fix_time


def _lateness(engine: VehicleEngine | None) -> tuple[int, int, int]:
    if engine is None:
        return 0, 0, 0
    stats = engine.analytics.lateness
    return stats.late_readings, stats.too_late_readings, stats.corrections


def _count_lateness(before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
    """Late readings, readings too late to analyse and replays since ``before``, into the metrics."""
    for counter, was, now in zip((LATE_READINGS, TOO_LATE_READINGS, REPLAYS), before, after, strict=True):
        if now > was:
            counter.inc(now - was)


class _VehicleLogic(StatefulBatchLogic[Group, list[Output], bytes]):
    """Adapts one vehicle's ``VehicleEngine`` to Bytewax: groups of stamped items in, wake-ups out.

    A vehicle with timers pending (in event time) sleeps until its next one comes due on
    this worker's clock (``WorkerClock``; ``notify_at``) and runs what is due, so alerts fire
    with no new data. Each group is the vehicle's items of one input batch, its readings in
    fix-time order (``_in_event_order``): what fell due during the group (a late-data replay above all) runs once, at its end, so a burst of late
    readings (a batching device's message) costs one replay, not one per reading; and the
    vehicle's summary is emitted once per Bytewax batch, not once per reading. Results do
    not depend on how Bytewax batches the groups, so they are the same on one worker or several.
    """

    def __init__(
        self,
        engine: VehicleEngine | None,
        config: AnalyticsConfig,
        clock: WorkerClock,
        tick: timedelta,
        wall: Wall,
        eta: EtaConfig | None = None,
        resumed: bool = False,
        history: StoreReadings | None = None,
    ) -> None:
        self.engine, self.config, self.clock, self.tick, self.wall = engine, config, clock, tick, wall
        if engine is not None and history is not None:
            engine.analytics.attach_history(history)  # a snapshot leaves the readings in the store
        if engine is not None:
            FLOW_VEHICLES.inc()  # resumed from its snapshot in this process
        self.eta = eta
        self._wake: datetime | None = None
        self._resync = engine is not None  # resumed from a snapshot: rewrite its results once
        # a vehicle with no snapshot in a resumed execution (the crash came before its first
        # snapshot): the crashed run may have stored results for it all the same
        self._claim = engine is None and resumed

    def on_batch(self, values: list[Group]) -> tuple[Iterable[list[Output]], bool]:
        with METER.phase("step"):
            return self._on_batch(values)

    def _on_batch(self, groups: list[Group]) -> tuple[Iterable[list[Output]], bool]:
        before, replays = _lateness(self.engine), self._replays()
        out = self._resynced(self.wall())
        readings = 0
        for group in groups:
            out += self._on_group(group)
            readings += sum(1 for item, _ in group if not isinstance(item, PlanUpdate))
        if readings and self.engine is not None:  # once per batch: the store keeps the last of each
            out += self.engine.batch_end()
        after = self._replays()
        _count_lateness(before, _lateness(self.engine))
        METER.count(readings=readings, batches=1, corrections=after[0] - replays[0], replayed=after[1] - replays[1])
        return [out], StatefulBatchLogic.RETAIN

    def _on_group(self, group: Group) -> list[Output]:
        """One input batch's items of this vehicle; then what fell due by its last clock stamp
        (a burst of late readings costs one replay, not one per reading)."""
        out: list[Output] = []
        last: datetime | None = None
        wall = self.wall()
        for item, now in _in_event_order(group):
            engine = self.engine
            if engine is None:  # the builder does not see the key: the first item names the vehicle
                tenant, vehicle = item.key.split("/", 1)
                engine = self.engine = VehicleEngine(tenant, vehicle, self.config, self.eta)
                FLOW_VEHICLES.inc()
            if isinstance(item, PlanUpdate):
                out += engine.on_plan(item, now)
            else:
                assert now is not None
                out += engine.on_reading(item, now, run_due=False, summarize=False)
                METER.seen(item.received_at)
        for _, now in group:
            if now is not None:
                last = now if last is None or now > last else last
        if self.engine is None:
            return out
        if last is not None:
            self.clock.seen(self.engine.basic.tenant, last, wall)
        if any(isinstance(item, StoredReading) for item, _ in group):
            assert last is not None
            out += self.engine.on_timer(last)
            if self._claim:
                out.insert(0, self._fresh_claim(self.engine, group))
        return out

    def _replays(self) -> tuple[int, int]:
        if self.engine is None:
            return 0, 0
        stats = self.engine.analytics.lateness
        return stats.corrections, stats.replayed_entries

    def _fresh_claim(self, engine: VehicleEngine, values: Group) -> Resynced:
        """The claim of a vehicle first seen in a resumed execution, ahead of its first batch with
        readings: of its results stored with an event time from one correction window (seconds)
        before those readings on, and of its open ones, only what this state emitted is its own.
        The crashed run started the vehicle afresh from the same source position, so what it
        stored came from these readings and later ones; older history is left as it is."""
        self._claim = False
        first = min(item.reading.fix_time for item, _ in values if isinstance(item, StoredReading))
        ids = tuple(e.id for e in engine.analytics.emitted())
        horizon = first - timedelta(seconds=self.config.correction_window_s)
        return Resynced(engine.basic.tenant, engine.basic.vehicle, ids, horizon)

    def _resynced(self, wall: datetime) -> list[Output]:
        if not self._resync or self.engine is None:
            return []
        self._resync = False
        now = self.clock.now(self.engine.basic.tenant, wall)
        return self.engine.resync(now if now is not None else wall)

    def on_notify(self) -> tuple[Iterable[list[Output]], bool]:
        with METER.phase("notify"):
            return self._on_notify()

    def _on_notify(self) -> tuple[Iterable[list[Output]], bool]:
        self._wake = None
        if self.engine is None:
            return [], StatefulBatchLogic.RETAIN
        wall = self.wall()
        now = self.clock.now(self.engine.basic.tenant, wall)
        before = _lateness(self.engine)
        out = self._resynced(wall) + (self.engine.on_timer(now) if now is not None else [])
        _count_lateness(before, _lateness(self.engine))
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """When to wake: when the vehicle's next timer comes due on this worker's clock, at the
        rate that clock has lately run (a fleet replayed at 20x is woken 20x sooner), no sooner
        than one ``tick`` and no later than ``_MAX_SLEEP_TICKS`` ticks, so a clock that speeds up
        is caught. Waking every vehicle with a pending timer every tick (an on-duty vehicle
        always has its offline timer) touched, and so snapshotted, every planned vehicle every
        epoch whatever it sent (``docs/measurements.md``, the soak)."""
        engine = self.engine
        due = engine.next_timer() if engine is not None else None
        if engine is None or due is None:
            self._wake = None
            return None
        wall = self.wall()
        ahead_s = self.clock.seconds_to(engine.basic.tenant, due, wall)
        tick_s = self.tick.total_seconds()
        sleep_s = tick_s if ahead_s is None else min(max(ahead_s, tick_s), _MAX_SLEEP_TICKS * tick_s)
        wake = wall + timedelta(seconds=sleep_s)
        if self._wake is None or wake < self._wake or self._wake <= wall:
            self._wake = wake
        return self._wake

    def snapshot(self) -> bytes:
        """A frozen copy of the engine (its pickle, deflated): Bytewax may serialise a snapshot after
        this returns, while the engine goes on with the next items; a live object would then carry
        state from past the epoch into recovery, and the replay would apply those items twice.
        The pickle leaves the correction window's readings in the store (``correction.py``)."""
        with METER.phase("snapshot"):
            assert self.engine is not None
            return zlib.compress(pickle.dumps(self.engine, protocol=pickle.HIGHEST_PROTOCOL), _SNAPSHOT_LEVEL)


# zlib level: 1 deflates a 30 kB vehicle pickle to 11.7 kB in 0.7 ms here, 6 to 10.6 kB in 1.5 ms
# (9: 10.5 kB, 2.4 ms); snapshots are on the flow's hot path, so the fast one
_SNAPSHOT_LEVEL = 1


def _resumed(state: bytes | VehicleEngine | None) -> VehicleEngine | None:
    """The engine of a snapshot (a deflated pickle; recovery stores written before held a bare
    pickle, which starts with the pickle protocol's opcode, or the object)."""
    if isinstance(state, bytes):
        engine = pickle.loads(state if state[:1] == pickle.PROTO else zlib.decompress(state))
        assert isinstance(engine, VehicleEngine)
        return engine
    return state


def build_analytics_flow(
    source: Source[StoredReading | PlanUpdate],
    store: Sink[Output],
    config: AnalyticsConfig = AnalyticsConfig(),
    tick_s: float = 1.0,
    idle_grace_s: float = 5.0,
    wall: Wall = _wall,
    flow_id: str = "fleetstream",
    eta: EtaConfig | None = EtaConfig(),
    resumed: bool = False,
    history: StoreReadings | None = None,
) -> Dataflow:
    """plans and readings → key by vehicle → vehicle analytics → flatten → analytics store.

    ``wall`` is the wall clock (tests pass their own); the fleet clock that stamps the items
    and each process's worker clock are built here (see ``_FleetClockStamp``, ``WorkerClock``).
    ``eta``: live ETAs per remaining stop and ``predicted_late`` (None: off).
    ``resumed``: this execution restarts one that ran on the same recovery store, which may
    have crashed before it snapshotted a vehicle (then that vehicle starts afresh here, and
    disowns what the crashed run stored for it: see ``_VehicleLogic._fresh_claim``).
    ``history``: the store's readings, which a vehicle resumed from a snapshot reloads for a
    late-data replay that reaches behind the snapshot (None: such a reading is too late).
    """
    stamp = _FleetClockStamp(FleetClock(idle_grace_s), wall)
    worker_clock = WorkerClock(idle_grace_s)  # this process's: see WorkerClock
    tick = timedelta(seconds=tick_s)
    flow = Dataflow(flow_id)
    inputs = op.input("plans_and_readings", flow, source)
    by_vehicle = op.flat_map_batch("fleet_clock_and_key", inputs, stamp)
    outputs = op.stateful_batch(
        "vehicle_analytics",
        by_vehicle,
        lambda resume: _VehicleLogic(_resumed(resume), config, worker_clock, tick, wall, eta, resumed, history),
    )
    rows = op.flat_map("flatten", outputs, lambda kv: kv[1])
    op.output("analytics_store", rows, store)
    return flow
