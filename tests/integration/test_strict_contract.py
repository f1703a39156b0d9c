"""The contract refuses what it says it refuses: each lenient case a dead letter with its reason.

Every case is published by a provisioned device through the real broker to the engine's gateway
shards, and each must land in ``dead_letters`` with the reason code of ``core/contract.py``,
nothing stored. Plans go through the dispatch listener.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from core.settings import Settings
from fleetstream import credentials
from fleetstream.engine import Engine
from ingest.dispatch import publish_plan
from store.db import migrate
from tests.integration.test_broker_security import connect
from tests.integration.test_plans import plan
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

FIX = "2026-11-22T05:00:00Z"


def gps(vehicle: str, **changes: Any) -> dict[str, Any]:
    return {"v": 1, "vehicle": vehicle, "seq": 1, "fix_time": FIX, "lat": 60.2, "lon": 24.9, **changes}


def status(vehicle: str, **changes: Any) -> dict[str, Any]:
    return {"v": 1, "vehicle": vehicle, "sent_at": FIX, "state": "heartbeat", "details": {}, **changes}


def cases(v: str) -> dict[str, tuple[str, bytes, str]]:
    """case -> (stream, payload, reason); ``v`` is replaced by each case's own vehicle id."""
    text = json.dumps(gps(v))
    return {
        "utf16": ("gps", text.encode("utf-16"), "bad_encoding"),
        "utf16le-no-bom": ("gps", text.encode("utf-16-le"), "bad_encoding"),
        "utf8-bom": ("gps", b"\xef\xbb\xbf" + text.encode(), "bad_encoding"),
        "duplicate-vehicle": (
            "gps",
            text.replace('"vehicle"', f'"vehicle": "{v}", "vehicle"', 1).encode(),
            "duplicate_key",
        ),
        "v-true": ("gps", json.dumps(gps(v, v=True)).encode(), "bad_version"),
        "v-float": ("gps", json.dumps(gps(v, v=1.0)).encode(), "bad_version"),
        "control-in-sensor": (
            "temp",
            json.dumps({**gps(v), "sensor": "reefer\u0007\n", "celsius": 4.0}).encode(),
            "bad_text",
        ),
        "bidi-in-door": (
            "door",
            json.dumps({**gps(v), "door": "rear\u202egnp.exe", "open": True}).encode(),
            "bad_text",
        ),
        "unknown-state": ("status", json.dumps(status(v, state="pwned")).encode(), "unknown_state"),
        "sent-at-9999": ("status", json.dumps(status(v, sent_at="9999-12-31T23:59:59Z")).encode(), "time_in_future"),
        "sent-at-1970": ("status", json.dumps(status(v, sent_at="1970-01-01T00:00:00Z")).encode(), "time_too_old"),
        "device-time-9999": ("gps", json.dumps(gps(v, device_time="9999-01-01T00:00:00Z")).encode(), "time_in_future"),
        "device-time-1970": ("gps", json.dumps(gps(v, device_time="1970-01-01T00:00:01Z")).encode(), "time_too_old"),
        "details-200KiB": ("status", json.dumps(status(v, details={"x": "y" * 200 * 1024})).encode(), "oversized"),
    }


@pytest.fixture(scope="module")
def engine(services_settings: Settings) -> Iterator[Engine]:
    migrate(services_settings.dsn())
    eng = Engine(services_settings, with_flow=False, with_delivery=False, with_api=False, with_listeners=False)
    eng.start()
    eng.wait_ready()
    try:
        yield eng
    finally:
        eng.stop()


def test_each_lenient_case_is_a_dead_letter_with_its_reason(
    services_settings: Settings, engine: Engine, db: Any
) -> None:
    tenant = f"sc{uuid.uuid4().hex[:8]}"
    names = list(cases("v"))
    vehicles = {name: f"van-{i}" for i, name in enumerate(names)}
    passwords = credentials.add_devices(services_settings, tenant, [*vehicles.values(), "van-good"])
    sent: dict[str, str] = {}  # topic -> expected reason
    for name in names:
        vehicle = vehicles[name]
        stream, payload, reason = cases(vehicle)[name]
        device = connect(services_settings, f"{tenant}.{vehicle}", passwords[vehicle])
        try:
            topic = f"fleet/{tenant}/{vehicle}/{stream}"
            assert device.puback(device.publish(topic, payload)) == 0, name
            sent[topic] = reason
        finally:
            device.close()
    good = connect(services_settings, f"{tenant}.van-good", passwords["van-good"])
    good.puback(good.publish(f"fleet/{tenant}/van-good/gps", json.dumps(gps("van-good")).encode()))
    good.close()

    def dead() -> dict[str, str]:
        rows = db.execute("SELECT topic, reason FROM dead_letters WHERE topic LIKE %s", (f"fleet/{tenant}/%",))
        return dict(rows.fetchall())

    def stored() -> int:
        return int(
            db.execute(
                "SELECT (SELECT count(*) FROM positions WHERE tenant = %(t)s) + (SELECT count(*) FROM temperatures "
                "WHERE tenant = %(t)s) + (SELECT count(*) FROM door_events WHERE tenant = %(t)s) "
                "+ (SELECT count(*) FROM device_status WHERE tenant = %(t)s)",
                {"t": tenant},
            ).fetchone()[0]
        )

    # the shards commit on their own: the good reading may land after the other shard's dead letters
    wait_until(lambda: len(dead()) >= len(sent) and stored() >= 1, 30, f"{len(sent)} dead letters and the good reading")
    assert dead() == sent  # every bad message is a dead letter with its reason: none of them can still be stored
    assert stored() == 1  # the good reading only


def test_a_plan_is_held_to_the_id_rules(services_settings: Settings, engine: Engine, db: Any) -> None:
    tenant = f"sc{uuid.uuid4().hex[:8]}"
    dispatch = credentials.service_account(services_settings, "dispatch")
    bad_vehicle = plan(tenant, vehicle="x/#/+\u0007\n")
    bad_stop = plan(tenant)
    bad_stop["stops"][0]["id"] = "s1\u202e"
    for body in (bad_vehicle, bad_stop):
        publish_plan(services_settings, json.dumps(body).encode(), tenant=tenant, credentials=dispatch)
    rows = wait_until(
        lambda: (
            r
            if len(
                r := db.execute(
                    "SELECT reason, detail FROM dead_letters WHERE topic = %s ORDER BY received_at",
                    (f"dispatch/{tenant}/plan",),
                ).fetchall()
            )
            == 2
            else None
        ),
        30,
        "two plan dead letters",
    )
    assert [r[0] for r in rows] == ["bad_plan", "bad_plan"]
    assert rows[0][1].startswith("vehicle: must be an id of [A-Za-z0-9_-]{1,64}")
    assert "not printable" in rows[1][1]
    assert db.execute("SELECT count(*) FROM plans WHERE tenant = %s", (tenant,)).fetchone()[0] == 0
