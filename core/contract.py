"""The device contract: MQTT topics and JSON payloads (version 1).

This module is the whole contract a device maker implements. It uses only the
standard library so the edge agent can import it on a Raspberry Pi without any
server dependency.

Topics
    ``fleet/{tenant}/{vehicle}/{stream}`` where ``stream`` is one of
    ``gps``, ``temp``, ``door``, ``status`` or ``batch``. Tenant and vehicle ids
    match ``[A-Za-z0-9_-]{1,64}``. A device may publish only under its own
    ``fleet/{tenant}/{vehicle}/``.

Payloads (UTF-8 JSON objects, at most ``max_payload_bytes``)
    Every reading carries ``seq`` (the device's own monotonic counter, one per
    device across all streams, integer >= 0) and ``fix_time`` (when the reading
    was taken, RFC 3339 with a UTC offset, for example
    ``2026-11-22T05:00:00.250Z``). ``device_time`` (the device clock when it sent
    the message) is optional; the server adds its own receive time.

    gps    ``lat``, ``lon`` (degrees WGS84), optional ``speed_mps`` (m/s, >= 0),
           ``heading_deg`` (0-360, clockwise from north), ``accuracy_m``
           (horizontal, metres), ``alt_m`` (metres).
    temp   ``sensor`` (probe id), ``celsius`` (degrees Celsius).
    door   ``door`` (door id, for example ``rear``), ``open`` (true/false).
    status ``state`` (``online``/``offline``/``heartbeat``), optional
           ``details`` object (queue depth, drops, ...). No ``seq`` needed.
    batch  ``readings``: a list of readings, each with ``type`` (``gps``,
           ``temp`` or ``door``) and that type's fields.

    Single messages and the batch envelope carry ``v`` (= 1) and ``vehicle``
    (must equal the topic's vehicle), and optionally ``receipt`` (true: the device
    wants stored receipts).

    Text (ids, ``sensor``, ``door``, ``state``, and every key and string inside
    ``details``) is valid Unicode without NUL; ``details`` is nested at most
    ``MAX_DETAILS_DEPTH`` levels and holds only finite numbers.

Stored receipts
    A device that sets ``receipt`` gets, after each commit that included its
    readings, a message on ``fleet/{tenant}/{vehicle}/cmd/stored`` (QoS 0):
    ``{"v": 1, "vehicle": ..., "stored": [[first, last], ...], "refused": [[...]]}``,
    inclusive seq ranges. ``stored``: the database holds these readings (now or
    before); ``refused``: dead letters (bad or conflicting readings), never storable.
    Either way the device may delete them; anything no receipt covered it sends again.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "CONTRACT_VERSION",
    "MAX_DETAILS_DEPTH",
    "REASONS",
    "STREAMS",
    "READING_TYPES",
    "Limits",
    "GpsFix",
    "TemperatureReading",
    "DoorEvent",
    "StatusReport",
    "Reading",
    "Rejected",
    "Decoded",
    "ContractError",
    "Receipt",
    "receipt_topic",
    "encode_receipt",
    "decode_receipt",
    "seq_ranges",
    "clean_text",
    "topic_for",
    "parse_topic",
    "subscription_filter",
    "device_username",
    "decode",
    "encode_reading",
    "encode_single",
    "encode_batch",
    "encode_status",
    "format_time",
]

CONTRACT_VERSION = 1
STREAMS = ("gps", "temp", "door", "status", "batch")
READING_TYPES = ("gps", "temp", "door")
TOPIC_ROOT = "fleet"
RECEIPT_STREAM = "cmd/stored"  # under fleet/<tenant>/<vehicle>/: a topic devices may read
MAX_TEXT_CHARS = 64  # ids, sensor and door names, status states
MAX_DETAILS_DEPTH = 8  # levels of objects and lists inside a status message's details
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # with fullmatch: "$" would let a trailing newline through
_EPOCH_FLOOR = datetime(2000, 1, 1, tzinfo=UTC)
# NUL (PostgreSQL text cannot hold it) and UTF-16 surrogates (JSON's "\ud800" decodes to one;
# it is not encodable as UTF-8)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# Every reason a message or reading lands in dead_letters, with what it means (docs/contract.md
# lists the same; a test keeps them in step).
REASONS: dict[str, str] = {
    "bad_json": "not UTF-8 JSON (or nested too deeply)",
    "not_object": "the payload, or a batch reading, is not a JSON object",
    "bad_version": "`v` is not the contract version (1)",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong type or form (e.g. a time without an offset)",
    "not_finite": "NaN or an infinity",
    "out_of_range": "a number outside its range (e.g. latitude past 90)",
    "time_too_old": "`fix_time` before 2000",
    "time_in_future": "`fix_time` more than `max_future_skew_s` ahead of the server clock",
    "vehicle_mismatch": "the payload's `vehicle` is not the topic's",
    "bad_topic": "the topic is not `fleet/<tenant>/<vehicle>/<stream>` with valid ids (or not `owntracks/<user>/<device>[/<kind>]`)",
    "bad_type": "a batch reading's `type` is not gps, temp or door",
    "oversized": "more than `max_payload_bytes`, or more than `max_batch_readings` readings, or a tracker frame over `device_max_frame_bytes`",
    "conflict": "the device's `seq` was stored before with different content (another fix time, stream or values)",
    "bad_plan": "a plan on `dispatch/<tenant>/plan` that is not valid or past a plan limit (the detail names the field)",
    "bad_text": "a string (an id, a name, a key or value in `details`) holds NUL or invalid Unicode (a lone surrogate)",
    "too_long": "an id or name longer than 64 characters",
    "too_deep": "`details` nested deeper than 8 levels",
    "time_out_of_range": "a time outside years 1-9999 once its UTC offset is applied",
    "db_refused": "valid by the contract, yet the database refused it (the detail quotes the database's error)",
    "bad_frame": "a tracker frame its protocol cannot read: wrong start, length or counts, truncated (raw bytes kept)",
    "bad_crc": "a tracker frame whose checksum does not match (Teltonika CRC-16/IBM, GT06 CRC-ITU)",
    "unknown_codec": "a Teltonika codec or GT06 packet type the front end does not read",
    "unknown_device": "a tracker identity (IMEI, OsmAnd id, OwnTracks user) not provisioned with `fleetstream device add`",
    "identity_mismatch": "a frame for another IMEI than the one its connection logged in with",
}


class ContractError(ValueError):
    """A payload or topic that breaks the contract; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """What the server accepts. Times in seconds, sizes in bytes."""

    max_payload_bytes: int = 256 * 1024
    max_batch_readings: int = 5000
    max_future_skew_s: float = 300.0


