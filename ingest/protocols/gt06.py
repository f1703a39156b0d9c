"""GT06 (Concox and compatible) over TCP: frames, packets, replies, readings.

Frame
    ``78 78`` + ``u8`` length, or ``79 79`` + ``u16`` length; then protocol number, content,
    ``u16`` serial number and ``u16`` CRC-ITU (CRC-16/X-25 over length .. serial, sent high
    byte first); then ``0D 0A``. The length counts protocol number .. CRC (content + 5).

Packets read here
    0x01 login (terminal id: the IMEI as 8 BCD bytes, a leading 0 digit), 0x13 status /
    heartbeat, 0x12 location, 0x22 location (UTC), 0x16 and 0x26 alarm (a location and a
    status). The server replies ``78 78 05 <protocol> <serial> <crc> 0D 0A`` to each (devices
    that expect no reply to a location ignore it).

Location
    date and time (6 bytes: YY MM DD hh mm ss, UTC), GPS byte (high nibble: length, low nibble:
    satellites), ``u32`` latitude and longitude (minutes x 30 000, i.e. degrees x 1 800 000),
    ``u8`` speed (km/h), ``u16`` course and status (bit 12 positioned, bit 11 west, bit 10 north,
    bits 0-9 course in degrees), then cell data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.contract import ContractError, GpsFix, Reading, StatusReport
from ingest.protocols.common import Part, Tracker, derived_seq
from ingest.protocols.crc import crc16_x25

__all__ = [
    "ALARM",
    "ALARM_UTC",
    "HEARTBEAT",
    "LOCATION",
    "LOCATION_UTC",
    "LOGIN",
    "Gt06Frame",
    "Location",
    "Status",
    "decode_frame",
    "encode_frame",
    "encode_location",
    "encode_login",
    "frame_length",
    "parse_location",
    "parse_login",
    "parse_status",
    "parts",
    "reply",
]

LOGIN, LOCATION, HEARTBEAT, ALARM, LOCATION_UTC, ALARM_UTC = 0x01, 0x12, 0x13, 0x16, 0x22, 0x26
SHORT_START, LONG_START, STOP = b"\x78\x78", b"\x79\x79", b"\x0d\x0a"
_GPS_BYTES = 18
_ALARMS = {
    0x00: "normal",
    0x01: "sos",
    0x02: "power_cut",
    0x03: "shock",
    0x04: "fence_in",
    0x05: "fence_out",
    0x06: "overspeed",
    0x09: "moving",
    0x13: "tamper",
    0xFE: "acc_on",
    0xFF: "acc_off",
}
_TERMINAL_STATES = {0b100: "sos", 0b011: "low_battery", 0b010: "power_cut", 0b001: "shock", 0b000: "normal"}


@dataclass(frozen=True, slots=True)
class Gt06Frame:
    """A frame whose stop bits and CRC were checked."""

    protocol: int
    content: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class Location:
    """A location: degrees WGS84 (south and west negative), km/h, degrees from north; time UTC."""

    fix_time: datetime
    satellites: int
    lat: float
    lon: float
    speed_kmh: int
    course_deg: int
    positioned: bool
    differential: bool
    cell: dict[str, int]
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Status:
    """A terminal's status: the information byte's flags, voltage level 0-6, GSM signal 0-4, alarm."""

    details: dict[str, Any]


# ---------------------------------------------------------------- framing


def frame_length(head: bytes) -> int:
    """Total bytes of the frame whose first bytes are ``head`` (3 bytes for ``78 78``, 4 for
    ``79 79``); ContractError ``bad_frame`` for another start."""
    if head[:2] == SHORT_START:
        return 2 + 1 + head[2] + 2
    if head[:2] == LONG_START:
        return 2 + 2 + int.from_bytes(head[2:4], "big") + 2
    raise ContractError("bad_frame", f"start {head[:2].hex()} is neither 7878 nor 7979")


def decode_frame(frame: bytes) -> Gt06Frame:
    """Check one whole frame (start to stop bits); ContractError ``bad_frame`` or ``bad_crc``."""
    head = 3 if frame[:2] == SHORT_START else 4
    if len(frame) < head + 5 + 2:
        raise ContractError("bad_frame", f"{len(frame)} bytes is shorter than any frame")
    if frame_length(frame[:head]) != len(frame):
        raise ContractError("bad_frame", f"the length field says {frame_length(frame[:head])} bytes, got {len(frame)}")
    if frame[-2:] != STOP:
        raise ContractError("bad_frame", f"stop bits {frame[-2:].hex()} are not 0d0a")
    body = frame[2:-4]  # length field .. serial
    sent, crc = int.from_bytes(frame[-4:-2], "big"), crc16_x25(body)
    if sent != crc:
        raise ContractError("bad_crc", f"CRC {sent:#06x} sent, {crc:#06x} computed")
    return Gt06Frame(frame[head], frame[head + 1 : -6], int.from_bytes(frame[-6:-4], "big"))


def encode_frame(protocol: int, content: bytes, serial: int, crc: int | None = None) -> bytes:
    """A frame (``79 79`` when it does not fit a 1-byte length); ``crc`` overrides, to build bad frames."""
    length = len(content) + 5
    head = SHORT_START + bytes([length]) if length <= 0xFF else LONG_START + struct.pack(">H", length)
    body = head[2:] + bytes([protocol]) + content + struct.pack(">H", serial)
    return head[:2] + body + struct.pack(">H", crc16_x25(body) if crc is None else crc) + STOP


def reply(protocol: int, serial: int) -> bytes:
    """The server's acknowledgement of a packet: its protocol number and serial echoed."""
    return encode_frame(protocol, b"", serial)


