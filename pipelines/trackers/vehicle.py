"""``VehicleAnalytics``: every tracker of one vehicle behind a reorder buffer, with
late-data correction by checkpoint and replay.

Pipeline (per reading, in fix-time order)::

    reorder buffer -> quality -> motion -> geofence -> dwell -> drift -> (ETA hook -> predicted late)
                   -> cold chain -> door          offline: on arrival, the fleet clock

Time
    Trackers live on the event-time axis (UTC fix times). ``update(item, now)`` and
    ``on_timer(now)`` take the fleet's clock: "now" on the event-time axis, which the
    runtime estimates from the data (``pipelines/clock.py``; for a live fleet it is the
    server time less the network delay, for a replay or a simulation it is the newest
    fix time seen). The offline tracker measures silence on it, and the reorder buffer
    waits on it. ``on_timer`` advances the trackers' timers
    to ``now - reorder_max_delay_s``, the point up to which the reorder buffer has
    released everything. Timers due at or before a reading's fix time fire before the
    reading, whether or not ``on_timer`` was called in between, so results depend only
    on the readings, never on when the runtime called us. Alerts raised by timers
    carry state-derived times only (never the time the timer ran).

Suppression
    Each condition yields one alert id: emitted when it opens, again when it resolves.
    A ledger of what was emitted drops exact repeats. ETA updates (each prediction its own
    id) are kept in it only as each stop's latest, so it stays a few entries per stop.

Late data
    A reading whose fix time is behind what the trackers already processed (readings
    and fired timers: the "frontier") cannot just be applied. The vehicle keeps the
    last ``correction_window_s`` of readings (and plan changes, so a replay applies
    each plan where it applied live) plus a pickled copy of the tracker state every
    ``checkpoint_every_s`` of fix time, each with the ledger as it stood. A late
    reading is inserted into that history and marked pending (as is
    everything released after it, so a burst costs one replay); on the next
    ``on_timer`` the state is restored from the last checkpoint at or before the
    earliest pending fix time, the history is replayed in fix-time order (timers
    firing in between, up to the old frontier), and the replayed ledger is diffed
    against what was emitted: changed events are re-emitted under the same id,
    events that no longer hold are emitted retracted. Readings older than the oldest
    checkpoint are counted as ``too_late_readings`` and not analysed.
    ``next_timer()`` asks for ``on_timer`` at once while a correction is pending.
    A late reading that is behind the reorder watermark but not behind the frontier
    (nothing happened since) is simply applied: lateness alone costs no replay.

State size
    Made to be snapshotted often. The history is a list of plain tuples of numbers
    and short strings (about 65 bytes and 0.1 µs each to pickle); a checkpoint is
    pickled once, when taken, into bytes that name the config and the plan instead
    of copying them (about 2 kB), and its ledger snapshot shares the immutable
    events. Measured for one hour of a fix every 5 s: about 85 kB, 0.25 ms to pickle,
    0.5 ms to unpickle (which rebuilds the plan's H3 index and corridor);
    ``correction_window_s`` scales it. ``baseline`` is pickled with the state: pass
    a module-level function (pickled by name) or a small object.
"""

from __future__ import annotations

import io
import pickle
from bisect import bisect_left, bisect_right, insort_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

import h3.api.basic_int as h3

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.coldchain import ColdChainTracker
from pipelines.trackers.door import DoorTracker
from pipelines.trackers.drift import RouteCorridor, RouteDriftTracker
from pipelines.trackers.dwell import Baseline, DwellTracker
from pipelines.trackers.events import Alert, EtaUpdate, Event, StopEvent, event_time, is_retracted
from pipelines.trackers.geofence import GeofenceTracker, StopIndex
from pipelines.trackers.late import PredictedLateTracker
from pipelines.trackers.motion import MotionChange, MotionTracker
from pipelines.trackers.offline import OfflineTracker
from pipelines.trackers.quality import CheckedFix, GpsQualityFilter
from pipelines.trackers.reorder import Released, ReorderBuffer
from pipelines.vehicle_state import StoredReading

