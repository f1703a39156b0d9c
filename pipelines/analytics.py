"""What the dataflow keeps per vehicle, and what it hands the sinks.

``VehicleEngine`` joins the three per-vehicle concerns the flow's analytics step
runs: the basic state (last fix, counts: ``vehicle_state.py``), the analytics
trackers (``trackers/vehicle.py``) and the H3 minute contributions (``cells.py``).
It returns plain output values that the sinks translate into rows. Pure: the
clock values are passed in (``now`` is the fleet clock, see ``clock.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import h3.api.basic_int as h3

from core.contract import GpsFix
from core.plan import Plan
from core.thresholds import AnalyticsConfig, EtaConfig
from pipelines.baselines import dwell_baseline
from pipelines.cells import CellMinute, CellMinutes
from pipelines.trackers.eta import EtaTracker
from pipelines.trackers.events import Alert, EtaUpdate, Event, StopEvent
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading, VehicleState, VehicleSummary

__all__ = ["EventOut", "PlanUpdate", "Resynced", "VehicleEngine", "Output"]


@dataclass(frozen=True, slots=True)
class PlanUpdate:
    """A stored plan revision, in plan_seq (commit) order."""

    plan: Plan
    plan_seq: int
    received_at: datetime

    @property
    def key(self) -> str:
        return f"{self.plan.tenant}/{self.plan.vehicle}"


@dataclass(frozen=True, slots=True)
class EventOut:
    """An alert, stop event or ETA update as emitted, with when (fleet clock) it was raised
    and, for stop events and ETA updates, the stop's H3 cell and time window from the plan."""

    event: Event
    detected_at: datetime
    stop: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Resynced:
    """A resumed vehicle's claim on its stored results: of its alerts and stop events
    stored with an event time at or after ``horizon`` (and of its open alerts), only
    ``ids`` are its own. The rest were written after the snapshot it resumed from by a
    run that then crashed: the replay re-emits those that still hold (same ids), so the
    sink retracts the others. Offline alerts are left alone: they are not replayed."""

    tenant: str
    vehicle: str
    ids: tuple[str, ...]
    horizon: datetime | None  # None: the snapshot had analysed nothing, every stored result is a leftover


Output = VehicleSummary | EventOut | CellMinute | Resynced


class VehicleEngine:
    """One vehicle's state in the dataflow (pickled into Bytewax snapshots).

    ``eta``: the live ETA tracker's config (None: no ETAs, no ``predicted_late``); its models
    come from ``models.registry``, never from this state.
    """

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig, eta: EtaConfig | None = None) -> None:
        self.config = config
        self.basic = VehicleState(tenant, vehicle)
        hook = EtaTracker(tenant, vehicle, eta) if eta is not None else None
        self.analytics = VehicleAnalytics(tenant, vehicle, config, baseline=dwell_baseline, eta=hook)
        self.cells = CellMinutes(tenant, vehicle, keep_s=config.correction_window_s)

    # ------------------------------------------------------------------ inputs

    def on_reading(
        self, item: StoredReading, now: datetime, run_due: bool = True, summarize: bool = True
    ) -> list[Output]:
        """One committed reading; ``now`` is the fleet clock. Runs the timers due by ``now`` too,
        unless ``run_due`` is False: then the caller runs ``on_timer`` after the rest of its
        input batch (a burst of late readings then costs one replay, not one per reading).
        Ends with the H3 minute rows the reading changed and the vehicle's summary unless
        ``summarize`` is False: then the caller takes them once after the rest of its input
        batch (``batch_end``; the store keeps the last of each)."""
        out: list[Output] = []
        r = item.reading
        if isinstance(r, GpsFix) and item.h3_cell is not None:
            self.cells.add(r.fix_time, item.h3_cell, r.speed_mps)
        self.basic.observe(item)
        events = self.analytics.update(item, now)
        if run_due and (due := self.analytics.next_timer()) is not None and due <= now:
            events += self.analytics.on_timer(now)
        out += self._events(events, now)
        if summarize:
            out += self.batch_end()
        return out

    def batch_end(self) -> list[Output]:
        """The H3 minute rows changed since the last call, each as it stands, and the summary."""
        return [*self.cells.take_changed(), self.summary()]

    def on_plan(self, update: PlanUpdate, now: datetime | None) -> list[Output]:
        """A new plan revision (``now``: the fleet clock, None before the tenant's first reading)."""
        events = self.analytics.set_plan(update.plan, now)
        return [*self._events(events, now or update.received_at), self.summary()]

    def on_timer(self, now: datetime) -> list[Output]:
        """Run what is due at fleet-clock time ``now`` (nothing when nothing is)."""
        due = self.analytics.next_timer()
        if due is None or due > now:
            return []
        events = self.analytics.on_timer(now)
        return [*self._events(events, now), self.summary()] if events else []

    def resync(self, now: datetime) -> list[Output]:
        """Everything this vehicle's results currently say, for a sink that may be out of step.

        After a crash the state resumes from a snapshot, but the sinks may already hold
        results written after it; when the replay settles on what the snapshot had
        emitted, nothing would be re-emitted and those later writes would stay. So a
        resumed vehicle rewrites its whole (small) ledger once, and disowns the results
        the crashed run wrote that this state never emitted (``Resynced``).
        """
        emitted = self.analytics.emitted()
        claim = Resynced(
            self.basic.tenant, self.basic.vehicle, tuple(e.id for e in emitted), self.analytics.ledger_horizon()
        )
        return [claim, *self._events(emitted, now), self.summary()]

    def next_timer(self) -> datetime | None:
        """Fleet-clock time at which ``on_timer`` has something to do."""
        return self.analytics.next_timer()

    # ------------------------------------------------------------------ outputs

    def summary(self) -> VehicleSummary:
        """The basic summary plus motion, plan progress and lateness."""
        trackers = self.analytics.trackers
        geofence, motion, late = trackers.geofence, trackers.motion, self.analytics.lateness
        plan = self.analytics.plan
        nxt = geofence.next_stop()
        return replace(
            self.basic.summary(),
            motion=None if motion.moving is None else ("moving" if motion.moving else "stopped"),
            plan_version=plan.version if plan is not None else None,
            next_stop_id=nxt.id if nxt is not None else None,
            stops_remaining=len(geofence.remaining_stops()) if plan is not None else None,
            late_readings=late.late_readings,
            corrected_readings=late.corrected_readings,
            too_late_readings=late.too_late_readings,
            corrections=late.corrections,
            max_lateness_s=late.max_lateness_s,
            on_duty=self.analytics.on_duty,
        )

    def _events(self, events: list[Event], now: datetime) -> list[EventOut]:
        out: list[EventOut] = []
        plan = self.analytics.plan
        for event in events:
            stop = None
            if isinstance(event, (StopEvent, EtaUpdate)) and plan is not None:
                stop = self._stop_info(plan, event.stop_id)
            out.append(EventOut(event, now, stop))
        return out

    def _stop_info(self, plan: Plan, stop_id: str) -> dict[str, Any] | None:
        try:
            s = plan.stop(stop_id)
        except KeyError:
            return None
        return {
            "h3_cell": h3.latlng_to_cell(s.lat, s.lon, self.config.cell_resolution),
            "window_start": s.window_start,
            "window_end": s.window_end,
        }


def is_alert(out: Output) -> bool:
    """Whether an output carries an alert (for tests and metrics)."""
    return isinstance(out, EventOut) and isinstance(out.event, Alert)
