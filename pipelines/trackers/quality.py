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

Derived speed and heading
    Many trackers and phones send no speed. For an accepted fix without one, the speed
    is derived from the displacement since an earlier accepted fix at least
    ``derive_min_span_s`` back (the newest such of two anchors, so the baseline is one to
    two spans long at 1 Hz and one interval at sparse sampling), less the position noise
    (the fix's reported accuracy, else ``derive_noise_m``), so a parked receiver's jitter
    derives 0 m/s and not 2 m/s; or, when longer, the path driven since that fix (each
    step less the noise), so a vehicle going round a roundabout at 1 Hz does not derive a
    standstill from its small displacement. Over more than ``derive_max_span_s`` (a gap) it
    stays unknown. A heading is derived the same way when the displacement is clear of twice the
    noise. ``CheckedFix.speed_derived`` says which speed a fix carries.

Reporting cadence
    The filter learns the vehicle's usual interval between accepted fixes (a moving
    average, each sample capped at four times the current estimate so one long silence
    barely moves it). ``CheckedFix.silence_s`` is the longest gap after that fix still
    counted as seen: ``max(silence_min_s, silence_factor * interval)``, at most
    ``offline_after_s``. Trackers that time what they *saw* (dwell, arrivals) count a longer
    gap only up to it: silence is not evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from core.contract import GpsFix
from core.geo import bearing_deg, haversine_m
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert
from pipelines.trackers.state import restore_fields

__all__ = ["CheckedFix", "GpsQualityFilter", "USABLE_FLAGS"]

USABLE_FLAGS = (None, "jitter")


@dataclass(frozen=True, slots=True)
class CheckedFix:
    """A fix after the quality check: UTC time, degrees, m/s (reported, else derived: see
    ``speed_derived``), metres, H3 cell, reason code, heading in degrees (reported, else
    derived; None when unknown), and ``silence_s``: the longest gap after it that still
    counts as seen (seconds; the vehicle's reporting cadence)."""

    time: datetime
    lat: float
    lon: float
    speed_mps: float | None
    accuracy_m: float | None
    h3_cell: int | None
    flag: str | None = None
    heading_deg: float | None = None
    speed_derived: bool = False
    silence_s: float = 60.0

    def __setstate__(self, state: Any) -> None:  # states pickled before the last three fields existed
        restore_fields(self, state)

    @property
    def usable(self) -> bool:
        """Whether downstream trackers may use the position."""
        return self.flag in USABLE_FLAGS


_Anchor = tuple[float, float, float, float]  # (epoch seconds, lat, lon, metres driven since) of an accepted fix


class GpsQualityFilter:
    """Keeps the last accepted fix as reference; the state is a handful of numbers."""

    # class defaults: state pickled before these existed still loads
    interval_s: float | None = None
    _ref: _Anchor | None = None
    _ref_next: _Anchor | None = None

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.last: CheckedFix | None = None  # last accepted fix
        self.alert: Alert | None = None  # open gps_jump alert
        self._jumped: CheckedFix | None = None  # last rejected jump
        self._jump_run = 0  # consecutive mutually consistent jumped fixes
        self._max_implied_mps = 0.0
        self.interval_s = None  # usual seconds between accepted fixes
        self._ref = self._ref_next = None  # anchors of the derived speed

    def update(self, fix: GpsFix, h3_cell: int | None) -> tuple[CheckedFix, list[Alert]]:
        """Check one fix (in fix-time order); returns it flagged, plus gps_jump alert changes."""
        cfg = self.config
        checked = CheckedFix(
            fix.fix_time, fix.lat, fix.lon, fix.speed_mps, fix.accuracy_m, h3_cell, None, fix.heading_deg
        )
        if fix.accuracy_m is not None and fix.accuracy_m > cfg.max_accuracy_m:
            return _flag(checked, "low_accuracy"), []
        last = self.last
        if last is None:
            checked = self._accept(checked, None)
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
        return self._accept(checked, dt), events

    def silence_s(self) -> float:
        """The longest gap after the last accepted fix that still counts as seen (seconds)."""
        cfg = self.config
        usual = cfg.silence_factor * self.interval_s if self.interval_s is not None else 0.0
        return min(max(cfg.silence_min_s, usual), max(cfg.silence_min_s, cfg.offline_after_s))

    def _accept(self, checked: CheckedFix, gap_s: float | None) -> CheckedFix:
        """Make ``checked`` the reference: learn the cadence, derive a missing speed and heading."""
        cfg = self.config
        if gap_s is not None:
            usual = self.interval_s
            sample = min(gap_s, cfg.offline_after_s, 4.0 * usual if usual is not None else gap_s)
            self.interval_s = sample if usual is None else usual + 0.3 * (sample - usual)
        t = checked.time.timestamp()
        speed, heading, derived = checked.speed_mps, checked.heading_deg, False
        noise = checked.accuracy_m if checked.accuracy_m is not None else cfg.derive_noise_m
        noise = min(max(noise, 0.0), cfg.jitter_radius_m)
        ref, nxt, last = self._ref, self._ref_next, self.last
        if ref is None or nxt is None or last is None or t - nxt[0] > cfg.derive_max_span_s:
            self._ref = self._ref_next = (t, checked.lat, checked.lon, 0.0)  # first fix, or after a gap: start again
        else:
            step = max(0.0, haversine_m(last.lat, last.lon, checked.lat, checked.lon) - noise)
            ref, nxt = (*ref[:3], ref[3] + step), (*nxt[:3], nxt[3] + step)
            base = nxt if t - nxt[0] >= cfg.derive_min_span_s else ref
            span = t - base[0]
            if cfg.derive_min_span_s <= span <= cfg.derive_max_span_s and (speed is None or heading is None):
                d = haversine_m(base[1], base[2], checked.lat, checked.lon)
                if speed is None:
                    # the displacement, or on a curve (a roundabout at 1 Hz) the path it took, less the noise
                    speed, derived = max(max(0.0, d - noise), base[3]) / span, True
                if heading is None and d > 2.0 * noise:
                    heading = round(bearing_deg(base[1], base[2], checked.lat, checked.lon), 1)
            if t - nxt[0] >= cfg.derive_min_span_s:
                ref, nxt = nxt, (t, checked.lat, checked.lon, 0.0)
            self._ref, self._ref_next = ref, nxt
        checked = CheckedFix(
            checked.time,
            checked.lat,
            checked.lon,
            speed,
            checked.accuracy_m,
            checked.h3_cell,
            checked.flag,
            heading,
            derived,
            self.silence_s(),
        )
        self.last = checked
        return checked

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
                details={
                    "lat": checked.lat,
                    "lon": checked.lon,
                    "implied_speed_mps": round(implied_mps, 1),
                    "limit_mps": cfg.max_speed_mps,
                },
            )
            events.append(self.alert)
        if self._jump_run >= cfg.jump_confirm_fixes:
            # the receiver really is somewhere else (cold start, device moved): re-anchor there
            events.append(self._resolve(checked.time, relocated=True))
            self._jumped, self._jump_run = None, 0
            self._ref = self._ref_next = None  # no speed across the relocation
            return self._accept(checked, (checked.time - self.last.time).total_seconds() if self.last else None), events
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
    return replace(fix, flag=reason)
