"""Frames through the gateway's own preparation: validated like any contract message, dead letters
kept with the frame's source and raw bytes, a re-sent frame counted as duplicates."""

from __future__ import annotations

from datetime import UTC, datetime

from core.contract import GpsFix, Limits, encode_batch
from ingest.batching import Received
from ingest.frontend import Frame, prepare_frames
from ingest.protocols import teltonika
from ingest.protocols.common import Part, Tracker
from ingest.protocols.teltonika import CODEC_8, AvlRecord, IoElement

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TRACKER = Tracker("teltonika", "356307042441013", "acme", "van-1")


def packet(*lat_e7: int) -> bytes:
    ms = int(NOW.timestamp() * 1000)
    records = [
        AvlRecord(ms - 60_000 + i * 1000, 0, 249_000_000, lat, 10, 90, 8, 36, 0, (IoElement(66, 2, 12_000),))
        for i, lat in enumerate(lat_e7)
    ]
    return teltonika.encode_packet(CODEC_8, records)


def frame(raw: bytes) -> Frame:
    return Frame.of(
        "teltonika/356307042441013", raw, NOW.timestamp(), teltonika.parts(teltonika.decode_packet(raw), TRACKER)
    )


def test_records_become_rows_and_a_bad_record_a_dead_letter_of_the_raw_frame() -> None:
    raw = packet(601_700_000, 951_700_000, 601_710_000)  # the second record is at latitude 95
    prepared, (outcome,) = prepare_frames([frame(raw)], Limits(), 9, 4096)
    assert [round(p.lat, 3) for p in prepared.positions] == [60.17, 60.171]
    assert len(prepared.statuses) == 3  # every record's IO elements, the bad one's too
    (dead,) = prepared.dead_letters
    assert (dead.topic, dead.reason, dead.batch_index, dead.payload) == (
        "teltonika/356307042441013",
        "out_of_range",
        1,
        raw,
    )
    assert dead.detail.startswith("record 1: lat=95.17")
    assert outcome.rejected == (("out_of_range", dead.detail),)


def test_a_resent_frame_in_the_same_batch_is_a_duplicate() -> None:
    raw = packet(601_700_000, 601_710_000)
    prepared, outcomes = prepare_frames([frame(raw), frame(raw)], Limits(), 9, 4096)
    assert len(prepared.positions) == 2 and prepared.duplicates == 2 and prepared.dead_letters == []
    assert outcomes[0].rejected == outcomes[1].rejected == ()


def test_a_frames_own_problem_and_a_passed_through_contract_message() -> None:
    bad = Frame.refused("teltonika/356307042441013", b"\x00\x01garbage", NOW.timestamp(), "bad_crc", "CRC 1 sent")
    topic, payload = encode_batch(
        "acme",
        "van-9",
        [GpsFix("acme", "van-9", 1, NOW, 60.0, 24.0), GpsFix("acme", "van-9", 2, NOW, 99.0, 24.0)],
    )
    passed = Frame.passthrough(Received(topic, payload, NOW.timestamp()))
    prepared, outcomes = prepare_frames([bad, passed], Limits(), 9, 4096)
    by_reason = {d.reason: d for d in prepared.dead_letters}
    assert by_reason["bad_crc"].payload == b"\x00\x01garbage" and by_reason["bad_crc"].topic.startswith("teltonika/")
    # a contract message keeps its own topic, payload and reading index, as the MQTT path stores it
    assert (by_reason["out_of_range"].topic, by_reason["out_of_range"].batch_index) == (topic, 1)
    assert [o.rejected[0][0] for o in outcomes] == ["bad_crc", "out_of_range"]
    assert len(prepared.positions) == 1


def test_a_frame_of_statuses_only() -> None:
    from core.contract import StatusReport

    part = Part(None, (), (StatusReport("acme", "van-1", NOW, "heartbeat", {"gsm_signal": 4}),))
    prepared, _ = prepare_frames([Frame.of("gt06/1", b"x", NOW.timestamp(), [part])], Limits(), 9, 4096)
    assert [(s.state, s.details) for s in prepared.statuses] == [("heartbeat", '{"gsm_signal": 4}')]
