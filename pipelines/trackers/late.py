"""``predicted_late``: a fleet manager learns a delivery will be late before it is.

Fed the ETA updates the ETA tracker emitted at a fix (and the stops still to do), per stop:

* an ETA more than ``margin_s`` past the stop's ``window_end`` opens a ``predicted_late``
  alert (start = the fix time of that prediction; id from tenant, vehicle, type, stop and
  start, as every alert);
* a later ETA at or before ``window_end`` resolves it (``reason: eta_inside``): the margin
  is a hysteresis band, so an ETA hovering at the window end raises nothing, or one alert;
* the stop leaving the remaining list resolves it too: at the arrival's time when the
  vehicle arrived (``reason: arrived``, with ``arrived_late`` telling whether the prediction
  came true), else at the fix time (``reason: not_remaining``: a plan change dropped it).

Stops without a ``window_end`` are never late. One condition is one alert: while open,
further late ETAs change nothing (the alert keeps the first prediction in ``details``).
Pure: no clock, no I/O; the state is the open alerts (a few per vehicle at most).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from core.contract import format_time
from core.plan import Stop
from pipelines.trackers.events import Alert, EtaUpdate, new_alert

__all__ = ["PredictedLateTracker"]


class PredictedLateTracker:
    """Open ``predicted_late`` alerts of one vehicle, by stop id."""

    def __init__(self, tenant: str, vehicle: str, margin_s: float = 0.0) -> None:
        self.tenant, self.vehicle, self.margin_s = tenant, vehicle, margin_s
        self.open: dict[str, tuple[Alert, datetime]] = {}  # stop id -> (open alert, the stop's window_end)

    def update(
        self,
        t: datetime,
        etas: Iterable[EtaUpdate],
        remaining: tuple[Stop, ...],
        arrivals: dict[str, datetime] | None = None,
        h3_cell: int | None = None,
    ) -> list[Alert]:
        """Apply the ETA updates emitted at fix time ``t``; ``remaining`` are the stops still to
        do after this fix, ``arrivals`` the arrivals (stop id -> arrival time, UTC) it confirmed,
        ``h3_cell`` the vehicle's cell (where an alert is raised)."""
        out: list[Alert] = []
        stops = {s.id: s for s in remaining}
        arrivals = arrivals or {}
        for stop_id in [k for k in self.open if k not in stops]:
            alert, window_end = self.open.pop(stop_id)
            arrived = arrivals.get(stop_id)
            if arrived is not None:
                out.append(
                    alert.resolve(max(arrived, alert.start), reason="arrived", arrived_late=arrived > window_end)
                )
            else:
                out.append(alert.resolve(t, reason="not_remaining"))
        for u in etas:
            stop = stops.get(u.stop_id)
            if u.retracted or stop is None or stop.window_end is None:
                continue
            held = self.open.get(u.stop_id)
            late_s = (u.eta - stop.window_end).total_seconds()
            if late_s > self.margin_s and held is None:
                alert = new_alert(
                    "predicted_late",
                    self.tenant,
                    self.vehicle,
                    u.at,
                    stop_id=u.stop_id,
                    h3_cell=h3_cell,
                    details={
                        "eta": format_time(u.eta),
                        "window_end": format_time(stop.window_end),
                        "late_s": late_s,
                        "plan_version": u.plan_version,
                        "margin_s": self.margin_s,
                    },
                )
                self.open[u.stop_id] = (alert, stop.window_end)
                out.append(alert)
            elif late_s <= 0 and held is not None:
                del self.open[u.stop_id]
                out.append(held[0].resolve(u.at, reason="eta_inside", eta=format_time(u.eta)))
        return out
