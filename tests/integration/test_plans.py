"""Delivery plans against the real TimescaleDB and Mosquitto: the plan store's revisions,
the dispatch listener (store or dead-letter, PUBACK after commit), and the broker's ACL
that lets only the dispatch role publish plans."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from core.plan import Plan
from core.settings import Settings
from fleetstream import credentials
from fleetstream import services as fs_services
from fleetstream.credentials import mqtt_account
from ingest import dispatch
from ingest.dispatch import DEAD_LETTER_SHARD, PublishError, plan_topic, ready_file, run_dispatch
from store.db import connect, migrate
from store.plans import latest_plan, plans_after, store_plan
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87


def publish_plan(settings: Settings, plan: Any, **kwargs: Any) -> None:
    """``dispatch.publish_plan`` as the dispatch role, unless the test names other credentials."""
    kwargs.setdefault("credentials", mqtt_account(settings, "dispatch"))
    dispatch.publish_plan(settings, plan, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def schema(services_settings: Settings) -> None:
    migrate(services_settings.dsn())


@pytest.fixture()
def settings(services_settings: Settings) -> Settings:
    return services_settings


@pytest.fixture()
def tenant() -> str:
    return f"pl{uuid.uuid4().hex[:10]}"


def plan(tenant: str, vehicle: str = "van-1", lat: float = 60.17, version: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "vehicle": vehicle,
        "version": version,
        "stops": [
            {
                "id": "s1",
                "lat": lat,
                "lon": 24.94,
                "window_start": "2026-11-23T08:00:00Z",
                "window_end": "2026-11-23T09:00:00Z",
                "service_s": 300,
            }
        ],
        **extra,
    }


@contextlib.contextmanager
def running_listener(settings: Settings) -> Iterator[threading.Thread]:
    """run_dispatch in a thread, subscribed before the body runs; stopped after it."""
    ready_file(settings).unlink(missing_ok=True)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_dispatch, args=(settings, mqtt_account(settings, "gateway"), stop), name="dispatch", daemon=True
    )
    thread.start()
    try:
        wait_until(lambda: ready_file(settings).exists() or not thread.is_alive(), what="dispatch subscription")
        assert thread.is_alive(), "dispatch listener died at start"
        yield thread
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "dispatch listener did not stop"


@pytest.fixture()
def listener(settings: Settings) -> Iterator[threading.Thread]:
    with running_listener(settings) as thread:
        yield thread


def stored(db: Any, tenant: str, vehicle: str | None = None) -> list[tuple[Any, ...]]:
    """(vehicle, version, source, plan_seq, plan) of a tenant's stored plans, in plan_seq order."""
    sql = "SELECT vehicle_id, version, source, plan_seq, plan FROM plans WHERE tenant = %s"
    args: tuple[Any, ...] = (tenant,)
    if vehicle is not None:
        sql += " AND vehicle_id = %s"
        args += (vehicle,)
    return db.execute(sql + " ORDER BY plan_seq", args).fetchall()


def dead_letters(db: Any, tenant: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT reason, detail, payload_size, shard FROM dead_letters WHERE topic = %s ORDER BY received_at",
        (plan_topic(tenant),),
    ).fetchall()


# ---------------------------------------------------------------- the store


