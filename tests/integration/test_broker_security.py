"""Broker security against the real Mosquitto (and, where it matters, the real engine and database).

Authentication, per-device publish rules, and what a device with one account must not be able
to do: subscribe to anything but its own commands (MQTT 5 and 3.1.1), take over another
account's client id, keep sessions after it is deprovisioned. Tenant accounts: a manager
reads its tenant's results only; a dispatcher stores plans for its tenant only.

Under MQTT v5 a refused publish gets PUBACK 0x87, a refused subscription SUBACK 0x87 and a
refused login CONNACK 0x87; under 3.1.1 a refused subscription is SUBACK 0x80, a refused
login CONNACK 5, and a refused publish is dropped silently.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.contract import GpsFix, encode_single
from core.settings import Settings
from fleetstream import credentials, dynsec
from fleetstream import services as fs_services
from fleetstream.engine import Engine
from ingest.dispatch import DEAD_LETTER_SHARD, PublishError, publish_plan
from store.db import migrate
from tests.integration.test_delivery import add_alert, add_stop, delivering, start_at_head
from tests.integration.test_plans import plan, running_listener
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86
V311_REFUSED = 0x80  # SUBACK "failure" under MQTT 3.1.1
# CONNACK return code 5 under 3.1.1: paho reports it as the v5 reason it maps to, 0x87
V311_NOT_AUTHORIZED = NOT_AUTHORIZED
NO_MATCHING_SUBSCRIBERS = 0x10  # still a success: v5 reason codes below 0x80 are successes
ACCEPTED = (0x00, NO_MATCHING_SUBSCRIBERS)
READINGS = 600  # what the other tenant publishes while the attacks run


@dataclass
class Conn:
    """A connected (or refused) paho client plus what it saw."""

    client: mqtt.Client
    connack: int | None = None
    session_present: bool | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    granted: list[int] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)  # mid -> reason code
    lock: threading.Lock = field(default_factory=threading.Lock)
    cond: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        return info.mid

    def puback(self, mid: int, timeout: float = 5.0) -> int:
        assert self.wait_for(lambda: mid in self.pubacks, timeout), f"no PUBACK for mid {mid}"
        return self.pubacks[mid]

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self.subscribed.wait(5), f"no SUBACK for {topic}"
        return list(self.granted)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    settings: Settings,
    username: str | None,
    password: str | None,
    *,
    client_id: str | None = None,
    protocol: int = mqtt.MQTTv5,
    persistent: bool = False,
) -> Conn:
    """Connect and wait for the CONNACK. The client id defaults to the username for accounts that
    are bound to it (they have a dot), else a random one. ``persistent``: a session that outlives
    the connection (v5: clean start off, an hour's expiry; 3.1.1: clean session off)."""
    if client_id is None:
        client_id = username if username and "." in username else f"sec-{uuid.uuid4().hex[:10]}"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == mqtt.MQTTv5 else not persistent,
    )
    if username is not None:
        client.username_pw_set(username, password)
    conn = Conn(client)

    def on_connect(_c, _u, flags, reason_code, _props):  # type: ignore[no-untyped-def]
        conn.connack = int(reason_code.value)
        conn.session_present = bool(getattr(flags, "session_present", False))
        conn.connected.set()

    def on_disconnect(_c, _u, _flags, _reason, _props):  # type: ignore[no-untyped-def]
        conn.disconnected.set()

    def on_subscribe(_c, _u, _mid, reason_codes, _props):  # type: ignore[no-untyped-def]
        conn.granted = [int(rc.value) for rc in reason_codes]
        conn.subscribed.set()

    def on_message(_c, _u, msg):  # type: ignore[no-untyped-def]
        with conn.cond:
            conn.messages.append((msg.topic, msg.payload))
            conn.cond.notify_all()

    def on_publish(_c, _u, mid, reason_code, _props):  # type: ignore[no-untyped-def]
        with conn.cond:
            conn.pubacks[mid] = int(reason_code.value)
            conn.cond.notify_all()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    client.reconnect_delay_set(60, 60)  # a refused login must not turn into a retry storm
    host, port = settings.mqtt_endpoint()
    if protocol == mqtt.MQTTv5:
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        client.connect(host, port, keepalive=30, clean_start=not persistent, properties=props)
    else:
        client.connect(host, port, keepalive=30)
    client.loop_start()
    assert conn.connected.wait(5), "no CONNACK"
    if conn.connack != 0:
        client.loop_stop()
        client.disconnect()
    return conn


