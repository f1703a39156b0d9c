"""Delivery's pure parts: the payload, the topic, the webhook signature, the retry schedule, config checks."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import h3
import pytest

from core.settings import Settings
from delivery.deliverer import (
    DeliveryConfigError,
    delivery_channels,
    encode_body,
    event_payload,
    event_topic,
    merge_pages,
    open_alerts_payload,
    open_alerts_topic,
    retry_delay,
    retry_schedule,
    run_delivery,
    sign,
    webhook_headers,
    webhook_urls,
)

ALERT_ID = uuid.UUID("0b9a6d1e-4c1f-5a57-9e0a-3f2b1c4d5e6f")
STOP_ID = uuid.UUID("7d3c2b1a-0f9e-5d8c-b7a6-954433221100")
CELL_HEX = h3.latlng_to_cell(60.1699, 24.9384, 9)  # h3 v4: a hex string
CELL = h3.str_to_int(CELL_HEX)  # as stored in alerts.h3_cell (bigint)
START = datetime(2026, 11, 22, 5, 0, 0, 250_000, tzinfo=UTC)
HELSINKI = timezone(timedelta(hours=2))


def alert_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "table": "alerts",
        "start_second": START.replace(microsecond=0),
        "id": ALERT_ID,
        "rev": 41,
        "tenant": "acme",
        "vehicle_id": "van-7",
        "type": "long_dwell",
        "severity": "warning",
        "status": "resolved",
        "stop_id": "s3",
        "h3_cell": CELL,
        "start_time": START,
        "end_time": datetime(2026, 11, 22, 7, 40, 0, tzinfo=HELSINKI),  # 05:40 UTC
        "details": {"dwell_s": 2400.0, "threshold_s": 1800.0},
        "detected_at": START + timedelta(minutes=30),
        "updated_at": START + timedelta(minutes=41),
        "acknowledged_at": START + timedelta(minutes=33),
        "acknowledged_by": "desk (0a1b2c3d4e5f)",
        "owner": "kim",
        "closed_at": None,
        "closed_by": None,
        "comments": 1,
        "summary": "van-7: stopped 40 min, limit 30 min, at stop s3 (Bakery); resolved after 40 min",
        "lat": 60.17,
        "lon": 24.94,
        "stop_name": "Bakery",
        "plan_version": 2,
    }
    row.update(changes)
    return row


def stop_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "table": "stop_events",
        "id": STOP_ID,
        "rev": 42,
        "kind": "departure",
        "tenant": "acme",
        "vehicle_id": "van-7",
        "stop_id": "s3",
        "plan_version": 2,
        "visit": 1,
        "at": START,
        "h3_cell": None,
        "window_start": None,
        "window_end": None,
        "on_time": None,
        "service_s": 312.5,
        "details": {},
        "retracted": False,
        "detected_at": START,
        "updated_at": START,
        "summary": "van-7: departed stop s3 at 05:00 UTC after 5.2 min",
        "lat": 60.17,
        "lon": 24.94,
        "stop_name": None,
    }
    row.update(changes)
    return row


def test_alert_payload_is_every_column_in_json_form() -> None:
    assert event_payload(alert_row()) == {
        "v": 1,
        "kind": "alert",
        "id": "0b9a6d1e-4c1f-5a57-9e0a-3f2b1c4d5e6f",
        "rev": 41,
        "tenant": "acme",
        "vehicle": "van-7",
        "type": "long_dwell",
        "severity": "warning",
        "status": "resolved",
        "stop_id": "s3",
        "h3_cell": CELL_HEX,
        "start_time": "2026-11-22T05:00:00.250Z",
        "end_time": "2026-11-22T05:40:00.000Z",
        "details": {"dwell_s": 2400.0, "threshold_s": 1800.0},
        "detected_at": "2026-11-22T05:30:00.250Z",
        "updated_at": "2026-11-22T05:41:00.250Z",
        "acknowledged_at": "2026-11-22T05:33:00.250Z",
        "acknowledged_by": "desk (0a1b2c3d4e5f)",
        "owner": "kim",
        "closed_at": None,
        "closed_by": None,
        "comments": 1,
        "summary": "van-7: stopped 40 min, limit 30 min, at stop s3 (Bakery); resolved after 40 min",
        "lat": 60.17,
        "lon": 24.94,
        "stop_name": "Bakery",
        "plan_version": 2,
    }
    assert list(event_payload(alert_row()))[:6] == ["v", "kind", "id", "rev", "tenant", "vehicle"]


def test_open_alert_has_null_end_and_cell() -> None:
    doc = event_payload(alert_row(status="open", end_time=None, h3_cell=None, stop_id=None))
    assert doc["end_time"] is None and doc["h3_cell"] is None and doc["stop_id"] is None
    assert h3.is_valid_cell(event_payload(alert_row())["h3_cell"])


def test_stop_event_payload_names_its_kind_type() -> None:
    doc = event_payload(stop_row(h3_cell=CELL, on_time=True, window_start=START, window_end=START + timedelta(hours=1)))
    assert doc == {
        "v": 1,
        "kind": "stop_event",
        "id": str(STOP_ID),
        "rev": 42,
        "tenant": "acme",
        "vehicle": "van-7",
        "type": "departure",
        "stop_id": "s3",
        "plan_version": 2,
        "visit": 1,
        "at": "2026-11-22T05:00:00.250Z",
        "h3_cell": CELL_HEX,
        "window_start": "2026-11-22T05:00:00.250Z",
        "window_end": "2026-11-22T06:00:00.250Z",
        "on_time": True,
        "service_s": 312.5,
        "details": {},
        "retracted": False,
        "detected_at": "2026-11-22T05:00:00.250Z",
        "updated_at": "2026-11-22T05:00:00.250Z",
        "summary": "van-7: departed stop s3 at 05:00 UTC after 5.2 min",
        "lat": 60.17,
        "lon": 24.94,
        "stop_name": None,
    }
    assert event_payload(stop_row())["window_start"] is None


def test_open_alerts_message_lists_a_vehicles_open_alerts_newest_first_and_is_empty_when_none() -> None:
    older = alert_row(status="open", end_time=None)
    newer = alert_row(
        status="open",
        end_time=None,
        id="1b9a6d1e-4c1f-5a57-9e0a-3f2b1c4d5e6f",
        rev=44,
        start_time=START + timedelta(minutes=5),
    )
    doc = json.loads(open_alerts_payload("acme", "van-7", [older, newer], 45))
    assert {k: doc[k] for k in ("v", "kind", "tenant", "vehicle", "rev", "count")} == {
        "v": 1,
        "kind": "open_alerts",
        "tenant": "acme",
        "vehicle": "van-7",
        "rev": 45,
        "count": 2,
    }
    assert doc["alerts"] == [event_payload(newer), event_payload(older)]
    assert open_alerts_payload("acme", "van-7", [], 46) == b""  # an empty retained message clears it
    assert open_alerts_topic("acme", "van-7") == "open_alerts/acme/van-7"
    with pytest.raises(ValueError):
        open_alerts_topic("acme", "van/7")


def test_payload_refuses_naive_times_and_unknown_tables() -> None:
    with pytest.raises(ValueError, match="naive"):
        event_payload(alert_row(start_time=datetime(2026, 11, 22, 5, 0)))  # noqa: DTZ001 - on purpose
    with pytest.raises(ValueError, match="not an alerts or stop_events row"):
        event_payload(alert_row(table="positions"))


def test_body_is_compact_json_of_the_payload() -> None:
    doc = event_payload(alert_row(details={"note": "Töölö"}, summary=None))  # a summary holds ", " itself
    body = encode_body(doc)
    assert json.loads(body) == doc
    assert b", " not in body and "Töölö".encode() in body


def test_topics_per_tenant_and_vehicle() -> None:
    assert event_topic(event_payload(alert_row())) == "alerts/acme/van-7"
    assert event_topic(event_payload(stop_row())) == "stops/acme/van-7"
    for bad in ("ac/me", "acme+", "#", ""):
        with pytest.raises(ValueError, match="topic level"):
            event_topic(event_payload(alert_row(tenant=bad)))
    with pytest.raises(ValueError, match="vehicle"):
        event_topic(event_payload(stop_row(vehicle_id="van 7")))


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    secret, timestamp, body = b"s3cret", "1795323600", b'{"kind":"alert"}'
    expected = hmac.new(secret, b'1795323600.{"kind":"alert"}', hashlib.sha256).hexdigest()
    assert sign(secret, timestamp, body) == f"sha256={expected}"
    # any change to key, timestamp or body changes it
    assert sign(b"other", timestamp, body) != sign(secret, timestamp, body)
    assert sign(secret, "1795323601", body) != sign(secret, timestamp, body)
    assert sign(secret, timestamp, body + b" ") != sign(secret, timestamp, body)


def test_webhook_headers() -> None:
    body = encode_body(event_payload(alert_row()))
    headers = webhook_headers(b"k", str(ALERT_ID), body, 1_795_323_600)
    assert headers == {
        "Content-Type": "application/json",
        "X-Fleetstream-Timestamp": "1795323600",
        "X-Fleetstream-Signature": "sha256=" + hmac.new(b"k", b"1795323600." + body, hashlib.sha256).hexdigest(),
        "X-Fleetstream-Event-Id": str(ALERT_ID),
    }


def test_retry_schedule_doubles_up_to_30_s() -> None:
    assert retry_schedule(0.5, 8) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]  # the defaults
    assert retry_schedule(0.05, 3) == [0.05, 0.1]
    assert retry_schedule(1.0, 1) == [] and retry_schedule(1.0, 0) == []
    assert retry_schedule(20.0, 4) == [20.0, 30.0, 30.0]
    assert retry_delay(0.5, 10_000) == 30.0  # no overflow however long an outage lasts
    assert retry_delay(0.5, 3, cap_s=2.5) == 2.5


def test_merge_pages_never_skips_past_a_full_page() -> None:
    def page(*revs: int) -> list[dict[str, int]]:
        return [{"rev": r} for r in revs]

    assert [r["rev"] for r in merge_pages(page(1, 4), page(2, 3), 5)] == [1, 2, 3, 4]
    # alerts page full at rev 4: stop events after 4 wait for the next read
    assert [r["rev"] for r in merge_pages(page(1, 2, 4), page(3, 5, 6), 3)] == [1, 2, 3, 4]
    assert merge_pages([], [], 3) == []


def test_channels_from_settings() -> None:
    base = Settings()
    assert delivery_channels(base) == ["mqtt"]
    hooked = replace(
        base, webhook_urls=" http://127.0.0.1:9/a , https://example.org/hook,http://127.0.0.1:9/a", webhook_secret="k"
    )
    assert delivery_channels(hooked) == ["mqtt", "webhook:http://127.0.0.1:9/a", "webhook:https://example.org/hook"]
    assert delivery_channels(replace(hooked, alert_mqtt=0))[0] == "webhook:http://127.0.0.1:9/a"
    assert delivery_channels(replace(base, alert_mqtt=0)) == []
    assert webhook_urls("") == [] and webhook_urls(" , ") == []


def test_webhooks_without_a_secret_refuse_to_start() -> None:
    with pytest.raises(DeliveryConfigError, match="webhook_secret is empty"):
        delivery_channels(replace(Settings(), webhook_urls="http://127.0.0.1:9/a"))
    for bad in ("ftp://example.org/x", "127.0.0.1:9/a", "http:///nohost"):
        with pytest.raises(DeliveryConfigError, match="not an http"):
            delivery_channels(replace(Settings(), webhook_urls=bad, webhook_secret="k"))


def test_run_delivery_refuses_before_starting_anything() -> None:
    # no services here: it must fail on the settings alone, at once
    with pytest.raises(DeliveryConfigError, match="webhook_secret"):
        run_delivery(replace(Settings(), webhook_urls="http://127.0.0.1:9/a", pg_port=1, mqtt_port=1), ("a", "b"))
