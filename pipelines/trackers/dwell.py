"""Dwell: too long at a planned stop (``long_dwell``), or stopped away from every stop
(``unplanned_dwell``), judged against a baseline where one is known.

The threshold for a dwell starting at time t in H3 cell c (resolution
``cell_resolution``; the stop's own cell for stop dwells) is
``max(dwell_min_threshold_s, dwell_baseline_factor * baseline(c, hour_of_week(t)))``
when the baseline knows the place and hour, otherwise the fixed ``long_dwell_s`` /
``unplanned_dwell_s``. The alert starts at the dwell's start and resolves when the
vehicle moves on (unplanned) or departs (at a stop).

Silence is not evidence
    The clock counts time the vehicle was *seen* standing, not time nobody heard from it.
    Each gap between two fixes counts up to the ``silence_s`` of the fix before it (the
    vehicle's reporting cadence, ``quality.py``: about twice its usual interval, at least
    ``silence_min_s``); the rest of a longer gap is a silence, which the offline tracker
    owns. The alert opens from ``on_timer`` once the seen time reaches the threshold,
    counting the time since the last fix up to that same allowance, so it still fires
    between fixes of a vehicle that keeps reporting. A vehicle that reappears after a
    silence more than ``stop_radius_m`` from where it stood was not dwelling: its dwell
    ends at the last fix seen there (``details["left_during_silence"]``).

Standing away from every stop is judged where the vehicle stands when the stop is confirmed
(inside a stop circle, or its exit band while a visit is open: ``GeofenceTracker.stands_at_stop``),
and again when it departs a stop or creeps on while still standing (``stand_away``): a bus that
pulls out of its stop and waits 60 m on makes no motion change, but it is dwelling away.

Unplanned dwell needs a plan with stops still to do: a vehicle with no plan, or
heading home after its last stop, may park anywhere. The stay at the plan's last stop
is the end of the shift (the vehicle is off duty there): it is not timed.

Service time at a stop (arrival to departure, seconds) is on the departure event
(``details["service_s"]``) and on the resolved long_dwell alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.geo import haversine_m
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, StopEvent, new_alert
from pipelines.trackers.motion import MotionChange
from pipelines.trackers.quality import CheckedFix
from pipelines.trackers.state import restore_fields

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
    seen_s: float = 0.0  # seconds seen standing up to seen_to
    seen_to: datetime | None = None  # the last fix counted

    def __setstate__(self, state: Any) -> None:  # states pickled before seen_s / seen_to
        restore_fields(self, state)
        if self.seen_to is None:  # as the older version counted: all of it, from the start to now
            self.seen_to = self.since
            self.seen_s = -1.0  # marks it: the next fix credits everything since the start


class DwellTracker:
    """Follows motion changes and stop events; raises dwell alerts from its timer."""

    # class defaults: state pickled before they existed still loads
    last_fix: datetime | None = None
    silence_s: float = 60.0

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.away: _Dwell | None = None  # stopped away from every stop
        self.at_stop: _Dwell | None = None  # between arrival and departure
        self.last_fix = None  # time of the last usable fix
        self.silence_s = config.silence_min_s  # its silence_s: the longest gap after it still seen

    def _threshold(
        self, cell: int | None, since: datetime, fixed_s: float, baseline: Baseline | None
    ) -> tuple[float, float | None]:
        typical = baseline(cell, hour_of_week(since)) if baseline is not None and cell is not None else None
        if typical is None:
            return fixed_s, None
        cfg = self.config
        return max(cfg.dwell_min_threshold_s, cfg.dwell_baseline_factor * typical), typical

    def _start(self, dwell: _Dwell) -> _Dwell:
        # the fixes between its start and now were seen (motion confirms a stop on a calm window)
        last = self.last_fix
        if last is not None and last > dwell.since:
            dwell.seen_s, dwell.seen_to = (last - dwell.since).total_seconds(), last
        else:
            dwell.seen_to = dwell.since
        return dwell

    def observe(self, fix: CheckedFix) -> list[Alert]:
        """A usable fix (call before ``on_motion`` / ``on_stop_event`` for it): counts the
        time since the last fix as seen, up to the allowance; ends an away dwell the vehicle
        was seen to have left during a silence."""
        out: list[Alert] = []
        allowance = self.silence_s
        for dwell in (self.away, self.at_stop):
            if dwell is None or dwell.seen_to is None or fix.time <= dwell.seen_to:
                continue
            gap = (fix.time - dwell.seen_to).total_seconds()
            if dwell.seen_s < 0:  # restored from an older state (see _Dwell.__setstate__)
                dwell.seen_s, allowance_here = 0.0, gap
            else:
                allowance_here = allowance
            if dwell is self.away and gap > allowance and dwell.lat is not None and dwell.lon is not None:
                if haversine_m(dwell.lat, dwell.lon, fix.lat, fix.lon) > self.config.stop_radius_m:
                    out += self._end_away(dwell.seen_to, left_during_silence=True)
                    continue
            dwell.seen_s += min(gap, allowance_here)
            dwell.seen_to = fix.time
        self.last_fix, self.silence_s = fix.time, fix.silence_s
        return out

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
            self.away = self._start(
                _Dwell(change.since, change.h3_cell, threshold, typical, None, change.lat, change.lon)
            )
        return out

    def stand_away(
        self, since: datetime, lat: float, lon: float, h3_cell: int | None, baseline: Baseline | None
    ) -> None:
        """Stopped away from every stop since ``since`` (UTC) at (lat, lon) degrees, found out
        without a motion change (``VehicleTrackers._standing_away``): starts the away dwell."""
        if self.away is None:
            threshold, typical = self._threshold(h3_cell, since, self.config.unplanned_dwell_s, baseline)
            self.away = self._start(_Dwell(since, h3_cell, threshold, typical, None, lat, lon))

    def on_stop_event(
        self, event: StopEvent, stop_cell: int | None, baseline: Baseline | None, timed: bool = True
    ) -> list[Alert]:
        """An arrival starts a stop dwell (and ends an away dwell); a departure ends it.
        ``timed`` False: a stay not to be timed (the plan's last stop: the end of the shift)."""
        out: list[Alert] = []
        if event.kind == "arrival":
            if self.away is not None:
                out += self._end_away(event.at)
            if self.at_stop is not None and self.at_stop.alert is not None:  # left for the next stop
                out.append(
                    self.at_stop.alert.resolve(event.at, service_s=(event.at - self.at_stop.since).total_seconds())
                )
            self.at_stop = None
            if timed:
                threshold, typical = self._threshold(stop_cell, event.at, self.config.long_dwell_s, baseline)
                self.at_stop = self._start(_Dwell(event.at, stop_cell, threshold, typical, event.stop_id))
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
        """Open the alerts whose seen time has reached the threshold."""
        out: list[Alert] = []
        for dwell, kind in ((self.away, "unplanned_dwell"), (self.at_stop, "long_dwell")):
            due = self._due(dwell)
            if dwell is not None and due is not None and now >= due:
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
        dues = [d for d in (self._due(self.away), self._due(self.at_stop)) if d is not None]
        return min(dues) if dues else None

    def _due(self, dwell: _Dwell | None) -> datetime | None:
        """When the seen time reaches the threshold with no further fix: within the allowance
        after the last fix, else never (more fixes must show it is still there)."""
        if dwell is None or dwell.alert is not None or dwell.seen_to is None:
            return None
        left = dwell.threshold_s - dwell.seen_s
        allowance = self.silence_s if self.last_fix is not None and self.last_fix >= dwell.seen_to else 0.0
        if left > max(allowance, 0.0):
            return None
        return dwell.seen_to + timedelta(seconds=max(0.0, left))

    def _end_away(self, end: datetime, **extra: object) -> list[Alert]:
        dwell, self.away = self.away, None
        if dwell is None or dwell.alert is None:
            return []
        end = max(end, dwell.alert.start)
        return [dwell.alert.resolve(end, duration_s=(end - dwell.since).total_seconds(), **extra)]
