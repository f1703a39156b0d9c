"""OsmAnd (Traccar Client): query, form and JSON requests; units (speed in knots on the query form,
m/s in JSON); timestamps in seconds, milliseconds and ISO; bad requests refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.contract import ContractError, GpsFix
from ingest.protocols.common import Tracker
from ingest.protocols.osmand import KNOT_MPS, Request, encode_query, parse_head, parse_request, parts

TRACKER = Tracker("osmand", "902064", "acme", "phone-1")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def get(target: str) -> Request:
    return Request("GET", target, "HTTP/1.1", {})


def test_the_traccar_test_requests_decode() -> None:
    (r,) = parse_request(
        get(
            "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0&altitude=224.0&speed=0.0"
        ),
        b"",
    )
    assert (r.device_id, r.lat, r.lon, r.alt_m, r.speed_mps) == ("902064", 42.06288, -88.23412, 224.0, 0.0)
    assert r.fix_time == datetime(2016, 1, 27, 18, 55, 47, tzinfo=UTC) and r.details == {"hdop": "6.0"}
    (r,) = parse_request(get("/?id=123456&timestamp=1377177267&location=60.0,30.0"), b"")
    assert (r.lat, r.lon, r.fix_time) == (60.0, 30.0, datetime(2013, 8, 22, 13, 14, 27, tzinfo=UTC))
    (r,) = parse_request(get("/?lat=60.0&lon=30.0&speed=0.0&heading=0.0&vacc=0&hacc=0&altitude=0&deviceid=123456"), b"")
    assert (r.device_id, r.heading_deg, r.fix_time) == ("123456", 0.0, None)
    with pytest.raises(ContractError) as err:
        parse_request(get("/?timestamp=1377177267&lat=60.0&lon=30.0"), b"")
    assert (err.value.reason, err.value.detail) == ("missing_field", "id")


def test_units_and_time_forms() -> None:
    (r,) = parse_request(get("/?id=a&lat=1&lon=2&speed=10&timestamp=1442068686579&batt=87"), b"")
    assert r.speed_mps == pytest.approx(5.144, abs=1e-3)  # 10 knots
    assert r.fix_time == datetime(2015, 9, 12, 14, 38, 6, 579000, tzinfo=UTC)  # past 2^31 - 1: milliseconds
    assert r.details == {"battery_pct": 87.0}
    (r,) = parse_request(get("/?id=a&lat=1&lon=2&timestamp=2014-06-04+09%3A10%3A11"), b"")
    assert r.fix_time == datetime(2014, 6, 4, 9, 10, 11, tzinfo=UTC)


def test_a_form_body_like_the_legacy_android_client_posts() -> None:
    request = Request("POST", "/", "HTTP/1.1", {"content-type": "application/x-www-form-urlencoded"})
    (r,) = parse_request(request, b"id=77&timestamp=1763000000&lat=60.17&lon=24.94&bearing=12.5&accuracy=4&valid=false")
    assert (r.device_id, r.heading_deg, r.accuracy_m, r.valid) == ("77", 12.5, 4.0, False)


def test_the_json_body_of_traccar_client_9() -> None:
    body = (
        b'{"location":{"timestamp":"2026-11-22T11:59:58.250Z","coords":{"latitude":60.17,"longitude":24.94,'
        b'"accuracy":5,"speed":8.5,"heading":-1,"altitude":12},"is_moving":true,"odometer":1200,"event":"motionchange",'
        b'"battery":{"level":0.83,"is_charging":false},"activity":{"type":"in_vehicle"},"extras":{}},"device_id":"48241179"}'
    )
    (r,) = parse_request(Request("POST", "/", "HTTP/1.1", {"content-type": "application/json"}), body)
    assert (r.device_id, r.lat, r.lon, r.speed_mps, r.heading_deg, r.accuracy_m) == (
        "48241179",
        60.17,
        24.94,
        8.5,
        None,
        5.0,
    )
    assert r.fix_time == datetime(2026, 11, 22, 11, 59, 58, 250000, tzinfo=UTC)
    assert r.details == {
        "battery_pct": 83.0,
        "charging": False,
        "is_moving": True,
        "odometer": 1200,
        "event": "motionchange",
        "activity": "in_vehicle",
    }
    as_list = body.replace(b'"location":{', b'"location":[{').replace(b',"device_id"', b'],"device_id"')
    assert parse_request(Request("POST", "/", "HTTP/1.1", {}), as_list) == [r]


@pytest.mark.parametrize(
    ("target", "body", "reason"),
    [
        ("/?id=a&lat=north&lon=2", b"", "wrong_type"),
        ("/?id=a&lat=nan&lon=2", b"", "not_finite"),
        ("/?id=a&lat=1&lon=2&timestamp=yesterday", b"", "wrong_type"),
        ("/", b"{not json", "bad_json"),
        ("/", b'{"device_id":"x"}', "missing_field"),
        ("/", b'{"device_id":"x","location":{"coords":{"latitude":"60","longitude":1}}}', "wrong_type"),
    ],
)
def test_bad_requests_have_a_reason(target: str, body: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_request(Request("POST", target, "HTTP/1.1", {}), body)
    assert err.value.reason == reason


def test_request_heads() -> None:
    req = parse_head(b"POST /?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: close")
    assert (req.method, req.target, req.content_length, req.keep_alive) == ("POST", "/?id=1", 12, False)
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive").keep_alive
    for bad in (b"hello", b"GET / SPDY/3", b"GET / HTTP/1.1\r\nno colon"):
        with pytest.raises(ContractError):
            parse_head(bad)


def test_our_query_encoder_and_the_readings() -> None:
    target = encode_query("902064", NOW, 60.17, 24.94, speed_mps=10.0, heading_deg=90.0, alt_m=15.0, battery_pct=50)
    (report,) = parse_request(get(target), b"")
    assert report.speed_mps == pytest.approx(10.0, abs=1e-3) and KNOT_MPS == pytest.approx(0.514444, abs=1e-6)
    (part,) = parts([report], TRACKER, NOW)
    (fix,) = part.readings
    assert isinstance(fix, GpsFix) and (fix.vehicle, fix.fix_time, fix.lat, fix.alt_m) == ("phone-1", NOW, 60.17, 15.0)
    assert fix.seq == int(NOW.timestamp()) * 1_000_000
    assert part.statuses[0].details == {"protocol": "osmand", "battery_pct": 50.0}
    invalid = parse_request(get("/?id=902064&lat=1&lon=2&valid=false&timestamp=1763000000"), b"")
    (part,) = parts(invalid, TRACKER, NOW)
    assert part.readings == () and part.statuses[0].details["valid"] is False


def test_nul_characters_never_reach_the_store() -> None:
    from ingest.protocols.common import printable

    (report,) = parse_request(get("/?id=902064&lat=1&lon=2&timestamp=1763000000&driver=a%00b"), b"")
    (part,) = parts([report], TRACKER, NOW)
    assert part.statuses[0].details["driver"] == "a\ufffdb"  # PostgreSQL text and jsonb refuse NUL
    assert printable("ph\x00one") == "ph\\x00one" and printable("x" * 100) == "x" * 64
