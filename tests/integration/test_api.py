"""The HTTP API against the real stack: the test session's Mosquitto and TimescaleDB, the engine's
gateway shards and dataflow, and the API process the engine supervises.

Readings go in over MQTT as a device's would; what the API answers comes from what the engine
stored and computed. Two tenants, A and B, each with its own tokens.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.contract import GpsFix
from core.settings import Settings
from delivery.deliverer import ChangeFeed
from store.db import connect, scalar
from tests.integration.api_support import LiveStream, api_engine, insert_alert, publish, stop_visit, token_for
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

STOP = (60.1699, 24.9384)  # central Helsinki
FAR = (60.1850, 24.9600)


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.api_url()
        self.a, self.b = f"apia{uuid.uuid4().hex[:8]}", f"apib{uuid.uuid4().hex[:8]}"
        self.a_view = token_for(settings, self.a, "viewer", "wall screen")
        self.a_desk = token_for(settings, self.a, "dispatcher", "desk")
        self.b_desk = token_for(settings, self.b, "dispatcher", "b desk")
        self.http = httpx.Client(base_url=self.url, timeout=20)
        self.readings = 0  # published by the fixture

    def get(self, path: str, token: str | None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(path, headers=headers, params=params)

    def post(self, path: str, token: str | None, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(path, headers=headers, json=body)

    def ok(self, path: str, token: str, **params: Any) -> Any:
        response = self.get(path, token, **params)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


def plan_body(vehicle: str, end: datetime) -> dict[str, Any]:
    def window(at: datetime) -> dict[str, str]:
        return {
            "window_start": (at - timedelta(minutes=20)).isoformat(),
            "window_end": (at + timedelta(minutes=20)).isoformat(),
        }

    return {
        "vehicle": vehicle,
        "stops": [
            {"id": "s1", "lat": STOP[0], "lon": STOP[1], "radius_m": 75, "service_s": 60, **window(end)},
            {"id": "s2", "lat": FAR[0], "lon": FAR[1], "radius_m": 75, "service_s": 60, **window(end)},
        ],
    }


@pytest.fixture(scope="module")
def api(services_settings: Settings) -> Iterator[Api]:
    with api_engine(services_settings) as settings:
        client = Api(settings)
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
        # plans first (a dispatcher's POST), then the vans report
        for vehicle in ("van-1", "van-2"):
            response = client.post("/v1/plans", client.a_desk, plan_body(vehicle, end))
            assert response.status_code == 201, response.text
        readings = stop_visit(client.a, "van-1", STOP, end)
        # van-2 stands still, then one fix 20 km away: a GPS jump, then back
        t0 = end - timedelta(seconds=60)
        readings += [
            GpsFix(client.a, "van-2", i + 1, t0 + timedelta(seconds=5 * i), 60.16, 24.93, 0.0, 0.0, 5.0)
            for i in range(6)
        ]
        readings.append(GpsFix(client.a, "van-2", 7, t0 + timedelta(seconds=30), 60.34, 24.93, 0.0, 0.0, 5.0))
        readings += [
            GpsFix(client.a, "van-2", 8 + i, t0 + timedelta(seconds=35 + 5 * i), 60.16, 24.93, 0.0, 0.0, 5.0)
            for i in range(5)
        ]
        readings.append(GpsFix(client.b, "van-9", 1, end, 60.2, 24.9, 3.0, 0.0, 5.0))  # tenant B's own van
        publish(settings, readings)
        client.readings = len(readings)
        wait_until(
            lambda: {v["vehicle"] for v in client.ok("/v1/vehicles", client.a_view)} == {"van-1", "van-2"},
            60,
            "tenant A's two vans in /v1/vehicles",
        )
        wait_until(
            lambda: len(client.ok("/v1/stop-events", client.a_view, vehicle="van-1")) == 2,
            90,
            "van-1's arrival and departure",
            every_s=0.5,
        )
        yield client
        client.http.close()


# ------------------------------------------------------------------ access


def test_no_token_or_a_wrong_one_is_401_and_a_viewer_writing_is_403(api: Api) -> None:
    assert api.get("/v1/vehicles", None).status_code == 401
    assert api.get("/v1/vehicles", "fs_not-a-token").status_code == 401
    assert api.http.get("/v1/vehicles", headers={"Authorization": "Basic abc"}).status_code == 401
    assert api.post("/v1/plans", api.a_view, plan_body("van-3", datetime.now(UTC))).status_code == 403
    alert_id = insert_alert(api.settings, api.a, "van-1")
    assert api.post(f"/v1/alerts/{alert_id}/acknowledge", api.a_view).status_code == 403
    # a revoked token is refused at once
    revoked = token_for(api.settings, api.a, "viewer")
    assert api.get("/v1/me", revoked).status_code == 200
    from api.tokens import revoke_token

    with connect(api.settings.dsn(), autocommit=True) as conn:
        revoke_token(conn, revoked)
    assert api.get("/v1/me", revoked).status_code == 401


def test_tenant_b_never_sees_tenant_a(api: Api) -> None:
    assert [v["vehicle"] for v in api.ok("/v1/vehicles", api.b_desk)] == ["van-9"]
    assert api.get("/v1/vehicles/van-1", api.b_desk).status_code == 404
    assert api.get("/v1/vehicles/van-1/plan", api.b_desk).status_code == 404
    assert api.ok("/v1/vehicles/van-1/track", api.b_desk)["points"] == []
    assert api.ok("/v1/stop-events", api.b_desk) == []
    assert api.ok("/v1/alerts", api.b_desk) == []
    assert api.ok("/v1/cells", api.b_desk, since=(datetime.now(UTC) - timedelta(hours=2)).isoformat()) != []  # its own
    a_alert = api.ok("/v1/alerts", api.a_view, type="gps_jump")[0]["id"]
    assert api.get(f"/v1/alerts/{a_alert}", api.b_desk).status_code == 404
    assert api.post(f"/v1/alerts/{a_alert}/acknowledge", api.b_desk).status_code == 404
    assert api.post(f"/v1/alerts/{a_alert}/comments", api.b_desk, {"text": "mine now"}).status_code == 404
    assert (
        api.post("/v1/plans", api.b_desk, {**plan_body("van-1", datetime.now(UTC)), "tenant": api.a}).status_code == 403
    )
    kpis = api.ok("/v1/kpis", api.b_desk)
    assert kpis["vehicles"] == 1 and kpis["arrivals"] == 0 and kpis["alerts_by_type"] == []


# ------------------------------------------------------------------ each endpoint


def test_vehicles_and_one_vehicle(api: Api) -> None:
    vehicles = {v["vehicle"]: v for v in api.ok("/v1/vehicles", api.a_view)}
    van1 = vehicles["van-1"]
    assert van1["motion"] == "moving" and van1["plan_version"] == 1 and van1["next_stop_id"] == "s2"
    assert van1["state"] in ("moving", "late", "alert") and isinstance(van1["rev"], int)
    assert van1["h3_cell"].startswith("89") and van1["last_fix_time"].endswith("Z")
    assert api.ok("/v1/vehicles/van-1", api.a_view)["rev"] >= van1["rev"]
    assert api.get("/v1/vehicles/nope", api.a_view).status_code == 404
    assert api.get("/v1/vehicles/bad%20id", api.a_view).status_code == 422


def test_track_between_two_times(api: Api) -> None:
    full = api.ok("/v1/vehicles/van-1/track", api.a_view)
    assert len(full["points"]) == 46 and not full["truncated"]
    times = [p["fix_time"] for p in full["points"]]
    assert times == sorted(times)
    part = api.ok("/v1/vehicles/van-1/track", api.a_view, since=times[10], until=times[20])
    assert [p["fix_time"] for p in part["points"]] == times[10:20]
    assert api.ok("/v1/vehicles/van-1/track", api.a_view, limit=5)["truncated"]
    assert api.get("/v1/vehicles/van-1/track", api.a_view, since="2026-01-01T00:00:00").status_code == 422  # no zone


def test_plan_with_stops_windows_etas_and_status(api: Api) -> None:
    plan = api.ok("/v1/vehicles/van-1/plan", api.a_view)
    assert plan["version"] == 1 and plan["source"] == "api"
    s1, s2 = plan["stops"]
    assert s1["id"] == "s1" and s1["arrived_at"] and s1["departed_at"] and s1["status"] == "on_time"
    assert s2["arrived_at"] is None and s2["eta"] is not None and s2["status"] in ("on_track", "predicted_late")
    assert s1["window_end"] and s2["window_start"]


def test_posting_the_same_plan_again_stores_nothing_and_a_bad_plan_is_422(api: Api) -> None:
    body = api.ok("/v1/vehicles/van-1/plan", api.a_view)
    again = {
        "vehicle": "van-1",
        "stops": [
            {k: s[k] for k in ("id", "lat", "lon", "radius_m", "service_s", "window_start", "window_end")}
            for s in body["stops"]
        ],
    }
    response = api.post("/v1/plans", api.a_desk, again)
    assert response.status_code == 200 and response.json() == {
        "tenant": api.a,
        "vehicle": "van-1",
        "version": 1,
        "stored": False,
    }
    bad = api.post("/v1/plans", api.a_desk, {"vehicle": "van-1", "stops": [{"id": "x", "lat": 95, "lon": 0}]})
    assert bad.status_code == 422 and "stops[0].lat" in bad.json()["detail"]


def test_alerts_filter_by_status_type_vehicle_and_time(api: Api) -> None:
    jumps = wait_until(lambda: api.ok("/v1/alerts", api.a_view, type="gps_jump"), 60, "van-2's gps_jump alert")
    assert [a["vehicle"] for a in jumps] == ["van-2"]
    jump = jumps[0]
    assert jump["severity"] == "info" and jump["details"]["implied_speed_mps"] > 60
    assert api.ok("/v1/alerts", api.a_view, vehicle="van-1", type="gps_jump") == []
    assert jump["id"] in {a["id"] for a in api.ok("/v1/alerts", api.a_view, status=jump["status"])}
    later = (datetime.fromisoformat(jump["start_time"]) + timedelta(seconds=1)).isoformat()
    assert jump["id"] not in {a["id"] for a in api.ok("/v1/alerts", api.a_view, since=later)}
    assert jump["id"] in {a["id"] for a in api.ok("/v1/alerts", api.a_view, until=later)}
    assert api.get("/v1/alerts", api.a_view, status="maybe").status_code == 422


def test_stop_events_kpis_and_cells(api: Api) -> None:
    events = api.ok("/v1/stop-events", api.a_view, vehicle="van-1")
    assert [e["kind"] for e in events] == ["departure", "arrival"]  # newest first
    assert events[1]["on_time"] is True and events[0]["service_s"] > 30
    assert [e["kind"] for e in api.ok("/v1/stop-events", api.a_view, kind="arrival")] == ["arrival"]
    kpis = api.ok("/v1/kpis", api.a_view)
    assert kpis["arrivals"] == 1 and kpis["on_time_rate"] == 1.0 and kpis["vehicles"] == 2
    assert {"type": "gps_jump"}.items() <= next(a for a in kpis["alerts_by_type"] if a["type"] == "gps_jump").items()
    assert kpis["dwell_by_zone"][0]["departures"] == 1
    cells = api.ok("/v1/cells", api.a_view, since=(datetime.now(UTC) - timedelta(hours=1)).isoformat())
    assert sum(c["fixes"] for c in cells) >= api.readings - 1  # B's fix is B's; later tests add more
    assert all(c["h3_cell"].startswith("89") for c in cells)
    assert any(c["dwell_minutes"] > 0 for c in cells) and any(c["alerts"] >= 1 for c in cells)


# ------------------------------------------------------------------ the alert lifecycle


def test_acknowledge_assign_comment_close_are_stored_and_published(api: Api) -> None:
    alert_id = insert_alert(api.settings, api.a, "van-1")
    before = api.ok(f"/v1/alerts/{alert_id}", api.a_view)
    assert before["acknowledged_at"] is None and before["actions"] == []
    assert alert_id in {a["id"] for a in api.ok("/v1/alerts", api.a_view, exceptions="true")}
    feed = ChangeFeed(api.settings.dsn(), f"test-api-{uuid.uuid4().hex[:6]}", stop_events=False)
    feed.last_rev = before["rev"]  # a channel that delivered everything up to this alert

    acked = api.post(f"/v1/alerts/{alert_id}/acknowledge", api.a_desk).json()
    assert acked["acknowledged_by"].startswith("desk (") and acked["rev"] > before["rev"]
    assert api.post(f"/v1/alerts/{alert_id}/acknowledge", api.a_desk).json()["rev"] == acked["rev"]  # no change
    owned = api.post(f"/v1/alerts/{alert_id}/assign", api.a_desk, {"owner": "kim"}).json()
    commented = api.post(f"/v1/alerts/{alert_id}/comments", api.a_desk, {"text": "calling the driver"}).json()
    closed = api.post(f"/v1/alerts/{alert_id}/close", api.a_desk, {"comment": "reefer reset"}).json()
    assert owned["owner"] == "kim" and commented["comments"] == 1 and closed["closed_at"] is not None
    assert acked["rev"] < owned["rev"] < commented["rev"] < closed["rev"]
    assert api.post(f"/v1/alerts/{alert_id}/assign", api.a_desk, {"owner": ""}).status_code == 422

    stored = api.ok(f"/v1/alerts/{alert_id}", api.a_view)
    assert [(a["action"], a["owner"], a["comment"]) for a in stored["actions"]] == [
        ("acknowledge", None, None),
        ("assign", "kim", None),
        ("comment", None, "calling the driver"),
        ("close", None, "reefer reset"),
    ]
    assert all(a["actor"].startswith("desk (") for a in stored["actions"])
    assert alert_id not in {a["id"] for a in api.ok("/v1/alerts", api.a_view, exceptions="true")}
    # the deliverer's change feed sees the latest version, lifecycle included: MQTT and webhooks publish it
    changes = [c for c in feed.changes() if str(c["id"]) == alert_id]
    feed.reset()
    assert [c["rev"] for c in changes] == [closed["rev"]]
    assert changes[0]["owner"] == "kim" and changes[0]["closed_by"].startswith("desk (") and changes[0]["comments"] == 1
    reopened = api.post(f"/v1/alerts/{alert_id}/reopen", api.a_desk).json()
    assert reopened["closed_at"] is None and reopened["rev"] > closed["rev"]
    assert api.post(f"/v1/alerts/{uuid.uuid4()}/acknowledge", api.a_desk).status_code == 404


# ------------------------------------------------------------------ live updates


def test_the_stream_sends_its_tenants_changes_only(api: Api) -> None:
    a_stream = LiveStream(api.url, api.a_view)
    b_stream = LiveStream(api.url, api.b_desk)
    try:
        wait_until(lambda: a_stream.of("hello") and b_stream.of("hello"), 20, "both streams' hello")
        a_alert = insert_alert(api.settings, api.a, "van-2", "door_open_away")
        end = datetime.now(UTC) - timedelta(seconds=5)
        publish(api.settings, [GpsFix(api.a, "van-2", 100, end, 60.1601, 24.9301, 1.0, 0.0, 5.0)])
        wait_until(lambda: any(d["id"] == a_alert for d in a_stream.of("alert")), 20, "A's alert on A's stream")
        wait_until(lambda: any(d["vehicle"] == "van-2" for d in a_stream.of("vehicle")), 30, "van-2 on A's stream")
        b_alert = insert_alert(api.settings, api.b, "van-9")
        wait_until(lambda: any(d["id"] == b_alert for d in b_stream.of("alert")), 20, "B's alert on B's stream")
        assert a_stream.status == b_stream.status == 200
        a_vehicles = {e[2].get("vehicle") for e in a_stream.events if e[1] != "hello"}
        b_vehicles = {e[2].get("vehicle") for e in b_stream.events if e[1] != "hello"}
        assert b_vehicles == {"van-9"} and "van-9" not in a_vehicles
        assert all(e[2]["tenant"] == api.b for e in b_stream.events if e[1] == "alert")
    finally:
        a_stream.close()
        b_stream.close()


def test_a_reconnect_with_last_event_id_misses_nothing(api: Api) -> None:
    first = LiveStream(api.url, api.a_desk)
    wait_until(lambda: first.of("hello"), 20, "hello")
    alert_id = insert_alert(api.settings, api.a, "van-1", "route_drift")
    wait_until(lambda: any(d["id"] == alert_id for d in first.of("alert")), 20, "the first alert live")
    time.sleep(1.5)  # let any held-back vehicle state go out, so the id is past the alert
    last = first.last_id()
    first.close()
    assert last is not None
    # while the client is away: alert actions, a new alert, readings, a stop visit
    api.post(f"/v1/alerts/{alert_id}/assign", api.a_desk, {"owner": "sam"})
    missed_alert = insert_alert(api.settings, api.a, "van-2", "offline")
    end = datetime.now(UTC) - timedelta(seconds=15)
    publish(api.settings, stop_visit(api.a, "van-3", FAR, end))
    with connect(api.settings.dsn(), autocommit=True) as conn:
        wait_until(
            lambda: scalar(
                conn, "SELECT count(*) FROM vehicle_state WHERE tenant = %s AND vehicle_id = 'van-3'", (api.a,)
            ),
            60,
            "van-3 in vehicle_state",
        )
        head = scalar(conn, "SELECT max(rev) FROM alerts WHERE tenant = %s", (api.a,))
        expected = {
            (kind, str(i), rev)
            for kind, table in (("alert", "alerts"), ("stop_event", "stop_events"), ("eta", "eta_updates"))
            for i, rev in conn.execute(f"SELECT id, rev FROM {table} WHERE tenant = %s AND rev > %s", (api.a, last))
        }
        vehicles_changed = {
            v
            for (v,) in conn.execute(
                "SELECT vehicle_id FROM vehicle_state WHERE tenant = %s AND rev > %s", (api.a, last)
            )
        }
    again = LiveStream(api.url, api.a_desk, last_event_id=last)
    try:
        wait_until(lambda: any(d["rev"] >= head for d in again.of("alert")), 30, "the resumed stream to catch up")
        hello = again.of("hello")[0]
        assert hello == {"tenant": api.a, "after": last, "resumed": True}
        got = {(e, str(d["id"]), d["rev"]) for _, e, d in again.events if e in ("alert", "stop_event", "eta")}
        missing = {x for x in expected if x not in got and not any(g[1] == x[1] and g[2] > x[2] for g in got)}
        assert missing == set()
        assert any(d["id"] == missed_alert for d in again.of("alert"))
        assert any(d["id"] == alert_id and d["owner"] == "sam" for d in again.of("alert"))
        assert vehicles_changed <= {d["vehicle"] for d in again.of("vehicle")}
        assert all(i is not None and i > last for i, e, _ in again.events if e != "hello")
    finally:
        again.close()


# ------------------------------------------------------------------ operations


def counter(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_parse_and_move_when_readings_arrive(api: Api) -> None:
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    names = {f.name for f in text_string_to_metric_families(text)}
    for family in (
        "fleetstream_readings_stored",
        "fleetstream_commit_latency_seconds",
        "fleetstream_flow_lag_seconds",
        "fleetstream_flow_lag_readings",
        "fleetstream_fleet_clock_lag_seconds",
        "fleetstream_alerts_raised",
        "fleetstream_sse_clients",
        "fleetstream_duplicates",
        "fleetstream_messages",
    ):
        assert family in names, family
    assert all(name.startswith("fleetstream_") for name in names)
    stored = counter(api.url, "fleetstream_readings_stored_total", stream="gps")
    messages = counter(api.url, "fleetstream_messages_total")
    commits = counter(api.url, "fleetstream_commit_latency_seconds_count")
    assert counter(api.url, "fleetstream_alerts_raised_total", type="gps_jump") >= 1
    end = datetime.now(UTC) - timedelta(seconds=5)
    fixes = [GpsFix(api.a, "van-4", i + 1, end - timedelta(seconds=i), 60.17, 24.95, 2.0, 0.0, 5.0) for i in range(120)]
    publish(api.settings, fixes, batch=40)  # 3 messages
    wait_until(
        lambda: counter(api.url, "fleetstream_readings_stored_total", stream="gps") == stored + 120,
        30,
        "the gps counter to move by the 120 readings",
    )
    assert counter(api.url, "fleetstream_messages_total") == messages + 3
    assert counter(api.url, "fleetstream_commit_latency_seconds_count") > commits
    publish(api.settings, fixes[:40], batch=40)  # the same message again: duplicates, nothing stored
    wait_until(lambda: counter(api.url, "fleetstream_duplicates_total") >= 40, 30, "40 duplicates counted")
    assert counter(api.url, "fleetstream_readings_stored_total", stream="gps") == stored + 120


def test_health_and_readiness(api: Api) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = wait_until(lambda: httpx.get(f"{api.url}/readyz").status_code == 200, 30, "/readyz 200")
    assert ready
    body = httpx.get(f"{api.url}/readyz").json()
    assert body["ready"] and body["checks"]["database"] == "ok" and body["checks"]["gateway_shards_subscribed"] == 2
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/vehicles", "/v1/stream", "/v1/alerts/{alert_id}/acknowledge", "/v1/plans"} <= set(spec["paths"])
