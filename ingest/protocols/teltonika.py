"""Teltonika Codec 8, 8 Extended and 16 over TCP: frames, records, acknowledgements, readings.

Session (all integers big-endian)
    device -> IMEI as ``u16 length`` + ASCII digits; server -> ``01`` (accepted) or ``00``
    (refused, then the server closes). Then AVL packets; after each the server answers the
    number of records it accepted as a ``u32``. A device that gets a smaller count (or none)
    sends the packet again.

AVL packet
    ``00000000`` preamble, ``u32`` data length (codec id .. second record count), codec id
    (0x08, 0x8E, 0x10), ``u8`` record count, the records, the count again, and a ``u32`` whose
    low 16 bits are the CRC-16/IBM of the data-length bytes.

Record
    ``u64`` timestamp (ms since 1970 UTC), ``u8`` priority, ``i32`` longitude and latitude
    (degrees x 1e7), ``i16`` altitude (m), ``u16`` angle (degrees from north), ``u8`` satellites,
    ``u16`` speed (km/h; 0 when the fix is invalid), then the IO elements:

    ============  =======  ========  =========
    field         Codec 8  Codec 8E  Codec 16
    ============  =======  ========  =========
    event IO id   1 B      2 B       2 B
    generation    -        -         1 B
    total count   1 B      2 B       1 B
    group counts  1 B      2 B       1 B
    element ids   1 B      2 B       2 B
    ============  =======  ========  =========

    Groups of 1-, 2-, 4- and 8-byte values, and (Codec 8E only) variable-length values with a
    ``u16`` length each.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.contract import ContractError, DoorEvent, GpsFix, Reading, StatusReport, TemperatureReading
from ingest.protocols.common import Part, Tracker, derived_seq
from ingest.protocols.crc import crc16_ibm

__all__ = [
    "CODEC_8",
    "CODEC_8E",
    "CODEC_16",
    "HEADER_BYTES",
    "AvlPacket",
    "AvlRecord",
    "IoElement",
    "ack",
    "decode_imei",
    "decode_packet",
    "encode_imei",
    "encode_packet",
    "packet_length",
    "parts",
]

CODEC_8, CODEC_8E, CODEC_16 = 0x08, 0x8E, 0x10
_CODEC_NAMES = {CODEC_8: "8", CODEC_8E: "8E", CODEC_16: "16"}
HEADER_BYTES = 8  # preamble + data length
_TRAILER_BYTES = 4  # CRC field
_MIN_DATA = 3  # codec id, count, count
_SIZES = (1, 2, 4, 8)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# AVL ids turned into readings. Dallas probes: signed, 0.1 degC per unit, sensor range -55..+115 degC;
# 850 (85.0 degC) is the probe's power-on value, 2000-5000 are error codes (not connected, read error...).
DALLAS_TEMPERATURES = {72: "dallas-1", 73: "dallas-2", 74: "dallas-3", 75: "dallas-4"}
_DALLAS_RANGE = (-550, 1150)
_DALLAS_NOT_A_READING = {850}
# BLE sensors (e.g. EYE Sensor) #1-#4: signed; the scale is the tracker profile's; 32765-32767 flag
# a sensor that is missing or unreadable.
BLE_TEMPERATURES = {25: "ble-1", 26: "ble-2", 27: "ble-3", 28: "ble-4"}
_BLE_ERRORS = {32765, 32766, 32767}
_BLE_RANGE_C = (-40.0, 125.0)
# reading slots inside one record (see derived_seq): 0 = position, then probes, then doors
_TEMPERATURE_SLOTS = {io: 1 + i for i, io in enumerate([*DALLAS_TEMPERATURES, *BLE_TEMPERATURES])}
_DOOR_SLOT0 = 20


@dataclass(frozen=True, slots=True)
class IoElement:
    """One IO element: AVL id, width in bytes, and its value (an unsigned integer, or the raw bytes of
    a Codec 8E variable-length element)."""

    id: int
    size: int
    value: int | bytes

    def signed(self) -> int:
        """The value read as a two's-complement integer of its width."""
        if isinstance(self.value, bytes):
            raise TypeError(f"IO {self.id} is a variable-length element")
        bits = 8 * self.size
        return self.value - (1 << bits) if self.value >= 1 << (bits - 1) else self.value


