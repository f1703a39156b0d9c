"""The OsmAnd protocol of the Traccar Client (phones) over HTTP: requests, reports, readings.

Query / form form (any method; query string or ``application/x-www-form-urlencoded`` body)
    ``id`` (or ``deviceid``), ``timestamp`` (seconds, milliseconds past 2^31 - 1, ISO 8601, or
    ``yyyy-MM-dd HH:mm:ss`` UTC), ``lat``, ``lon`` (or ``location=lat,lon``), ``speed`` (**knots**),
    ``bearing`` (or ``heading``), ``altitude`` (m), ``accuracy`` (m), ``batt`` (%), ``valid``;
    anything else is kept in the details.
JSON form (Traccar Client 9+)
    ``{"device_id": ..., "location": {"timestamp": ISO, "coords": {"latitude", "longitude",
    "speed" (**m/s**), "heading", "altitude", "accuracy"}, "battery": {"level" (0-1), ...},
    "is_moving", "odometer", "event", "activity": {"type"}}}``; ``location`` may be a list.
    Unknown values (-1 from the phone's location service) are left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from core.contract import ContractError, GpsFix, StatusReport
from ingest.protocols.common import Part, Tracker, derived_seq, scrub

__all__ = ["KNOT_MPS", "OsmAndReport", "Request", "encode_query", "parse_head", "parse_request", "parts"]

KNOT_MPS = 1852 / 3600  # one knot in m/s
_SECONDS_LIMIT = 2**31 - 1  # Traccar: a larger integer timestamp is in milliseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KNOWN = {"id", "deviceid", "timestamp", "lat", "lon", "location", "speed", "bearing", "heading", "altitude"}
_KNOWN |= {"accuracy", "batt", "valid"}


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request head: method, target (path and query), lower-case header names."""

    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def content_length(self) -> int:
        raw = self.headers.get("content-length", "0")
        if not raw.isdigit():
            raise ContractError("bad_frame", f"Content-Length {raw[:20]!r}")
        return int(raw)

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return connection != "close" if self.version == "HTTP/1.1" else connection == "keep-alive"