def test_store_assigns_versions_and_keeps_an_identical_resend(settings: Settings, db: Any, tenant: str) -> None:
    with connect(settings.dsn()) as conn:  # not autocommit: store_plan commits by itself
        first = Plan.from_dict(plan(tenant, version=42))  # the sender's version is ignored
        assert store_plan(conn, first, "cli") == (1, True)
        changed = Plan.from_dict(plan(tenant, lat=60.18))
        assert store_plan(conn, changed, "cli") == (2, True)
        # the same content again, whatever version it claims: nothing written
        assert store_plan(conn, Plan.from_dict(plan(tenant, lat=60.18, version=9)), "mqtt") == (2, False)
        assert store_plan(conn, Plan.from_dict(plan(tenant, "van-2")), "cli") == (1, True)

        rows = stored(db, tenant)  # another session sees it all: committed
        assert [(v, ver, src) for v, ver, src, _, _ in rows] == [
            ("van-1", 1, "cli"),
            ("van-1", 2, "cli"),
            ("van-2", 1, "cli"),
        ]
        assert rows[0][4]["version"] == 1 and rows[1][4]["version"] == 2  # the JSON carries the assigned one
        seqs = [r[3] for r in rows]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3

        latest = latest_plan(conn, tenant, "van-1")
        assert latest is not None and latest.version == 2 and latest.stops == changed.stops
        assert latest_plan(conn, tenant, "van-9") is None

        # the SELECTs above opened a transaction: store_plan will not hide its write inside it
        with pytest.raises(ValueError, match="outside"):
            store_plan(conn, first, "cli")
        conn.rollback()
        # only the latest revision counts: going back to the first plan is a change
        assert store_plan(conn, first, "cli") == (3, True)

        replay = [
            (seq, p.vehicle, p.version) for seq, p, _ in plans_after(conn, seqs[0] - 1, 1000) if p.tenant == tenant
        ]
        assert replay == [
            (seqs[0], "van-1", 1),
            (seqs[1], "van-1", 2),
            (seqs[2], "van-2", 1),
            (stored(db, tenant)[-1][3], "van-1", 3),
        ]
        assert [seq for seq, _, _ in plans_after(conn, seqs[0], 1)] == [seqs[1]]  # limit, strictly after


def test_plan_seq_follows_commit_order_across_concurrent_writers(settings: Settings, db: Any, tenant: str) -> None:
    writers, revisions = 4, 6
    errors: list[BaseException] = []

    def write(vehicle: str) -> None:
        try:
            with connect(settings.dsn(), autocommit=True) as conn:
                for i in range(revisions):
                    assert store_plan(conn, Plan.from_dict(plan(tenant, vehicle, lat=60 + i / 100)), "cli") == (
                        i + 1,
                        True,
                    )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"van-{w}",)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with connect(settings.dsn(), autocommit=True) as conn:
        mine = [(seq, p, at) for seq, p, at in plans_after(conn, 0, 100_000) if p.tenant == tenant]
    assert len(mine) == writers * revisions
    seqs = [seq for seq, _, _ in mine]
    assert seqs == sorted(set(seqs))  # strictly increasing
    times = [at for _, _, at in mine]
    assert times == sorted(times)  # plan_seq order is commit order
    for w in range(writers):
        assert [p.version for _, p, _ in mine if p.vehicle == f"van-{w}"] == list(range(1, revisions + 1))


# ---------------------------------------------------------------- the listener


def test_listener_stores_a_published_plan_once(settings: Settings, db: Any, tenant: str, listener: object) -> None:
    publish_plan(settings, plan(tenant, version=5))
    rows = wait_until(lambda: stored(db, tenant), what="the plan in the store")
    assert [(v, ver, src) for v, ver, src, _, _ in rows] == [("van-1", 1, "mqtt")]
    assert rows[0][4] == {**Plan.from_dict(plan(tenant)).to_dict(), "version": 1}

    publish_plan(settings, Plan.from_dict(plan(tenant)))  # a re-send: no new revision
    publish_plan(settings, plan(tenant, "van-2"))  # handled after it (one subscriber, in order)
    wait_until(lambda: stored(db, tenant, "van-2"), what="the second vehicle's plan")
    assert len(stored(db, tenant, "van-1")) == 1
    assert dead_letters(db, tenant) == []