@dataclass(frozen=True, slots=True)
class AvlRecord:
    """One AVL record. Coordinates in degrees x 1e7, altitude in metres, angle in degrees from north,
    speed in km/h (0 when the fix is invalid); ``generation`` only in Codec 16."""

    timestamp_ms: int
    priority: int
    lon_e7: int
    lat_e7: int
    altitude_m: int
    angle_deg: int
    satellites: int
    speed_kmh: int
    event_io: int = 0
    io: tuple[IoElement, ...] = ()
    generation: int | None = None

    @property
    def fix_time(self) -> datetime:
        return _EPOCH + timedelta(milliseconds=self.timestamp_ms)

    def element(self, avl_id: int) -> IoElement | None:
        return next((e for e in self.io if e.id == avl_id), None)


@dataclass(frozen=True, slots=True)
class AvlPacket:
    """A decoded AVL data packet."""

    codec: int
    records: tuple[AvlRecord, ...]


# ---------------------------------------------------------------- session


def encode_imei(imei: str) -> bytes:
    """The device's first message: ``u16`` length and the IMEI's ASCII digits."""
    raw = imei.encode("ascii")
    return struct.pack(">H", len(raw)) + raw


def decode_imei(body: bytes) -> str:
    """The IMEI from the handshake's bytes after its length field; ContractError if not digits."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ContractError("bad_frame", "the IMEI handshake is not ASCII") from None
    if not text.isdigit():
        raise ContractError("bad_frame", f"the IMEI handshake {text[:32]!r} is not digits")
    return text


def ack(count: int) -> bytes:
    """The server's answer to a packet: the number of records accepted, as a ``u32``."""
    return struct.pack(">I", count)


def packet_length(header: bytes) -> int:
    """Total bytes of the packet whose first 8 bytes are ``header`` (ContractError if the preamble
    is not zero)."""
    preamble, length = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    if preamble != 0:
        raise ContractError("bad_frame", f"preamble {preamble:#010x} is not zero")
    return HEADER_BYTES + length + _TRAILER_BYTES


# ---------------------------------------------------------------- decoding


_HEAD = struct.Struct(">QBiihHBH")  # timestamp .. speed: 24 bytes
_INT = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I"), 8: struct.Struct(">Q")}


def _records(data: bytes, codec: int, count: int) -> tuple[AvlRecord, ...]:
    """``count`` records from ``data`` (the bytes between the two record counts)."""
    wide = codec != CODEC_8  # 2-byte ids
    id_int = _INT[2 if wide else 1]
    count_int = _INT[2 if codec == CODEC_8E else 1]
    event_int = id_int
    pos, out = 0, []
    try:
        for _ in range(count):
            ts, priority, lon, lat, altitude, angle, satellites, speed = _HEAD.unpack_from(data, pos)
            pos += _HEAD.size
            (event,) = event_int.unpack_from(data, pos)
            pos += event_int.size
            generation = None
            if codec == CODEC_16:
                generation = data[pos]
                pos += 1
            (total,) = count_int.unpack_from(data, pos)
            pos += count_int.size
            elements: list[IoElement] = []
            for size in _SIZES:
                (n,) = count_int.unpack_from(data, pos)
                pos += count_int.size
                value_int = _INT[size]
                for _ in range(n):
                    (avl_id,) = id_int.unpack_from(data, pos)
                    (value,) = value_int.unpack_from(data, pos + id_int.size)
                    pos += id_int.size + size
                    elements.append(IoElement(avl_id, size, value))
            if codec == CODEC_8E:
                (n,) = _INT[2].unpack_from(data, pos)
                pos += 2
                for _ in range(n):
                    avl_id, length = struct.unpack_from(">HH", data, pos)
                    pos += 4
                    if pos + length > len(data):
                        raise struct.error("past the end")
                    elements.append(IoElement(avl_id, length, bytes(data[pos : pos + length])))
                    pos += length
            if total != len(elements):
                raise ContractError("bad_frame", f"a record says {total} IO elements but holds {len(elements)}")
            record = AvlRecord(
                ts, priority, lon, lat, altitude, angle, satellites, speed, event, tuple(elements), generation
            )
            out.append(record)
    except (struct.error, IndexError):
        raise ContractError("bad_frame", f"a record runs past the packet's end (byte {pos})") from None
    if pos != len(data):
        raise ContractError("bad_frame", f"{len(data) - pos} bytes after the last record")
    return tuple(out)


