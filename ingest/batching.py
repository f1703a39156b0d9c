"""Turn a batch of raw MQTT messages into rows for the store.

Pure: no broker, no database. The gateway hands in what it received and gets
back rows per table, dead letters with reasons, and in-batch duplicate counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import h3.api.basic_int as h3

from core.contract import ContractError, DoorEvent, GpsFix, Limits, TemperatureReading, decode, parse_topic
from ingest.rows import DeadLetterRow, DoorRow, PositionRow, StatusRow, TemperatureRow

__all__ = ["Coverage", "Received", "Prepared", "prepare", "dead_letter_row"]


@dataclass(frozen=True, slots=True)
class Received:
    """One MQTT message as the gateway got it. ``received_ts``: Unix seconds."""

    topic: str
    payload: bytes
    received_ts: float


@dataclass(slots=True)
class Coverage:
    """What a stored receipt will tell one device: the seqs of its readings in this batch that
    will be stored (or are already), and those refused as dead letters (a seq in both counts
    as stored)."""

    stored: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Prepared:
    """Rows ready for the writer (``ingest/rows.py``)."""

    positions: list[PositionRow] = field(default_factory=list)
    temperatures: list[TemperatureRow] = field(default_factory=list)
    doors: list[DoorRow] = field(default_factory=list)
    statuses: list[StatusRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    # each row's place among the batch's readings in receive order (message by message, each
    # message's readings in the device's order): the writer numbers shard_seq by it
    position_order: list[int] = field(default_factory=list)
    temperature_order: list[int] = field(default_factory=list)
    door_order: list[int] = field(default_factory=list)
    duplicates: int = 0  # identical readings repeated inside this batch
    conflicts: int = 0  # same device seq, different content inside this batch
    # per (tenant, vehicle) of the messages that asked for a stored receipt
    receipts: dict[tuple[str, str], Coverage] = field(default_factory=dict)

    @property
    def reading_count(self) -> int:
        return len(self.positions) + len(self.temperatures) + len(self.doors)


def dead_letter_row(
    topic: str, payload: bytes, received_at: datetime, reason: str, detail: str, index: int | None, raw_cap: int
) -> DeadLetterRow:
    """A dead_letters row; the digest makes a redelivered bad message land once. The topic and
    the detail are made storable as text (NUL and lone surrogates escaped)."""
    topic, detail = _storable(topic), _storable(detail[:500])
    digest = hashlib.sha256(topic.encode() + b"\0" + payload + b"\0" + str(index).encode()).digest()
    return DeadLetterRow(received_at, topic, reason, detail, index, payload[:raw_cap], len(payload), digest)


def _storable(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped (``\\x00``, ``\\ud800``): PostgreSQL text holds it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def prepare(messages: list[Received], limits: Limits, h3_resolution: int, raw_cap: int) -> Prepared:
    """Decode and validate ``messages``; deduplicate readings inside the batch."""
    out = Prepared()
    # one seq per device across streams: (tenant, vehicle, seq) -> (stream, fix time, values)
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for msg in messages:
        received_at = datetime.fromtimestamp(msg.received_ts, UTC)
        decoded = decode(msg.topic, msg.payload, received_at, limits)
        coverage = _coverage(out, msg.topic) if decoded.receipt else None
        for rej in decoded.rejected:
            out.dead_letters.append(
                dead_letter_row(msg.topic, msg.payload, received_at, rej.reason, rej.detail, rej.index, raw_cap)
            )
            if coverage is not None and rej.seq is not None:
                coverage.refused.add(rej.seq)
        for status in decoded.statuses:
            out.statuses.append(
                StatusRow(
                    status.sent_at, status.tenant, status.vehicle, status.state, json.dumps(status.details), received_at
                )
            )
        for r in decoded.readings:
            if isinstance(r, GpsFix):
                content: tuple[Any, ...] = (r.lat, r.lon, r.speed_mps, r.heading_deg, r.accuracy_m, r.alt_m)
            elif isinstance(r, TemperatureReading):
                content = (r.sensor, r.celsius)
            else:
                assert isinstance(r, DoorEvent)
                content = (r.door, r.open)
            key = (r.tenant, r.vehicle, r.seq)
            content = (r.kind, r.fix_time, *content)
            earlier = seen.get(key)
            if earlier is not None:
                if earlier == content:
                    out.duplicates += 1
                    if coverage is not None:
                        coverage.stored.add(r.seq)
                else:
                    out.conflicts += 1
                    out.dead_letters.append(_conflict_row(msg, received_at, r, raw_cap))
                    if coverage is not None:
                        coverage.refused.add(r.seq)
                continue
            seen[key] = content
            if coverage is not None:
                coverage.stored.add(r.seq)
            order = out.reading_count
            if isinstance(r, GpsFix):
                cell = h3.latlng_to_cell(r.lat, r.lon, h3_resolution)
                out.positions.append(
                    PositionRow(
                        r.fix_time,
                        r.tenant,
                        r.vehicle,
                        r.seq,
                        r.lat,
                        r.lon,
                        r.speed_mps,
                        r.heading_deg,
                        r.accuracy_m,
                        r.alt_m,
                        cell,
                        r.device_time,
                        received_at,
                    )
                )
                out.position_order.append(order)
            elif isinstance(r, TemperatureReading):
                out.temperatures.append(
                    TemperatureRow(
                        r.fix_time, r.tenant, r.vehicle, r.seq, r.sensor, r.celsius, r.device_time, received_at
                    )
                )
                out.temperature_order.append(order)
            else:
                out.doors.append(
                    DoorRow(r.fix_time, r.tenant, r.vehicle, r.seq, r.door, r.open, r.device_time, received_at)
                )
                out.door_order.append(order)
    return out


def _coverage(out: Prepared, topic: str) -> Coverage | None:
    """The receipt coverage of the device that published on ``topic`` (None: not a device topic)."""
    try:
        tenant, vehicle, _ = parse_topic(topic)
    except ContractError:
        return None
    return out.receipts.setdefault((tenant, vehicle), Coverage())


def _conflict_row(msg: Received, received_at: datetime, r: Any, raw_cap: int) -> DeadLetterRow:
    detail = f"{r.kind} seq {r.seq} at {r.fix_time.isoformat()}: the seq was received with different content"
    return dead_letter_row(msg.topic, msg.payload, received_at, "conflict", detail, None, raw_cap)
