"""OwnTracks over MQTT: topics, location messages (vel in km/h), other types kept as statuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.contract import ContractError, GpsFix
from ingest.protocols.common import Tracker
from ingest.protocols.owntracks import encode_location, parse_message, parse_topic, parts

TRACKER = Tracker("owntracks", "ot.acme.van-3", "acme", "van-3")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_topics() -> None:
    assert parse_topic("owntracks/jane/phone") == ("jane", "phone", "")
    assert parse_topic("owntracks/jane/phone/event") == ("jane", "phone", "event")
    for bad in ("owntracks/jane", "fleet/a/b/gps", "owntracks//phone", "owntracks/a/b/c/d"):
        with pytest.raises(ContractError) as err:
            parse_topic(bad)
        assert err.value.reason == "bad_topic"


def test_the_documented_location_example() -> None:
    payload = b'{"lon":2.29513,"lat":48.85833,"_type":"location","tst":1497476456,"tid":"JJ"}'
    (part,) = parts(parse_message("owntracks/jane/phone", payload), TRACKER, NOW)
    (fix,) = part.readings
    assert isinstance(fix, GpsFix) and (fix.lat, fix.lon) == (48.85833, 2.29513)
    assert fix.fix_time == datetime(2017, 6, 14, 21, 40, 56, tzinfo=UTC) and fix.seq == 1497476456 * 1_000_000
    assert part.statuses[0].details == {"protocol": "owntracks", "device": "phone", "tid": "JJ"}


def test_units_of_a_full_location() -> None:
    topic, payload = encode_location("ot.acme.van-3", "phone", NOW, 60.17, 24.94, 12.5, 181.0, 7.0, 21.0, 64)
    assert topic == "owntracks/ot.acme.van-3/phone"
    (part,) = parts(parse_message(topic, payload), TRACKER, NOW)
    (fix,) = part.readings
    assert isinstance(fix, GpsFix)
    assert (fix.speed_mps, fix.heading_deg, fix.accuracy_m, fix.alt_m) == (12.5, 181.0, 7.0, 21.0)  # 45 km/h
    assert part.statuses[0].details["batt"] == 64
    old_app = b'{"_type":"location","tst":"1763000000","lat":"60.1","lon":"24.9","vel":"36"}'  # numbers as strings
    (fix,) = parts(parse_message(topic, old_app), TRACKER, NOW)[0].readings
    assert isinstance(fix, GpsFix) and (fix.lat, fix.speed_mps) == (60.1, 10.0)


def test_other_types_are_statuses() -> None:
    transition = b'{"_type":"transition","wtst":1763000000,"lat":60.1,"lon":24.9,"tst":1763000100,"acc":5,"event":"enter","desc":"depot","t":"c"}'
    (part,) = parts(parse_message("owntracks/u/phone/event", transition), TRACKER, NOW)
    assert part.readings == ()
    (status,) = part.statuses
    assert (status.state, status.sent_at) == ("transition", datetime(2025, 11, 13, 2, 15, tzinfo=UTC))
    assert status.details["message"]["desc"] == "depot" and status.details["topic_kind"] == "event"
    (part,) = parts(parse_message("owntracks/u/phone", b'{"_type":"lwt","tst":1763000000}'), TRACKER, NOW)
    assert part.statuses[0].state == "offline"
    (part,) = parts(parse_message("owntracks/u/phone/waypoint", b'{"_type":"waypoint","desc":"x"}'), TRACKER, NOW)
    assert (part.statuses[0].state, part.statuses[0].sent_at) == ("waypoint", NOW)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{nope", "bad_json"),
        (b"[1]", "not_object"),
        (b'{"lat":1}', "missing_field"),
        (b'{"_type":"location","lat":1,"lon":2}', "missing_field"),
        (b'{"_type":"location","tst":1763000000,"lat":"north","lon":2}', "wrong_type"),
    ],
)
def test_bad_messages_have_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        parts(parse_message("owntracks/u/phone", payload), TRACKER, NOW)
    assert err.value.reason == reason