@dataclass(frozen=True, slots=True)
class GpsFix:
    """One GPS fix. Degrees WGS84, m/s, degrees from north, metres; times UTC."""

    tenant: str
    vehicle: str
    seq: int
    fix_time: datetime
    lat: float
    lon: float
    speed_mps: float | None = None
    heading_deg: float | None = None
    accuracy_m: float | None = None
    alt_m: float | None = None
    device_time: datetime | None = None
    kind: str = field(default="gps", init=False)


@dataclass(frozen=True, slots=True)
class TemperatureReading:
    """One probe reading in degrees Celsius; times UTC."""

    tenant: str
    vehicle: str
    seq: int
    fix_time: datetime
    sensor: str
    celsius: float
    device_time: datetime | None = None
    kind: str = field(default="temp", init=False)


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """A door changing state (``open`` true when it opened); times UTC."""

    tenant: str
    vehicle: str
    seq: int
    fix_time: datetime
    door: str
    open: bool
    device_time: datetime | None = None
    kind: str = field(default="door", init=False)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A device's own report of its state (online, offline, heartbeat)."""

    tenant: str
    vehicle: str
    sent_at: datetime
    state: str
    details: dict[str, Any]
    kind: str = field(default="status", init=False)


Reading = GpsFix | TemperatureReading | DoorEvent


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message, or one reading of a batch, that broke the contract."""

    reason: str
    detail: str
    index: int | None = None  # position inside a batch, None for the whole message
    seq: int | None = None  # the reading's seq when it could be read (a receipt then covers it)


@dataclass(slots=True)
class Decoded:
    """What one MQTT message turned into."""

    readings: list[Reading]
    statuses: list[StatusReport]
    rejected: list[Rejected]
    receipt: bool = False  # the device asked for a stored receipt


# ---------------------------------------------------------------- topics


def topic_for(tenant: str, vehicle: str, stream: str) -> str:
    """The topic a device publishes ``stream`` on."""
    if stream not in STREAMS:
        raise ContractError("bad_topic", f"unknown stream {stream!r}")
    for name, value in (("tenant", tenant), ("vehicle", vehicle)):
        if not _ID.fullmatch(value):
            raise ContractError("bad_topic", f"{name} id {value!r} is not [A-Za-z0-9_-]{{1,64}}")
    return f"{TOPIC_ROOT}/{tenant}/{vehicle}/{stream}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a device topic into (tenant, vehicle, stream) or raise ContractError."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise ContractError("bad_topic", f"{topic!r} is not fleet/<tenant>/<vehicle>/<stream>")
    _, tenant, vehicle, stream = parts
    if stream not in STREAMS or not _ID.fullmatch(tenant) or not _ID.fullmatch(vehicle):
        raise ContractError("bad_topic", f"{topic!r} has a bad tenant, vehicle or stream")
    return tenant, vehicle, stream


def device_username(tenant: str, vehicle: str) -> str:
    """The MQTT username of a device: ``<tenant>.<vehicle>`` (service accounts have no dot)."""
    return f"{tenant}.{vehicle}"


def subscription_filter(tenant: str = "+") -> str:
    """The filter matching every device topic (of one tenant, or all)."""
    return f"{TOPIC_ROOT}/{tenant}/+/+"


def receipt_topic(tenant: str, vehicle: str) -> str:
    """Where a device's stored receipts arrive: ``fleet/<tenant>/<vehicle>/cmd/stored``."""
    for name, value in (("tenant", tenant), ("vehicle", vehicle)):
        if not _ID.fullmatch(value):
            raise ContractError("bad_topic", f"{name} id {value!r} is not [A-Za-z0-9_-]{{1,64}}")
    return f"{TOPIC_ROOT}/{tenant}/{vehicle}/{RECEIPT_STREAM}"


