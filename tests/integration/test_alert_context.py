"""Alerts a person can act on, end to end: real Mosquitto, real TimescaleDB, the real engine.

Two vans with plans whose stops have names. van-1 drives to stop S-114 ("Bakery"), stands
there 36 minutes with its reefer at 9.4 °C (range 2-8 °C): a temperature excursion and a
long dwell, both still open. van-2 leaves its planned route: a route drift, still open.
The stored alerts, the alert messages a fleet manager subscribed to beforehand receives and
the retained open-alerts messages a manager who subscribes afterwards receives all carry
where (lat/lon, the H3 cell as hex text), which stop (id and name), which plan version, the
values and the threshold crossed, and a one-line summary.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import h3
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.contract import GpsFix, Reading, TemperatureReading, encode_batch
from core.geo import offset
from core.plan import Plan, Stop
from core.settings import Settings
from fleetstream import credentials
from fleetstream.engine import Engine
from store.db import connect, migrate
from store.plans import store_plan
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

LAT, LON = 60.2055, 24.6559  # away from the other tests' places (and their dwell baselines)
END = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
START = END - timedelta(minutes=38)


def _p(north_m: float, east_m: float) -> tuple[float, float]:
    return offset(LAT, LON, north_m, east_m)


BAKERY = _p(0, 0)
HARBOUR = _p(0, 3000)
VAN2_FROM = _p(-5000, 0)  # van-2 starts 5 km south, its depot 3 km east of that
DEPOT = _p(-5000, 3000)


def _plans(tenant: str) -> list[Plan]:
    return [
        Plan(
            tenant,
            "van-1",
            0,
            (Stop("S-114", *BAKERY, 75.0, name="Bakery"), Stop("S-200", *HARBOUR, 75.0, name="Harbour")),
            (_p(600, 0), BAKERY, HARBOUR),
            (2.0, 8.0),
        ),
        Plan(tenant, "van-2", 0, (Stop("S-300", *DEPOT, 75.0, name="Depot"),), (VAN2_FROM, DEPOT)),
    ]


def _readings(tenant: str) -> list[Reading]:
    out: list[Reading] = []
    seq = {"van-1": 0, "van-2": 0}

    def fix(vehicle: str, t: datetime, where: tuple[float, float], speed: float) -> None:
        seq[vehicle] += 1
        out.append(GpsFix(tenant, vehicle, seq[vehicle], t, where[0], where[1], speed, 180.0, 5.0))

    # van-1: 60 s driving in from 600 m north, then standing at the Bakery to the end
    for i in range(13):
        fix("van-1", START + timedelta(seconds=5 * i), _p(600 - 50 * i, 0), 10.0 if i < 12 else 0.0)
    t = START + timedelta(seconds=70)
    while t <= END:
        fix("van-1", t, _p((int(t.timestamp()) % 2) * 2.0, 0), 0.0)
        t += timedelta(seconds=10)
    t = START
    while t <= END:  # the reefer: in range for 2 minutes, then 9.4 °C
        seq["van-1"] += 1
        celsius = 4.0 if t < START + timedelta(minutes=2) else 9.4
        out.append(TemperatureReading(tenant, "van-1", seq["van-1"], t + timedelta(seconds=1), "reefer", celsius))
        t += timedelta(seconds=30)
    # van-2, the last 4 minutes: 60 s east along its route, then north, away from it
    t2 = END - timedelta(minutes=4)
    for i in range(49):
        north, east = (-5000.0, 50.0 * i) if i <= 12 else (-5000.0 + 50.0 * (i - 12), 600.0)
        fix("van-2", t2 + timedelta(seconds=5 * i), _p(north, east), 10.0)
    return sorted(out, key=lambda r: r.fix_time)


def _publish(settings: Settings, readings: list[Reading]) -> None:
    """In fix-time order, as runs of one vehicle's readings (at most 50 a message), QoS 1."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ctx-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    client.username_pw_set(*credentials.mqtt_account(settings, "bench"))
    client.connect(*settings.mqtt_endpoint())
    client.loop_start()
    try:
        runs: list[list[Reading]] = []
        for r in readings:
            if runs and runs[-1][0].vehicle == r.vehicle and len(runs[-1]) < 50:
                runs[-1].append(r)
            else:
                runs.append([r])
        infos = [client.publish(*encode_batch(run[0].tenant, run[0].vehicle, run), qos=1) for run in runs]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


