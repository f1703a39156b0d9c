"""GPS fix quality: flag impossible jumps, poor accuracy, duplicates and parked jitter.

Every fix comes back as a ``CheckedFix`` with a ``flag`` reason code (None = clean):

- ``low_accuracy``: reported horizontal accuracy worse than ``max_accuracy_m``; not used.
- ``duplicate``: fix time not after the last accepted fix; not used.
- ``jump``: reaching it from the last accepted fix needs more than ``max_speed_mps``
  (after a ``jump_allowance_m`` noise allowance); not used. ``jump_confirm_fixes``
  consecutive, mutually consistent jumped fixes are taken as a real relocation.
- ``jitter``: slow and within ``jitter_radius_m`` of the last accepted fix: usable,
  but its movement is noise (a map should not move the marker).

A run of jumps raises one ``gps_jump`` alert, resolved by the next accepted fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.contract import GpsFix
from core.geo import haversine_m
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert

__all__ = ["CheckedFix", "GpsQualityFilter", "USABLE_FLAGS"]

USABLE_FLAGS = (None, "jitter")


@dataclass(frozen=True, slots=True)
class CheckedFix:
    """A fix after the quality check: UTC time, degrees, m/s, metres, H3 cell, reason code."""

    time: datetime
    lat: float
    lon: float
    speed_mps: float | None
    accuracy_m: float | None
    h3_cell: int | None
    flag: str | None = None

    @property
    def usable(self) -> bool:
        """Whether downstream trackers may use the position."""
        return self.flag in USABLE_FLAGS


class GpsQualityFilter:
    """Keeps the last accepted fix as reference; the state is a handful of numbers."""

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.last: CheckedFix | None = None  # last accepted fix
        self.alert: Alert | None = None  # open gps_jump alert
        self._jumped: CheckedFix | None = None  # last rejected jump
        self._jump_run = 0  # consecutive mutually consistent jumped fixes
        self._max_implied_mps = 0.0

    def update(self, fix: GpsFix, h3_cell: int | None) -> tuple[CheckedFix, list[Alert]]:
        """Check one fix (in fix-time order); returns it flagged, plus gps_jump alert changes."""
        cfg = self.config
        checked = CheckedFix(fix.fix_time, fix.lat, fix.lon, fix.speed_mps, fix.accuracy_m, h3_cell)
        if fix.accuracy_m is not None and fix.accuracy_m > cfg.max_accuracy_m:
            return _flag(checked, "low_accuracy"), []
        last = self.last
        if last is None:
            self.last = checked
            return checked, []
        dt = (fix.fix_time - last.time).total_seconds()
        if dt <= 0:
            return _flag(checked, "duplicate"), []
        d = haversine_m(last.lat, last.lon, fix.lat, fix.lon)
        if d > cfg.max_speed_mps * dt + cfg.jump_allowance_m:
            return self._jump(checked, d / dt)
        events: list[Alert] = []
        if self.alert is not None:
            events.append(self._resolve(fix.fix_time, relocated=False))
        self._jumped, self._jump_run = None, 0
        slow = fix.speed_mps is None or fix.speed_mps < cfg.stop_speed_mps
        if slow and d < cfg.jitter_radius_m:
            checked = _flag(checked, "jitter")
        self.last = checked
        return checked, events

    def _jump(self, checked: CheckedFix, implied_mps: float) -> tuple[CheckedFix, list[Alert]]:
        cfg = self.config
        events: list[Alert] = []
        prev = self._jumped
        consistent = False
        if prev is not None:
            dt = (checked.time - prev.time).total_seconds()
            consistent = dt > 0 and haversine_m(prev.lat, prev.lon, checked.lat, checked.lon) <= (
                cfg.max_speed_mps * dt + cfg.jump_allowance_m
            )
        self._jump_run = self._jump_run + 1 if consistent else 1
        self._jumped = checked
        self._max_implied_mps = max(self._max_implied_mps, implied_mps) if self.alert else implied_mps
        if self.alert is None:
            self.alert = new_alert(
                "gps_jump",
                self.tenant,
                self.vehicle,
                checked.time,
                h3_cell=checked.h3_cell,
                details={"lat": checked.lat, "lon": checked.lon, "implied_speed_mps": round(implied_mps, 1)},
            )
            events.append(self.alert)
        if self._jump_run >= cfg.jump_confirm_fixes:
            # the receiver really is somewhere else (cold start, device moved): re-anchor there
            events.append(self._resolve(checked.time, relocated=True))
            self._jumped, self._jump_run = None, 0
            self.last = checked
            return checked, events
        return _flag(checked, "jump"), events

    def _resolve(self, end: datetime, relocated: bool) -> Alert:
        assert self.alert is not None
        resolved = self.alert.resolve(end, relocated=relocated, max_implied_speed_mps=round(self._max_implied_mps, 1))
        self.alert = None
        return resolved

    def on_timer(self, now: datetime) -> list[Alert]:
        """No timers: a jump resolves only with a fix."""
        return []

    def next_timer(self) -> datetime | None:
        return None


def _flag(fix: CheckedFix, reason: str) -> CheckedFix:
    return CheckedFix(fix.time, fix.lat, fix.lon, fix.speed_mps, fix.accuracy_m, fix.h3_cell, reason)