def sessions(settings: Settings) -> list[dynsec.StoredSession]:
    return dynsec.stored_sessions(settings.state_dir / "mosquitto" / "data" / "mosquitto.sqlite3")


@pytest.fixture()
def tenant() -> str:
    return f"sec{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def devices(services: Settings, tenant: str) -> dict[str, str]:
    return credentials.add_devices(services, tenant, ["van-a", "van-b"])


@pytest.fixture(scope="module")
def gateway_engine(services_settings: Settings) -> Iterator[Engine]:
    """The engine's gateway shards (clients fleetstream-gw-0, -1) and dispatch listener, storing."""
    migrate(services_settings.dsn())
    engine = Engine(services_settings, with_flow=False, with_delivery=False, with_api=False, with_listeners=False)
    engine.start()
    engine.wait_ready()
    try:
        yield engine
    finally:
        engine.stop()


# ---------------------------------------------------------------- logins and publishing


def test_anonymous_connect_refused(services: Settings) -> None:
    conn = connect(services, None, None)
    assert conn.connack in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD), conn.connack


def test_wrong_password_refused(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    conn = connect(services, f"{tenant}.van-a", devices["van-a"] + "x")
    assert conn.connack in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD), conn.connack
    unknown = connect(services, f"{tenant}.nobody", "whatever")
    assert unknown.connack in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD), unknown.connack
    ok = connect(services, f"{tenant}.van-a", devices["van-a"])
    assert ok.connack == 0
    ok.close()