class Manager:
    """A fleet manager's MQTT connection (its own account): what it receives, by topic."""

    def __init__(self, settings: Settings, tenant: str, name: str, topics: list[str]) -> None:
        username, password = credentials.add_account(settings, tenant, name, "manager")
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(*settings.mqtt_endpoint())
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(15), "SUBACK"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def received(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def scenario(services_settings: Settings) -> Iterator[tuple[str, Manager, dict[str, int]]]:
    """The engine run over both vans' readings; an early manager subscribed throughout."""
    settings = services_settings
    migrate(settings.dsn())
    tenant = f"ctx{uuid.uuid4().hex[:8]}"
    versions = {}
    with connect(settings.dsn(), autocommit=True) as conn:
        for plan in _plans(tenant):
            versions[plan.vehicle] = store_plan(conn, plan, "test")[0]
        # the session's database holds other tests' changes: delivered already, as far as this test goes
        conn.execute(
            "INSERT INTO delivery_cursors (channel, last_rev) SELECT 'mqtt', coalesce(max(rev), 0) FROM"
            " (SELECT max(rev) AS rev FROM alerts UNION ALL SELECT max(rev) FROM stop_events"
            " UNION ALL SELECT max(rev) FROM eta_updates) r"
            " ON CONFLICT (channel) DO UPDATE SET last_rev = GREATEST(delivery_cursors.last_rev, excluded.last_rev)"
        )
    early = Manager(settings, tenant, "early", [f"alerts/{tenant}/#", f"stops/{tenant}/#"])
    engine = Engine(settings, with_dispatch=False, with_api=False, with_listeners=False)
    engine.start()
    try:
        engine.wait_ready()
        _publish(settings, _readings(tenant))
        yield tenant, early, versions
    finally:
        early.close()
        engine.stop()


def _open(db: Any, tenant: str) -> dict[str, dict[str, Any]]:
    rows = db.execute(
        "SELECT a.type, a.vehicle_id, a.lat, a.lon, a.stop_id, a.stop_name, a.plan_version, a.summary, a.details, "
        "a.h3_cell, o.h3_cell AS view_cell FROM alerts a JOIN open_alerts o USING (id) "
        "WHERE a.tenant = %s AND a.status = 'open'",
        (tenant,),
    ).fetchall()
    names = ("type", "vehicle", "lat", "lon", "stop_id", "stop_name", "plan_version", "summary", "details", "cell")
    return {r[0]: {**dict(zip(names, r[:10], strict=True)), "view_cell": r[10]} for r in rows}


def _check(
    alert: dict[str, Any], vehicle: str, stop: tuple[str, str], version: int, where: tuple[float, float]
) -> None:
    """An alert (a stored row or a payload) says where, which stop, which plan, what and why."""
    assert alert["vehicle"] == vehicle
    assert (alert["stop_id"], alert["stop_name"], alert["plan_version"]) == (*stop, version)
    assert abs(alert["lat"] - where[0]) < 0.002 and abs(alert["lon"] - where[1]) < 0.004  # within ~200 m
    details = alert["details"]
    assert details["value"] is not None and details["threshold"] is not None and details["unit"]
    assert alert["summary"].startswith(f"{vehicle}: ") and details["summary"] == alert["summary"]


def test_stored_alerts_carry_place_stop_plan_values_and_a_summary(
    services_settings: Settings, db: Any, scenario: tuple[str, Manager, dict[str, int]]
) -> None:
    tenant, _, versions = scenario
    wanted = {"temp_excursion", "long_dwell", "route_drift"}
    found = wait_until(lambda: (o := _open(db, tenant)) and wanted <= set(o) and o, 240, f"open alerts {wanted}")
    temp, dwell, drift = found["temp_excursion"], found["long_dwell"], found["route_drift"]
    _check(temp, "van-1", ("S-114", "Bakery"), versions["van-1"], BAKERY)
    assert (temp["details"]["value"], temp["details"]["threshold"], temp["details"]["range_c"]) == (9.4, 8.0, [2, 8])
    assert temp["summary"] == "van-1: reefer at 9.4 °C for 5 min, above 8.0 °C, at stop S-114 (Bakery)"
    _check(dwell, "van-1", ("S-114", "Bakery"), versions["van-1"], BAKERY)
    assert (dwell["details"]["value"], dwell["details"]["threshold"]) == (30.0, 30.0)
    assert dwell["summary"] == "van-1: stopped 30 min, limit 30 min, at stop S-114 (Bakery)"
    # off route heading north: the stop it was heading to, the metres off and the limit
    _check(drift, "van-2", ("S-300", "Depot"), versions["van-2"], _p(-4850, 600))
    assert drift["details"]["value"] > 150.0 and drift["details"]["threshold"] == 150.0
    assert drift["summary"].startswith("van-2: ") and "m off the planned route, limit 150 m" in drift["summary"]
    assert drift["summary"].endswith("on the way to stop S-300 (Depot)")
    for alert in (temp, dwell, drift):  # the view shows the cell as hex text, as MQTT does
        assert alert["view_cell"] == h3.int_to_str(alert["cell"])
    arrival = db.execute(
        "SELECT stop_name, summary, lat, lon FROM stop_events WHERE tenant = %s AND kind = 'arrival'", (tenant,)
    ).fetchone()
    assert arrival[0] == "Bakery" and arrival[1].startswith("van-1: arrived at stop S-114 (Bakery) at ")
    assert arrival[2] is not None and arrival[3] is not None


def _payloads(manager: Manager, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(body) for topic, body, _ in manager.received() if topic.startswith(prefix) and body]


def test_published_alerts_carry_the_same_and_a_late_manager_gets_the_open_ones(
    services_settings: Settings, db: Any, scenario: tuple[str, Manager, dict[str, int]]
) -> None:
    tenant, early, versions = scenario
    wanted = {"temp_excursion", "long_dwell", "route_drift"}

    def published() -> dict[str, dict[str, Any]]:
        docs = {d["type"]: d for d in _payloads(early, f"alerts/{tenant}/") if d["status"] == "open"}
        return docs if wanted <= set(docs) else {}

    docs = wait_until(published, 240, f"alert messages {wanted}")
    _check(docs["temp_excursion"], "van-1", ("S-114", "Bakery"), versions["van-1"], BAKERY)
    _check(docs["long_dwell"], "van-1", ("S-114", "Bakery"), versions["van-1"], BAKERY)
    _check(docs["route_drift"], "van-2", ("S-300", "Depot"), versions["van-2"], _p(-4850, 600))
    assert h3.is_valid_cell(docs["temp_excursion"]["h3_cell"])
    assert "Bakery" in docs["temp_excursion"]["summary"] and "9.4 °C" in docs["temp_excursion"]["summary"]
    stops = _payloads(early, f"stops/{tenant}/")
    assert any(s["type"] == "arrival" and s["stop_name"] == "Bakery" and s["summary"] for s in stops)

    # a manager who subscribes now gets, at once, each vehicle's open alerts (retained)
    late = Manager(services_settings, tenant, "late", [f"open_alerts/{tenant}/+"])
    try:

        def retained() -> dict[str, dict[str, Any]]:
            got = {topic.rsplit("/", 1)[1]: json.loads(body) for topic, body, kept in late.received() if kept and body}
            types = {v: {a["type"] for a in doc["alerts"]} for v, doc in got.items()}
            ok = {"temp_excursion", "long_dwell"} <= types.get("van-1", set()) and "route_drift" in types.get(
                "van-2", set()
            )
            return got if ok else {}

        got = wait_until(retained, 60, "retained open alerts of van-1 and van-2")
        for vehicle, doc in got.items():
            assert (doc["kind"], doc["tenant"], doc["vehicle"], doc["count"]) == (
                "open_alerts",
                tenant,
                vehicle,
                len(doc["alerts"]),
            )
            assert all(a["status"] == "open" and a["summary"] for a in doc["alerts"])
        excursion = next(a for a in got["van-1"]["alerts"] if a["type"] == "temp_excursion")
        _check(excursion, "van-1", ("S-114", "Bakery"), versions["van-1"], BAKERY)
    finally:
        late.close()


# ------------------------------------------------------------------ views that answer the common questions


def test_vehicle_current_says_off_duty_or_idle_instead_of_a_stale_eta(services_settings: Settings, db: Any) -> None:
    migrate(services_settings.dsn())
    tenant = f"vc{uuid.uuid4().hex[:8]}"
    t = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    cell = h3.str_to_int(h3.latlng_to_cell(LAT, LON, 9))
    # (vehicle, on_duty, motion, plan_version, stops_remaining): as the dataflow writes vehicle_state
    for vehicle, on_duty, motion, version, remaining in (
        ("done", False, "stopped", 1, 1),  # parked at its last stop: the shift is over
        ("spare", True, "stopped", None, None),  # no plan
        ("finished", True, "stopped", 1, 0),  # every stop done, not yet judged off duty
        ("driving", True, "moving", 1, 2),
        ("waiting", True, "stopped", 1, 2),
    ):
        db.execute(
            "INSERT INTO vehicle_state (tenant, vehicle_id, last_fix_time, h3_cell, gps_count, temp_count, "
            "door_count, motion, plan_version, next_stop_id, stops_remaining, on_duty) "
            "VALUES (%s, %s, %s, %s, 1, 0, 0, %s, %s, %s, %s, %s)",
            (tenant, vehicle, t, cell, motion, version, "a" if remaining else None, remaining, on_duty),
        )
        db.execute(
            "INSERT INTO eta_updates (at, id, tenant, vehicle_id, stop_id, plan_version, eta, detected_at) "
            "VALUES (%s, %s, %s, %s, 'a', 1, %s, %s)",
            (t, uuid.uuid4(), tenant, vehicle, t + timedelta(minutes=20), t),
        )
    rows = db.execute(
        "SELECT vehicle_id, activity, next_stop_id, next_stop_eta, h3_cell FROM vehicle_current WHERE tenant = %s",
        (tenant,),
    ).fetchall()
    eta = t + timedelta(minutes=20)
    hexcell = h3.int_to_str(cell)
    assert sorted(rows) == [
        ("done", "off_duty", None, None, hexcell),
        ("driving", "moving", "a", eta, hexcell),
        ("finished", "idle", None, None, hexcell),
        ("spare", "idle", None, None, hexcell),
        ("waiting", "stopped", "a", eta, hexcell),
    ]


def test_dwell_by_zone_has_a_row_per_zone_and_day(services_settings: Settings, db: Any) -> None:
    migrate(services_settings.dsn())
    tenant = f"dz{uuid.uuid4().hex[:8]}"
    cell = h3.str_to_int(h3.latlng_to_cell(LAT, LON, 9))
    day1, day2 = datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 24, tzinfo=UTC)
    for at, service in ((day1 + timedelta(hours=9), 300.0), (day1 + timedelta(hours=15), 500.0), (day2, 120.0)):
        db.execute(
            "INSERT INTO stop_events (id, kind, tenant, vehicle_id, stop_id, plan_version, visit, at, h3_cell, "
            "service_s, detected_at) VALUES (%s, 'departure', %s, 'van-1', 'a', 1, 1, %s, %s, %s, %s)",
            (uuid.uuid4(), tenant, at, cell, service, at),
        )
    db.execute(
        "INSERT INTO cell_minutes (tenant, h3_cell, vehicle_id, minute, fixes, speed_sum, speed_n, stopped_s) "
        "VALUES (%s, %s, 'van-1', %s, 12, 0, 12, 60)",
        (tenant, cell, day1 + timedelta(hours=9)),
    )
    rows = db.execute(
        "SELECT h3_cell, day, departures, mean_service_s, stopped_minutes FROM dwell_by_zone WHERE tenant = %s "
        "ORDER BY day",
        (tenant,),
    ).fetchall()
    hexcell = h3.int_to_str(cell)
    assert [(r[0], r[1], r[2], float(r[3]), float(r[4])) for r in rows] == [
        (hexcell, day1, 2, 400.0, 1.0),
        (hexcell, day2, 1, 120.0, 0.0),
    ]