# ---------------------------------------------------------------- decoding


def _reject_constant(name: str) -> float:
    raise ContractError("not_finite", f"{name} is not a number")


def clean_text(value: str, what: str) -> str:
    """``value`` when PostgreSQL can store it as text: ContractError ``bad_text`` for NUL or a
    lone surrogate (``what`` names the field in the error)."""
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        raise ContractError("bad_text", f"{what} holds {bad.group()!r} at character {bad.start()}")
    return value


def _time(obj: dict[str, Any], key: str, now: datetime, limits: Limits, required: bool = True) -> datetime | None:
    raw = obj.get(key)
    if raw is None:
        if required:
            raise ContractError("missing_field", key)
        return None
    if not isinstance(raw, str):
        raise ContractError("wrong_type", f"{key} must be an RFC 3339 string")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ContractError("wrong_type", f"{key} {raw[:40]!r} is not RFC 3339") from None
    if value.tzinfo is None:
        raise ContractError("wrong_type", f"{key} has no UTC offset")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is in year 10000 in UTC
        raise ContractError("time_out_of_range", f"{key} {raw[:40]!r} is outside years 1-9999 in UTC") from None
    if key == "fix_time":
        if utc < _EPOCH_FLOOR:
            raise ContractError("time_too_old", f"{key} {raw} is before 2000")
        if utc > now + timedelta(seconds=limits.max_future_skew_s):
            raise ContractError("time_in_future", f"{key} {raw} is ahead of the server clock")
    return utc


