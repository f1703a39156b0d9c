"""GT06: the protocol document's example packets decode to their documented values (and its two
misprinted examples are refused); our own frames round-trip; replies are the documented bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.contract import ContractError, GpsFix
from ingest.protocols import gt06
from ingest.protocols.common import Tracker
from ingest.protocols.crc import crc16_x25

TRACKER = Tracker("gt06", "123456789012345", "acme", "van-2")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def frame(hex_text: str) -> gt06.Gt06Frame:
    return gt06.decode_frame(bytes.fromhex(hex_text))


def test_crc_itu_check_value() -> None:
    assert crc16_x25(b"123456789") == 0x906E


@pytest.mark.parametrize(
    ("packet", "imei", "serial", "reply"),
    [
        ("78780D01012345678901234500018CDD0D0A", "123456789012345", 1, "787805010001D9DC0D0A"),
        ("78780D01035341353215036200022D060D0A", "353413532150362", 2, "787805010002EB470D0A"),
        ("78781101075253367890024270003201000512790D0A", "752533678900242", 5, "7878050100059FF80D0A"),
    ],
)
def test_logins_and_their_replies_as_documented(packet: str, imei: str, serial: int, reply: str) -> None:
    f = frame(packet)
    assert (f.protocol, gt06.parse_login(f.content), f.serial) == (gt06.LOGIN, imei, serial)
    assert gt06.reply(gt06.LOGIN, serial).hex().upper() == reply
    if len(f.content) == 8:  # the newer login appends type and time zone bytes, which we do not send
        assert gt06.encode_login(imei, serial).hex().upper() == packet


def test_location_0x12_as_documented() -> None:
    f = frame("78781F120B081D112E10CF027AC7EB0C46584900148F01CC00287D001FB8000380810D0A")
    loc = gt06.parse_location(f.protocol, f.content)
    assert (f.protocol, f.serial) == (gt06.LOCATION, 3)
    assert loc.fix_time == datetime(2011, 8, 29, 17, 46, 16, tzinfo=UTC)
    assert (loc.satellites, round(loc.lat, 6), round(loc.lon, 6)) == (15, 23.111668, 114.409285)
    assert (loc.speed_kmh, loc.course_deg, loc.positioned) == (0, 143, True)
    assert loc.cell == {"mcc": 460, "mnc": 0, "lac": 10365, "cell_id": 8120}


def test_the_documents_misprinted_location_and_heartbeat_fail_their_crc() -> None:
    for misprint, why in (
        ("78781F120B081D112E10CC027AC7EB0C46584900148F01CC00287D001FB8000380810D0A", "bad_crc"),  # CC for CF
        ("787808134B040300010011061F0D0A", "bad_frame"),  # length byte 08 for 0A
        ("78780A134B040300010011061F0D0A", "bad_crc"),  # and with 0A its CRC still fails
    ):
        with pytest.raises(ContractError) as err:
            frame(misprint)
        assert err.value.reason == why


def test_location_0x22_and_alarms_as_documented() -> None:
    f = frame("787822220F0C1D023305C9027AC8180C46586000140001CC00287D001F71000001000820860D0A")
    loc = gt06.parse_location(f.protocol, f.content)
    assert (loc.fix_time, loc.satellites, round(loc.lat, 6), round(loc.lon, 6), f.serial) == (
        datetime(2015, 12, 29, 2, 51, 5, tzinfo=UTC),
        9,
        23.111693,
        114.409298,
        8,
    )
    assert loc.extra == {"acc": 0, "upload_mode": 0, "reupload": 1}
    f = frame("787825160B0B0F0E241DCF027AC8870C4657E60014020901CC00287D001F726506040101003656A40D0A")
    loc, status = gt06.parse_location(f.protocol, f.content), gt06.parse_status(f.protocol, f.content)
    assert (round(loc.lat, 6), round(loc.lon, 6), loc.course_deg, loc.cell["cell_id"]) == (
        23.111755,
        114.40923,
        2,
        8050,
    )
    assert status.details["alarm"] == "sos" and status.details["terminal_alarm"] == "sos"
    assert (status.details["voltage_level"], status.details["gsm_signal"], status.details["charging"]) == (6, 4, True)
    assert gt06.reply(gt06.ALARM, f.serial).hex().upper() == "78780516003695700D0A"
    f = frame("787825260F0C1D030B26C9027AC8180C4658600004000901CC00287D001F718004041302000C472A0D0A")
    assert not gt06.parse_location(f.protocol, f.content).positioned
    assert gt06.parse_status(f.protocol, f.content).details["alarm"] == "tamper"
    assert f.serial == 0x0C  # the document's reply beside it echoes serial 0x1C (another packet's)
    assert gt06.reply(gt06.ALARM_UTC, 0x1C).hex().upper() == "78780526001C9D860D0A"


def test_heartbeats_as_documented() -> None:
    f = frame("78780A134401040001000508450D0A")
    details = gt06.parse_status(f.protocol, f.content).details
    assert (details["gps_tracking"], details["charging"], details["voltage_level"], details["gsm_signal"]) == (
        True,
        True,
        1,
        4,
    )
    assert gt06.reply(gt06.HEARTBEAT, 5).hex().upper() == "787805130005AFD50D0A"
    assert gt06.reply(gt06.HEARTBEAT, 0x11).hex().upper() == "787805130011F9700D0A"
    assert gt06.reply(gt06.HEARTBEAT, 0x100).hex().upper() == "787805130100E1A00D0A"


@pytest.mark.parametrize("protocol", [gt06.LOCATION, gt06.LOCATION_UTC])
@pytest.mark.parametrize(("lat", "lon"), [(60.1699, 24.9384), (-33.8688, 151.2093), (40.7128, -74.006), (-22.9, -43.2)])
def test_our_locations_round_trip_in_every_hemisphere(protocol: int, lat: float, lon: float) -> None:
    raw = gt06.encode_location(NOW, lat, lon, 54, 271, serial=77, protocol=protocol)
    assert gt06.frame_length(raw[:3]) == len(raw)
    f = gt06.decode_frame(raw)
    loc = gt06.parse_location(f.protocol, f.content)
    assert (f.protocol, f.serial, loc.fix_time, loc.speed_kmh, loc.course_deg) == (protocol, 77, NOW, 54, 271)
    assert abs(loc.lat - lat) < 1e-6 and abs(loc.lon - lon) < 1e-6  # 1 / 1 800 000 degree steps


def test_long_frames_and_bad_frames() -> None:
    long = gt06.encode_frame(0x94, bytes(300), serial=9)
    assert long[:2] == gt06.LONG_START and gt06.frame_length(long[:4]) == len(long)
    assert gt06.decode_frame(long).content == bytes(300)
    good = gt06.encode_location(NOW, 60.0, 25.0, 10, 90, serial=1)
    for bad, why in (
        (good[:-2] + b"\r\r", "bad_frame"),  # stop bits
        (good[:-6] + b"\x00\x00" + good[-4:], "bad_crc"),  # serial changed after the CRC was computed
        (good[:10], "bad_frame"),
    ):
        with pytest.raises(ContractError) as err:
            gt06.decode_frame(bad)
        assert err.value.reason == why
    with pytest.raises(ContractError):
        gt06.frame_length(b"\x12\x34\x05")
    bad_date = gt06.encode_frame(gt06.LOCATION, bytes([25, 13, 1, 0, 0, 0]) + bytes(20), 1)
    with pytest.raises(ContractError) as err:
        gt06.parse_location(gt06.LOCATION, gt06.decode_frame(bad_date).content)
    assert err.value.reason == "out_of_range"


def test_readings_of_a_location_an_alarm_and_a_heartbeat() -> None:
    f = gt06.decode_frame(gt06.encode_location(NOW, 60.1699, 24.9384, 36, 90, serial=4))
    (part,) = gt06.parts(f, TRACKER, NOW)
    (fix,) = part.readings
    assert isinstance(fix, GpsFix) and (fix.tenant, fix.vehicle, fix.fix_time) == ("acme", "van-2", NOW)
    assert (fix.speed_mps, fix.heading_deg, round(fix.lat, 4), round(fix.lon, 4)) == (10.0, 90.0, 60.1699, 24.9384)
    assert fix.seq == int(NOW.timestamp()) * 1_000_000 and part.statuses == ()
    unpositioned = gt06.decode_frame(gt06.encode_location(NOW, 60.0, 25.0, 0, 0, serial=5, positioned=False))
    assert gt06.parts(unpositioned, TRACKER, NOW)[0].readings == ()
    alarm = frame("787825160B0B0F0E241DCF027AC8870C4657E60014020901CC00287D001F726506040101003656A40D0A")
    (part,) = gt06.parts(alarm, TRACKER, NOW)
    assert [r.kind for r in part.readings] == ["gps"] and part.statuses[0].state == "alarm"
    assert part.statuses[0].details["alarm"] == "sos"
    (part,) = gt06.parts(frame("78780A134401040001000508450D0A"), TRACKER, NOW)
    assert part.readings == () and (part.statuses[0].state, part.statuses[0].sent_at) == ("heartbeat", NOW)
