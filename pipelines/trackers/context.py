"""What a person needs to act on an alert or a stop event: where, which stop, which plan,
the value that triggered it against the threshold it crossed, and a one-line summary.

The trackers decide *that* something happened; this module adds the context, in the
event's ``details`` (pure: no I/O):

- ``lat``, ``lon`` (degrees): where it happened. Trackers that know the exact spot put it
  there themselves (``gps_jump``, ``route_drift``, ``unplanned_dwell``); the others take
  the vehicle's last usable fix when the alert opened (``offline``: where it was last heard).
- ``stop_id`` (on the event) and ``stop_name``, ``stop_relation``: the stop the vehicle was
  inside (``at``), else the plan's next stop (``heading_to``); ``predicted_late`` names the
  stop it will be late for (``late_for``). No plan, or no stop left: none.
- ``plan_version``: the vehicle's plan when it opened (None without a plan).
- ``value``, ``threshold``, ``unit``: what triggered it and the limit it crossed (see
  ``values``); a temperature excursion adds ``range_c`` ([low, high] °C).
- ``summary``: one line, e.g. ``van-007: reefer at 9.4 °C for 6 min, above 8.0 °C, at stop
  S-114 (Bakery)``.

The context is captured once, when an alert opens (``Contexts``), and reused for every
later version of it (resolved, retracted): an alert says where it began, not where the
vehicle was when it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

from core.contract import format_time
from pipelines.trackers.events import Alert, StopEvent

__all__ = ["Contexts", "Place", "alert_summary", "stop_summary", "values", "with_context", "with_stop_context"]


class Place(NamedTuple):
    """Where an event happened: position (degrees, None when unknown), the stop it concerns
    (``relation``: ``at``, ``heading_to``, ``late_for`` or "" for none), the plan version."""

    lat: float | None
    lon: float | None
    stop_id: str | None
    stop_name: str
    relation: str
    plan_version: int | None


NOWHERE = Place(None, None, None, "", "", None)


def _num(details: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = details.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60.0, 1)


def values(alert: Alert) -> tuple[float | None, float | None, str]:
    """``(value, threshold, unit)`` of an alert from its tracker's details.

    gps_jump: implied speed (the highest, once resolved) against ``max_speed_mps``, m/s;
    unplanned_dwell, long_dwell: minutes stopped (the threshold when it opened, the whole
    stay once resolved) against the dwell threshold, min; route_drift: metres off route
    (the furthest, once resolved) against ``drift_distance_m``; temp_excursion: the peak
    temperature against the limit crossed, °C; sensor_fault: the reading, °C (no threshold);
    door_open_too_long: minutes open against ``door_open_max_s``; offline: minutes silent
    against ``offline_after_s``; predicted_late: minutes late against the margin, min;
    door_open_away: none.
    """
    d, kind, done = alert.details, alert.type, alert.end is not None
    span_s = (alert.end - alert.start).total_seconds() if alert.end is not None else None
    if kind == "gps_jump":
        return _num(d, "max_implied_speed_mps", "implied_speed_mps"), _num(d, "limit_mps"), "m/s"
    if kind in ("unplanned_dwell", "long_dwell"):
        threshold = _minutes(_num(d, "threshold_s"))
        return (_minutes(span_s) if done else threshold), threshold, "min"
    if kind == "route_drift":
        return _num(d, "max_offset_m", "offset_m"), _num(d, "limit_m"), "m"
    if kind == "temp_excursion":
        return _num(d, "peak_c", "celsius"), _num(d, "limit_c"), "°C"
    if kind == "sensor_fault":
        return _num(d, "celsius"), None, "°C"
    if kind == "door_open_too_long":
        limit = _minutes(_num(d, "limit_s"))
        return (_minutes(_num(d, "open_s")) if done else limit), limit, "min"
    if kind == "offline":
        limit = _minutes(_num(d, "threshold_s"))
        return (_minutes(span_s) if done else limit), limit, "min"
    if kind == "predicted_late":
        return _minutes(_num(d, "late_s")), _minutes(_num(d, "margin_s")), "min"
    return None, None, ""


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    text = f"{value:.1f}" if unit in ("°C", "m/s") else f"{value:g}" if unit == "min" else f"{value:.0f}"
    return f"{text} °C" if unit == "°C" else f"{text} {unit}"


def _where(place: Place) -> str:
    if place.stop_id is None:
        return ""
    name = f" ({place.stop_name})" if place.stop_name else ""
    if place.relation == "at":
        return f", at stop {place.stop_id}{name}"
    if place.relation == "heading_to":
        return f", on the way to stop {place.stop_id}{name}"
    return ""


def alert_summary(alert: Alert, place: Place) -> str:
    """One line a person can act on: vehicle, what, the value against its limit, where."""
    d = alert.details
    value, threshold, unit = values(alert)
    v, limit = _fmt(value, unit), _fmt(threshold, unit)
    kind, done = alert.type, alert.end is not None
    minutes = _fmt(_minutes((alert.end - alert.start).total_seconds()) if alert.end else None, "min")
    if kind == "temp_excursion":
        side = "above" if d.get("side") == "high" else "below"
        lasted = minutes if done else _fmt(_minutes(_num(d, "confirmed_after_s")), "min")
        peak = "peaked at" if done else "at"
        text = f"{d.get('sensor', 'probe')} {peak} {v} for {lasted}, {side} {limit}"
    elif kind == "sensor_fault":
        reading = f" ({v})" if value is not None else ""
        text = f"probe {d.get('sensor', '?')} fault: {str(d.get('reason', '?')).replace('_', ' ')}{reading}"
    elif kind == "long_dwell":
        text = f"stopped {v}, limit {limit}"  # where: the stop, below
    elif kind == "unplanned_dwell":
        text = f"stopped {v} away from any planned stop, limit {limit}"
    elif kind == "route_drift":
        text = f"{v} off the planned route, limit {limit}"
    elif kind == "gps_jump":
        text = f"position jumped (implied {v}, limit {limit})"
    elif kind == "door_open_away":
        text = f"door {d.get('door', '?')} opened away from any stop"
    elif kind == "door_open_too_long":
        text = f"door {d.get('door', '?')} open {v}, limit {limit}"
    elif kind == "offline":
        text = f"silent for {v}, limit {limit}"
    elif kind == "predicted_late":
        stop = f" at stop {alert.stop_id}" + (f" ({place.stop_name})" if place.stop_name else "")
        text = f"predicted {v} late{stop} (window ends {str(d.get('window_end', '?'))[11:16]} UTC)"
    else:
        text = kind.replace("_", " ")
    line = f"{alert.vehicle}: {text}{'' if kind == 'predicted_late' else _where(place)}"
    if alert.status == "resolved":
        line += f"; resolved after {minutes}"
    elif alert.status == "retracted":
        line += "; retracted (late data showed it never held)"
    return line


def with_context(alert: Alert, place: Place) -> Alert:
    """The alert with its context in ``details`` (and its stop id filled when it had none)."""
    d = alert.details
    lat, lon = d.get("lat", place.lat), d.get("lon", place.lon)
    stop_id = alert.stop_id if alert.stop_id is not None else place.stop_id
    place = place._replace(lat=lat, lon=lon, stop_id=stop_id)
    value, threshold, unit = values(alert)
    extra: dict[str, Any] = {
        "lat": lat,
        "lon": lon,
        "stop_name": place.stop_name or None,
        "stop_relation": place.relation or None,
        "plan_version": d.get("plan_version", place.plan_version),
        "value": value,
        "threshold": threshold,
        "unit": unit or None,
    }
    base = replace(alert, stop_id=stop_id, details={**d, **extra})
    return replace(base, details={**base.details, "summary": alert_summary(base, place)})


def stop_summary(event: StopEvent, stop_name: str) -> str:
    """``van-007: arrived at stop S-114 (Bakery) at 10:42 UTC, late`` and the like."""
    d = event.details
    name = f" ({stop_name})" if stop_name else ""
    at = format_time(event.at)[11:16]
    if event.kind == "arrival":
        window = d.get("window")
        tail = f", {str(window).replace('_', ' ')}" if window else ""
        line = f"{event.vehicle}: arrived at stop {event.stop_id}{name} at {at} UTC{tail}"
    else:
        service = _num(d, "service_s")
        stay = f" after {_fmt(_minutes(service), 'min')}" if service is not None else ""
        line = f"{event.vehicle}: departed stop {event.stop_id}{name} at {at} UTC{stay}"
    return line + ("; retracted (late data showed it never happened)" if event.retracted else "")


def with_stop_context(event: StopEvent, lat: float | None, lon: float | None, stop_name: str) -> StopEvent:
    """The stop event with where the vehicle was (degrees), the stop's name and a summary."""
    d = {**event.details, "lat": event.details.get("lat", lat), "lon": event.details.get("lon", lon)}
    d["stop_name"] = stop_name or None
    return replace(event, details={**d, "summary": stop_summary(event, stop_name)})


class Contexts:
    """The place each open alert began at, by alert id, so every version of it says the same.

    Held in the trackers' state (pickled into checkpoints and snapshots); an entry is dropped
    when its alert is resolved or retracted.
    """

    def __init__(self) -> None:
        self.places: dict[str, Place] = {}

    def alert(self, alert: Alert, here: Callable[[], Place]) -> Alert:
        """``alert`` with the context of where it opened (``here()`` when first seen)."""
        place = self.places.get(alert.id)
        if place is None:
            place = here()
            if alert.is_open:
                self.places[alert.id] = place
        if not alert.is_open:
            self.places.pop(alert.id, None)
        return with_context(alert, place)