def decode_packet(frame: bytes) -> AvlPacket:
    """Decode one whole AVL packet (preamble to CRC). ContractError ``bad_frame`` (wrong length,
    truncated, counts that disagree), ``bad_crc`` or ``unknown_codec``."""
    if len(frame) < HEADER_BYTES + _MIN_DATA + _TRAILER_BYTES:
        raise ContractError("bad_frame", f"{len(frame)} bytes is shorter than any AVL packet")
    total = packet_length(frame[:HEADER_BYTES])
    if total != len(frame):
        raise ContractError("bad_frame", f"the data length says {total} bytes, the packet has {len(frame)}")
    data = frame[HEADER_BYTES:-_TRAILER_BYTES]
    sent_crc = int.from_bytes(frame[-_TRAILER_BYTES:], "big")
    crc = crc16_ibm(data)
    if sent_crc != crc:
        raise ContractError("bad_crc", f"CRC {sent_crc:#06x} sent, {crc:#06x} computed")
    codec, count = data[0], data[1]
    if codec not in _CODEC_NAMES:
        raise ContractError("unknown_codec", f"codec {codec:#04x} (this front end reads 0x08, 0x8E and 0x10)")
    if data[-1] != count:
        raise ContractError("bad_frame", f"record counts {count} and {data[-1]} differ")
    return AvlPacket(codec, _records(data[2:-1], codec, count))


# ---------------------------------------------------------------- encoding


def _encode_record(rec: AvlRecord, codec: int) -> bytes:
    wide = codec != CODEC_8
    id_fmt = ">H" if wide else ">B"
    count_fmt = ">H" if codec == CODEC_8E else ">B"
    out = bytearray(
        struct.pack(
            ">QBiihHBH",
            rec.timestamp_ms,
            rec.priority,
            rec.lon_e7,
            rec.lat_e7,
            rec.altitude_m,
            rec.angle_deg,
            rec.satellites,
            rec.speed_kmh,
        )
    )
    out += struct.pack(id_fmt, rec.event_io)
    if codec == CODEC_16:
        out += struct.pack(">B", rec.generation or 0)
    out += struct.pack(count_fmt, len(rec.io))
    fixed = [e for e in rec.io if not isinstance(e.value, bytes)]
    for size in _SIZES:
        group = [e for e in fixed if e.size == size]
        out += struct.pack(count_fmt, len(group))
        for e in group:
            assert isinstance(e.value, int)
            out += struct.pack(id_fmt, e.id) + (e.value % (1 << (8 * size))).to_bytes(size, "big")
    variable = [e for e in rec.io if isinstance(e.value, bytes)]
    if codec == CODEC_8E:
        out += struct.pack(">H", len(variable))
        for e in variable:
            assert isinstance(e.value, bytes)
            out += struct.pack(">HH", e.id, len(e.value)) + e.value
    elif variable or len(fixed) != len(rec.io):
        raise ValueError("variable-length IO elements exist only in Codec 8E")
    if any(e.size not in _SIZES for e in fixed):
        raise ValueError("fixed IO elements are 1, 2, 4 or 8 bytes wide")
    return bytes(out)


def encode_packet(codec: int, records: list[AvlRecord] | tuple[AvlRecord, ...], crc: int | None = None) -> bytes:
    """An AVL packet holding ``records`` (``crc`` overrides the computed CRC, to build bad frames)."""
    if codec not in _CODEC_NAMES:
        raise ValueError(f"codec {codec:#04x}")
    data = bytes([codec, len(records)]) + b"".join(_encode_record(r, codec) for r in records) + bytes([len(records)])
    return struct.pack(">II", 0, len(data)) + data + struct.pack(">I", crc16_ibm(data) if crc is None else crc)