def _number(obj: dict[str, Any], key: str, lo: float, hi: float, required: bool = True) -> float | None:
    raw = obj.get(key)
    if raw is None:
        if required:
            raise ContractError("missing_field", key)
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ContractError("wrong_type", f"{key} must be a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ContractError("not_finite", f"{key} is not finite")
    if not lo <= value <= hi:
        raise ContractError("out_of_range", f"{key}={value} outside [{lo}, {hi}]")
    return value


def _text(obj: dict[str, Any], key: str) -> str:
    raw = obj.get(key)
    if raw is None:
        raise ContractError("missing_field", key)
    if not isinstance(raw, str) or not raw:
        raise ContractError("wrong_type", f"{key} must be a string of 1-{MAX_TEXT_CHARS} characters")
    if len(raw) > MAX_TEXT_CHARS:
        raise ContractError("too_long", f"{key} has {len(raw)} characters, more than {MAX_TEXT_CHARS}")
    return clean_text(raw, key)


def _details(value: Any, path: str = "details", depth: int = 0) -> None:
    """Raise ContractError unless ``value`` (from JSON) can be stored as jsonb and encoded back:
    no NUL or surrogate in keys and strings, finite numbers, at most MAX_DETAILS_DEPTH levels."""
    if isinstance(value, str):
        clean_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):  # "1e999" parses as an infinity
            raise ContractError("not_finite", f"{path} is not finite")
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DETAILS_DEPTH:
            raise ContractError("too_deep", f"{path} is nested deeper than {MAX_DETAILS_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                clean_text(key, f"a key of {path}")
                _details(item, f"{path}.{key[:32]}", depth + 1)
        else:
            for i, item in enumerate(value):
                _details(item, f"{path}[{i}]", depth + 1)


def _seq_of(obj: Any) -> int | None:
    """The reading's seq when it is a valid one, else None (for a rejected reading's receipt)."""
    raw = obj.get("seq") if isinstance(obj, dict) else None
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 2**63:
        return raw
    return None


def _seq(obj: dict[str, Any]) -> int:
    raw = obj.get("seq")
    if raw is None:
        raise ContractError("missing_field", "seq")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ContractError("wrong_type", "seq must be an integer")
    if not 0 <= raw < 2**63:
        raise ContractError("out_of_range", "seq must be in [0, 2^63)")
    return raw


def _reading(
    kind: str,
    obj: dict[str, Any],
    tenant: str,
    vehicle: str,
    now: datetime,
    limits: Limits,
    device_time: datetime | None,
) -> Reading:
    seq = _seq(obj)
    fix_time = _time(obj, "fix_time", now, limits)
    assert fix_time is not None
    own_device_time = _time(obj, "device_time", now, limits, required=False) or device_time
    if kind == "gps":
        lat = _number(obj, "lat", -90.0, 90.0)
        lon = _number(obj, "lon", -180.0, 180.0)
        assert lat is not None and lon is not None
        return GpsFix(
            tenant,
            vehicle,
            seq,
            fix_time,
            lat,
            lon,
            speed_mps=_number(obj, "speed_mps", 0.0, 150.0, required=False),
            heading_deg=_number(obj, "heading_deg", 0.0, 360.0, required=False),
            accuracy_m=_number(obj, "accuracy_m", 0.0, 1e5, required=False),
            alt_m=_number(obj, "alt_m", -1000.0, 20000.0, required=False),
            device_time=own_device_time,
        )
    if kind == "temp":
        celsius = _number(obj, "celsius", -100.0, 150.0)
        assert celsius is not None
        return TemperatureReading(
            tenant, vehicle, seq, fix_time, _text(obj, "sensor"), celsius, device_time=own_device_time
        )
    if kind == "door":
        is_open = obj.get("open")
        if is_open is None:
            raise ContractError("missing_field", "open")
        if not isinstance(is_open, bool):
            raise ContractError("wrong_type", "open must be true or false")
        return DoorEvent(tenant, vehicle, seq, fix_time, _text(obj, "door"), is_open, device_time=own_device_time)
    raise ContractError("bad_type", f"unknown reading type {kind!r}")


def _envelope(obj: Any, vehicle: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ContractError("not_object", "payload must be a JSON object")
    version = obj.get("v")
    if version != CONTRACT_VERSION:
        raise ContractError("bad_version", f"v must be {CONTRACT_VERSION}, got {version!r}")
    sender = obj.get("vehicle")
    if sender is None:
        raise ContractError("missing_field", "vehicle")
    if sender != vehicle:
        shown = sender[:64] if isinstance(sender, str) else type(sender).__name__
        raise ContractError("vehicle_mismatch", f"payload vehicle {shown!r} != topic vehicle {vehicle!r}")
    return obj


def decode(topic: str, payload: bytes, now: datetime, limits: Limits = Limits()) -> Decoded:
    """Turn one MQTT message into readings; every problem becomes a ``Rejected``.

    ``now`` is the server's receive time (UTC), used to refuse far-future fixes.
    Never raises for bad input: a whole bad message gives one ``Rejected`` with
    ``index=None``; a bad reading inside a good batch gives one with its index,
    and the batch's other readings are kept.
    """
    out = Decoded([], [], [])
    try:
        if len(payload) > limits.max_payload_bytes:
            raise ContractError("oversized", f"{len(payload)} bytes > {limits.max_payload_bytes}")
        tenant, vehicle, stream = parse_topic(topic)
        try:
            obj = json.loads(payload, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError("bad_json", str(exc)[:200]) from None
        obj = _envelope(obj, vehicle)
        out.receipt = obj.get("receipt") is True
        if stream == "status":
            sent_at = _time(obj, "sent_at", now, limits)
            assert sent_at is not None
            state = _text(obj, "state")
            details = obj.get("details") or {}
            if not isinstance(details, dict):
                raise ContractError("wrong_type", "details must be an object")
            _details(details)
            out.statuses.append(StatusReport(tenant, vehicle, sent_at, state, details))
        elif stream == "batch":
            items = obj.get("readings")
            if items is None:
                raise ContractError("missing_field", "readings")
            if not isinstance(items, list) or not items:
                raise ContractError("wrong_type", "readings must be a non-empty list")
            if len(items) > limits.max_batch_readings:
                raise ContractError("oversized", f"{len(items)} readings > {limits.max_batch_readings}")
            device_time = _time(obj, "device_time", now, limits, required=False)
            for index, item in enumerate(items):
                try:
                    if not isinstance(item, dict):
                        raise ContractError("not_object", "a batch reading must be an object")
                    kind = item.get("type")
                    if kind not in READING_TYPES:
                        raise ContractError("bad_type", f"type must be one of {READING_TYPES}")
                    out.readings.append(_reading(kind, item, tenant, vehicle, now, limits, device_time))
                except ContractError as exc:
                    out.rejected.append(Rejected(exc.reason, exc.detail, index, _seq_of(item)))
        else:
            try:
                out.readings.append(_reading(stream, obj, tenant, vehicle, now, limits, None))
            except ContractError as exc:
                out.rejected.append(Rejected(exc.reason, exc.detail, None, _seq_of(obj)))
    except ContractError as exc:
        out.rejected.append(Rejected(exc.reason, exc.detail))
    except RecursionError:
        out.rejected.append(Rejected("bad_json", "nested too deeply"))
    return out


# ---------------------------------------------------------------- encoding


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z`` suffix."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware UTC time")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_reading(reading: Reading) -> dict[str, Any]:
    """The batch-item form of a reading (includes ``type``)."""
    item: dict[str, Any] = {"type": reading.kind, "seq": reading.seq, "fix_time": format_time(reading.fix_time)}
    if isinstance(reading, GpsFix):
        item["lat"] = reading.lat
        item["lon"] = reading.lon
        for key in ("speed_mps", "heading_deg", "accuracy_m", "alt_m"):
            value = getattr(reading, key)
            if value is not None:
                item[key] = value
    elif isinstance(reading, TemperatureReading):
        item["sensor"] = reading.sensor
        item["celsius"] = reading.celsius
    else:
        item["door"] = reading.door
        item["open"] = reading.open
    if reading.device_time is not None:
        item["device_time"] = format_time(reading.device_time)
    return item


def encode_single(reading: Reading) -> tuple[str, bytes]:
    """(topic, payload) for one reading on its own stream's topic."""
    body = encode_reading(reading)
    del body["type"]
    body = {"v": CONTRACT_VERSION, "vehicle": reading.vehicle, **body}
    return topic_for(reading.tenant, reading.vehicle, reading.kind), json.dumps(body, separators=(",", ":")).encode()


def encode_batch(
    tenant: str, vehicle: str, readings: list[Reading], device_time: datetime | None = None, receipt: bool = False
) -> tuple[str, bytes]:
    """(topic, payload) for many readings of one vehicle in one message; ``receipt``: ask for
    stored receipts."""
    body: dict[str, Any] = {
        "v": CONTRACT_VERSION,
        "vehicle": vehicle,
        "readings": [encode_reading(r) for r in readings],
    }
    if device_time is not None:
        body["device_time"] = format_time(device_time)
    if receipt:
        body["receipt"] = True
    return topic_for(tenant, vehicle, "batch"), json.dumps(body, separators=(",", ":")).encode()


def encode_status(
    tenant: str, vehicle: str, state: str, sent_at: datetime, details: dict[str, Any] | None = None
) -> tuple[str, bytes]:
    """(topic, payload) for a status report (also used as the MQTT last will)."""
    body = {
        "v": CONTRACT_VERSION,
        "vehicle": vehicle,
        "sent_at": format_time(sent_at),
        "state": state,
        "details": details or {},
    }
    return topic_for(tenant, vehicle, "status"), json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------- stored receipts


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the gateway committed for one device: inclusive (first, last) seq ranges."""

    vehicle: str
    stored: tuple[tuple[int, int], ...]
    refused: tuple[tuple[int, int], ...] = ()

    def seqs(self) -> list[int]:
        """Every seq covered, stored or refused, in order."""
        return sorted({s for lo, hi in (*self.stored, *self.refused) for s in range(lo, hi + 1)})


def seq_ranges(seqs: Any) -> list[tuple[int, int]]:
    """Inclusive (first, last) runs of consecutive seqs, ascending; repeats count once."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def encode_receipt(vehicle: str, stored: Any, refused: Any = ()) -> bytes:
    """The payload of a stored receipt for ``vehicle``: seqs ``stored`` (the database holds them)
    and ``refused`` (dead letters; a seq in both counts as stored)."""
    done = set(stored)
    body = {
        "v": CONTRACT_VERSION,
        "vehicle": vehicle,
        "stored": [list(r) for r in seq_ranges(done)],
        "refused": [list(r) for r in seq_ranges(set(refused) - done)],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_receipt(payload: bytes, max_seqs: int = 1_000_000) -> Receipt:
    """Parse a stored receipt; ContractError for anything else (or more than ``max_seqs`` seqs)."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise ContractError("bad_json", "a receipt must be a JSON object") from None
    if not isinstance(obj, dict) or obj.get("v") != CONTRACT_VERSION or not isinstance(obj.get("vehicle"), str):
        raise ContractError("not_object", "a receipt is {v: 1, vehicle, stored, refused}")
    total = 0
    parts: list[tuple[tuple[int, int], ...]] = []
    for key in ("stored", "refused"):
        ranges = obj.get(key, [])
        if not isinstance(ranges, list):
            raise ContractError("wrong_type", f"{key} must be a list of [first, last] pairs")
        out = []
        for pair in ranges:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in pair)
                or pair[0] > pair[1]
            ):
                raise ContractError("wrong_type", f"{key}: {str(pair)[:40]} is not a [first, last] seq pair")
            total += pair[1] - pair[0] + 1
            if total > max_seqs:
                raise ContractError("oversized", f"a receipt covering more than {max_seqs} seqs")
            out.append((pair[0], pair[1]))
        parts.append(tuple(out))
    return Receipt(obj["vehicle"], parts[0], parts[1])