__all__ = ["ActivePlan", "EtaHook", "LatenessStats", "NoEta", "VehicleAnalytics", "VehicleTrackers"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_GENESIS_US = -(2**62)  # before any fix time


class EtaHook(Protocol):
    """Where the ETA tracker plugs in: it sees every usable fix and the stops still to do.

    Its state is pickled into every checkpoint: keep models out of it (hold them in a
    module-level object and look them up).
    """

    def set_plan(self, plan: Plan | None) -> None: ...

    def update(self, fix: CheckedFix, remaining: tuple[Stop, ...]) -> list[Event]: ...

    def on_timer(self, now: datetime) -> list[Event]: ...

    def next_timer(self) -> datetime | None: ...


class NoEta:
    """The placeholder ETA tracker: emits nothing."""

    def set_plan(self, plan: Plan | None) -> None:
        return None

    def update(self, fix: CheckedFix, remaining: tuple[Stop, ...]) -> list[Event]:
        return []

    def on_timer(self, now: datetime) -> list[Event]:
        return []

    def next_timer(self) -> datetime | None:
        return None


@dataclass(frozen=True)
class ActivePlan:
    """A plan with its H3 stop index and route corridor, built once per plan change."""

    plan: Plan
    index: StopIndex
    corridor: RouteCorridor | None

    @classmethod
    def build(cls, plan: Plan, config: AnalyticsConfig) -> ActivePlan:
        corridor = RouteCorridor(plan.route, config.corridor_resolution, config.corridor_k) if plan.route else None
        return cls(plan, StopIndex(plan.stops, config.cell_resolution, config.fence_exit_margin_m), corridor)

    def shared(self) -> dict[str, Any]:
        """Its parts by name, for checkpoints that refer to them instead of copying them."""
        return {"active": self, "plan": self.plan, "index": self.index, "corridor": self.corridor}


# History rows are plain tuples, sorted by their first item (fix time in integer
# microseconds since 1970 UTC), because they pickle ~30 times faster than readings:
#   (us, _GPS, seq, lat, lon, speed_mps, heading_deg, accuracy_m, alt_m, h3_cell)
#   (us, _TEMP, seq, sensor, celsius)
#   (us, _DOOR, seq, door, open)
#   (us, _PLAN, ActivePlan | None)          a plan change taking effect at us
Row = tuple[Any, ...]
_GPS, _TEMP, _DOOR, _PLAN = 0, 1, 2, 3
_row_time = itemgetter(0)


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _MICROSECOND


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _encode(reading: Reading, cell: int | None) -> Row:
    us = _us(reading.fix_time)
    if isinstance(reading, GpsFix):
        return (us, _GPS, reading.seq, reading.lat, reading.lon, reading.speed_mps, reading.heading_deg,
                reading.accuracy_m, reading.alt_m, cell)
    if isinstance(reading, TemperatureReading):
        return (us, _TEMP, reading.seq, reading.sensor, reading.celsius)
    return (us, _DOOR, reading.seq, reading.door, reading.open)


def _decode(row: Row, tenant: str, vehicle: str) -> Reading:
    t = _at(row[0])
    if row[1] == _GPS:
        return GpsFix(tenant, vehicle, row[2], t, row[3], row[4], row[5], row[6], row[7], row[8])
    if row[1] == _TEMP:
        return TemperatureReading(tenant, vehicle, row[2], t, row[3], row[4])
    return DoorEvent(tenant, vehicle, row[2], t, row[3], row[4])


class _Checkpoint(NamedTuple):
    us: int  # the state before processing the history rows at or after this time
    active: ActivePlan | None  # the plan then in force, kept out of the blob
    blob: bytes  # the pickled VehicleTrackers, naming the config and plan parts
    ledger: dict[str, Event]  # what had been emitted; events are immutable, shared with the live ledger


class _SharingPickler(pickle.Pickler):
    """Writes shared immutable objects (config, plan parts) as names, not copies."""

    def __init__(self, file: io.BytesIO, shared: dict[str, Any]) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self._names = {id(obj): name for name, obj in shared.items() if obj is not None}

    def persistent_id(self, obj: Any) -> str | None:
        return self._names.get(id(obj))


class _SharingUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, shared: dict[str, Any]) -> None:
        super().__init__(file)
        self._shared = shared

    def persistent_load(self, pid: Any) -> Any:
        return self._shared[pid]


