"""Batch preparation: rows, dead letters and in-batch duplicates."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import h3

from core.contract import DoorEvent, GpsFix, Limits, TemperatureReading, encode_batch, encode_single
from ingest.batching import Received, dead_letter_row, prepare

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def fix(seq: int, lat: float = 60.17) -> GpsFix:
    return GpsFix("acme", "van-1", seq, NOW - timedelta(seconds=60 - seq), lat, 24.94, speed_mps=3.0)


def received(reading: GpsFix) -> Received:
    topic, payload = encode_single(reading)
    return Received(topic, payload, NOW.timestamp())


def test_rows_carry_h3_cell_and_server_time() -> None:
    out = prepare([received(fix(1))], Limits(), 9, 4096)
    (row,) = out.positions
    assert row[:4] == (fix(1).fix_time, "acme", "van-1", 1)
    assert row.h3_cell == h3.str_to_int(h3.latlng_to_cell(60.17, 24.94, 9))
    assert row.received_at == NOW


def test_identical_repeat_is_a_duplicate_and_other_content_a_conflict() -> None:
    out = prepare([received(fix(1)), received(fix(1)), received(fix(1, lat=60.2)), received(fix(2))], Limits(), 9, 4096)
    assert [r.seq for r in out.positions] == [1, 2]
    assert out.duplicates == 1
    assert out.conflicts == 1
    assert [d.reason for d in out.dead_letters] == ["conflict"]


def test_dead_letters_keep_topic_reason_capped_payload_and_a_stable_digest() -> None:
    bad = Received("fleet/acme/van-1/gps", b"{" + b"x" * 9000, NOW.timestamp())
    first = prepare([bad], Limits(), 9, 100).dead_letters
    again = prepare([bad], Limits(), 9, 100).dead_letters
    (row,) = first
    received_at, topic, reason, _detail, index, payload, size, digest = row
    assert (received_at, topic, reason, index, len(payload), size) == (
        NOW,
        "fleet/acme/van-1/gps",
        "bad_json",
        None,
        100,
        9001,
    )
    assert digest == again[0].digest


def test_batch_message_splits_into_tables() -> None:
    topic, payload = encode_batch("acme", "van-1", [fix(1), fix(2)])
    body = json.loads(payload)
    body["readings"].append(
        {"type": "temp", "seq": 3, "fix_time": "2026-11-22T11:59:00Z", "sensor": "p", "celsius": 4.0}
    )
    body["readings"].append(
        {"type": "door", "seq": 4, "fix_time": "2026-11-22T11:59:01Z", "door": "rear", "open": False}
    )
    out = prepare([Received(topic, json.dumps(body).encode(), NOW.timestamp())], Limits(), 9, 4096)
    assert (len(out.positions), len(out.temperatures), len(out.doors), out.reading_count) == (2, 1, 1, 4)


def test_rows_keep_their_receive_order_across_tables() -> None:
    temp = TemperatureReading("acme", "van-1", 3, NOW - timedelta(seconds=50), "cargo", 4.5)
    door = DoorEvent("acme", "van-1", 4, NOW - timedelta(seconds=45), "rear", True)
    first = Received(*encode_batch("acme", "van-1", [fix(1), temp, fix(5)]), NOW.timestamp())
    second = Received(*encode_batch("acme", "van-1", [door, fix(6)]), NOW.timestamp() + 1)
    out = prepare([first, second], Limits(), 9, 4096)
    assert (out.position_order, out.temperature_order, out.door_order) == ([0, 2, 4], [1], [3])


def test_a_seq_is_one_per_device_across_streams_and_fix_times() -> None:
    temp = TemperatureReading("acme", "van-1", 1, NOW - timedelta(seconds=59), "cargo", 4.5)  # seq 1 as gps too
    later = GpsFix("acme", "van-1", 2, NOW - timedelta(seconds=5), 60.17, 24.94, speed_mps=3.0)  # seq 2, other time
    out = prepare([received(fix(1)), received(fix(2)), received(temp), received(later)], Limits(), 9, 4096)
    assert [r.seq for r in out.positions] == [1, 2] and out.temperatures == []
    assert out.conflicts == 2
    assert [d.reason for d in out.dead_letters] == ["conflict", "conflict"]


def test_receipts_cover_what_a_device_asked_for() -> None:
    good = Received(*encode_batch("acme", "van-1", [fix(1), fix(2)], receipt=True), NOW.timestamp())
    body = json.loads(encode_batch("acme", "van-1", [fix(3), fix(4)], receipt=True)[1])
    body["readings"][1]["lat"] = 99.0
    bad = Received("fleet/acme/van-1/batch", json.dumps(body).encode(), NOW.timestamp())
    other = Received(*encode_batch("acme", "van-2", [fix(1)]), NOW.timestamp())  # did not ask
    out = prepare([good, bad, received(fix(2)), other], Limits(), 9, 4096)
    assert list(out.receipts) == [("acme", "van-1")]
    coverage = out.receipts[("acme", "van-1")]
    assert (coverage.stored, coverage.refused) == ({1, 2, 3}, {4})


def test_a_dead_letter_of_unstorable_text_is_storable() -> None:
    row = dead_letter_row("fleet/a\ud800/v/gps", b"x", NOW, "db_refused", "bad \x00 byte", None, 10)
    assert (row.topic, row.detail) == ("fleet/a\\ud800/v/gps", "bad \\x00 byte")
    row.topic.encode()  # valid UTF-8 now
