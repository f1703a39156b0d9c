"""Doors: opened away from any stop (security) and open too long on a refrigerated load.

- ``door_open_away`` (critical): a door opened while the vehicle's last usable position
  was outside every stop circle plus ``fence_exit_margin_m``. Needs a plan and a
  position: without them there is no telling where opening is expected.
- ``door_open_too_long``: a door of a refrigerated load (the plan's or the config's
  ``temp_range_c``) open for ``door_open_max_s``, from ``on_timer`` even when nothing
  else arrives; applies at stops too.

Both start when the door opened and resolve when it closes; one alert per door and
condition (subject = door id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.contract import DoorEvent
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert

__all__ = ["DoorTracker"]


@dataclass(slots=True)
class _OpenDoor:
    since: datetime
    refrigerated: bool
    h3_cell: int | None
    away: Alert | None = None
    too_long: Alert | None = None


class DoorTracker:
    """Open doors of one vehicle."""

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.open: dict[str, _OpenDoor] = {}

    def update(self, event: DoorEvent, at_stop: bool | None, refrigerated: bool, h3_cell: int | None) -> list[Alert]:
        """Feed one door event; ``at_stop`` None means unknown (no plan)."""
        door = self.open.get(event.door)
        if event.open:
            if door is not None:
                return []  # repeated "open": still the same opening
            door = self.open[event.door] = _OpenDoor(event.fix_time, refrigerated, h3_cell)
            out: list[Alert] = []
            if at_stop is False:
                door.away = new_alert(
                    "door_open_away",
                    self.tenant,
                    self.vehicle,
                    event.fix_time,
                    subject=event.door,
                    h3_cell=h3_cell,
                    details={"door": event.door},
                )
                out.append(door.away)
            return out + self.on_timer(event.fix_time)
        if door is None:
            return []
        del self.open[event.door]
        open_s = (event.fix_time - door.since).total_seconds()
        return [a.resolve(event.fix_time, open_s=open_s) for a in (door.away, door.too_long) if a is not None]

    def on_timer(self, now: datetime) -> list[Alert]:
        """Open door_open_too_long for refrigerated doors open past the limit."""
        out: list[Alert] = []
        for name, door in self.open.items():
            limit = timedelta(seconds=self.config.door_open_max_s)
            if door.refrigerated and door.too_long is None and now - door.since >= limit:
                door.too_long = new_alert(
                    "door_open_too_long",
                    self.tenant,
                    self.vehicle,
                    door.since,
                    subject=name,
                    h3_cell=door.h3_cell,
                    details={"door": name, "limit_s": self.config.door_open_max_s},
                )
                out.append(door.too_long)
        return out

    def next_timer(self) -> datetime | None:
        dues = [
            d.since + timedelta(seconds=self.config.door_open_max_s)
            for d in self.open.values()
            if d.refrigerated and d.too_long is None
        ]
        return min(dues) if dues else None
