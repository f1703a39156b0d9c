"""``VehicleAnalytics``: every tracker of one vehicle behind a reorder buffer, with
late-data correction by checkpoint and replay.

Pipeline (per reading, in fix-time order)::

    reorder buffer -> quality -> dwell (time seen) -> motion -> geofence -> dwell -> drift
                   -> (ETA hook -> predicted late) -> door (placing an opening) ;  cold chain, door (heard)
    offline: on arrival, the fleet clock, while on duty (``duty_at``: not once the shift has ended)
    every alert and stop event out: in context (``context.py``: place, stop, plan, values, summary)

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

Suppression and late data
    ``correction.Corrector`` runs the trackers (``VehicleTrackers``, the replayable
    state): a ledger of what was emitted drops exact repeats (each condition yields one
    alert id: emitted when it opens, again when it resolves), and a reading whose fix
    time is behind what the trackers already processed (readings and fired timers: the
    "frontier") is replayed from a checkpoint. The vehicle keeps the last
    ``correction_window_s`` of readings (and plan changes, so a replay applies each plan
    where it applied live) and a checkpoint every ``checkpoint_every_s`` of fix time.
    A late reading is marked pending (as is everything released after it, so a burst
    costs one replay); the next ``on_timer`` corrects. Readings older than the oldest
    checkpoint are counted as ``too_late_readings`` and not analysed. ``next_timer()``
    asks for ``on_timer`` at once while a correction is pending. A late reading that is
    behind the reorder watermark but not behind the frontier (nothing happened since) is
    simply applied: lateness alone costs no replay.

State size
    Made to be snapshotted often. The history is a list of plain tuples of numbers
    and short strings (about 65 bytes and 0.1 µs each to pickle); a checkpoint is
    pickled once, when taken, into bytes that name the config and the plan instead
    of copying them (about 2 kB), and its ledger snapshot shares the immutable
    events. A pickled ``VehicleAnalytics`` leaves the history's readings and all
    checkpoints but the oldest out (``correction.py``, Snapshot): about 30 kB for a
    20-stop plan, 9 kB deflated (``tests/unit/test_vehicle_snapshot.py``); unpickled,
    ``attach_history`` says where the first replay behind it reloads them from.
    Unpickling rebuilds the plan's H3 index and corridor (about 30 ms for a 50 km
    route). ``baseline`` is pickled with the state: pass a module-level function
    (pickled by name) or a small object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

import h3.api.basic_int as h3

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading
from core.geo import haversine_m
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.coldchain import ColdChainTracker
from pipelines.trackers.context import Contexts, Place, with_stop_context
from pipelines.trackers.correction import Corrector, Row, at_us, us
from pipelines.trackers.door import DoorTracker
from pipelines.trackers.drift import RouteCorridor, RouteDriftTracker
from pipelines.trackers.dwell import Baseline, DwellTracker
from pipelines.trackers.events import Alert, EtaUpdate, Event, StopEvent
from pipelines.trackers.geofence import GeofenceTracker, StopIndex
from pipelines.trackers.late import PredictedLateTracker
from pipelines.trackers.motion import MotionChange, MotionTracker
from pipelines.trackers.offline import OfflineTracker
from pipelines.trackers.quality import CheckedFix, GpsQualityFilter
from pipelines.trackers.reorder import Released, ReorderBuffer
from pipelines.vehicle_state import StoredReading

__all__ = ["ActivePlan", "EtaHook", "LatenessStats", "NoEta", "StoreReadings", "VehicleAnalytics", "VehicleTrackers"]

# The store's readings of one vehicle (tenant, vehicle) with fix times in [start, end] (UTC,
# inclusive), in any order: what a resumed vehicle's first replay reloads (``attach_history``).
StoreReadings = Callable[[str, str, datetime, datetime], Iterable[StoredReading]]


class EtaHook(Protocol):
    """Where the ETA tracker plugs in: it sees every usable fix and the stops still to do.

    Its state is pickled into every checkpoint: keep models out of it (hold them in a
    module-level object and look them up).
    """

    def set_plan(self, plan: Plan | None) -> None: ...

    def update(
        self, fix: CheckedFix, remaining: tuple[Stop, ...], visit: tuple[Stop, datetime] | None = None
    ) -> list[Event]: ...

    def on_timer(self, now: datetime) -> list[Event]: ...

    def next_timer(self) -> datetime | None: ...


class NoEta:
    """The placeholder ETA tracker: emits nothing."""

    def set_plan(self, plan: Plan | None) -> None:
        return None

    def update(
        self, fix: CheckedFix, remaining: tuple[Stop, ...], visit: tuple[Stop, datetime] | None = None
    ) -> list[Event]:
        return []

    def on_timer(self, now: datetime) -> list[Event]:
        return []

    def next_timer(self) -> datetime | None:
        return None


@dataclass(frozen=True)
class ActivePlan:
    """A plan with its H3 stop index and route corridor, built once per plan change;
    ``ends_at``: when it is over by time (its latest stop window end + ``plan_end_grace_s``;
    None without windows)."""

    plan: Plan
    index: StopIndex
    corridor: RouteCorridor | None
    ends_at: datetime | None = None

    @classmethod
    def build(cls, plan: Plan, config: AnalyticsConfig) -> ActivePlan:
        corridor = RouteCorridor(plan.route, config.corridor_resolution, config.corridor_k) if plan.route else None
        ends = [s.window_end for s in plan.stops if s.window_end is not None]
        ends_at = max(ends) + timedelta(seconds=config.plan_end_grace_s) if ends else None
        return cls(plan, StopIndex(plan.stops, config.cell_resolution, config.fence_exit_margin_m), corridor, ends_at)

    def shared(self) -> dict[str, Any]:
        """Its parts by name, for checkpoints that refer to them instead of copying them."""
        return {"active": self, "plan": self.plan, "index": self.index, "corridor": self.corridor}


# History rows (``correction.Row``) are plain tuples, sorted by their first item (fix time in
# integer microseconds since 1970 UTC), because they pickle ~30 times faster than readings:
#   (us, _GPS, seq, lat, lon, speed_mps, heading_deg, accuracy_m, alt_m, h3_cell)
#   (us, _TEMP, seq, sensor, celsius)
#   (us, _DOOR, seq, door, open)
#   (us, _PLAN, ActivePlan | None)          a plan change taking effect at us
_GPS, _TEMP, _DOOR, _PLAN = 0, 1, 2, 3


def _encode(reading: Reading, cell: int | None) -> Row:
    t = us(reading.fix_time)
    if isinstance(reading, GpsFix):
        return (
            t,
            _GPS,
            reading.seq,
            reading.lat,
            reading.lon,
            reading.speed_mps,
            reading.heading_deg,
            reading.accuracy_m,
            reading.alt_m,
            cell,
        )
    if isinstance(reading, TemperatureReading):
        return (t, _TEMP, reading.seq, reading.sensor, reading.celsius)
    return (t, _DOOR, reading.seq, reading.door, reading.open)


def _decode(row: Row, tenant: str, vehicle: str) -> Reading:
    t = at_us(row[0])
    if row[1] == _GPS:
        return GpsFix(tenant, vehicle, row[2], t, row[3], row[4], row[5], row[6], row[7], row[8])
    if row[1] == _TEMP:
        return TemperatureReading(tenant, vehicle, row[2], t, row[3], row[4])
    return DoorEvent(tenant, vehicle, row[2], t, row[3], row[4])


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

    The replayable state of ``correction.Corrector``: what a checkpoint copies; ``time`` is
    the event-time frontier (the latest fix time applied or timer fired). ``baseline`` gives
    typical dwell times (see ``dwell.py``).
    """

    def __init__(
        self, tenant: str, vehicle: str, config: AnalyticsConfig, eta: EtaHook, baseline: Baseline | None = None
    ) -> None:
        self.tenant, self.vehicle, self.config, self.baseline = tenant, vehicle, config, baseline
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

    def step(self, row: Row, reading: Reading | None = None) -> list[Event]:
        """Fire the timers due by the row's time, then apply the row (a reading, or a plan
        change); ``reading`` is the row's reading when the caller has it already. Every
        alert and stop event comes out with its context (``context.py``)."""
        t = reading.fix_time if reading is not None else at_us(row[0])
        events = self._advance(t)
        if row[1] == _PLAN:
            events += self.set_plan(row[2], t)
        else:
            if reading is None:
                reading = _decode(row, self.tenant, self.vehicle)
            events += self.apply(reading, row[9] if row[1] == _GPS else None)
        return self.in_context(events)

    def shared(self) -> dict[str, Any]:
        """The config and the plan's parts: immutable, so checkpoints name them instead of copying."""
        return {"config": self.config, **(self.active.shared() if self.active is not None else {})}

    def kept(self, rows: list[Row]) -> list[Row]:
        """A snapshot keeps plan changes; readings it leaves to the store."""
        return [row for row in rows if row[1] == _PLAN]

    def apply(self, reading: Reading, h3_cell: int | None) -> list[Event]:
        """Apply one reading (call ``advance(reading.fix_time)`` first); ``h3_cell`` of a GPS fix."""
        t = reading.fix_time
        self._clock(t)
        out: list[Event] = []
        if isinstance(reading, GpsFix):
            checked, alerts = self.quality.update(reading, h3_cell)
            out += alerts
            cadence = checked.silence_s if checked.usable else None
            self.coldchain.hear(t, cadence)
            out += self.door.hear(t, cadence)
            out += self.coldchain.observe(t, h3_cell)
            if checked.usable:
                out += self._on_fix(checked)
                out += self.door.on_fix(checked, self.geofence.at_stop)
        elif isinstance(reading, TemperatureReading):
            self.coldchain.hear(t)
            out += self.door.hear(t)
            out += self.coldchain.update(reading, self.temp_range(), self._cell())
            out += self.coldchain.observe(t, self._cell())
        elif isinstance(reading, DoorEvent):
            self.coldchain.hear(t)
            out += self.door.update(
                reading,
                self.position,
                self.geofence.at_stop,
                self.temp_range() is not None,
                self._cell(),
                self.geofence.stop_within,
            )
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

    def advance(self, t: datetime) -> list[Event]:
        """Fire, in order, every timer due at or before fix time ``t`` (events in context)."""
        return self.in_context(self._advance(t))

    def _advance(self, t: datetime) -> list[Event]:
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
            out += self._dwell_inputs(changes, stop_events)
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

    # ---------------------------------------------------------------- context

    _contexts: Contexts | None = None  # class default: state pickled before it existed still loads

    def in_context(self, events: list[Event]) -> list[Event]:
        """Alerts with the place, stop and plan of where they opened, values and a summary;
        stop events with the vehicle's position, the stop's name and a summary."""
        if self._contexts is None:
            self._contexts = Contexts()
        contexts, out = self._contexts, list[Event]()
        for e in events:
            if isinstance(e, Alert):
                out.append(contexts.alert(e, partial(self.place, e.stop_id, e.type == "predicted_late")))
            elif isinstance(e, StopEvent):
                place = self.place(e.stop_id)
                out.append(with_stop_context(e, place.lat, place.lon, place.stop_name))
            else:
                out.append(e)
        return out

    def place(self, stop_id: str | None = None, late: bool = False) -> Place:
        """Where the vehicle is now: its last usable fix, and the stop it concerns: ``stop_id``
        when given (``late_for`` with ``late``, else ``at`` while visiting it, else
        ``heading_to``), else the stop it is inside (``at``), else its plan's next stop."""
        fix = self.position
        lat, lon = (fix.lat, fix.lon) if fix is not None else (None, None)
        if self.active is None:
            return Place(lat, lon, stop_id, "", "", None)
        plan, visit = self.active.plan, self.geofence.visit
        if stop_id is not None:
            name = next((s.name for s in plan.stops if s.id == stop_id), "")
            visiting = visit is not None and visit.stop.id == stop_id
            return Place(
                lat, lon, stop_id, name, "late_for" if late else "at" if visiting else "heading_to", plan.version
            )
        stop = visit.stop if visit is not None else None
        if stop is None and fix is not None:
            stop = self.active.index.containing(fix.lat, fix.lon, fix.h3_cell)
        if stop is not None:
            return Place(lat, lon, stop.id, stop.name, "at", plan.version)
        ahead = self.geofence.next_stop()
        if ahead is not None:
            return Place(lat, lon, ahead.id, ahead.name, "heading_to", plan.version)
        return Place(lat, lon, None, "", "", plan.version)

    # ---------------------------------------------------------------- helpers

    def temp_range(self) -> tuple[float, float] | None:
        """The load's range in °C: the plan's, else the config's; None = not refrigerated."""
        if self.active is not None and self.active.plan.temp_range_c is not None:
            return self.active.plan.temp_range_c
        return self.config.temp_range_c

    def _on_fix(self, fix: CheckedFix) -> list[Event]:
        self.position = fix
        out: list[Event] = list(self.dwell.observe(fix))
        anchor = self.motion.anchor
        changes = self.motion.update(fix)
        stop_events = self.geofence.update(fix)
        out += stop_events
        out += self._dwell_inputs(changes, stop_events)
        if not changes and self.motion.anchor is not anchor:  # it crept on and stands elsewhere now
            self._standing_away(None)
        if self.drift.corridor is not None:
            out += self.drift.update(fix, self.geofence.next_stop(), self._at_stop() is True)
        visit = self.geofence.visit
        etas = self.eta.update(
            fix, self.geofence.remaining_stops(), (visit.stop, visit.arrived_at) if visit is not None else None
        )
        out += etas
        if etas or self.late.open:
            out += self._predicted_late(fix.time, etas, stop_events)
        return out

    def _predicted_late(self, t: datetime, etas: list[Event], stop_events: list[StopEvent]) -> list[Event]:
        arrivals = {e.stop_id: e.at for e in stop_events if e.kind == "arrival"}
        updates = [e for e in etas if isinstance(e, EtaUpdate)]
        return list(self.late.update(t, updates, self.geofence.remaining_stops(), arrivals, self._cell()))

    def _dwell_inputs(self, changes: list[MotionChange], stop_events: list[StopEvent]) -> list[Event]:
        out: list[Event] = []
        for change in changes:
            at_stop = self.geofence.stands_at_stop(change.lat, change.lon, change.h3_cell)
            out += self.dwell.on_motion(change, at_stop, self.geofence.next_stop() is not None, self.baseline)
        for event in stop_events:
            cell = self.active.index.cells.get(event.stop_id) if self.active is not None else None
            stops = self.active.plan.stops if self.active is not None else ()
            last = bool(stops) and stops[-1].id == event.stop_id  # the end of the shift: not timed
            out += self.dwell.on_stop_event(event, cell, self.baseline, timed=not last)
            if event.kind == "departure":
                self._standing_away(event.at)
        return out

    def _standing_away(self, departed: datetime | None) -> None:
        """A vehicle that stopped at a stop (no away dwell then) may stand away from every stop
        later without a motion change: it departed (outside the fence plus margin long enough)
        or crept on, still standing (a bus pulling out and waiting 60 m on: not far enough for a
        start). Its away dwell starts when it stopped, or, if it stopped inside a stop's circle,
        when it departed (the exit margin only held the visit open)."""
        motion, fix = self.motion, self.position
        if motion.moving is not False or motion.anchor is None or fix is None or self.dwell.away is not None:
            return
        geofence = self.geofence
        if geofence.visit is not None or geofence.next_stop() is None:
            return
        if geofence.stands_at_stop(fix.lat, fix.lon, fix.h3_cell) is not False:
            return
        anchor = motion.anchor
        since = anchor.time
        if departed is not None and geofence.stands_at_stop(anchor.lat, anchor.lon, anchor.h3_cell):
            since = max(since, departed)  # it stopped inside the circle: away from when it left it
        self.dwell.stand_away(since, fix.lat, fix.lon, fix.h3_cell, self.baseline)

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

    _on_duty = True  # class default: state pickled before it existed still loads
    _seen: dict[int, int] | None = None  # class default: state pickled before it existed still loads

    def __init__(
        self,
        tenant: str,
        vehicle: str,
        config: AnalyticsConfig = AnalyticsConfig(),
        plan: Plan | None = None,
        baseline: Baseline | None = None,
        eta: EtaHook | None = None,
    ) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.lateness = LatenessStats()
        self._max_delay = timedelta(seconds=config.reorder_max_delay_s)
        self._buffer: ReorderBuffer[tuple[Reading, int | None]] = ReorderBuffer(config.reorder_max_delay_s)
        self._offline = OfflineTracker(tenant, vehicle, config)
        trackers = VehicleTrackers(tenant, vehicle, config, eta if eta is not None else NoEta(), baseline)
        if plan is not None:
            trackers.set_plan(ActivePlan.build(self._own(plan), config), at_us(0))
            trackers.time = None
        self._corrector: Corrector[VehicleTrackers, Event] = Corrector(
            trackers, config.checkpoint_every_s, config.correction_window_s
        )
        self._pending_since: datetime | None = None  # clock time a correction became pending
        self._on_duty = True  # as last judged (off -> on restarts the offline clock)
        self._seen: dict[int, int] | None = {}  # shard -> the last shard_seq taken in (see attach_history)

    # ---------------------------------------------------------------- the four verbs

    def update(self, item: StoredReading, now: datetime) -> list[Event]:
        """Take one committed reading of this vehicle; ``now`` is the fleet clock (UTC)."""
        reading = item.reading
        if reading.tenant != self.tenant or reading.vehicle != self.vehicle:
            raise ValueError(f"reading of {reading.tenant}/{reading.vehicle} fed to {self.tenant}/{self.vehicle}")
        cell = self._cell(item)
        seen = self._seen
        if seen is None:
            seen = self._seen = {}
        if item.shard_seq > seen.get(item.shard, -1):
            seen[item.shard] = item.shard_seq
        # a gap the clock jumped over in one go (a replay, a drained backlog) was still a gap
        out: list[Event] = self._in_context(self._offline.on_timer(now)) if self._duty(now) else []
        out += self._in_context(self._offline.update(now, reading.fix_time, cell))
        # the clock moves the watermark first, as a wake-up would have: a reading whose fix time
        # the fleet clock passed more than reorder_max_delay_s ago is late, whether or not a
        # timer happened to wake this vehicle while it was silent (a link cut, an outbox burst)
        for released in self._buffer.on_timer(now):
            out += self._release(released, now)
        for released in self._buffer.push((reading, cell), reading.fix_time):
            out += self._release(released, now)
        self._duty(now)  # what the reading changed (a start, the last stop) decides the next wake-up
        return out

    def on_timer(self, now: datetime) -> list[Event]:
        """Run what is due at fleet-clock time ``now``: corrections, buffer flush, timers, offline."""
        out: list[Event] = self._in_context(self._offline.on_timer(now)) if self._duty(now) else []
        if self._corrector.pending_us is not None:
            corrected, replayed = self._corrector.correct()
            self.lateness.too_late_readings += self._corrector.unreplayed
            self._corrector.unreplayed = 0
            out += corrected
            self.lateness.corrections += 1
            self.lateness.replayed_entries += replayed
            self._pending_since = None
        for released in self._buffer.on_timer(now):
            out += self._release(released, now)
        out += self._corrector.advance(now - self._max_delay)
        self._duty(now)
        return out

    def next_timer(self) -> datetime | None:
        """Server time (UTC) at which ``on_timer`` should next run; None when nothing is due."""
        dues = [self._buffer.next_timer(), self._pending_since]
        if self._on_duty:
            dues.append(self._offline.next_timer())
            ends_at = self._ends_at()
            if ends_at is not None:
                dues.append(ends_at)  # off duty then: recompute what is due
        tracker_due = self.trackers.next_timer()
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
        if now is None or self.trackers.time is None:
            return self._corrector.process((0, _PLAN, active))  # at 1970: before every reading
        out = self.on_timer(now)
        t = now - self._max_delay
        frontier = self.trackers.time
        if frontier is not None and frontier > t:
            t = frontier
        out += self._corrector.process((us(t), _PLAN, active))
        self._duty(now)
        return out

    def attach_history(self, readings: StoreReadings) -> None:
        """Call right after unpickling: where the first replay that reaches behind the snapshot
        reloads the readings it left out (``correction.py``, Snapshot). Of the store's readings
        in the gap, those this state had taken in: up to the last ``shard_seq`` of each shard
        it saw, less those still in its reorder buffer (they are released later, as live)."""
        seen = dict(self._seen or {})
        held = Counter(_encode(reading, cell) for reading, cell in self._buffer.held())
        tenant, vehicle = self.tenant, self.vehicle

        def load(from_us: int, to_us: int) -> list[Row]:
            items = [
                i
                for i in readings(
                    tenant, vehicle, at_us(max(from_us, 0)), at_us(to_us)
                )  # from the genesis checkpoint: 1970
                if i.shard_seq <= seen.get(i.shard, -1)
            ]
            items.sort(key=lambda i: (i.shard, i.shard_seq))  # the order they were taken in
            rows, skip = [], Counter(held)
            for item in items:
                row = _encode(item.reading, self._cell(item))
                if skip[row] > 0:
                    skip[row] -= 1
                else:
                    rows.append(row)
            return rows

        self._corrector.loader = load

    # ---------------------------------------------------------------- read-only views

    @property
    def trackers(self) -> VehicleTrackers:
        """The current tracker state (read it, do not change it)."""
        return self._corrector.state

    @property
    def plan(self) -> Plan | None:
        active = self.trackers.active
        return active.plan if active is not None else None

    @property
    def on_duty(self) -> bool:
        """Whether the vehicle is on duty (see ``duty_at``) at its event-time frontier."""
        return self.duty_at(self.trackers.time)

    def duty_at(self, now: datetime | None) -> bool:
        """Whether a silence at fleet-clock time ``now`` would be ``offline``.

        Off duty: last seen inside its plan's last stop (arrived or not: a device going quiet
        there ends the shift there) or close enough to it to be there before its next report
        was due (a device reporting every minute may go quiet between its last fix on the road
        and the stop), once the round has begun; or its plan is finished (the last stop arrived at) or over
        by time (``ActivePlan.ends_at``) and it is not driving. A new plan with stops to do, or
        movement, puts it back on duty: a van that drives off after its round and goes silent
        on the road is offline; one that parks and goes quiet is not. Without a plan a vehicle
        is always on duty.
        """
        trackers = self.trackers
        if trackers.active is None:
            return True
        geofence = trackers.geofence
        if geofence.at_final_stop() or self._reaching_final_stop():
            return False
        if trackers.motion.moving:
            return True
        if geofence.finished():
            return False
        ends_at = trackers.active.ends_at
        if now is not None and ends_at is not None and now >= ends_at:
            return False
        return geofence.visit is not None or geofence.next_stop() is not None  # stops remain

    def _reaching_final_stop(self) -> bool:
        """The round has begun and the plan's last stop is still ahead, and at the last fix's
        speed the vehicle would have reached its circle within one reporting interval (the
        cadence's ``silence_s`` over ``silence_factor``)."""
        trackers = self.trackers
        fix, geofence = trackers.position, trackers.geofence
        if fix is None or fix.speed_mps is None or trackers.active is None or not geofence.away_from_final:
            return False
        last = trackers.active.plan.stops[-1]
        if last.id in geofence.arrivals:
            return False
        interval = fix.silence_s / max(self.config.silence_factor, 1.0)
        gap = haversine_m(fix.lat, fix.lon, last.lat, last.lon) - last.radius_m
        return gap <= fix.speed_mps * interval

    def _ends_at(self) -> datetime | None:
        active = self.trackers.active
        return active.ends_at if active is not None else None

    def _duty(self, now: datetime) -> bool:
        """On duty at ``now``; coming back on duty restarts the offline clock there (a van
        parked overnight that gets a new plan is not offline since last night)."""
        duty = self.duty_at(now)
        if duty and not self._on_duty:
            self._offline.resume(now)
        self._on_duty = duty
        return duty

    def emitted(self) -> list[Event]:
        """The latest version of every event still within the correction window, as emitted."""
        return self._corrector.emitted()

    def ledger_horizon(self) -> datetime | None:
        """Event time from which ``emitted()`` holds every event this state emitted (open
        alerts: all of them); None before the first reading."""
        return self._corrector.horizon()

    @property
    def history_size(self) -> int:
        """Readings and plan changes kept for corrections."""
        return self._corrector.history_size

    # ---------------------------------------------------------------- internals

    _offline_contexts: Contexts | None = None  # class default: state pickled before it existed still loads

    def _in_context(self, alerts: list[Alert]) -> list[Event]:
        """Offline alerts (outside the replayable trackers) with the place the vehicle was last heard."""
        if not alerts:
            return []
        if self._offline_contexts is None:
            self._offline_contexts = Contexts()
        return [self._offline_contexts.alert(a, self.trackers.place) for a in alerts]

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
        corrector = self._corrector
        behind = corrector.behind(row)
        if not behind and corrector.pending_us is None:
            return corrector.process(row, reading)
        if not corrector.defer(row):
            stats.too_late_readings += 1
            return []
        if behind:
            stats.corrected_readings += 1
        # the trackers are past it (or a correction is pending): replay on the next on_timer
        if self._pending_since is None:
            self._pending_since = now
        return []