# ---------------------------------------------------------------- packets


def parse_login(content: bytes) -> str:
    """The IMEI of a login packet (8 BCD bytes; newer models append type and time zone bytes)."""
    if len(content) < 8:
        raise ContractError("bad_frame", f"a login of {len(content)} bytes (8 expected)")
    digits = content[:8].hex()
    if not digits.isdigit():
        raise ContractError("bad_frame", f"terminal id {digits} is not BCD digits")
    return digits[1:] if digits.startswith("0") else digits


def encode_login(imei: str, serial: int) -> bytes:
    """A login frame for a 15-digit (or 16-digit) IMEI."""
    return encode_frame(LOGIN, bytes.fromhex(imei.rjust(16, "0")), serial)


def _time(raw: bytes) -> datetime:
    yy, mm, dd, hh, mi, ss = raw
    try:
        return datetime(2000 + yy, mm, dd, hh, mi, ss, tzinfo=UTC)
    except ValueError:
        raise ContractError("out_of_range", f"date and time {raw.hex()} is not a valid time") from None


def _gps(content: bytes) -> tuple[datetime, int, float, float, int, int, bool, bool]:
    if len(content) < _GPS_BYTES:
        raise ContractError("bad_frame", f"a location of {len(content)} bytes ({_GPS_BYTES} at least)")
    when = _time(content[:6])
    satellites = content[6] & 0x0F
    lat_raw, lon_raw, speed, course = struct.unpack(">IIBH", content[7:18])
    lat, lon = lat_raw / 1_800_000, lon_raw / 1_800_000
    if not course & 0x0400:  # bit 10: north
        lat = -lat
    if course & 0x0800:  # bit 11: west
        lon = -lon
    return when, satellites, lat, lon, speed, course & 0x03FF, bool(course & 0x1000), bool(course & 0x2000)


def parse_location(protocol: int, content: bytes) -> Location:
    """A location (0x12, 0x22) or the location part of an alarm (0x16, 0x26)."""
    when, satellites, lat, lon, speed, course, positioned, differential = _gps(content)
    rest = content[_GPS_BYTES:]
    extra: dict[str, Any] = {}
    if protocol in (ALARM, ALARM_UTC):
        rest = rest[1:]  # the cell data's own length byte
    cell = {}
    if len(rest) >= 8:
        mcc, mnc, lac = struct.unpack(">HBH", rest[:5])
        cell = {"mcc": mcc, "mnc": mnc, "lac": lac, "cell_id": int.from_bytes(rest[5:8], "big")}
    if protocol == LOCATION_UTC and len(rest) >= 11:
        extra = {"acc": rest[8], "upload_mode": rest[9], "reupload": rest[10]}
    return Location(when, satellites, lat, lon, speed, course, positioned, differential, cell, extra)


