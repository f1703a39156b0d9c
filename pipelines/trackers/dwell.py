"""Dwell: too long at a planned stop (``long_dwell``), or stopped away from every stop
(``unplanned_dwell``), judged against a baseline where one is known.

The threshold for a dwell starting at time t in H3 cell c (resolution
``cell_resolution``; the stop's own cell for stop dwells) is
``max(dwell_min_threshold_s, dwell_baseline_factor * baseline(c, hour_of_week(t)))``
when the baseline knows the place and hour, otherwise the fixed ``long_dwell_s`` /
``unplanned_dwell_s``. The alert opens from ``on_timer`` at start + threshold even when
no more data arrives; it starts at the dwell's start and resolves when the vehicle
moves on (unplanned) or departs (at a stop).

Unplanned dwell needs a plan with stops still to do: a vehicle with no plan, or
heading home after its last stop, may park anywhere.

Service time at a stop (arrival to departure, seconds) is on the departure event
(``details["service_s"]``) and on the resolved long_dwell alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, StopEvent, new_alert
from pipelines.trackers.motion import MotionChange

__all__ = ["Baseline", "DwellTracker", "hour_of_week"]

Baseline = Callable[[int, int], float | None]
"""``baseline(h3_cell, hour_of_week) -> typical dwell in seconds, or None when unknown``."""


def hour_of_week(t: datetime) -> int:
    """Hour of the week in UTC: 0 = Monday 00:00-01:00 UTC, 167 = Sunday 23:00-24:00 UTC."""
    t = t.astimezone(UTC)
    return t.weekday() * 24 + t.hour


@dataclass(slots=True)
class _Dwell:
    since: datetime
    h3_cell: int | None
    threshold_s: float
    baseline_s: float | None
    stop_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    alert: Alert | None = None

    @property
    def due(self) -> datetime:
        return self.since + timedelta(seconds=self.threshold_s)


class DwellTracker:
    """Follows motion changes and stop events; raises dwell alerts from its timer."""

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.away: _Dwell | None = None  # stopped away from every stop
        self.at_stop: _Dwell | None = None  # between arrival and departure

    def _threshold(
        self, cell: int | None, since: datetime, fixed_s: float, baseline: Baseline | None
    ) -> tuple[float, float | None]:
        typical = baseline(cell, hour_of_week(since)) if baseline is not None and cell is not None else None
        if typical is None:
            return fixed_s, None
        cfg = self.config
        return max(cfg.dwell_min_threshold_s, cfg.dwell_baseline_factor * typical), typical

    def on_motion(
        self, change: MotionChange, at_stop: bool | None, stops_remaining: bool, baseline: Baseline | None
    ) -> list[Alert]:
        """A motion change; ``at_stop`` tells whether the stop position is at a planned stop."""
        out: list[Alert] = []
        if change.moving:
            if self.away is not None:
                out += self._end_away(change.since)
        elif at_stop is False and stops_remaining:
            threshold, typical = self._threshold(change.h3_cell, change.since, self.config.unplanned_dwell_s, baseline)
            self.away = _Dwell(change.since, change.h3_cell, threshold, typical, None, change.lat, change.lon)
        return out

    def on_stop_event(self, event: StopEvent, stop_cell: int | None, baseline: Baseline | None) -> list[Alert]:
        """An arrival starts a stop dwell (and ends an away dwell); a departure ends it."""
        out: list[Alert] = []
        if event.kind == "arrival":
            if self.away is not None:
                out += self._end_away(event.at)
            threshold, typical = self._threshold(stop_cell, event.at, self.config.long_dwell_s, baseline)
            self.at_stop = _Dwell(event.at, stop_cell, threshold, typical, event.stop_id)
        elif self.at_stop is not None and self.at_stop.stop_id == event.stop_id:
            dwell, self.at_stop = self.at_stop, None
            if dwell.alert is not None:
                out.append(dwell.alert.resolve(event.at, service_s=(event.at - dwell.since).total_seconds()))
        return out

    def replan(self, at_stop: bool | None, stops_remaining: bool, now: datetime) -> list[Alert]:
        """After a plan change: an away dwell that is now at a stop, or has no stops left, ends."""
        if self.away is not None and (at_stop is not False or not stops_remaining):
            return self._end_away(now)
        return []

    def on_timer(self, now: datetime) -> list[Alert]:
        """Open the alerts whose threshold has passed."""
        out: list[Alert] = []
        for dwell, kind in ((self.away, "unplanned_dwell"), (self.at_stop, "long_dwell")):
            if dwell is not None and dwell.alert is None and now >= dwell.due:
                details: dict[str, object] = {"threshold_s": dwell.threshold_s, "baseline_s": dwell.baseline_s}
                if dwell.lat is not None:
                    details.update(lat=dwell.lat, lon=dwell.lon)
                dwell.alert = new_alert(
                    kind,
                    self.tenant,
                    self.vehicle,
                    dwell.since,
                    stop_id=dwell.stop_id,
                    h3_cell=dwell.h3_cell,
                    details=details,
                )
                out.append(dwell.alert)
        return out

    def next_timer(self) -> datetime | None:
        dues = [d.due for d in (self.away, self.at_stop) if d is not None and d.alert is None]
        return min(dues) if dues else None

    def _end_away(self, end: datetime) -> list[Alert]:
        dwell, self.away = self.away, None
        if dwell is None or dwell.alert is None:
            return []
        return [dwell.alert.resolve(end, duration_s=(end - dwell.since).total_seconds())]
