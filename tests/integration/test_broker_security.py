"""Broker security against the real Mosquitto: authentication and per-device ACLs.

MQTT v5 throughout (paho 2.2, CallbackAPIVersion.VERSION2): under v5 a publish the
ACL refuses is answered with PUBACK reason 0x87 (Not authorized); under 3.1.1 the
broker would drop it silently.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest

from core.settings import Settings
from fleetstream import credentials

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86
NO_MATCHING_SUBSCRIBERS = 0x10  # still a success: v5 reason codes below 0x80 are successes
ACCEPTED = (0x00, NO_MATCHING_SUBSCRIBERS)


@dataclass
class Conn:
    """A connected (or refused) paho client plus what it saw."""

    client: mqtt.Client
    connack: int | None = None
    connected: threading.Event = field(default_factory=threading.Event)
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

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self.subscribed.wait(5), f"no SUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(settings: Settings, username: str | None, password: str | None, *, client_id: str | None = None) -> Conn:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"sec-{uuid.uuid4().hex[:10]}",
        protocol=mqtt.MQTTv5,
    )
    if username is not None:
        client.username_pw_set(username, password)
    conn = Conn(client)

    def on_connect(_c, _u, _flags, reason_code, _props):  # type: ignore[no-untyped-def]
        conn.connack = int(reason_code.value)
        conn.connected.set()

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
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    client.reconnect_delay_set(60, 60)  # a refused login must not turn into a retry storm
    host, port = settings.mqtt_endpoint()
    client.connect(host, port, keepalive=30, clean_start=True)
    client.loop_start()
    assert conn.connected.wait(5), "no CONNACK"
    if conn.connack != 0:
        client.loop_stop()
        client.disconnect()
    return conn


@pytest.fixture()
def tenant() -> str:
    return f"sec{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def devices(services: Settings, tenant: str) -> dict[str, str]:
    return credentials.add_devices(services, tenant, ["van-a", "van-b"])


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
    monitor.subscribe("fleet/#")
    assert monitor.granted == [1]
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
        # a topic outside fleet/ is refused too
        other_mid = dev_a.publish("elsewhere/x", b"nope")
        assert dev_a.puback(other_mid) == NOT_AUTHORIZED
    finally:
        dev_a.close()
        monitor.close()


def test_device_reads_only_its_own_commands(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    dev_a = connect(services, f"{tenant}.van-a", devices["van-a"])
    dev_b = connect(services, f"{tenant}.van-b", devices["van-b"])
    gateway = connect(services, *credentials.service_account(services, "gateway"))
    try:
        dev_a.subscribe(f"fleet/{tenant}/#")  # too wide: deliveries are filtered by the read ACL
        gateway.publish(f"fleet/{tenant}/van-a/cmd/ping", b"for a")
        gateway.publish(f"fleet/{tenant}/van-b/cmd/ping", b"for b")
        b_mid = dev_b.publish(f"fleet/{tenant}/van-b/gps", b"b reading")
        assert dev_b.puback(b_mid) in ACCEPTED
        assert dev_a.wait_for(lambda: (f"fleet/{tenant}/van-a/cmd/ping", b"for a") in dev_a.messages)
        time.sleep(0.3)
        assert dev_a.messages == [(f"fleet/{tenant}/van-a/cmd/ping", b"for a")]
    finally:
        for c in (dev_a, dev_b, gateway):
            c.close()


def test_gateway_shared_subscription_receives_devices(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    gateway = connect(services, *credentials.service_account(services, "gateway"))
    dev_b = connect(services, f"{tenant}.van-b", devices["van-b"])
    try:
        gateway.subscribe("$share/sec-test/fleet/+/+/+")
        assert gateway.granted == [1]
        mid = dev_b.publish(f"fleet/{tenant}/van-b/temp", b"4.5")
        assert dev_b.puback(mid) in ACCEPTED
        assert gateway.wait_for(lambda: (f"fleet/{tenant}/van-b/temp", b"4.5") in gateway.messages)
    finally:
        gateway.close()
        dev_b.close()


def test_monitor_is_read_only(services: Settings, tenant: str) -> None:
    monitor = connect(services, *credentials.service_account(services, "monitor"))
    try:
        mid = monitor.publish(f"fleet/{tenant}/van-a/gps", b"x")
        assert monitor.puback(mid) == NOT_AUTHORIZED
    finally:
        monitor.close()


def test_provisioning_is_idempotent(services: Settings, tenant: str, devices: dict[str, str]) -> None:
    assert credentials.add_device(services, tenant, "van-a") == devices["van-a"]
    again = credentials.add_devices(services, tenant, ["van-a", "van-b", "van-c"])
    assert again["van-a"] == devices["van-a"] and again["van-b"] == devices["van-b"]
    assert credentials.service_account(services, "gateway") == credentials.service_account(services, "gateway")
    conn = connect(services, f"{tenant}.van-c", again["van-c"])  # new device usable at once
    assert conn.connack == 0
    conn.close()
