"""Doors: opened away from any stop (security) and open too long on a refrigerated load.

- ``door_open_away`` (critical): a door opened where the vehicle was outside every stop
  circle plus ``fence_exit_margin_m``. Where it was *when the door opened*: a device that
  reports every 30 s may have sent its last fix 200 m before the stop it is now standing
  at, so an opening after the last fix is judged on the next fix: where that fix is, when
  the door is still open then (a vehicle stands while a door is open), else (it closed in
  between) on the last position known; at the latest ``silence_s`` (the vehicle's cadence)
  after the opening, on the last position known. Needs a plan and a position: without
  them there is no telling where opening is expected.
- ``door_open_too_long``: a door of a refrigerated load (the plan's or the config's
  ``temp_range_c``) open for ``door_open_max_s``, from ``on_timer`` even when nothing
  else arrives, as long as the vehicle was heard within about a reporting interval
  (``silence_s / silence_factor``) before the limit; else its next reading decides. It must
  also have been *seen* where the door opened within that interval: if not (temperatures
  come, positions do not), the next fix decides (one elsewhere closed the door unheard,
  below: nothing is raised), or with no fix (a GPS-blind loading dock) a silence after the
  limit. Applies at stops too.

Doors report changes only, so a "closed" lost in a tunnel or a dead zone leaves a door open
that is not. Where the vehicle is next seen decides (a van does not drive off with its
reefer door open; one that stands where the door opened has not left it):

- after a silence (nothing from the vehicle for longer than ``silence_s``) an open door's
  state is unknown: no alert is raised or judged for it until the next usable fix. If that
  fix is where the door opened (within ``start_distance_m``, the motion tracker's "this far
  from where it stopped is driving"), the vehicle stood there all along and the door is
  taken to be still open, but its open time counts afresh from that fix (a door may close
  and open again unheard in a long silence: only time it was heard open counts towards
  ``door_open_max_s``); if it is elsewhere, the door is forgotten and its alerts resolve at the last
  reading before the silence (``details["silence"]``);
- a door still open on a vehicle seen ``start_distance_m`` from where it opened was closed
  unheard: its alerts resolve at the last fix where it stood (``details["closed_unheard"]``).

Either way a ``door_open_too_long`` raised at the limit whose door, so judged, was last known
open before the limit is retracted (the limit was confirmed on a belief the next fix undid).

A new "open" of a door whose state is unknown starts afresh.

Both start when the door opened and resolve when it closes; one alert per door and
condition (subject = door id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.contract import DoorEvent
from core.geo import haversine_m
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert
from pipelines.trackers.quality import CheckedFix
from pipelines.trackers.state import restore_fields

__all__ = ["AtStop", "DoorTracker"]

AtStop = Callable[[float, float, int | None], bool | None]
"""``at_stop(lat, lon, h3_cell)``: inside a stop circle plus the margin; None without a plan."""
StopWithin = Callable[[float, float, float], bool | None]
"""``stop_within(lat, lon, metres)``: some stop circle plus the margin that close; None without a plan."""


@dataclass(slots=True)
class _OpenDoor:
    since: datetime
    refrigerated: bool
    h3_cell: int | None
    away: Alert | None = None
    too_long: Alert | None = None
    before: CheckedFix | None = None  # the last fix before an opening still to be placed
    before_away: bool = False  # ... and whether it lay away from every stop (if no later fix places it)
    place: tuple[float, float] | None = None  # where the vehicle stood when it opened (lat, lon)
    stood: datetime | None = None  # the last fix there
    unsure: datetime | None = None  # after a silence: the last reading before it (the next fix decides)
    counted: datetime | None = None  # after a silence where it stood on: the open time counts from here

    def __setstate__(self, state: Any) -> None:  # states pickled before ``before`` existed
        restore_fields(self, state)


class DoorTracker:
    """Open doors of one vehicle."""

    # class defaults: state pickled before they existed still loads
    heard: datetime | None = None
    silence_s: float = 60.0

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.open: dict[str, _OpenDoor] = {}
        self.heard = None  # the vehicle's last reading of any kind (fix time)
        self.silence_s = config.silence_min_s  # the longest gap after it still counted (its cadence)

    def hear(self, t: datetime, silence_s: float | None = None) -> list[Alert]:
        """The vehicle sent something at fix time ``t`` (``silence_s``: the cadence after a fix);
        after a silence, open doors become unknown until the next fix (``on_fix``; see the module
        docstring). Returns no alerts now; kept a list for its callers."""
        out: list[Alert] = []
        heard = self.heard
        if heard is not None and self.open and (t - heard).total_seconds() > self.silence_s:
            for door in self.open.values():
                if door.unsure is None:
                    door.unsure = heard
        if heard is None or t > heard:
            self.heard = t
        if silence_s is not None:
            self.silence_s = silence_s
        return out

    def update(
        self,
        event: DoorEvent,
        where: CheckedFix | None,
        at_stop: AtStop,
        refrigerated: bool,
        h3_cell: int | None,
        stop_within: StopWithin | None = None,
    ) -> list[Alert]:
        """Feed one door event; ``where`` is the last usable fix (None: unknown)."""
        out = self.hear(event.fix_time)
        door = self.open.get(event.door)
        if event.open:
            if door is not None and door.unsure is None:
                return out  # repeated "open": still the same opening
            if door is not None:  # its "closed" was lost in the silence: this is a new opening
                out += self._forget(event.door, door, silence=True)
            door = self.open[event.door] = _OpenDoor(event.fix_time, refrigerated, h3_cell)
            if where is not None and (event.fix_time - where.time).total_seconds() <= 1.0:
                door.place, door.stood = (where.lat, where.lon), where.time
            if where is not None and at_stop(where.lat, where.lon, where.h3_cell) is not None:
                since_s = (event.fix_time - where.time).total_seconds()
                away = at_stop(where.lat, where.lon, where.h3_cell) is False
                if since_s > 1.0 and away and stop_within is not None:
                    reach_m = max(self.config.door_reach_mps, 1.5 * (where.speed_mps or 0.0)) * since_s
                    if stop_within(where.lat, where.lon, reach_m) is False:  # no stop it could have reached
                        return out + self._away(event.door, door, where.h3_cell) + self.on_timer(event.fix_time)
                if since_s > 1.0:
                    door.before = where  # where was it when the door opened? the next fix tells
                    door.before_away = away
                elif at_stop(where.lat, where.lon, where.h3_cell) is False:
                    out += self._away(event.door, door, where.h3_cell)  # the position is the door's
            return out + self.on_timer(event.fix_time)
        if door is None:
            return out
        del self.open[event.door]
        if door.before is not None and door.before_away:  # closed before a fix placed it: the last position
            out += self._away(event.door, door, door.before.h3_cell)
        open_s = (event.fix_time - door.since).total_seconds()
        return out + [a.resolve(event.fix_time, open_s=open_s) for a in (door.away, door.too_long) if a is not None]

    def on_fix(self, fix: CheckedFix, at_stop: AtStop) -> list[Alert]:
        """A usable fix (call ``hear`` for it first): place the openings that waited for it (the
        door still open, the vehicle has stood where it opened: this fix is that place)."""
        out: list[Alert] = []
        for name, door in list(self.open.items()):
            if door.before is not None:
                door.before = None
                if at_stop(fix.lat, fix.lon, fix.h3_cell) is False:
                    out += self._away(name, door, fix.h3_cell)
            if door.place is None:  # this fix is where it stood when the door opened
                door.place, door.stood = (fix.lat, fix.lon), fix.time
                continue
            if haversine_m(fix.lat, fix.lon, *door.place) <= self.config.start_distance_m:
                if door.unsure is not None:  # still there after a silence: open, counted from now
                    door.counted, door.unsure = fix.time, None
                door.stood = fix.time
            elif door.unsure is not None:
                out += self._forget(name, door, silence=True)
            else:
                out += self._forget(name, door, closed_unheard=True)
        return out

    def _forget(self, name: str, door: _OpenDoor, **why: bool) -> list[Alert]:
        """Drop an open door whose "closed" was lost; its alerts resolve at the last reading
        before the silence, or at the last fix where the vehicle stood. A too-long alert whose
        door was, by that, not known open up to the limit is retracted: raised at the limit on a
        report overdue, it never held."""
        del self.open[name]
        end = door.unsure if door.unsure is not None else (door.stood or door.since)
        end = max(end, door.since)
        open_s = (end - door.since).total_seconds()
        out = [door.away.resolve(end, open_s=open_s, **why)] if door.away is not None else []
        if door.too_long is not None:
            limit = (door.counted or door.since) + timedelta(seconds=self.config.door_open_max_s)
            out.append(door.too_long.retract() if end < limit else door.too_long.resolve(end, open_s=open_s, **why))
        return out

    def on_timer(self, now: datetime) -> list[Alert]:
        """Open door_open_too_long for refrigerated doors open past the limit (while heard), and
        place the openings no fix came to place within the vehicle's cadence."""
        out: list[Alert] = []
        for name, door in self.open.items():
            before = door.before
            if before is not None and now >= door.since + timedelta(seconds=before.silence_s):
                door.before = None  # no fix came to place it: the last position known decides
                if door.before_away:
                    out += self._away(name, door, before.h3_cell)
            due = self._due(door)
            if due is not None and now >= due:
                door.too_long = new_alert(
                    "door_open_too_long",
                    self.tenant,
                    self.vehicle,
                    door.since,
                    subject=name,
                    h3_cell=door.h3_cell,
                    details={"door": name, "limit_s": self.config.door_open_max_s}
                    | ({"counted_from": door.counted.isoformat()} if door.counted is not None else {}),
                )
                out.append(door.too_long)
        return out

    def next_timer(self) -> datetime | None:
        dues = [d for d in (self._due(door) for door in self.open.values()) if d is not None]
        dues += [door.since + timedelta(seconds=door.before.silence_s) for door in self.open.values() if door.before]
        return min(dues) if dues else None

    def _due(self, door: _OpenDoor) -> datetime | None:
        """When a refrigerated door has been open ``door_open_max_s``, if the vehicle was heard about a
        reporting interval before (``silence_s / silence_factor``: a vehicle a report overdue may be
        in a silence its "closed" was lost in); else None, and its next reading decides."""
        if not door.refrigerated or door.too_long is not None or door.unsure is not None:
            return None
        due = (door.counted or door.since) + timedelta(seconds=self.config.door_open_max_s)
        heard = self.heard if self.heard is not None else door.since
        if due > heard + timedelta(seconds=self.silence_s / self.config.silence_factor):
            return None
        if door.stood is not None and due > door.stood + timedelta(seconds=self.silence_s / self.config.silence_factor):
            # heard (a temperature, say), but not seen where the door opened for a reporting
            # interval: it may have driven off, its "closed" lost in a gap; the next fix decides
            # (elsewhere: closed unheard, nothing raised), or with none (a GPS-blind dock) a silence
            return due + timedelta(seconds=self.silence_s)
        return due

    def _away(self, name: str, door: _OpenDoor, h3_cell: int | None) -> list[Alert]:
        if door.away is not None:
            return []
        door.away = new_alert(
            "door_open_away",
            self.tenant,
            self.vehicle,
            door.since,
            subject=name,
            h3_cell=h3_cell if h3_cell is not None else door.h3_cell,
            details={"door": name},
        )
        return [door.away]