@dataclass(frozen=True, slots=True)
class OsmAndReport:
    """One location report: degrees, m/s, degrees from north, metres; ``fix_time`` UTC or None
    (the request had none); ``details`` holds battery and the other parameters."""

    device_id: str
    fix_time: datetime | None
    lat: float | None
    lon: float | None
    speed_mps: float | None = None
    heading_deg: float | None = None
    alt_m: float | None = None
    accuracy_m: float | None = None
    valid: bool = True
    details: dict[str, Any] = field(default_factory=dict)


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (up to the blank line); ContractError ``bad_frame``."""
    try:
        text = head.decode("latin-1")
        line, *header_lines = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        raise ContractError("bad_frame", "not an HTTP request line") from None
    if not version.startswith("HTTP/1."):
        raise ContractError("bad_frame", f"HTTP version {version[:20]!r}")
    headers = {}
    for h in header_lines:
        if not h:
            continue
        name, sep, value = h.partition(":")
        if not sep:
            raise ContractError("bad_frame", f"header line {h[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return Request(method.upper(), target, version, headers)


def _number(params: dict[str, str], key: str) -> float | None:
    raw = params.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ContractError("wrong_type", f"{key}={raw[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise ContractError("not_finite", f"{key} is not finite")
    return value


def _timestamp(raw: str | None) -> datetime | None:
    if raw is None or raw == "":
        return None
    if raw.isdigit():
        value = int(raw)
        return _EPOCH + (timedelta(seconds=value) if value <= _SECONDS_LIMIT else timedelta(milliseconds=value))
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError("wrong_type", f"timestamp {raw[:40]!r} is not seconds, milliseconds or ISO 8601") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _from_params(params: dict[str, str]) -> OsmAndReport:
    device = params.get("id") or params.get("deviceid")
    if not device:
        raise ContractError("missing_field", "id")
    lat, lon = _number(params, "lat"), _number(params, "lon")
    if "location" in params and lat is None:
        first, _, second = params["location"].partition(",")
        lat, lon = _number({"lat": first}, "lat"), _number({"lon": second}, "lon")
    speed = _number(params, "speed")
    heading = _number(params, "bearing")
    heading = _number(params, "heading") if heading is None else heading
    details: dict[str, Any] = {k: v[:200] for k, v in params.items() if k not in _KNOWN}
    battery = _number(params, "batt")
    if battery is not None:
        details["battery_pct"] = battery
    return OsmAndReport(
        device,
        _timestamp(params.get("timestamp")),
        lat,
        lon,
        speed_mps=None if speed is None or speed < 0 else speed * KNOT_MPS,
        heading_deg=None if heading is None or heading < 0 else heading,
        alt_m=_number(params, "altitude"),
        accuracy_m=_number(params, "accuracy"),
        valid=params.get("valid", "true").lower() not in ("false", "0"),
        details=details,
    )


def _json_number(obj: dict[str, Any], key: str) -> float | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ContractError("wrong_type", f"{key} must be a number")
    if not math.isfinite(raw):
        raise ContractError("not_finite", f"{key} is not finite")
    return float(raw)


def _from_json(device: str, location: Any) -> OsmAndReport:
    if not isinstance(location, dict):
        raise ContractError("not_object", "location must be an object")
    coords = location.get("coords")
    if not isinstance(coords, dict):
        raise ContractError("missing_field", "location.coords")
    raw_time = location.get("timestamp")
    if raw_time is not None and not isinstance(raw_time, str):
        raise ContractError("wrong_type", "location.timestamp must be an ISO 8601 string")
    speed, heading = _json_number(coords, "speed"), _json_number(coords, "heading")
    accuracy = _json_number(coords, "accuracy")
    details: dict[str, Any] = {}
    battery = location.get("battery")
    if isinstance(battery, dict):
        level = _json_number(battery, "level")
        if level is not None and level >= 0:
            details["battery_pct"] = round(level * 100, 1)
        if isinstance(battery.get("is_charging"), bool):
            details["charging"] = battery["is_charging"]
    for key in ("is_moving", "odometer", "event"):
        if key in location:
            details[key] = location[key]
    activity = location.get("activity")
    if isinstance(activity, dict) and "type" in activity:
        details["activity"] = activity["type"]
    return OsmAndReport(
        device,
        _timestamp(raw_time),
        _json_number(coords, "latitude"),
        _json_number(coords, "longitude"),
        speed_mps=None if speed is None or speed < 0 else speed,
        heading_deg=None if heading is None or heading < 0 else heading,
        alt_m=_json_number(coords, "altitude"),
        accuracy_m=None if accuracy is None or accuracy < 0 else accuracy,
        details=details,
    )


def parse_request(request: Request, body: bytes) -> list[OsmAndReport]:
    """The reports of one request: its query parameters, a form body, or a JSON body."""
    query = dict(parse_qsl(urlsplit(request.target).query, keep_blank_values=True))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    text = body.strip()
    if content_type == "application/json" or (text[:1] == b"{" and not query):
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ContractError("bad_json", "the body is not UTF-8 JSON") from None
        if not isinstance(obj, dict):
            raise ContractError("not_object", "the body must be a JSON object")
        device = obj.get("device_id") or query.get("id")
        if not isinstance(device, str) or not device:
            raise ContractError("missing_field", "device_id")
        locations = obj.get("location")
        if locations is None:
            raise ContractError("missing_field", "location")
        return [_from_json(device, loc) for loc in (locations if isinstance(locations, list) else [locations])]
    if text:
        try:
            query.update(parse_qsl(text.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise ContractError("bad_frame", "the form body is not UTF-8") from None
    return [_from_params(query)]


def encode_query(
    device_id: str,
    fix_time: datetime,
    lat: float,
    lon: float,
    speed_mps: float | None = None,
    heading_deg: float | None = None,
    alt_m: float | None = None,
    accuracy_m: float | None = None,
    battery_pct: float | None = None,
) -> str:
    """The request target a legacy Traccar Client sends (``/?id=..``; speed in knots, time in s)."""
    params: dict[str, Any] = {"id": device_id, "timestamp": int(fix_time.timestamp()), "lat": lat, "lon": lon}
    for key, value in (
        ("speed", None if speed_mps is None else round(speed_mps / KNOT_MPS, 4)),
        ("bearing", heading_deg),
        ("altitude", alt_m),
        ("accuracy", accuracy_m),
        ("batt", battery_pct),
    ):
        if value is not None:
            params[key] = value
    return "/?" + urlencode(params)


def parts(reports: list[OsmAndReport], tracker: Tracker, received_at: datetime) -> list[Part]:
    """The contract values of a request's reports for ``tracker``.

    A valid report with coordinates is a position; its seq is derived from its fix time (a report
    without a timestamp is stamped ``received_at``). Battery and the other parameters (and a report
    marked ``valid=false``, or one without coordinates) are a ``report`` status's details.
    """
    out = []
    for index, r in enumerate(reports):
        when = r.fix_time or received_at
        readings: tuple[GpsFix, ...] = ()
        details = dict(r.details)
        if r.lat is not None and r.lon is not None and r.valid:
            readings = (
                GpsFix(
                    tracker.tenant,
                    tracker.vehicle,
                    derived_seq(when),
                    when,
                    r.lat,
                    r.lon,
                    speed_mps=None if r.speed_mps is None else round(r.speed_mps, 3),
                    heading_deg=r.heading_deg,
                    accuracy_m=r.accuracy_m,
                    alt_m=r.alt_m,
                ),
            )
        elif r.lat is not None or r.lon is not None:
            details.update({"lat": r.lat, "lon": r.lon, "valid": r.valid})
        statuses: tuple[StatusReport, ...] = ()
        if details or not readings:
            details = {"protocol": "osmand", **scrub(details)}
            statuses = (StatusReport(tracker.tenant, tracker.vehicle, when, "report", details),)
        out.append(Part(index if len(reports) > 1 else None, readings, statuses))
    return out
