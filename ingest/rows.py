"""The rows the gateway writes, one definition each: batching builds them, the writer
derives its column lists from their fields (a row's fields are its table's columns, in
the store's order, without the writer's own ``shard`` and ``shard_seq``)."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

__all__ = ["DeadLetterRow", "DoorRow", "PositionRow", "ReadingRow", "StatusRow", "TemperatureRow"]


class PositionRow(NamedTuple):
    """A ``positions`` row: degrees, m/s, degrees from north, metres; times UTC."""

    fix_time: datetime
    tenant: str
    vehicle_id: str
    seq: int
    lat: float
    lon: float
    speed_mps: float | None
    heading_deg: float | None
    accuracy_m: float | None
    alt_m: float | None
    h3_cell: int
    device_time: datetime | None
    received_at: datetime


class TemperatureRow(NamedTuple):
    """A ``temperatures`` row (degrees Celsius)."""

    fix_time: datetime
    tenant: str
    vehicle_id: str
    seq: int
    sensor: str
    celsius: float
    device_time: datetime | None
    received_at: datetime


class DoorRow(NamedTuple):
    """A ``door_events`` row."""

    fix_time: datetime
    tenant: str
    vehicle_id: str
    seq: int
    door: str
    is_open: bool
    device_time: datetime | None
    received_at: datetime


ReadingRow = PositionRow | TemperatureRow | DoorRow


class StatusRow(NamedTuple):
    """A ``device_status`` row; ``details`` is JSON text."""

    sent_at: datetime
    tenant: str
    vehicle_id: str
    state: str
    details: str
    received_at: datetime


class DeadLetterRow(NamedTuple):
    """A ``dead_letters`` row: why, where from, and the first bytes of what was refused.
    ``digest`` identifies the message (and reading index), so a redelivery lands once."""

    received_at: datetime
    topic: str
    reason: str
    detail: str
    batch_index: int | None
    payload: bytes
    payload_size: int
    digest: bytes