def test_device_publishes_only_to_its_own_topics(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    monitor = connect(services, *credentials.service_account(services, "monitor"))
    assert monitor.connack == 0
    assert monitor.subscribe("fleet/#") == [1]
    dev_a = connect(services, f"{tenant}.van-a", devices["van-a"])
    assert dev_a.connack == 0
    try:
        refused_mid = dev_a.publish(f"fleet/{tenant}/van-b/gps", b"spoofed by van-a")
        assert dev_a.puback(refused_mid) == NOT_AUTHORIZED
        own_mid = dev_a.publish(f"fleet/{tenant}/van-a/gps", b"own reading")
        assert dev_a.puback(own_mid) in ACCEPTED
        # the broker handles one client's publishes in order: once the second one has
        # reached the monitor, the first would have too, had it been let through
        assert monitor.wait_for(lambda: (f"fleet/{tenant}/van-a/gps", b"own reading") in monitor.messages)
        time.sleep(0.2)
        seen = [m for m in monitor.messages if m[0].startswith(f"fleet/{tenant}/")]
        assert seen == [(f"fleet/{tenant}/van-a/gps", b"own reading")]
        for elsewhere in ("elsewhere/x", "alerts/x/y", "dispatch/x/plan", "$CONTROL/dynamic-security/v1"):
            assert dev_a.puback(dev_a.publish(elsewhere, b"nope")) == NOT_AUTHORIZED, elsewhere
    finally:
        dev_a.close()
        monitor.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_a_device_subscribes_only_to_its_own_commands(
    services: Settings, tenant: str, devices: dict[str, str], protocol: int
) -> None:
    refused = NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else V311_REFUSED
    dev_a = connect(services, f"{tenant}.van-a", devices["van-a"], protocol=protocol)
    assert dev_a.connack == 0
    try:
        for topic in (
            "#",
            "+/#",
            "fleet/#",
            f"fleet/{tenant}/#",
            "fleet/+/+/+",
            f"fleet/{tenant}/+/cmd/#",
            f"fleet/{tenant}/van-b/cmd/#",
            "$share/fleetstream/fleet/+/+/+",
            "$share/fleetstream/owntracks/#",
            f"$share/x/fleet/{tenant}/van-a/cmd/#",
            "alerts/#",
            "stops/#",
            "etas/#",
            "dispatch/#",
            "owntracks/#",
            "$SYS/#",
            "$CONTROL/#",
        ):
            assert dev_a.subscribe(topic) == [refused], topic
        assert dev_a.subscribe(f"fleet/{tenant}/van-a/cmd/#") == [1]
        assert dev_a.subscribe(f"fleet/{tenant}/van-a/cmd/stored") == [1]
        # its own commands still arrive; the other van's do not
        gateway = connect(services, *credentials.service_account(services, "gateway"))
        try:
            gateway.publish(f"fleet/{tenant}/van-b/cmd/ping", b"for b")
            gateway.publish(f"fleet/{tenant}/van-a/cmd/ping", b"for a")
            assert dev_a.wait_for(lambda: (f"fleet/{tenant}/van-a/cmd/ping", b"for a") in dev_a.messages)
            assert dev_a.messages == [(f"fleet/{tenant}/van-a/cmd/ping", b"for a")]
        finally:
            gateway.close()
    finally:
        dev_a.close()


def test_nobody_silences_another_tenant(
    services: Settings, gateway_engine: Engine, db: Any, tenant: str, devices: dict[str, str]
) -> None:
    """A device tries every way into the gateway's share of the traffic, under MQTT 5 and 3.1.1,
    online and with sessions that outlive the connection; another tenant's device publishes 600
    readings meanwhile: all 600 are stored, none reached the attacker."""
    victim_tenant = f"{tenant}v"
    victim_password = credentials.add_device(services, victim_tenant, "van-1")
    attacker = f"{tenant}.van-a"
    attacks: list[Conn] = []
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        for persistent in (False, True):
            conn = connect(services, attacker, devices["van-a"], protocol=protocol, persistent=persistent)
            assert conn.connack == 0
            refused = NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else V311_REFUSED
            for topic in ("$share/fleetstream/fleet/+/+/+", "$share/fleetstream/#", "#", "fleet/+/+/+"):
                assert conn.subscribe(topic) == [refused], (protocol, persistent, topic)
            if persistent:
                conn.close()  # an offline session that would have queued its share
            else:
                attacks.append(conn)
    victim = connect(services, f"{victim_tenant}.van-1", victim_password)
    base = datetime.now(UTC) - timedelta(hours=1)
    try:
        mids = [
            victim.publish(
                *encode_single(GpsFix(victim_tenant, "van-1", seq, base + timedelta(seconds=seq), 60.2, 24.9))
            )
            for seq in range(READINGS)
        ]
        codes = [victim.puback(mid, 30) for mid in mids]
        assert set(codes) == {0}, "every reading reached a subscriber (the gateway's share group)"

        def stored() -> int:
            return int(
                db.execute("SELECT count(DISTINCT seq) FROM positions WHERE tenant = %s", (victim_tenant,)).fetchone()[
                    0
                ]
            )

        wait_until(lambda: stored() >= READINGS, 60, f"{READINGS} readings stored")
        rows = db.execute("SELECT count(*) FROM positions WHERE tenant = %s", (victim_tenant,)).fetchone()[0]
        assert (stored(), rows) == (READINGS, READINGS)  # sent 600, stored 600, lost 0, duplicated 0
        assert all(c.messages == [] for c in attacks)
        held = [s for s in sessions(services) if s.username == attacker]
        assert all(s.subscriptions == () for s in held), held
    finally:
        victim.close()
        for conn in attacks:
            conn.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_a_device_cannot_take_over_another_client_id(
    services: Settings, gateway_engine: Engine, db: Any, tenant: str, devices: dict[str, str], protocol: int
) -> None:
    refused = NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else V311_NOT_AUTHORIZED
    gw_log = Path(services.state_dir) / "logs" / "gateway-0.log"
    drops_before = gw_log.read_text().count("disconnected")
    victim = connect(services, f"{tenant}.van-b", devices["van-b"], persistent=True)
    assert victim.connack == 0 and victim.subscribe(f"fleet/{tenant}/van-b/cmd/#") == [1]
    try:
        for stolen in ("fleetstream-gw-0", "fleetstream-gw-1", "fleetstream-dispatch", f"{tenant}.van-b", "anything"):
            impostor = connect(services, f"{tenant}.van-a", devices["van-a"], client_id=stolen, protocol=protocol)
            assert impostor.connack == refused, stolen
        # the victim device was not kicked, and its session is the same
        assert not victim.disconnected.wait(0.5)
        gateway = connect(services, *credentials.service_account(services, "gateway"))
        try:
            gateway.publish(f"fleet/{tenant}/van-b/cmd/ping", b"1")
            assert victim.wait_for(lambda: len(victim.messages) == 1)
            victim.close()
            gateway.puback(gateway.publish(f"fleet/{tenant}/van-b/cmd/ping", b"queued while away"))
        finally:
            gateway.close()
        back = connect(services, f"{tenant}.van-b", devices["van-b"], persistent=True)
        assert back.session_present is True
        assert back.wait_for(lambda: (f"fleet/{tenant}/van-b/cmd/ping", b"queued while away") in back.messages)
        back.close()
        # the gateway shards were not kicked either: no disconnection, and they still store
        base = datetime.now(UTC) - timedelta(hours=2)
        dev_a = connect(services, f"{tenant}.van-a", devices["van-a"])
        mids = [
            dev_a.publish(*encode_single(GpsFix(tenant, "van-a", seq, base + timedelta(seconds=seq), 60.2, 24.9)))
            for seq in range(20)
        ]
        assert {dev_a.puback(mid) for mid in mids} == {0}
        dev_a.close()
        wait_until(
            lambda: db.execute("SELECT count(*) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[0] == 20,
            30,
            "20 readings stored",
        )
        assert gw_log.read_text().count("disconnected") == drops_before
    finally:
        victim.close()


def test_a_deprovisioned_devices_sessions_are_gone(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    user = f"{tenant}.van-a"
    dev = connect(services, user, devices["van-a"], persistent=True)
    assert dev.subscribe(f"fleet/{tenant}/van-a/cmd/#") == [1]
    wait_until(lambda: any(s.client_id == user for s in sessions(services)), 10, "the session saved")
    assert credentials.remove_device(services, tenant, "van-a")
    assert dev.disconnected.wait(5), "a removed device stays connected"
    dev.close()
    wait_until(lambda: all(s.username != user for s in sessions(services)), 10, "the session gone")
    # nothing subscribes to its commands any more, and its password no longer logs in
    gateway = connect(services, *credentials.service_account(services, "gateway"))
    try:
        assert gateway.puback(gateway.publish(f"fleet/{tenant}/van-a/cmd/ping", b"x")) == NO_MATCHING_SUBSCRIBERS
    finally:
        gateway.close()
    assert connect(services, user, devices["van-a"]).connack in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
    # provisioned again (same password): a new device, no session of the old one
    credentials.add_device(services, tenant, "van-a", devices["van-a"])
    again = connect(services, user, devices["van-a"], persistent=True)
    assert again.connack == 0 and again.session_present is False
    again.close()


def test_sessions_of_a_device_removed_while_the_broker_was_down_end_at_its_start(
    services: Settings, tenant: str, devices: dict[str, str]
) -> None:
    user = f"{tenant}.van-b"
    dev = connect(services, user, devices["van-b"], persistent=True)
    assert dev.subscribe(f"fleet/{tenant}/van-b/cmd/#") == [1]
    dev.close()
    wait_until(lambda: any(s.client_id == user for s in sessions(services)), 10, "the session saved")
    fs_services.stop_broker(services)
    try:
        assert credentials.remove_device(services, tenant, "van-b")  # the files only: no broker to tell
    finally:
        fs_services.start_broker(services)  # ... which sweeps the sessions no account rule allows
    # (the broker writes its sessions' database every second)
    wait_until(lambda: all(s.username != user for s in sessions(services)), 10, "the session gone")
    credentials.add_device(services, tenant, "van-b", devices["van-b"])
    again = connect(services, user, devices["van-b"], persistent=True)
    assert again.connack == 0 and again.session_present is False
    again.close()


def test_provisioning_is_idempotent(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    assert credentials.add_device(services, tenant, "van-a") == devices["van-a"]
    again = credentials.add_devices(services, tenant, ["van-a", "van-b", "van-c"])
    assert again["van-a"] == devices["van-a"] and again["van-b"] == devices["van-b"]
    assert credentials.service_account(services, "gateway") == credentials.service_account(services, "gateway")
    conn = connect(services, f"{tenant}.van-c", again["van-c"])  # new device usable at once
    assert conn.connack == 0
    conn.close()


def test_service_roles_subscribe_only_where_they_work(services: Settings, tenant: str) -> None:
    gateway = connect(services, *credentials.service_account(services, "gateway"))
    monitor = connect(services, *credentials.service_account(services, "monitor"))
    alerts = connect(services, *credentials.service_account(services, "alerts"))
    try:
        assert gateway.subscribe("$share/sec-test/fleet/+/+/+") == [1]
        assert gateway.subscribe("dispatch/+/plan") == [1]
        for topic in ("#", "$SYS/#", "alerts/#", "$share/sec-test/#"):
            assert gateway.subscribe(topic) == [NOT_AUTHORIZED], topic
        assert monitor.puback(monitor.publish(f"fleet/{tenant}/van-a/gps", b"x")) == NOT_AUTHORIZED
        assert monitor.subscribe("$SYS/#") == [1]
        assert alerts.subscribe("alerts/#") == [NOT_AUTHORIZED]  # it publishes, reads nothing
    finally:
        for conn in (gateway, monitor, alerts):
            conn.close()


# ---------------------------------------------------------------- tenant accounts


def test_a_manager_receives_its_tenants_alerts_and_not_anothers(services: Settings, db: Any, tenant: str) -> None:
    other = f"{tenant}o"
    user, password = credentials.add_account(services, tenant, "desk", "manager")
    assert user == f"manager.{tenant}.desk"
    assert credentials.add_account(services, tenant, "desk", "manager") == (user, password)  # idempotent
    other_user, other_password = credentials.add_account(services, other, "desk", "manager")
    start_at_head(db, "mqtt")
    manager = connect(services, user, password)
    other_manager = connect(services, other_user, other_password)
    assert connect(services, user, password, client_id="alerts-reader").connack == NOT_AUTHORIZED
    try:
        for topic in (f"alerts/{tenant}/#", f"stops/{tenant}/#", f"etas/{tenant}/+"):
            assert manager.subscribe(topic) == [1], topic
        for topic in (f"alerts/{other}/#", "alerts/#", "alerts/+/van-1", "fleet/#", f"$share/g/alerts/{tenant}/#"):
            assert manager.subscribe(topic) == [NOT_AUTHORIZED], topic
        assert manager.puback(manager.publish(f"alerts/{tenant}/van-1", b"{}")) == NOT_AUTHORIZED
        assert other_manager.subscribe(f"alerts/{other}/#") == [1]
        mine, _ = add_alert(db, tenant)
        theirs, _ = add_alert(db, other)
        my_stop, _ = add_stop(db, tenant)
        with delivering(services):  # the real deliverer, with the engine's alerts account
            assert manager.wait_for(lambda: len(manager.messages) >= 2, 20)
            assert other_manager.wait_for(lambda: len(other_manager.messages) >= 1, 20)
        got = {topic for topic, _ in manager.messages}
        assert got == {f"alerts/{tenant}/van-1", f"stops/{tenant}/van-1"}
        assert all(mine.encode() in body or my_stop.encode() in body for _, body in manager.messages)
        assert [theirs.encode() in body for _, body in other_manager.messages] == [True]
    finally:
        manager.close()
        other_manager.close()
        credentials.remove_account(services, tenant, "desk", "manager")
    assert connect(services, user, password).connack in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)


def test_a_dispatcher_cannot_store_a_plan_for_another_tenant(services: Settings, db: Any, tenant: str) -> None:
    other = f"{tenant}o"
    account = credentials.add_account(services, tenant, "planner", "dispatcher")
    with running_listener(services):
        publish_plan(services, plan(tenant, "van-1"), credentials=account)  # its own: stored
        with pytest.raises(PublishError) as refused:
            publish_plan(services, plan(other, "van-1"), credentials=account)  # another tenant's topic
        assert refused.value.reason_code == NOT_AUTHORIZED
        # its own topic, another tenant's plan: the listener refuses it (topic and plan must agree)
        forged = json.dumps(plan(other, "van-1")).encode()
        publish_plan(services, forged, tenant=tenant, credentials=account)
        rows = wait_until(
            lambda: db.execute(
                "SELECT reason, detail, shard FROM dead_letters WHERE topic = %s", (f"dispatch/{tenant}/plan",)
            ).fetchall(),
            what="the forged plan's dead letter",
        )
    assert [(r[0], r[2]) for r in rows] == [("bad_plan", DEAD_LETTER_SHARD)]
    assert f"does not match the topic's tenant {tenant!r}" in rows[0][1]
    assert db.execute("SELECT count(*) FROM plans WHERE tenant = %s", (other,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM plans WHERE tenant = %s", (tenant,)).fetchone()[0] == 1
