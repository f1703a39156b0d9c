"""Teltonika Codec 8 / 8E / 16: the documented example packets decode to their documented values;
frames built by our own encoder (every codec, every IO size class, several records) round-trip;
bad frames are refused with their reason; records become readings with stable seqs."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from core.contract import ContractError, DoorEvent, GpsFix, TemperatureReading
from ingest.protocols.common import Profile, Tracker
from ingest.protocols.crc import crc16_ibm
from ingest.protocols.teltonika import (
    CODEC_8,
    CODEC_8E,
    CODEC_16,
    AvlRecord,
    IoElement,
    ack,
    decode_imei,
    decode_packet,
    encode_imei,
    encode_packet,
    packet_length,
    parts,
)

# Example packets of Teltonika's "Data Sending Protocols" page (hex as published)
C8_1 = "000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503010101425E0F01F10000601A014E0000000000000000010000C7CF"
C8_2 = "000000000000002808010000016B40D9AD80010000000000000000000000000000000103021503010101425E100000010000F22A"
C8_3 = (
    "000000000000004308020000016B40D57B480100000000000000000000000000000001010101000000000000016B40D5C198"
    "010000000000000000000000000000000101010101000000020000252C"
)
C8E = (
    "000000000000004A8E010000016B412CEE000100000000000000000000000000000000010005000100010100010011001D0001"
    "0010015E2C880002000B000000003544C87A000E000000001DD7E06A00000100002994"
)
C8E_NX = (
    "000000000000005F8E010000015FBA40B620000F0DCDE420959D30008A000006000000000006000100EF0000010011001E0001"
    "00100000CBDF0002000B000000003544C875000E0000000029BFE4D10001010000110000000000000000000000000000000000"
    "010000D153"
)
C16 = (
    "000000000000005F10020000016BDBC7833000000000000000000000000000000000000B05040200010000030002000B002700"
    "42563A00000000016BDBC7871800000000000000000000000000000000000B05040200010000030002000B00260042563A0000"
    "0200005FB3"
)
TRACKER = Tracker("teltonika", "356307042441013", "acme", "van-1", Profile(MappingProxyType({1: "rear"})))


def io(record: AvlRecord) -> dict[int, int | bytes]:
    return {e.id: e.value for e in record.io}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_crc16_ibm_check_value() -> None:
    assert crc16_ibm(b"123456789") == 0xBB3D


def test_imei_handshake_and_ack_as_documented() -> None:
    assert encode_imei("356307042441013").hex().upper() == "000F333536333037303432343431303133"
    assert decode_imei(bytes.fromhex("333536333037303432343431303133")) == "356307042441013"
    assert ack(2) == bytes.fromhex("00000002")
    with pytest.raises(ContractError) as err:
        decode_imei(b"35630704244101X")
    assert err.value.reason == "bad_frame"


def test_codec8_examples_decode_to_the_documented_values() -> None:
    (rec,) = decode_packet(bytes.fromhex(C8_1)).records
    assert rec.fix_time == utc("2019-06-10T10:04:46") and rec.priority == 1 and rec.event_io == 1
    assert (rec.lat_e7, rec.lon_e7, rec.altitude_m, rec.angle_deg, rec.satellites, rec.speed_kmh) == (0,) * 6
    assert io(rec) == {21: 3, 1: 1, 66: 24079, 241: 24602, 78: 0}
    (rec,) = decode_packet(bytes.fromhex(C8_2)).records
    assert rec.fix_time == utc("2019-06-10T10:05:36") and io(rec) == {21: 3, 1: 1, 66: 24080}
    first, second = decode_packet(bytes.fromhex(C8_3)).records
    assert (first.fix_time, io(first)) == (utc("2019-06-10T10:01:01"), {1: 0})
    assert (second.fix_time, io(second)) == (utc("2019-06-10T10:01:19"), {1: 1})


def test_codec8e_examples_decode_to_the_documented_values() -> None:
    packet = decode_packet(bytes.fromhex(C8E))
    (rec,) = packet.records
    assert packet.codec == CODEC_8E and rec.fix_time == utc("2019-06-10T11:36:32")
    assert io(rec) == {1: 1, 17: 29, 16: 22949000, 11: 893700218, 14: 500686954}
    (rec,) = decode_packet(bytes.fromhex(C8E_NX)).records
    assert rec.fix_time == utc("2017-11-14T11:18:44") and rec.priority == 0 and rec.event_io == 0
    assert (rec.lon_e7, rec.lat_e7, rec.altitude_m, rec.angle_deg, rec.satellites) == (252562916, 546676016, 138, 0, 6)
    assert io(rec) == {239: 0, 17: 30, 16: 52191, 11: 893700213, 14: 700441809, 256: bytes(17)}


def test_codec16_example_decodes_to_the_documented_values() -> None:
    packet = decode_packet(bytes.fromhex(C16))
    first, second = packet.records
    assert packet.codec == CODEC_16
    assert (first.fix_time, first.event_io, first.generation) == (utc("2019-07-10T12:06:54"), 11, 5)
    assert io(first) == {1: 0, 3: 0, 11: 39, 66: 22074}
    assert (second.fix_time, io(second)) == (utc("2019-07-10T12:06:55"), {1: 0, 3: 0, 11: 38, 66: 22074})


@pytest.mark.parametrize("packet", [C8_1, C8_2, C8_3, C8E, C8E_NX, C16])
def test_our_encoder_rebuilds_each_documented_packet_byte_for_byte(packet: str) -> None:
    decoded = decode_packet(bytes.fromhex(packet))
    assert encode_packet(decoded.codec, decoded.records).hex().upper() == packet


def record(ts_ms: int, codec: int, **kw: object) -> AvlRecord:
    elements = [IoElement(1, 1, 1), IoElement(66, 2, 12_800), IoElement(72, 2, 0xFFC9), IoElement(16, 4, 2**31 + 5)]
    elements.append(IoElement(11, 8, 2**63 + 7))
    if codec == CODEC_8E:
        elements.append(IoElement(385, 3, b"\x01\x02\x03"))
    fields: dict[str, object] = {
        "timestamp_ms": ts_ms,
        "priority": 1,
        "lon_e7": -36_000_000,
        "lat_e7": 601_700_000,
        "altitude_m": -12,
        "angle_deg": 359,
        "satellites": 9,
        "speed_kmh": 72,
        "event_io": 1,
        "io": tuple(elements),
        "generation": 5 if codec == CODEC_16 else None,
    }
    fields.update(kw)
    return AvlRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", [CODEC_8, CODEC_8E, CODEC_16])
def test_every_codec_and_io_size_class_round_trips_with_several_records(codec: int) -> None:
    records = [record(1_763_000_000_000 + i * 1000, codec) for i in range(5)]
    frame = encode_packet(codec, records)
    assert packet_length(frame[:8]) == len(frame)
    decoded = decode_packet(frame)
    assert decoded.codec == codec and list(decoded.records) == records
    dallas = decoded.records[0].element(72)
    assert dallas is not None and dallas.signed() == -55  # -5.5 C: values are two's complement of their width


def test_codec8_has_no_variable_length_elements() -> None:
    with pytest.raises(ValueError):
        encode_packet(CODEC_8, [record(0, CODEC_8E)])


def reason(frame: bytes) -> str:
    with pytest.raises(ContractError) as err:
        decode_packet(frame)
    return err.value.reason


def test_bad_frames_are_refused_with_their_reason() -> None:
    good = encode_packet(CODEC_8E, [record(1_763_000_000_000, CODEC_8E)])
    assert reason(encode_packet(CODEC_8E, [record(1_763_000_000_000, CODEC_8E)], crc=0x1234)) == "bad_crc"
    flipped = bytearray(good)
    flipped[30] ^= 0x40  # a bit flipped in transit
    assert reason(bytes(flipped)) == "bad_crc"
    assert reason(b"\x00\x00\x00\x01" + good[4:]) == "bad_frame"  # preamble
    for cut in (1, 5, 11, 12, len(good) // 2, len(good) - 1):  # truncated anywhere
        assert reason(good[:cut]) == "bad_frame"
    data = bytes([0x0C, 1]) + b"\x05\x00\x00\x00\x01A" + bytes([1])  # a Codec 12 response, correct CRC
    codec12 = (0).to_bytes(4, "big") + len(data).to_bytes(4, "big") + data + crc16_ibm(data).to_bytes(4, "big")
    assert reason(codec12) == "unknown_codec"


def resealed(data: bytes) -> bytes:
    """A packet around ``data`` (codec id .. second count) with a correct length and CRC."""
    return (0).to_bytes(4, "big") + len(data).to_bytes(4, "big") + data + crc16_ibm(data).to_bytes(4, "big")


def test_layouts_that_disagree_with_themselves_are_bad_frames() -> None:
    data = encode_packet(CODEC_8, [record(1_763_000_000_000, CODEC_8)])[8:-4]
    assert reason(resealed(data[:-1] + b"\x02")) == "bad_frame"  # the two record counts differ
    assert reason(resealed(data[:1] + b"\x02" + data[2:-1] + b"\x02")) == "bad_frame"  # fewer records than said
    assert reason(resealed(data[:-1] + b"\x00" + data[-1:])) == "bad_frame"  # a byte after the last record
    total_at = 2 + 8 + 1 + 8 + 2 + 2 + 1 + 2 + 1  # codec, count, ts, prio, lon, lat, alt, angle, sats, speed, event
    wrong_total = data[:total_at] + b"\x09" + data[total_at + 1 :]
    assert reason(resealed(wrong_total)) == "bad_frame"


def test_a_record_becomes_a_position_temperatures_a_door_and_a_report() -> None:
    rec = record(1_763_000_000_000, CODEC_8E)
    (part,) = parts(decode_packet(encode_packet(CODEC_8E, [rec])), TRACKER)
    gps, temp, door = part.readings
    assert isinstance(gps, GpsFix) and isinstance(temp, TemperatureReading) and isinstance(door, DoorEvent)
    assert (gps.lat, gps.lon, gps.speed_mps, gps.heading_deg, gps.alt_m) == (60.17, -3.6, 20.0, 359.0, -12.0)
    assert gps.fix_time == datetime(2025, 11, 13, 2, 13, 20, tzinfo=UTC)
    assert (temp.sensor, temp.celsius) == ("dallas-1", -5.5)
    assert (door.door, door.open) == ("rear", True)
    assert len({gps.seq, temp.seq, door.seq}) == 3
    (status,) = part.statuses
    assert status.state == "report" and status.sent_at == gps.fix_time
    assert status.details["io"] == {
        "1": 1,
        "66": 12_800,
        "72": 0xFFC9,
        "16": 2**31 + 5,
        "11": 2**63 + 7,
        "385": "010203",
    }


def test_no_fix_no_position_and_probe_errors_are_no_readings() -> None:
    no_fix = record(1_763_000_000_000, CODEC_8, satellites=0, lat_e7=0, lon_e7=0, speed_kmh=0, event_io=0)
    errors = AvlRecord(
        1_763_000_001_000,
        0,
        0,
        0,
        0,
        0,
        5,
        0,
        0,
        (IoElement(72, 2, 850), IoElement(73, 4, 3000), IoElement(25, 2, 32767)),
    )
    first, second = parts(decode_packet(encode_packet(CODEC_8, [no_fix, errors])), TRACKER)
    assert [r.kind for r in first.readings] == ["temp"]  # the probe, no position, no door (event IO 0)
    assert [r.kind for r in second.readings] == ["gps"]
    assert second.statuses[0].details["probe_errors"] == {
        "dallas-1": "raw 850: sensor error or not connected",
        "dallas-2": "raw 3000: sensor error or not connected",
        "ble-1": "raw 32767: sensor error or not found",
    }


def test_seqs_come_from_the_record_so_a_resend_gets_the_same_keys() -> None:
    records = [
        record(1_763_000_000_000, CODEC_8),
        record(1_763_000_000_000, CODEC_8),
        record(1_763_000_005_000, CODEC_8),
    ]
    first = parts(decode_packet(encode_packet(CODEC_8, records)), TRACKER)
    again = parts(decode_packet(encode_packet(CODEC_8, records)), TRACKER)
    keys = [(r.kind, r.fix_time, r.seq) for p in first for r in p.readings]
    assert keys == [(r.kind, r.fix_time, r.seq) for p in again for r in p.readings]
    assert len(set(keys)) == len(keys)  # two records with the same timestamp do not collide
    assert first[0].readings[0].seq == 1_763_000_000_000_000 and first[1].readings[0].seq == 1_763_000_000_000_100