@dataclass(slots=True)
class LatenessStats:
    """Lateness metrics of one vehicle (counts since creation; seconds behind the watermark)."""

    late_readings: int = 0  # released by the reorder buffer behind its watermark
    corrected_readings: int = 0  # behind the trackers' frontier: needed a replay
    too_late_readings: int = 0  # older than the oldest checkpoint: not analysed
    corrections: int = 0  # replays run
    replayed_entries: int = 0  # history entries re-processed by those replays
    last_lateness_s: float = 0.0
    max_lateness_s: float = 0.0
    total_lateness_s: float = 0.0


class VehicleTrackers:
    """The trackers of one vehicle in pipeline order, fed readings in fix-time order.

    This is what a checkpoint copies; ``time`` is the event-time frontier (the latest
    fix time applied or timer fired).
    """

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig, eta: EtaHook) -> None:
        self.config = config
        self.quality = GpsQualityFilter(tenant, vehicle, config)
        self.motion = MotionTracker(config)
        self.geofence = GeofenceTracker(tenant, vehicle, config)
        self.dwell = DwellTracker(tenant, vehicle, config)
        self.drift = RouteDriftTracker(tenant, vehicle, config)
        self.coldchain = ColdChainTracker(tenant, vehicle, config)
        self.door = DoorTracker(tenant, vehicle, config)
        self.eta = eta
        self.late = PredictedLateTracker(tenant, vehicle, config.predicted_late_margin_s)  # fed by the ETA hook
        self.active: ActivePlan | None = None
        self.position: CheckedFix | None = None  # last usable fix
        self.time: datetime | None = None

    # ---------------------------------------------------------------- inputs

    def apply(self, reading: Reading, h3_cell: int | None, baseline: Baseline | None) -> list[Event]:
        """Apply one reading (call ``advance(reading.fix_time)`` first); ``h3_cell`` of a GPS fix."""
        t = reading.fix_time
        self._clock(t)
        out: list[Event] = []
        if isinstance(reading, GpsFix):
            checked, alerts = self.quality.update(reading, h3_cell)
            out += alerts
            out += self.coldchain.observe(t, h3_cell)
            if checked.usable:
                out += self._on_fix(checked, baseline)
        elif isinstance(reading, TemperatureReading):
            out += self.coldchain.update(reading, self.temp_range(), self._cell())
            out += self.coldchain.observe(t, self._cell())
        elif isinstance(reading, DoorEvent):
            out += self.door.update(reading, self._at_stop(), self.temp_range() is not None, self._cell())
            out += self.coldchain.observe(t, self._cell())
        return out

    def set_plan(self, active: ActivePlan | None, t: datetime) -> list[Event]:
        """Switch plans at fix time ``t``: re-sequenced stops and a new corridor at once."""
        self._clock(t)
        self.active = active
        self.geofence.set_plan(active.plan if active else None, active.index if active else None)
        self.eta.set_plan(active.plan if active else None)
        out: list[Event] = list(self.drift.set_plan(active.corridor if active else None, t))
        if self.position is not None:
            out += self.dwell.replan(self._at_stop(), self.geofence.next_stop() is not None, t)
        return out

    def advance(self, t: datetime, baseline: Baseline | None) -> list[Event]:
        """Fire, in order, every timer due at or before fix time ``t``."""
        out: list[Event] = []
        last_due: datetime | None = None
        while (due := self.next_timer()) is not None and due <= t:
            if due == last_due:
                break  # a tracker failed to clear its own timer: never spin
            last_due = due
            self._clock(due)
            changes = self.motion.on_timer(due)
            stop_events = self.geofence.on_timer(due)
            out += stop_events
            out += self._dwell_inputs(changes, stop_events, baseline)
            if stop_events and self.late.open:
                out += self._predicted_late(due, [], stop_events)
            out += self.dwell.on_timer(due)
            out += self.drift.on_timer(due)
            out += self.coldchain.on_timer(due)
            out += self.door.on_timer(due)
            out += self.eta.on_timer(due)
        return out

    def next_timer(self) -> datetime | None:
        """Earliest fix time at which some tracker's timer is due."""
        best: datetime | None = None
        for tracker in (self.motion, self.geofence, self.dwell, self.drift, self.coldchain, self.door, self.eta):
            due = tracker.next_timer()
            if due is not None and (best is None or due < best):
                best = due
        return best

    # ---------------------------------------------------------------- helpers

    def temp_range(self) -> tuple[float, float] | None:
        """The load's range in °C: the plan's, else the config's; None = not refrigerated."""
        if self.active is not None and self.active.plan.temp_range_c is not None:
            return self.active.plan.temp_range_c
        return self.config.temp_range_c

    def _on_fix(self, fix: CheckedFix, baseline: Baseline | None) -> list[Event]:
        self.position = fix
        changes = self.motion.update(fix)
        stop_events = self.geofence.update(fix)
        out: list[Event] = list(stop_events)
        out += self._dwell_inputs(changes, stop_events, baseline)
        if self.drift.corridor is not None:
            out += self.drift.update(fix, self.geofence.next_stop(), self._at_stop() is True)
        etas = self.eta.update(fix, self.geofence.remaining_stops())
        out += etas
        if etas or self.late.open:
            out += self._predicted_late(fix.time, etas, stop_events)
        return out

    def _predicted_late(self, t: datetime, etas: list[Event], stop_events: list[StopEvent]) -> list[Event]:
        arrivals = {e.stop_id: e.at for e in stop_events if e.kind == "arrival"}
        updates = [e for e in etas if isinstance(e, EtaUpdate)]
        return list(self.late.update(t, updates, self.geofence.remaining_stops(), arrivals, self._cell()))

    def _dwell_inputs(self, changes: list[MotionChange], stop_events: list[StopEvent],
                      baseline: Baseline | None) -> list[Event]:
        out: list[Event] = []
        for change in changes:
            at_stop = self.geofence.at_stop(change.lat, change.lon, change.h3_cell)
            out += self.dwell.on_motion(change, at_stop, self.geofence.next_stop() is not None, baseline)
        for event in stop_events:
            cell = self.active.index.cells.get(event.stop_id) if self.active is not None else None
            out += self.dwell.on_stop_event(event, cell, baseline)
        return out

    def _at_stop(self) -> bool | None:
        if self.position is None:
            return None
        return self.geofence.at_stop(self.position.lat, self.position.lon, self.position.h3_cell)

    def _cell(self) -> int | None:
        return self.position.h3_cell if self.position is not None else None

    def _clock(self, t: datetime) -> None:
        if self.time is None or t > self.time:
            self.time = t


