"""OwnTracks JSON over MQTT: topics, messages, readings.

Topics ``owntracks/<user>/<device>`` (locations, and the last will) and
``owntracks/<user>/<device>/<kind>`` (``event``, ``waypoint``, ``info``, ``status``, ...).
A ``location`` message: ``tst`` (fix time, s since 1970 UTC), ``lat``, ``lon`` (degrees),
``acc`` (m), ``alt`` (m), ``vac`` (m), ``vel`` (**km/h**), ``cog`` (degrees), ``batt`` (%),
``bs``, ``tid``, ``t``, ``conn``, ...; ``acc``/``alt``/``cog``/``vel`` are left out when 0.
Every other ``_type`` (transition, waypoint, lwt, card, ...) is a status, not a reading.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.contract import ContractError, GpsFix, StatusReport
from ingest.protocols.common import Part, Tracker, derived_seq, scrub

__all__ = ["ROOT", "Message", "encode_location", "parse_message", "parse_topic", "parts"]

ROOT = "owntracks"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCATION_KEYS = {"_type", "tst", "lat", "lon", "acc", "alt", "vel", "cog"}
_STATE_OF_TYPE = {"lwt": "offline"}  # the broker sends the app's last will when it drops off


@dataclass(frozen=True, slots=True)
class Message:
    """An OwnTracks message: who sent it (the topic's user and device) and its JSON object."""

    user: str
    device: str
    kind: str  # the topic's last level past the device ("" for locations), e.g. "event"
    body: dict[str, Any]


def parse_topic(topic: str) -> tuple[str, str, str]:
    """(user, device, kind) of an OwnTracks topic; ContractError ``bad_topic``."""
    levels = topic.split("/")
    if len(levels) not in (3, 4) or levels[0] != ROOT or not levels[1] or not levels[2]:
        raise ContractError("bad_topic", f"{topic[:120]!r} is not owntracks/<user>/<device>[/<kind>]")
    return levels[1], levels[2], levels[3] if len(levels) == 4 else ""


def parse_message(topic: str, payload: bytes) -> Message:
    """Check the topic and that the payload is a JSON object with a ``_type``."""
    user, device, kind = parse_topic(topic)
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ContractError("bad_json", "not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ContractError("not_object", "the payload must be a JSON object")
    if not isinstance(body.get("_type"), str):
        raise ContractError("missing_field", "_type")
    return Message(user, device, kind, body)


def _number(body: dict[str, Any], key: str, required: bool = False) -> float | None:
    raw = body.get(key)
    if raw is None:
        if required:
            raise ContractError("missing_field", key)
        return None
    if isinstance(raw, str):  # apps before Android 0.5.11 / iOS 8.0 sent numbers as strings
        try:
            raw = float(raw)
        except ValueError:
            raise ContractError("wrong_type", f"{key} must be a number") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ContractError("wrong_type", f"{key} must be a number")
    if not math.isfinite(raw):
        raise ContractError("not_finite", f"{key} is not finite")
    return float(raw)


def _when(body: dict[str, Any], key: str) -> datetime | None:
    seconds = _number(body, key)
    return None if seconds is None else _EPOCH + timedelta(seconds=seconds)


def parts(message: Message, tracker: Tracker, received_at: datetime) -> list[Part]:
    """The contract values of one message for ``tracker``.

    A ``location`` is a position (``vel`` km/h -> m/s; seq derived from ``tst``) and, when it says
    more (battery, trigger, connection, regions), a ``report`` status. Any other ``_type`` is a
    status named after it (``lwt`` -> ``offline``), with the whole message as its details, stamped
    with its own ``tst`` or ``received_at``.
    """
    body = message.body
    kind = str(body["_type"])
    origin = {"protocol": "owntracks", "device": message.device}
    t_, v = tracker.tenant, tracker.vehicle
    if kind != "location":
        stamp = _when(body, "tst") or received_at
        details = {**origin, "topic_kind": message.kind, "message": scrub(body)}
        state = _STATE_OF_TYPE.get(kind, scrub(kind[:64]))
        return [Part(None, (), (StatusReport(t_, v, stamp, state, details),))]
    when = _when(body, "tst")
    if when is None:
        raise ContractError("missing_field", "tst")
    lat, lon = _number(body, "lat", True), _number(body, "lon", True)
    assert lat is not None and lon is not None
    vel = _number(body, "vel")
    fix = GpsFix(
        t_,
        v,
        derived_seq(when),
        when,
        lat,
        lon,
        speed_mps=None if vel is None or vel < 0 else round(vel / 3.6, 3),
        heading_deg=_number(body, "cog"),
        accuracy_m=_number(body, "acc"),
        alt_m=_number(body, "alt"),
    )
    extra = scrub({k: val for k, val in body.items() if k not in _LOCATION_KEYS})
    statuses = (StatusReport(t_, v, when, "report", {**origin, **extra}),) if extra else ()
    return [Part(None, (fix,), statuses)]


def encode_location(
    user: str,
    device: str,
    fix_time: datetime,
    lat: float,
    lon: float,
    speed_mps: float | None = None,
    heading_deg: float | None = None,
    accuracy_m: float | None = None,
    alt_m: float | None = None,
    battery_pct: int | None = None,
) -> tuple[str, bytes]:
    """(topic, payload) of a location as the app publishes it (integers, zeros left out)."""
    body: dict[str, Any] = {"_type": "location", "tid": device[-2:], "tst": int(fix_time.timestamp())}
    body.update({"lat": lat, "lon": lon})
    for key, value in (
        ("vel", None if speed_mps is None else round(speed_mps * 3.6)),
        ("cog", None if heading_deg is None else round(heading_deg) % 360),
        ("acc", None if accuracy_m is None else round(accuracy_m)),
        ("alt", None if alt_m is None else round(alt_m)),
        ("batt", battery_pct),
    ):
        if value:
            body[key] = value
    return f"{ROOT}/{user}/{device}", json.dumps(body, separators=(",", ":")).encode()