def _status_fields(raw: bytes) -> dict[str, Any]:
    info, voltage, gsm = raw[0], raw[1], raw[2]
    details: dict[str, Any] = {
        "oil_electricity_cut": bool(info & 0x80),
        "gps_tracking": bool(info & 0x40),
        "terminal_alarm": _TERMINAL_STATES.get((info >> 3) & 0b111, f"code {(info >> 3) & 0b111}"),
        "charging": bool(info & 0x04),
        "acc_high": bool(info & 0x02),
        "defence_activated": bool(info & 0x01),
        "voltage_level": voltage,
        "gsm_signal": gsm,
    }
    if len(raw) >= 5:
        details["alarm"] = _ALARMS.get(raw[3], f"code {raw[3]:#04x}")
        details["language"] = raw[4]
    return details


def parse_status(protocol: int, content: bytes) -> Status:
    """The status of a heartbeat (0x13) or of an alarm (0x16, 0x26: after its location and cell data)."""
    if protocol == HEARTBEAT:
        raw = content
    else:
        if len(content) < _GPS_BYTES + 1:
            raise ContractError("bad_frame", f"an alarm of {len(content)} bytes")
        raw = content[_GPS_BYTES + content[_GPS_BYTES] :]
    if len(raw) < 3:
        raise ContractError("bad_frame", f"a status of {len(raw)} bytes (3 at least)")
    return Status(_status_fields(raw))


def encode_location(
    fix_time: datetime,
    lat: float,
    lon: float,
    speed_kmh: int,
    course_deg: int,
    serial: int,
    satellites: int = 9,
    positioned: bool = True,
    protocol: int = LOCATION_UTC,
    cell: tuple[int, int, int, int] = (244, 5, 1000, 2000),
) -> bytes:
    """A location frame (0x12 or 0x22) as a GT06 device sends it."""
    t = fix_time.astimezone(UTC)
    status = (course_deg & 0x03FF) | (0x1000 if positioned else 0) | (0x0400 if lat >= 0 else 0)
    status |= 0x0800 if lon < 0 else 0
    content = bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second, 0xC0 | (satellites & 0x0F)])
    content += struct.pack(">IIBH", round(abs(lat) * 1_800_000), round(abs(lon) * 1_800_000), speed_kmh, status)
    mcc, mnc, lac, cell_id = cell
    content += struct.pack(">HBH", mcc, mnc, lac) + cell_id.to_bytes(3, "big")
    if protocol == LOCATION_UTC:
        content += bytes([1, 0, 0])  # ACC high, uploaded at its interval, real time
    return encode_frame(protocol, content, serial)


# ---------------------------------------------------------------- readings


def parts(frame: Gt06Frame, tracker: Tracker, received_at: datetime) -> list[Part]:
    """The contract values of a location, alarm or heartbeat frame for ``tracker``.

    A positioned location is a position (speed km/h -> m/s, seq derived from its time); one
    that is not positioned carries no position. A heartbeat is a ``heartbeat`` status and an
    alarm an ``alarm`` status (with its location when positioned), both with the terminal's
    flags in the details; a heartbeat has no time of its own, so it is stamped ``received_at``.
    """
    t_, v = tracker.tenant, tracker.vehicle
    if frame.protocol == HEARTBEAT:
        details = {"protocol": "gt06", "serial": frame.serial, **parse_status(HEARTBEAT, frame.content).details}
        return [Part(None, (), (StatusReport(t_, v, received_at, "heartbeat", details),))]
    loc = parse_location(frame.protocol, frame.content)
    readings: list[Reading] = []
    if loc.positioned:
        readings.append(
            GpsFix(
                t_,
                v,
                derived_seq(loc.fix_time),
                loc.fix_time,
                round(loc.lat, 7),
                round(loc.lon, 7),
                speed_mps=round(loc.speed_kmh / 3.6, 3),
                heading_deg=float(loc.course_deg),
            )
        )
    statuses: tuple[StatusReport, ...] = ()
    if frame.protocol in (ALARM, ALARM_UTC):
        details = {
            "protocol": "gt06",
            "serial": frame.serial,
            "positioned": loc.positioned,
            "lat": round(loc.lat, 7),
            "lon": round(loc.lon, 7),
            **loc.cell,
            **parse_status(frame.protocol, frame.content).details,
        }
        statuses = (StatusReport(t_, v, loc.fix_time, "alarm", details),)
    return [Part(None, tuple(readings), statuses)]