class VehicleAnalytics:
    """All analytics of one vehicle: ``update``, ``on_timer``, ``next_timer``, ``set_plan``.

    ``baseline(h3_cell, hour_of_week) -> seconds | None`` gives typical dwell times
    (see ``dwell.py``); ``eta`` is the ETA tracker hook (default: ``NoEta``).
    """

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig = AnalyticsConfig(),
                 plan: Plan | None = None, baseline: Baseline | None = None, eta: EtaHook | None = None) -> None:
        self.tenant, self.vehicle, self.config, self.baseline = tenant, vehicle, config, baseline
        self.lateness = LatenessStats()
        self._max_delay = timedelta(seconds=config.reorder_max_delay_s)
        self._checkpoint_us = round(config.checkpoint_every_s * 1e6)
        self._buffer: ReorderBuffer[tuple[Reading, int | None]] = ReorderBuffer(config.reorder_max_delay_s)
        self._offline = OfflineTracker(tenant, vehicle, config)
        self._trackers = VehicleTrackers(tenant, vehicle, config, eta if eta is not None else NoEta())
        if plan is not None:
            self._trackers.set_plan(ActivePlan.build(self._own(plan), config), _EPOCH)
            self._trackers.time = None
        self._history: list[Row] = []
        self._checkpoints = [self._checkpoint(_GENESIS_US, self._trackers, {})]
        self._ledger: dict[str, Event] = {}  # id -> last version emitted (replayable trackers only)
        self._pending_us: int | None = None  # earliest fix time a correction must replay from
        self._pending_since: datetime | None = None  # clock time the correction became pending

    # ---------------------------------------------------------------- the four verbs

    def update(self, item: StoredReading, now: datetime) -> list[Event]:
        """Take one committed reading of this vehicle; ``now`` is the fleet clock (UTC)."""
        reading = item.reading
        if reading.tenant != self.tenant or reading.vehicle != self.vehicle:
            raise ValueError(f"reading of {reading.tenant}/{reading.vehicle} fed to {self.tenant}/{self.vehicle}")
        cell = self._cell(item)
        # a gap the clock jumped over in one go (a replay, a drained backlog) was still a gap
        out: list[Event] = list(self._offline.on_timer(now)) if self.on_duty else []
        out += self._offline.update(now, reading.fix_time, cell)
        # the clock moves the watermark first, as a wake-up would have: a reading whose fix time
        # the fleet clock passed more than reorder_max_delay_s ago is late, whether or not a
        # timer happened to wake this vehicle while it was silent (a link cut, an outbox burst)
        for released in self._buffer.on_timer(now):
            out += self._release(released, now)
        for released in self._buffer.push((reading, cell), reading.fix_time):
            out += self._release(released, now)
        return out

    def on_timer(self, now: datetime) -> list[Event]:
        """Run what is due at fleet-clock time ``now``: corrections, buffer flush, timers, offline."""
        out: list[Event] = list(self._offline.on_timer(now)) if self.on_duty else []
        if self._pending_us is not None:
            out += self._correct()
        for released in self._buffer.on_timer(now):
            out += self._release(released, now)
        out += self._emit(self._trackers.advance(now - self._max_delay, self.baseline), self._ledger)
        return out

    def next_timer(self) -> datetime | None:
        """Server time (UTC) at which ``on_timer`` should next run; None when nothing is due."""
        dues = [self._buffer.next_timer(), self._offline.next_timer() if self.on_duty else None, self._pending_since]
        tracker_due = self._trackers.next_timer()
        if tracker_due is not None:
            dues.append(tracker_due + self._max_delay)
        found = [d for d in dues if d is not None]
        return min(found) if found else None

    def set_plan(self, plan: Plan | None, now: datetime | None) -> list[Event]:
        """Replace the plan at time ``now``; it applies to fixes after ``now - reorder_max_delay_s``
        (later-arriving readings from before that are replayed under the old plan). Before any
        reading was analysed (or with ``now`` None: the clock is not known yet) it applies from
        the first reading on."""
        active = ActivePlan.build(self._own(plan), self.config) if plan is not None else None
        if now is None or self._trackers.time is None:
            return self._process((0, _PLAN, active))  # at 1970: before every reading
        out = self.on_timer(now)
        t = now - self._max_delay
        if self._trackers.time is not None and self._trackers.time > t:
            t = self._trackers.time
        out += self._process((_us(t), _PLAN, active))
        return out

    # ---------------------------------------------------------------- read-only views

    @property
    def plan(self) -> Plan | None:
        active = self._trackers.active
        return active.plan if active is not None else None

    @property
    def on_duty(self) -> bool:
        """False once the plan is done (no stop left, none being served): a van parked at the
        depot after its round is not "offline". True without a plan."""
        trackers = self._trackers
        if trackers.active is None:
            return True
        return trackers.geofence.visit is not None or bool(trackers.geofence.remaining_stops())

    @property
    def trackers(self) -> VehicleTrackers:
        """The current tracker state (read it, do not change it)."""
        return self._trackers

    def emitted(self) -> list[Event]:
        """The latest version of every event still within the correction window, as emitted."""
        return list(self._ledger.values())

    def ledger_horizon(self) -> datetime | None:
        """Event time from which ``emitted()`` holds every event this state emitted (open
        alerts: all of them); None before the first reading."""
        frontier = self._trackers.time
        if frontier is None:
            return None
        return _at(_us(frontier) - round(self.config.correction_window_s * 1e6))

    @property
    def history_size(self) -> int:
        """Readings and plan changes kept for corrections."""
        return len(self._history)

    # ---------------------------------------------------------------- internals

    def _own(self, plan: Plan) -> Plan:
        if (plan.tenant, plan.vehicle) != (self.tenant, self.vehicle):
            raise ValueError(f"plan of {plan.tenant}/{plan.vehicle} given to {self.tenant}/{self.vehicle}")
        return plan

    def _cell(self, item: StoredReading) -> int | None:
        reading = item.reading
        if not isinstance(reading, GpsFix):
            return None
        cell = item.h3_cell
        res = self.config.cell_resolution
        if cell is None or h3.get_resolution(cell) != res:
            cell = h3.latlng_to_cell(reading.lat, reading.lon, res)
        return cell

    def _release(self, released: Released[tuple[Reading, int | None]], now: datetime) -> list[Event]:
        reading, cell = released.item
        stats = self.lateness
        if released.late:
            stats.late_readings += 1
            stats.last_lateness_s = released.lateness_s
            stats.total_lateness_s += released.lateness_s
            stats.max_lateness_s = max(stats.max_lateness_s, released.lateness_s)
        row = _encode(reading, cell)
        frontier = self._trackers.time
        behind = frontier is not None and reading.fix_time < frontier
        if not behind and self._pending_us is None:
            return self._process(row, reading)
        if row[0] < self._checkpoints[0].us:
            stats.too_late_readings += 1
            return []
        if behind:
            stats.corrected_readings += 1
        # the trackers are past it (or a correction is pending): replay on the next on_timer
        insort_right(self._history, row, key=_row_time)
        if self._pending_us is None or row[0] < self._pending_us:
            self._pending_us = row[0]
        if self._pending_since is None:
            self._pending_since = now
        return []

    def _process(self, row: Row, reading: Reading | None = None) -> list[Event]:
        self._maybe_checkpoint(row[0], self._trackers, self._ledger)
        self._history.append(row)
        out = self._emit(self._step(self._trackers, row, reading), self._ledger)
        self._prune()
        return out

    def _step(self, trackers: VehicleTrackers, row: Row, reading: Reading | None = None) -> list[Event]:
        """Fire the timers due by the row's time, then apply the row."""
        t = reading.fix_time if reading is not None else _at(row[0])
        events = trackers.advance(t, self.baseline)
        if row[1] == _PLAN:
            return events + trackers.set_plan(row[2], t)
        if reading is None:
            reading = _decode(row, self.tenant, self.vehicle)
        return events + trackers.apply(reading, row[9] if row[1] == _GPS else None, self.baseline)

    def _checkpoint(self, us: int, trackers: VehicleTrackers, ledger: dict[str, Event]) -> _Checkpoint:
        buffer = io.BytesIO()
        _SharingPickler(buffer, self._shared(trackers.active)).dump(trackers)
        return _Checkpoint(us, trackers.active, buffer.getvalue(), dict(ledger))

    def _restore(self, cp: _Checkpoint) -> tuple[VehicleTrackers, dict[str, Event]]:
        trackers = _SharingUnpickler(io.BytesIO(cp.blob), self._shared(cp.active)).load()
        return trackers, dict(cp.ledger)

    def _shared(self, active: ActivePlan | None) -> dict[str, Any]:
        return {"config": self.config, **(active.shared() if active is not None else {})}

    def _maybe_checkpoint(self, us: int, trackers: VehicleTrackers, ledger: dict[str, Event]) -> None:
        if us - self._checkpoints[-1].us >= self._checkpoint_us:
            self._checkpoints.append(self._checkpoint(us, trackers, ledger))

    @staticmethod
    def _emit(events: list[Event], ledger: dict[str, Event], touched: set[str] | None = None) -> list[Event]:
        out: list[Event] = []
        for event in events:
            key = _ledger_key(event)
            if ledger.get(key) != event:
                ledger[key] = event
                out.append(event)
                if touched is not None:
                    touched.add(key)
        return out

    def _correct(self) -> list[Event]:
        """Restore the checkpoint before the earliest pending fix time, replay, emit the differences."""
        assert self._pending_us is not None
        pending_us = self._pending_us
        cps = self._checkpoints
        i = max(0, bisect_right(cps, self._pending_us, key=_checkpoint_time) - 1)
        cp = cps[i]
        del cps[i + 1:]
        frontier = self._trackers.time
        trackers, ledger = self._restore(cp)
        touched: set[str] = set()
        etas: dict[str, EtaUpdate] = {}  # every prediction the replay made, by id
        start = bisect_left(self._history, cp.us, key=_row_time)
        for k in range(start, len(self._history)):
            row = self._history[k]
            if k > start:
                self._maybe_checkpoint(row[0], trackers, ledger)
            _collect(etas, self._emit(self._step(trackers, row), ledger, touched))
        if frontier is not None:
            _collect(etas, self._emit(trackers.advance(frontier, self.baseline), ledger, touched))

        out: list[Event] = []
        live = self._ledger
        for event_id, old in live.items():
            if event_id not in ledger:  # emitted since the checkpoint, no longer holds
                if not is_retracted(old):
                    old = old.retract()
                    out.append(old)
                ledger[event_id] = old
            elif old != ledger[event_id]:  # holds, with different content
                new = ledger[event_id]
                if not isinstance(new, EtaUpdate):
                    out.append(new)
                elif (isinstance(old, EtaUpdate) and old.id not in etas and not old.retracted
                      and _us(old.at) >= pending_us):  # made after the late data: the replay no longer makes it
                    out.append(old.retract())
        for event_id in [k for k in ledger if k not in live]:
            if event_id not in touched:
                del ledger[event_id]  # settled long ago and already pruned from the live ledger
            elif not isinstance(ledger[event_id], EtaUpdate):
                out.append(ledger[event_id])  # new
        # every prediction the replay made from the earliest late reading on (those before it
        # are the ones made live); an unchanged one rewrites its row to no effect
        out += [e for e in etas.values() if _us(e.at) >= pending_us and live.get(_ledger_key(e)) != e]
        self._trackers, self._ledger = trackers, ledger
        self.lateness.corrections += 1
        self.lateness.replayed_entries += len(self._history) - start
        self._pending_us = self._pending_since = None
        self._prune()
        return out

    def _prune(self) -> None:
        """Forget checkpoints, history and settled ledger entries older than the correction window."""
        frontier = self._trackers.time
        cps = self._checkpoints
        if frontier is None or len(cps) < 2:
            return
        horizon_us = _us(frontier) - round(self.config.correction_window_s * 1e6)
        if cps[1].us > horizon_us:
            return
        i = 1
        while i + 1 < len(cps) and cps[i + 1].us <= horizon_us:
            i += 1
        del cps[:i]
        del self._history[:bisect_left(self._history, cps[0].us, key=_row_time)]
        horizon = _at(horizon_us)
        for event_id in [k for k, e in self._ledger.items() if _settled_before(e, horizon)]:
            del self._ledger[event_id]


def _ledger_key(event: Event) -> str:
    """Where the ledger keeps an event: under its id, except ETA updates, which are kept
    only as the stop's latest (each prediction has its own id; the history belongs in the
    database, not in the state). A correction emits every prediction its replay made (an
    unchanged one rewrites its row to no effect) and retracts the stop's current ETA when
    the replay no longer makes it; earlier live predictions the replay does not make again
    stay as they were made (the state no longer knows them)."""
    return f"eta|{event.stop_id}" if isinstance(event, EtaUpdate) else event.id


def _collect(etas: dict[str, EtaUpdate], events: list[Event]) -> None:
    for event in events:
        if isinstance(event, EtaUpdate):
            etas[event.id] = event


def _checkpoint_time(cp: _Checkpoint) -> int:
    return cp.us


def _settled_before(event: Event, horizon: datetime) -> bool:
    if isinstance(event, Alert) and event.status == "open":
        return False
    return event_time(event) < horizon
