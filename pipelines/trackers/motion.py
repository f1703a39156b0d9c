"""Moving / stopped with hysteresis, robust to parked GPS jitter of 10-20 m.

- Stopping: slow fixes (reported speed below ``stop_speed_mps``, or none reported)
  that stay within ``stop_radius_m`` of the first of them for ``stop_confirm_s``
  make the vehicle stopped *since that first fix*, or since the fix before it when that
  one lay within ``jitter_radius_m`` (a speed derived over the last interval still
  counts the driving before the stop, so at a fix every 30 s the first slow fix comes
  one interval after the vehicle was already standing there). If the device goes quiet
  the stop is confirmed by ``on_timer`` at the same instant ("no news, still there").
- Starting: ``start_confirm_fixes`` consecutive fixes at ``start_speed_mps`` or more
  that are also beyond ``jitter_radius_m`` of the stop, or one fix
  ``start_distance_m`` from it. Jitter never gets that far and a Doppler speed spike
  is neither consecutive nor displaced. The start time is the first fast fix, or the
  first fix that left ``stop_radius_m`` of the stop.
- Creeping: a stopped vehicle whose slow fixes settle more than ``stop_radius_m`` from
  where it stopped (but less than ``start_distance_m``: a bus that pulls out of its stop
  and waits 60 m on) stands somewhere else now. Once they have stayed within
  ``stop_radius_m`` of the first of them for ``stop_confirm_s`` the anchor moves there
  (``anchor`` changes; no transition: it stood throughout), so the dwell is judged where it
  stands and a later start dates from leaving that spot, not from the creep.

The state before the first decision is unknown (``moving`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.geo import haversine_m
from core.thresholds import AnalyticsConfig
from pipelines.trackers.quality import CheckedFix

__all__ = ["MotionChange", "MotionTracker"]


@dataclass(frozen=True, slots=True)
class MotionChange:
    """The vehicle started (``moving``) or stopped at ``since`` (UTC), at (lat, lon) degrees (a stop:
    the latest fix when it was confirmed, where it stands)."""

    moving: bool
    since: datetime
    lat: float
    lon: float
    h3_cell: int | None


class MotionTracker:
    """Motion state machine over usable fixes in fix-time order."""

    def __init__(self, config: AnalyticsConfig) -> None:
        self.config = config
        self.moving: bool | None = None
        self.since: datetime | None = None
        self.anchor: CheckedFix | None = None  # where it stopped (while stopped)
        self._candidate: CheckedFix | None = None  # first slow fix of a possible stop (while not stopped)
        self._left_at: datetime | None = None  # first fix outside stop_radius_m of the anchor
        self._fast_run = 0
        self._fast_since: datetime | None = None
        self._prev: CheckedFix | None = None  # the fix before the current one
        self._shift: CheckedFix | None = None  # while stopped: first slow fix of a calm spot beyond stop_radius_m

    # class defaults: state pickled before they existed still loads
    _prev: CheckedFix | None = None
    _shift: CheckedFix | None = None

    def update(self, fix: CheckedFix) -> list[MotionChange]:
        """Feed one usable fix; returns the transitions it caused (at most one)."""
        prev, self._prev = self._prev, fix
        return self._update(fix, prev)

    def _update(self, fix: CheckedFix, prev: CheckedFix | None) -> list[MotionChange]:
        cfg = self.config
        speed = fix.speed_mps
        if speed is not None and speed >= cfg.start_speed_mps:
            self._fast_run += 1
            if self._fast_since is None:
                self._fast_since = fix.time
        else:
            self._fast_run, self._fast_since = 0, None
        fast_enough = self._fast_run >= cfg.start_confirm_fixes

        if self.moving is False:
            assert self.anchor is not None
            d = haversine_m(self.anchor.lat, self.anchor.lon, fix.lat, fix.lon)
            if d <= cfg.stop_radius_m:
                self._left_at = None
            elif self._left_at is None:
                self._left_at = fix.time
            # speed alone could be a Doppler spike: it must come with some displacement beyond jitter
            starts = [
                t
                for t, ok in (
                    (self._fast_since, fast_enough and d > cfg.jitter_radius_m),
                    (self._left_at, d >= cfg.start_distance_m),
                )
                if ok and t is not None
            ]
            if starts:
                return [self._set(True, min(starts), fix)]
            self._creep(fix, d)
            return []

        out: list[MotionChange] = []
        if self.moving is None and fast_enough:
            assert self._fast_since is not None
            out.append(self._set(True, self._fast_since, fix))
        if speed is None or speed < cfg.stop_speed_mps:
            cand = self._candidate
            if cand is None or haversine_m(cand.lat, cand.lon, fix.lat, fix.lon) > cfg.stop_radius_m:
                close = prev is not None and haversine_m(prev.lat, prev.lon, fix.lat, fix.lon) <= cfg.jitter_radius_m
                self._candidate = prev if close and prev is not None else fix
            out += self.on_timer(fix.time)
        else:
            self._candidate = None
        return out

    def _creep(self, fix: CheckedFix, d: float) -> None:
        """While stopped: move the anchor to a calm spot beyond ``stop_radius_m`` of it (see above)."""
        cfg = self.config
        slow = fix.speed_mps is None or fix.speed_mps < cfg.stop_speed_mps
        shift = self._shift
        if d <= cfg.stop_radius_m or not slow:
            self._shift = None
        elif shift is None or haversine_m(shift.lat, shift.lon, fix.lat, fix.lon) > cfg.stop_radius_m:
            self._shift = fix
        elif fix.time - shift.time >= timedelta(seconds=cfg.stop_confirm_s):
            self.anchor, self._shift, self._left_at = shift, None, None

    def on_timer(self, now: datetime) -> list[MotionChange]:
        """Confirm a stop whose calm window has passed, even with no newer fix."""
        cand = self._candidate
        calm = timedelta(seconds=self.config.stop_confirm_s)
        if self.moving is not False and cand is not None and now - cand.time >= calm:
            self.anchor = cand
            # where it stands is the latest fix, not the candidate: that may be the fix before the
            # first slow one, taken while still rolling out of a stop's fence
            return [self._set(False, cand.time, self._prev if self._prev is not None else cand)]
        return []

    def next_timer(self) -> datetime | None:
        """Fix time at which a pending stop is confirmed."""
        if self.moving is not False and self._candidate is not None:
            return self._candidate.time + timedelta(seconds=self.config.stop_confirm_s)
        return None

    def _set(self, moving: bool, since: datetime, where: CheckedFix) -> MotionChange:
        self.moving, self.since = moving, since
        self._candidate, self._left_at, self._shift = None, None, None
        if moving:
            self.anchor = None
            self._fast_run, self._fast_since = 0, None
        return MotionChange(moving, since, where.lat, where.lon, where.h3_cell)
