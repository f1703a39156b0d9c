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
    decode_receipt,
    encode_batch,
    encode_receipt,
    encode_single,
    encode_status,
    parse_topic,
    receipt_topic,
    seq_ranges,
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


# ---------------------------------------------------------------- what the database could not hold

TEMP = "fleet/acme/van-1/temp"
STATUS = "fleet/acme/van-1/status"


def temp(**changes: object) -> bytes:
    body = {"v": 1, "vehicle": "van-1", "seq": 9, "fix_time": "2026-11-22T11:59:30Z", "sensor": "reefer", "celsius": 3}
    body.update(changes)
    return json.dumps(body).encode()


def status(**changes: object) -> bytes:
    body = {"v": 1, "vehicle": "van-1", "sent_at": "2026-11-22T11:59:30Z", "state": "heartbeat", "details": {}}
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        # the seven poison variants that once crash-looped a gateway shard
        (TEMP, temp(sensor="ree\u0000fer"), "bad_text"),
        (STATUS, status(details={"note": "a\u0000b"}), "bad_text"),
        (STATUS, status(state="on\u0000line"), "bad_text"),
        (TEMP, temp(sensor="\ud800"), "bad_text"),
        (STATUS, status(details={"x": ["\udfff"]}), "bad_text"),
        (TEMP, temp(device_time="9999-12-31T23:59:59-23:59"), "time_out_of_range"),
        (STATUS, status(sent_at="0001-01-01T00:00:00+01:00"), "time_out_of_range"),
        # their siblings
        ("fleet/acme/van-1/door", temp(door="re\u0000ar", open=True), "bad_text"),
        (STATUS, status(details={"k\u0000": 1}), "bad_text"),
        (TEMP, temp(fix_time="0001-01-01T00:00:00+01:00"), "time_out_of_range"),
        (TEMP, temp(sensor="x" * 65), "too_long"),
        (STATUS, status(details={"a": [[[[[[[[[1]]]]]]]]]}), "too_deep"),
        (STATUS, status(details={"a": 1e999}), "not_finite"),
        (TEMP, temp(vehicle=["van-1"]), "vehicle_mismatch"),
    ],
)
def test_what_the_database_cannot_hold_is_a_dead_letter_with_its_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    out = decode(topic, payload, NOW)
    assert (out.readings, out.statuses) == ([], [])
    assert [r.reason for r in out.rejected] == [reason]


def test_details_within_the_limits_are_kept() -> None:
    details = {"queue": 3, "nested": [[[[[[[1]]]]]]], "text": "ünïcode ✓", "big": 10**30}
    (report,) = decode(STATUS, status(details=details), NOW).statuses
    assert report.details == details


def test_a_trailing_newline_is_not_part_of_a_valid_id() -> None:
    with pytest.raises(ContractError):
        parse_topic("fleet/acme/van-1\n/gps")
    with pytest.raises(ContractError):
        topic_for("acme\n", "van-1", "gps")


def test_a_rejected_reading_keeps_its_seq_for_the_receipt() -> None:
    readings = [GpsFix("acme", "van-1", i, FIX, 60.1, 24.9) for i in (4, 5)]
    topic, payload = encode_batch("acme", "van-1", readings, receipt=True)
    body = json.loads(payload)
    body["readings"][1]["lat"] = 99.0
    body["readings"].append({"type": "temp", "seq": "six"})
    out = decode(topic, json.dumps(body).encode(), NOW)
    assert out.receipt
    assert [r.seq for r in out.readings] == [4]
    assert [(r.reason, r.index, r.seq) for r in out.rejected] == [("out_of_range", 1, 5), ("wrong_type", 2, None)]
    assert not decode(topic, encode_batch("acme", "van-1", readings)[1], NOW).receipt


def test_receipts_round_trip_as_seq_ranges() -> None:
    payload = encode_receipt("van-1", [1, 2, 3, 7, 9, 10, 3], refused=[4, 7])
    assert json.loads(payload) == {"v": 1, "vehicle": "van-1", "stored": [[1, 3], [7, 7], [9, 10]], "refused": [[4, 4]]}
    receipt = decode_receipt(payload)
    assert receipt.seqs() == [1, 2, 3, 4, 7, 9, 10]
    assert receipt_topic("acme", "van-1") == "fleet/acme/van-1/cmd/stored"
    assert seq_ranges([]) == []


@pytest.mark.parametrize(
    "payload",
    [b"nope", b"[]", b'{"v":1,"vehicle":"v","stored":[[3,1]]}', b'{"v":1,"vehicle":"v","stored":[[1,true]]}'],
)
def test_a_bad_receipt_is_a_contract_error(payload: bytes) -> None:
    with pytest.raises(ContractError):
        decode_receipt(payload)
    with pytest.raises(ContractError):
        decode_receipt(b'{"v":1,"vehicle":"v","stored":[[0,5000000]]}', max_seqs=1000)
