"""What the trackers emit: alerts (open, resolved, retracted) and stop events.

Ids are deterministic, so a re-emission after a replay, a restart or a late-data
correction carries the same id and a sink can upsert on it:

- an alert's id hashes tenant, vehicle, type, stop id, subject (sensor or door id)
  and its start time truncated to the second;
- a stop event's id hashes tenant, vehicle, kind, stop id, the plan version and the
  visit number at that stop (1 for the first arrival), so a corrected arrival time
  keeps its id and changes only ``at``.

Events are immutable; ``details`` dicts must not be mutated after creation.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pipelines.trackers.state import fast_getstate

__all__ = [
    "ALERT_TYPES",
    "SEVERITY",
    "Alert",
    "Event",
    "EtaUpdate",
    "StopEvent",
    "alert_id",
    "eta_update_id",
    "new_alert",
    "stop_event_id",
]

ALERT_TYPES = (
    "gps_jump",
    "unplanned_dwell",
    "long_dwell",
    "route_drift",
    "temp_excursion",
    "sensor_fault",
    "door_open_away",
    "door_open_too_long",
    "offline",
    "predicted_late",
)
SEVERITY = {
    "gps_jump": "info",
    "unplanned_dwell": "warning",
    "long_dwell": "warning",
    "route_drift": "warning",
    "temp_excursion": "critical",
    "sensor_fault": "warning",
    "door_open_away": "critical",
    "door_open_too_long": "warning",
    "offline": "warning",
    "predicted_late": "warning",
}
_NAMESPACE = uuid.UUID("6f0f3d7e-2b1c-5a43-9d0e-3c6b1f1e7a21")


def alert_id(
    tenant: str, vehicle: str, type: str, start: datetime, stop_id: str | None = None, subject: str = ""
) -> str:
    """Deterministic UUID (v5, SHA-1) of an alert; ``start`` is truncated to the whole second."""
    second = int(start.timestamp() // 1)
    return _uuid5(f"alert|{tenant}|{vehicle}|{type}|{stop_id or ''}|{subject}|{second}")


def stop_event_id(tenant: str, vehicle: str, kind: str, stop_id: str, plan_version: int, visit: int) -> str:
    """Deterministic UUID (v5, SHA-1) of an arrival or departure: the n-th visit of a stop."""
    return _uuid5(f"stop|{tenant}|{vehicle}|{kind}|{stop_id}|{plan_version}|{visit}")


@fast_getstate
@dataclass(frozen=True, slots=True)
class Alert:
    """An anomaly over a time span [start, end) in UTC; ``end`` is None while open.

    ``status``: ``open``, ``resolved`` (the condition ended at ``end``) or ``retracted``
    (late data showed it never held). ``h3_cell`` is where it began (resolution
    ``AnalyticsConfig.cell_resolution``), None when no position was known.
    """

    id: str
    type: str
    severity: str
    tenant: str
    vehicle: str
    stop_id: str | None
    h3_cell: int | None
    start: datetime
    end: datetime | None
    status: str
    details: dict[str, Any] = field(default_factory=dict)

    def resolve(self, end: datetime, **details: Any) -> Alert:
        """The same alert, resolved at ``end`` with ``details`` merged in."""
        return replace(self, end=end, status="resolved", details={**self.details, **details})

    def retract(self) -> Alert:
        """The same alert, withdrawn: late data showed the condition never held."""
        return replace(self, status="retracted")

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    # -- as a correction ``Result`` (see correction.py)
    @property
    def ledger_key(self) -> str:
        return self.id

    @property
    def is_retracted(self) -> bool:
        return self.status == "retracted"

    @property
    def time(self) -> datetime:
        """When it last changed: its end, else its start."""
        return self.end or self.start

    @property
    def settled(self) -> bool:
        return self.status != "open"


@fast_getstate
@dataclass(frozen=True, slots=True)
class StopEvent:
    """An arrival at or a departure from a planned stop at ``at`` (UTC fix time).

    ``retracted`` is True on the re-emission that withdraws an event late data disproved.
    """

    id: str
    kind: str
    tenant: str
    vehicle: str
    stop_id: str
    at: datetime
    details: dict[str, Any] = field(default_factory=dict)
    retracted: bool = False

    def retract(self) -> StopEvent:
        """The same event, withdrawn."""
        return replace(self, retracted=True)

    # -- as a correction ``Result`` (see correction.py)
    @property
    def ledger_key(self) -> str:
        return self.id

    @property
    def is_retracted(self) -> bool:
        return self.retracted

    @property
    def time(self) -> datetime:
        return self.at

    @property
    def settled(self) -> bool:
        return True


def eta_update_id(tenant: str, vehicle: str, stop_id: str, plan_version: int, at: datetime) -> str:
    """Deterministic UUID (v5, SHA-1) of one ETA prediction: for a stop, made at fix time ``at`` (ms)."""
    ms = round(at.timestamp() * 1000)
    return _uuid5(f"eta|{tenant}|{vehicle}|{stop_id}|{plan_version}|{ms}")


_NAMESPACE_BYTES = _NAMESPACE.bytes


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NAMESPACE, name))`` without building a ``UUID`` (a third of the cost: ETA
    updates go out by the thousand a second): SHA-1 of namespace + name, version and variant bits set."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@fast_getstate
@dataclass(frozen=True, slots=True)
class EtaUpdate:
    """A new ETA for one remaining stop, predicted at fix time ``at`` (UTC).

    ``eta`` is the predicted arrival (UTC); ``details`` carries the parts of the estimate
    (remaining metres, profile estimate, model estimate, method). ``retracted`` is True
    on the re-emission that withdraws a prediction late data disproved.
    """

    id: str
    tenant: str
    vehicle: str
    stop_id: str
    plan_version: int
    at: datetime
    eta: datetime
    details: dict[str, Any] = field(default_factory=dict)
    retracted: bool = False

    def retract(self) -> EtaUpdate:
        """The same prediction, withdrawn."""
        return replace(self, retracted=True)

    # -- as a correction ``Result`` (see correction.py): one prediction of its stop's series;
    # the state keeps only the stop's latest (the history belongs in the database)
    @property
    def ledger_key(self) -> str:
        return f"eta|{self.stop_id}"

    @property
    def is_retracted(self) -> bool:
        return self.retracted

    @property
    def time(self) -> datetime:
        return self.at

    @property
    def settled(self) -> bool:
        return True


Event = Alert | StopEvent | EtaUpdate


def new_alert(
    type: str,
    tenant: str,
    vehicle: str,
    start: datetime,
    *,
    stop_id: str | None = None,
    subject: str = "",
    h3_cell: int | None = None,
    details: dict[str, Any] | None = None,
) -> Alert:
    """An open alert of ``type`` starting at ``start``, with its deterministic id and severity."""
    if type not in SEVERITY:
        raise ValueError(f"unknown alert type {type!r}")
    return Alert(
        alert_id(tenant, vehicle, type, start, stop_id, subject),
        type,
        SEVERITY[type],
        tenant,
        vehicle,
        stop_id,
        h3_cell,
        start,
        None,
        "open",
        dict(details or {}),
    )
