"""The device contract: topics, encoding, and every class of bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from core.contract import (
    ContractError,
    DoorEvent,
    GpsFix,
    Limits,
    TemperatureReading,
    decode,
    encode_batch,
    encode_single,
    encode_status,
    parse_topic,
    topic_for,
)

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
FIX = NOW - timedelta(seconds=30)
TOPIC = "fleet/acme/van-1/gps"


def gps(**changes: object) -> bytes:
    body = {
        "v": 1,
        "vehicle": "van-1",
        "seq": 7,
        "fix_time": "2026-11-22T11:59:30.000Z",
        "lat": 60.17,
        "lon": 24.94,
        "speed_mps": 8.5,
        "heading_deg": 90.0,
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def reasons(topic: str, payload: bytes, limits: Limits = Limits()) -> list[str]:
    return [r.reason for r in decode(topic, payload, NOW, limits).rejected]


def test_topic_round_trip() -> None:
    assert topic_for("acme", "van-1", "gps") == TOPIC
    assert parse_topic(TOPIC) == ("acme", "van-1", "gps")
    for bad in ("fleet/acme/van-1", "fleet/acme/van 1/gps", "other/acme/van-1/gps", "fleet/acme/van-1/speed"):
        with pytest.raises(ContractError):
            parse_topic(bad)


def test_good_gps_fix_decodes_with_units_and_utc() -> None:
    out = decode(TOPIC, gps(), NOW)
    assert out.rejected == []
    (fix,) = out.readings
    assert fix == GpsFix("acme", "van-1", 7, FIX, 60.17, 24.94, speed_mps=8.5, heading_deg=90.0)
    assert fix.fix_time.tzinfo is not None


def test_offsets_are_normalised_to_utc() -> None:
    (fix,) = decode(TOPIC, gps(fix_time="2026-11-22T13:59:30+02:00"), NOW).readings
    assert fix.fix_time == FIX and fix.fix_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "not_object"),
        (gps(v=2), "bad_version"),
        (gps(lat=...), "missing_field"),
        (gps(seq=...), "missing_field"),
        (gps(fix_time=...), "missing_field"),
        (gps(lat="60.1"), "wrong_type"),
        (gps(seq=1.5), "wrong_type"),
        (gps(seq=True), "wrong_type"),
        (gps(fix_time=1732270000), "wrong_type"),
        (gps(fix_time="yesterday"), "wrong_type"),
        (gps(fix_time="2026-11-22T11:59:30"), "wrong_type"),  # naive: no offset
        (gps(lat=91.0), "out_of_range"),
        (gps(lon=-180.5), "out_of_range"),
        (gps(speed_mps=-1), "out_of_range"),
        (gps(seq=-1), "out_of_range"),
        (gps(fix_time="1999-12-31T23:59:59Z"), "time_too_old"),
        (gps(fix_time="2026-11-22T12:10:00Z"), "time_in_future"),
        (gps(vehicle="van-2"), "vehicle_mismatch"),
        (gps(vehicle=...), "missing_field"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(payload: bytes, reason: str) -> None:
    out = decode(TOPIC, payload, NOW)
    assert out.readings == []
    assert [r.reason for r in out.rejected] == [reason]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_rejected(constant: str) -> None:
    payload = gps().replace(b'"lat": 60.17', f'"lat": {constant}'.encode())
    assert constant.encode() in payload
    assert reasons(TOPIC, payload) == ["not_finite"]


def test_oversized_payload_is_rejected_before_parsing() -> None:
    assert reasons(TOPIC, gps(), Limits(max_payload_bytes=50)) == ["oversized"]


def test_bad_topic_is_rejected() -> None:
    assert reasons("fleet/acme/van-1/speed", gps()) == ["bad_topic"]


def test_temperature_and_door() -> None:
    temp = json.dumps(
        {"v": 1, "vehicle": "van-1", "seq": 1, "fix_time": "2026-11-22T11:59:30Z", "sensor": "reefer", "celsius": 3.5}
    ).encode()
    door = json.dumps(
        {"v": 1, "vehicle": "van-1", "seq": 2, "fix_time": "2026-11-22T11:59:30Z", "door": "rear", "open": True}
    ).encode()
    assert decode("fleet/acme/van-1/temp", temp, NOW).readings == [
        TemperatureReading("acme", "van-1", 1, FIX, "reefer", 3.5)
    ]
    assert decode("fleet/acme/van-1/door", door, NOW).readings == [DoorEvent("acme", "van-1", 2, FIX, "rear", True)]
    assert reasons("fleet/acme/van-1/door", door.replace(b"true", b'"yes"')) == ["wrong_type"]
    assert reasons("fleet/acme/van-1/temp", temp.replace(b"3.5", b"400")) == ["out_of_range"]


def test_encode_single_round_trips() -> None:
    fix = GpsFix("acme", "van-1", 3, FIX, 60.1, 24.9, speed_mps=1.5, accuracy_m=4.0, device_time=NOW)
    topic, payload = encode_single(fix)
    assert topic == TOPIC
    assert decode(topic, payload, NOW).readings == [fix]


def test_batch_keeps_good_readings_and_dead_letters_bad_ones_by_index() -> None:
    readings = [GpsFix("acme", "van-1", i, FIX + timedelta(seconds=i), 60.1, 24.9) for i in range(3)]
    topic, payload = encode_batch("acme", "van-1", readings, device_time=NOW)
    body = json.loads(payload)
    body["readings"][1]["lat"] = 123.0
    body["readings"].append({"type": "sonar", "seq": 9})
    out = decode(topic, json.dumps(body).encode(), NOW)
    assert [r.seq for r in out.readings] == [0, 2]
    assert all(r.device_time == NOW for r in out.readings)
    assert [(r.reason, r.index) for r in out.rejected] == [("out_of_range", 1), ("bad_type", 3)]


def test_batch_envelope_errors() -> None:
    topic = "fleet/acme/van-1/batch"
    assert reasons(topic, b'{"v":1,"vehicle":"van-1"}') == ["missing_field"]
    assert reasons(topic, b'{"v":1,"vehicle":"van-1","readings":[]}') == ["wrong_type"]
    many = json.dumps({"v": 1, "vehicle": "van-1", "readings": [{}] * 11}).encode()
    assert reasons(topic, many, Limits(max_batch_readings=10)) == ["oversized"]


def test_status_report() -> None:
    topic, payload = encode_status("acme", "van-1", "online", NOW, {"queue": 3})
    (status,) = decode(topic, payload, NOW).statuses
    assert (status.state, status.details, status.sent_at) == ("online", {"queue": 3}, NOW)


def test_deeply_nested_json_is_a_dead_letter_not_a_crash() -> None:
    assert reasons(TOPIC, b"[" * 100_000 + b"]" * 100_000) in (["bad_json"], ["not_object"])
