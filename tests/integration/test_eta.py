"""Live ETAs against the real TimescaleDB (and Mosquitto): the analytics flow's ETA updates
and predicted_late alert land through the real sink (idempotently), vehicle_current shows
the next stop's ETA, the eta_accuracy view scores a crafted case exactly, and the
deliverer publishes ETA updates to etas/<tenant>/<vehicle>."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from bytewax.testing import TestingSource, run_main

from core.settings import Settings
from core.thresholds import EtaConfig
from delivery.deliverer import run_delivery
from fleetstream.credentials import mqtt_account
from pipelines.analytics import PlanUpdate
from pipelines.connectors import AnalyticsStore
from pipelines.flow import build_analytics_flow
from pipelines.vehicle_state import StoredReading
from store.db import migrate
from store.plans import store_plan
from tests.flow.test_analytics_flow import fixed_wall, with_cells
from tests.unit.test_trackers_vehicle import PLAN, S1, S2, T0, delivery_day

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def schema(services_settings: Settings) -> None:
    migrate(services_settings.dsn())


def as_tenant(items: list[StoredReading], tenant: str) -> list[StoredReading]:
    return [replace(i, reading=replace(i.reading, tenant=tenant)) for i in items]


def test_eta_updates_land_and_vehicle_current_shows_the_next_stop_eta(services_settings: Settings, db: Any) -> None:
    tenant = f"eta{uuid.uuid4().hex[:8]}"
    plan = replace(PLAN, tenant=tenant, stops=(S1, replace(S2, window_end=T0 + timedelta(seconds=600))))
    store_plan(db, plan, "test")  # version 1: vehicle_current reads the window from the stored plan
    # the day up to 600 s: parked at s1 until 400 s, then on the way to s2 (predicted late since 315 s)
    items = [
        i
        for i in as_tenant(with_cells(delivery_day().items), tenant)
        if i.reading.fix_time <= T0 + timedelta(seconds=600)
    ]
    source = [PlanUpdate(plan, 1, T0), *items]
    for _ in range(2):  # a replay rewrites the same rows
        # an estimate at every fix (the default is every 15 s), as the expected rows below
        run_main(
            build_analytics_flow(
                TestingSource(source),
                AnalyticsStore(services_settings.dsn()),
                wall=fixed_wall,
                eta=EtaConfig(estimate_every_s=0.0),
            )
        )
        rows = db.execute(
            "SELECT stop_id, extract(epoch FROM at - %s)::int, extract(epoch FROM eta - %s)::int, "
            "method, window_end, h3_cell IS NOT NULL, retracted, rev FROM eta_updates "
            "WHERE tenant = %s ORDER BY at, stop_id",
            (T0, T0, tenant),
        ).fetchall()
        if _ == 0:
            first = rows
    assert rows == first  # same rows, same revs: nothing rewritten
    assert [(r[0], r[1], r[2]) for r in rows if r[0] == "s2"] == [
        ("s2", 0, 500),
        ("s2", 5, 603),
        ("s2", 10, 497),
        ("s2", 185, 560),
        ("s2", 250, 625),
        ("s2", 315, 690),
        ("s2", 380, 755),
        ("s2", 405, 878),
        ("s2", 410, 772),
    ]
    assert all(r[3] == "route" and r[5] and not r[6] for r in rows)
    assert {r[4] for r in rows if r[0] == "s2"} == {T0 + timedelta(seconds=600)}
    alert = db.execute(
        "SELECT status, stop_id, start_time FROM alerts WHERE tenant = %s AND type = 'predicted_late'", (tenant,)
    ).fetchall()
    assert alert == [("open", "s2", T0 + timedelta(seconds=315))]
    current = db.execute(
        "SELECT next_stop_id, next_stop_window_end, next_stop_eta, predicted_late, open_alerts "
        "FROM vehicle_current WHERE tenant = %s",
        (tenant,),
    ).fetchone()
    assert current == ("s2", T0 + timedelta(seconds=600), T0 + timedelta(seconds=772), True, 1)


def _arrival(db: Any, tenant: str, vehicle: str, stop: str, at: datetime, cell: int) -> None:
    db.execute(
        "INSERT INTO stop_events (id, kind, tenant, vehicle_id, stop_id, plan_version, visit, at, h3_cell, "
        "detected_at) VALUES (%s, 'arrival', %s, %s, %s, 1, 1, %s, %s, %s)",
        (uuid.uuid4(), tenant, vehicle, stop, at, cell, at),
    )


def _eta(db: Any, tenant: str, vehicle: str, stop: str, at: datetime, eta: datetime, retracted: bool = False) -> None:
    db.execute(
        "INSERT INTO eta_updates (at, id, tenant, vehicle_id, stop_id, plan_version, eta, retracted, "
        "detected_at) VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s)",
        (at, uuid.uuid4(), tenant, vehicle, stop, eta, retracted, at),
    )


def test_eta_accuracy_scores_the_eta_in_force_at_each_horizon(services_settings: Settings, db: Any) -> None:
    tenant = f"acc{uuid.uuid4().hex[:8]}"
    ten = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    def t(h: int, m: int) -> datetime:
        return datetime(2026, 11, 23, h, m, tzinfo=UTC)

    _arrival(db, tenant, "van-1", "a", ten, 111)
    _eta(db, tenant, "van-1", "a", t(9, 20), t(9, 58))  # in force at 9:30: -120 s
    _eta(db, tenant, "van-1", "a", t(9, 40), t(10, 3))  # in force at 9:45: +180 s
    _eta(db, tenant, "van-1", "a", t(9, 54), t(9, 59))  # in force at 9:55: -60 s
    _eta(db, tenant, "van-1", "a", t(9, 55), t(10, 30), retracted=True)  # disproved: ignored
    _eta(db, tenant, "van-1", "a", t(9, 58), t(10, 0))  # after the 5 min horizon
    _arrival(db, tenant, "van-2", "b", ten, 222)
    _eta(db, tenant, "van-2", "b", t(9, 0), t(10, 10))  # in force at every horizon: +600 s
    _arrival(db, tenant, "van-3", "c", ten, 222)
    _eta(db, tenant, "van-3", "c", t(8, 0), t(10, 0))  # over an hour before each horizon: stale, not scored
    rows = db.execute(
        "SELECT level, vehicle_id, h3_cell, horizon_min, arrivals, mae_s, bias_s FROM eta_accuracy "
        "WHERE tenant = %s ORDER BY level, vehicle_id, h3_cell, horizon_min",
        (tenant,),
    ).fetchall()
    assert rows == [
        # cells as hex text, as on MQTT and in the API (111 = 0x6f, 222 = 0xde)
        ("all", None, None, 5, 2, 330.0, 270.0),
        ("all", None, None, 15, 2, 390.0, 390.0),
        ("all", None, None, 30, 2, 360.0, 240.0),
        ("h3_cell", None, "6f", 5, 1, 60.0, -60.0),
        ("h3_cell", None, "6f", 15, 1, 180.0, 180.0),
        ("h3_cell", None, "6f", 30, 1, 120.0, -120.0),
        ("h3_cell", None, "de", 5, 1, 600.0, 600.0),
        ("h3_cell", None, "de", 15, 1, 600.0, 600.0),
        ("h3_cell", None, "de", 30, 1, 600.0, 600.0),
        ("vehicle", "van-1", None, 5, 1, 60.0, -60.0),
        ("vehicle", "van-1", None, 15, 1, 180.0, 180.0),
        ("vehicle", "van-1", None, 30, 1, 120.0, -120.0),
        ("vehicle", "van-2", None, 5, 1, 600.0, 600.0),
        ("vehicle", "van-2", None, 15, 1, 600.0, 600.0),
        ("vehicle", "van-2", None, 30, 1, 600.0, 600.0),
    ]


def test_eta_updates_are_delivered_to_the_etas_topic(services_settings: Settings, db: Any) -> None:
    tenant = f"etm{uuid.uuid4().hex[:8]}"
    db.execute(
        "INSERT INTO delivery_cursors (channel, last_rev) SELECT 'mqtt', coalesce(max(rev), 0) FROM"
        " (SELECT max(rev) AS rev FROM alerts UNION ALL SELECT max(rev) FROM stop_events"
        " UNION ALL SELECT max(rev) FROM eta_updates) r"
        " ON CONFLICT (channel) DO UPDATE SET last_rev = excluded.last_rev"
    )
    got: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{tenant}-monitor", protocol=mqtt.MQTTv5)
    client.username_pw_set(*mqtt_account(services_settings, "monitor"))
    client.on_connect = lambda c, *_: c.subscribe(f"etas/{tenant}/#", 1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, msg: got.append((msg.topic, json.loads(msg.payload)))
    client.connect(*services_settings.mqtt_endpoint())
    client.loop_start()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_delivery,
        args=(replace(services_settings, delivery_poll_ms=50), mqtt_account(services_settings, "alerts"), stop),
        daemon=True,
    )
    try:
        assert subscribed.wait(10)
        t0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        _eta(db, tenant, "van-7", "s1", t0, t0 + timedelta(minutes=12))
        thread.start()
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
        client.disconnect()
        client.loop_stop()
    assert len(got) == 1
    topic, doc = got[0]
    assert (topic, doc["kind"], doc["stop_id"], doc["eta"]) == (
        f"etas/{tenant}/van-7",
        "eta",
        "s1",
        "2026-11-23T09:12:00.000Z",
    )