# ---------------------------------------------------------------- readings


def _temperatures(rec: AvlRecord, tracker: Tracker) -> tuple[list[tuple[int, str, float]], dict[str, str]]:
    """(slot, sensor, celsius) of the record's probes, and {sensor: why not} for probe errors."""
    out, errors = [], {}
    for e in rec.io:
        if isinstance(e.value, bytes):
            continue
        if e.id in DALLAS_TEMPERATURES:
            raw, sensor = e.signed(), DALLAS_TEMPERATURES[e.id]
            if raw in _DALLAS_NOT_A_READING or not _DALLAS_RANGE[0] <= raw <= _DALLAS_RANGE[1]:
                errors[sensor] = f"raw {raw}: sensor error or not connected"
                continue
            out.append((_TEMPERATURE_SLOTS[e.id], sensor, raw / 10))
        elif e.id in BLE_TEMPERATURES:
            raw, sensor = e.signed(), BLE_TEMPERATURES[e.id]
            celsius = round(raw * tracker.profile.ble_celsius_per_unit, 4)
            if raw in _BLE_ERRORS or not _BLE_RANGE_C[0] <= celsius <= _BLE_RANGE_C[1]:
                errors[sensor] = f"raw {raw}: sensor error or not found"
                continue
            out.append((_TEMPERATURE_SLOTS[e.id], sensor, celsius))
    return out, errors


def _details(packet: AvlPacket, rec: AvlRecord, errors: dict[str, str]) -> dict[str, Any]:
    io: dict[str, Any] = {str(e.id): e.value.hex() if isinstance(e.value, bytes) else e.value for e in rec.io}
    details: dict[str, Any] = {
        "protocol": "teltonika",
        "codec": _CODEC_NAMES[packet.codec],
        "priority": rec.priority,
        "event_io": rec.event_io,
        "satellites": rec.satellites,
        "io": io,
    }
    if rec.generation is not None:
        details["generation"] = rec.generation
    if errors:
        details["probe_errors"] = errors
    return details


def parts(packet: AvlPacket, tracker: Tracker) -> list[Part]:
    """The contract values of each record, for ``tracker``.

    A record with satellites is a position (speed km/h -> m/s); one without (0 satellites: the
    device had no fix) carries no position. Dallas (AVL 72-75) and BLE (25-28) temperatures are
    temperature readings, probe errors are not; a record generated by a digital input that the
    profile maps to a door (its event IO id) is a door reading, value 1 = open. Every IO element,
    mapped or not, is kept in a ``report`` status row's details (sent_at = the record's time).
    """
    out = []
    seen: dict[int, int] = {}
    for index, rec in enumerate(packet.records):
        repeat = seen.get(rec.timestamp_ms, 0)
        seen[rec.timestamp_ms] = repeat + 1
        t = rec.fix_time
        t_, v = tracker.tenant, tracker.vehicle
        readings: list[Reading] = []
        if rec.satellites > 0:
            readings.append(
                GpsFix(
                    t_,
                    v,
                    derived_seq(t, repeat, 0),
                    t,
                    rec.lat_e7 / 1e7,
                    rec.lon_e7 / 1e7,
                    speed_mps=round(rec.speed_kmh / 3.6, 3),
                    heading_deg=float(rec.angle_deg),
                    alt_m=float(rec.altitude_m),
                )
            )
        temperatures, errors = _temperatures(rec, tracker)
        for slot, sensor, celsius in temperatures:
            readings.append(TemperatureReading(t_, v, derived_seq(t, repeat, slot), t, sensor, celsius))
        door = tracker.profile.doors.get(rec.event_io)
        trigger = rec.element(rec.event_io) if door is not None else None
        if door is not None and trigger is not None and isinstance(trigger.value, int):
            slot = _DOOR_SLOT0 + sorted(tracker.profile.doors).index(rec.event_io)
            readings.append(DoorEvent(t_, v, derived_seq(t, repeat, slot), t, door, trigger.value != 0))
        statuses = (StatusReport(t_, v, t, "report", _details(packet, rec, errors)),) if rec.io else ()
        out.append(Part(index, tuple(readings), statuses))
    return out