def test_listener_dead_letters_what_is_not_a_plan(settings: Settings, db: Any, tenant: str, listener: object) -> None:
    bad_lat = json.dumps(plan(tenant, lat=95.0)).encode()
    publish_plan(settings, bad_lat)
    publish_plan(settings, b'{"tenant": "' + tenant.encode() + b'", "stops": [', tenant=tenant)
    publish_plan(settings, json.dumps(plan("someone-else")).encode(), tenant=tenant)
    publish_plan(settings, json.dumps(plan(tenant, extra_field=1)).encode())
    nul = plan(tenant)
    nul["stops"][0]["id"] = "s\u0000"  # valid JSON, but no text column (nor jsonb) can hold NUL
    publish_plan(settings, json.dumps(nul).encode())
    huge = json.dumps(plan(tenant, route=[[60.0, 24.0]] * 30_000)).encode()
    assert len(huge) > settings.max_payload_bytes
    publish_plan(settings, huge)

    rows = wait_until(lambda: len(dead_letters(db, tenant)) >= 6 and dead_letters(db, tenant), what="six dead letters")
    assert [r[0] for r in rows] == ["bad_plan", "bad_json", "bad_plan", "bad_plan", "bad_plan", "oversized"]
    assert all(r[3] == DEAD_LETTER_SHARD for r in rows)
    details = [r[1] for r in rows]
    assert details[0] == "stops[0].lat: 95.0 is outside [-90, 90]"
    assert details[2] == f"tenant: 'someone-else' does not match the topic's tenant {tenant!r}"
    assert details[3] == "plan: unknown field(s) extra_field"
    assert details[4] == "stops[0].id holds '\\x00' at character 1"
    assert rows[0][2] == len(bad_lat) and rows[5][2] == len(huge)
    assert stored(db, tenant) == []

    # the listener is still serving, and a valid plan after them all is stored
    publish_plan(settings, plan(tenant))
    wait_until(lambda: stored(db, tenant), what="a good plan after the bad ones")


def test_a_device_account_may_not_publish_plans(settings: Settings, db: Any, tenant: str, listener: object) -> None:
    password = credentials.add_device(settings, tenant, "van-1")
    with pytest.raises(PublishError) as info:
        publish_plan(settings, plan(tenant), credentials=(f"{tenant}.van-1", password))
    assert info.value.reason_code == NOT_AUTHORIZED

    publish_plan(settings, plan(tenant, "van-2"))  # the dispatch account may: a barrier behind the refusal
    wait_until(lambda: stored(db, tenant, "van-2"), what="the dispatch account's plan")
    assert stored(db, tenant, "van-1") == []
    assert dead_letters(db, tenant) == []


def test_plans_wait_in_the_broker_while_the_listener_is_down(settings: Settings, db: Any, tenant: str) -> None:
    with running_listener(settings):
        pass  # the persistent session and its subscription now exist
    publish_plan(settings, plan(tenant))  # queued for the offline session
    assert stored(db, tenant) == []
    with running_listener(settings):
        rows = wait_until(lambda: stored(db, tenant), what="the queued plan")
    assert [(v, ver, src) for v, ver, src, _, _ in rows] == [("van-1", 1, "mqtt")]


def test_a_plan_received_during_a_database_outage_is_not_acknowledged(settings: Settings, tenant: str) -> None:
    try:
        with running_listener(settings):
            publish_plan(settings, plan(tenant, "van-0"))  # the listener now holds a database connection
            with connect(settings.dsn(), autocommit=True) as db:
                wait_until(lambda: stored(db, tenant), what="the plan before the outage")
            fs_services.stop_postgres(settings)
            publish_plan(settings, plan(tenant, "van-1"))  # the broker's PUBACK to us; the listener's is held
            time.sleep(1.0)  # the listener has it and is retrying the database
        # stopped with the database still down: had it acked, the plan would be gone now
    finally:
        fs_services.start_postgres(settings)
    # a new listener gets it again from the broker, because it was never acknowledged
    with running_listener(settings), connect(settings.dsn(), autocommit=True, attempts=30) as db:
        rows = wait_until(lambda: stored(db, tenant, "van-1"), timeout_s=20, what="the plan after the outage")
    assert [(v, ver, src) for v, ver, src, _, _ in rows] == [("van-1", 1, "mqtt")]
