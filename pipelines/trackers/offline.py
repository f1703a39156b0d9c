"""Offline: nothing received from the vehicle for ``offline_after_s`` (receive clock).

This is a connectivity fact, measured on the clock the runtime passes in: the time a
reading was received (``update``) against the time passed to ``on_timer``. The engine
passes its fleet clock (``pipelines/clock.py``) for both, so a simulated fleet running
faster than real time is judged on its own time axis; device fix times play no part,
so it needs no correction when buffered data arrives late. The alert starts at the newest fix
time received before the silence (a fact of the data, so a replay raises the same alert id)
and resolves at the receive time of the next reading (details: the gap and the
fix time of that first reading back).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.contract import format_time
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert

__all__ = ["OfflineTracker"]


class OfflineTracker:
    """Last receive time of one vehicle and its open offline alert."""

    # class defaults: state pickled before they existed still loads
    last_fix_time: datetime | None = None
    resumed_at: datetime | None = None

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.last_received_at: datetime | None = None
        self.last_fix_time: datetime | None = None  # newest fix time received: where the silence began
        self.h3_cell: int | None = None  # last known position, for the alert
        self.alert: Alert | None = None

    def update(self, received_at: datetime, fix_time: datetime, h3_cell: int | None = None) -> list[Alert]:
        """A reading was received at ``received_at`` (receive clock); resolves an open alert."""
        # nothing is received before it was taken: a clock that lags the data (another shard
        # not read yet) must not make the next reading look like the end of a silence
        received_at = max(received_at, fix_time)
        out: list[Alert] = []
        if self.alert is not None:
            assert self.last_received_at is not None
            end = max(received_at, self.alert.start)
            out.append(
                self.alert.resolve(
                    end,
                    gap_s=(received_at - self.last_received_at).total_seconds(),
                    first_fix_time=format_time(fix_time),
                )
            )
            self.alert = None
        if self.last_received_at is None or received_at > self.last_received_at:
            self.last_received_at = received_at
        if self.last_fix_time is None or fix_time > self.last_fix_time:
            self.last_fix_time = fix_time
        if h3_cell is not None:
            self.h3_cell = h3_cell
        return out

    def resume(self, now: datetime) -> None:
        """The vehicle is back on duty at ``now`` (receive clock): a silence counts from here,
        not from before (a van parked overnight that gets a new plan is not offline since then)."""
        self.resumed_at = now

    def _quiet_since(self) -> datetime | None:
        last, resumed = self.last_received_at, self.resumed_at
        if last is None:
            return None
        return resumed if resumed is not None and resumed > last else last

    def on_timer(self, now: datetime) -> list[Alert]:
        """Open the alert once ``now`` (receive clock) is ``offline_after_s`` past the last receive
        (or the return on duty, when later)."""
        last = self._quiet_since()
        if self.alert is None and last is not None and now - last >= timedelta(seconds=self.config.offline_after_s):
            start = self.last_fix_time if self.last_fix_time is not None else last
            self.alert = new_alert(
                "offline",
                self.tenant,
                self.vehicle,
                start,
                h3_cell=self.h3_cell,
                details={"threshold_s": self.config.offline_after_s},
            )
            return [self.alert]
        return []

    def next_timer(self) -> datetime | None:
        """Server time at which the vehicle counts as offline."""
        quiet = self._quiet_since()
        if self.alert is not None or quiet is None:
            return None
        return quiet + timedelta(seconds=self.config.offline_after_s)
