"""Rows as the API shows them: JSON-ready values, a vehicle's state, a stop's status. Pure.

Times are RFC 3339 UTC strings with milliseconds (as on MQTT and webhooks), H3 cells
are hex strings (as on MQTT), ids are strings.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import h3

from core.contract import format_time

__all__ = ["VEHICLE_STATES", "json_value", "shaped", "stop_status", "vehicle_payload", "vehicle_state"]

VEHICLE_STATES = ("alert", "late", "moving", "stopped", "unknown")  # in order of precedence
_CELL_COLUMNS = frozenset({"h3_cell"})


def json_value(value: Any) -> Any:
    """A database value as JSON: datetimes as RFC 3339 UTC, UUIDs as strings, decimals as floats."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


def shaped(row: Mapping[str, Any], drop: frozenset[str] = frozenset({"tenant"})) -> dict[str, Any]:
    """A row as a JSON object: ``h3_cell`` as hex, other values through :func:`json_value`;
    columns in ``drop`` (the tenant: the caller's own) left out."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in drop:
            continue
        if key in _CELL_COLUMNS and isinstance(value, int):
            out[key] = h3.int_to_str(value)
        else:
            out[key] = json_value(value)
    return out


def vehicle_state(row: Mapping[str, Any]) -> str:
    """What the map colours a vehicle by, first that holds: ``alert`` (an open alert nobody
    closed), ``late`` (an open predicted_late alert, or its next stop's ETA past the window's
    end), ``moving``, ``stopped``, else ``unknown``."""
    if (row.get("open_exceptions") or 0) > 0:
        return "alert"
    eta, window_end = row.get("next_stop_eta"), row.get("next_stop_window_end")
    if row.get("predicted_late") or (
        isinstance(eta, datetime) and isinstance(window_end, datetime) and eta > window_end
    ):
        return "late"
    if row.get("motion") in ("moving", "stopped"):
        return str(row["motion"])
    return "unknown"


def vehicle_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """One ``vehicle_current`` row as the API and the live stream show it: ``vehicle``,
    ``state`` (:func:`vehicle_state`), then the view's columns."""
    out = {"vehicle": row["vehicle_id"], "state": vehicle_state(row)}
    out.update(shaped(row, frozenset({"tenant", "vehicle_id"})))
    return out


def stop_status(
    window_start: datetime | None,
    window_end: datetime | None,
    arrived_at: datetime | None,
    eta: datetime | None,
) -> str:
    """A planned stop's on-time status.

    Visited: ``early`` / ``on_time`` / ``late`` against its window (``done`` without one).
    Still to come: ``predicted_late`` when the live ETA is past the window's end,
    ``on_track`` when it is not, ``pending`` without an ETA or a window.
    """
    if arrived_at is not None:
        if window_end is not None and arrived_at > window_end:
            return "late"
        if window_start is not None and arrived_at < window_start:
            return "early"
        return "on_time" if window_start is not None or window_end is not None else "done"
    if eta is not None and window_end is not None:
        return "predicted_late" if eta > window_end else "on_track"
    return "pending"
