"""Delivery of alerts and stop events against the real Mosquitto and TimescaleDB.

Rows are written with plain SQL, as the dataflow would (every change takes
``nextval('event_rev')``); ``run_delivery`` runs in a thread; a paho subscriber with the
``monitor`` account and local HTTP servers on 127.0.0.1 are the fleet managers.

The test database is shared by the whole session, so channels whose old alerts would only
slow a test down (a failing endpoint retries every one) get their cursor set to the
current head first, as if everything before had been delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import h3
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from psycopg.types.json import Jsonb

from core.settings import Settings
from delivery.deliverer import event_payload, run_delivery
from fleetstream import credentials
from fleetstream import services as fs_services
from fleetstream.credentials import mqtt_account
from store.db import connect, migrate
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

SECRET = "test-secret"
CELL = h3.str_to_int(h3.latlng_to_cell(60.1699, 24.9384, 9))


@pytest.fixture(scope="module", autouse=True)
def schema(services_settings: Settings) -> None:
    migrate(services_settings.dsn())


@pytest.fixture()
def tenant() -> str:
    return f"dl{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------ rows, as the dataflow writes them


def add_alert(db: Any, tenant: str, vehicle: str = "van-1", kind: str = "long_dwell") -> tuple[str, int]:
    start = datetime.now(UTC).replace(microsecond=250_000) - timedelta(minutes=40)
    alert_id = uuid.uuid4()
    rev = db.execute(
        "INSERT INTO alerts (start_second, id, tenant, vehicle_id, type, severity, status, stop_id, h3_cell,"
        " start_time, details, detected_at) VALUES (date_trunc('second', %(start)s::timestamptz), %(id)s, %(tenant)s,"
        " %(vehicle)s, %(type)s, 'warning', 'open', 's1', %(cell)s, %(start)s, %(details)s, %(detected)s)"
        " RETURNING rev",
        {
            "start": start,
            "id": alert_id,
            "tenant": tenant,
            "vehicle": vehicle,
            "type": kind,
            "cell": CELL,
            "details": Jsonb({"dwell_s": 1900.0}),
            "detected": start + timedelta(minutes=31),
        },
    ).fetchone()[0]
    return str(alert_id), rev


def resolve_alert(db: Any, alert_id: str) -> int:
    return db.execute(
        "UPDATE alerts SET status = 'resolved', end_time = start_time + INTERVAL '35 minutes',"
        " updated_at = clock_timestamp(), rev = nextval('event_rev') WHERE id = %s RETURNING rev",
        (alert_id,),
    ).fetchone()[0]


def add_stop(
    db: Any, tenant: str, vehicle: str = "van-1", kind: str = "arrival", stop_id: str = "s1"
) -> tuple[str, int]:
    at = datetime.now(UTC).replace(microsecond=500_000) - timedelta(minutes=5)
    stop_event_id = uuid.uuid4()
    rev = db.execute(
        "INSERT INTO stop_events (id, kind, tenant, vehicle_id, stop_id, plan_version, visit, at, h3_cell,"
        " window_start, window_end, on_time, service_s, detected_at) VALUES (%s, %s, %s, %s, %s, 1, 1, %s, %s,"
        " %s, %s, %s, %s, %s) RETURNING rev",
        (
            stop_event_id,
            kind,
            tenant,
            vehicle,
            stop_id,
            at,
            CELL,
            at - timedelta(minutes=30),
            at + timedelta(minutes=30),
            True if kind == "arrival" else None,
            312.5 if kind == "departure" else None,
            at,
        ),
    ).fetchone()[0]
    return str(stop_event_id), rev


def retract_stop(db: Any, stop_event_id: str) -> int:
    return db.execute(
        "UPDATE stop_events SET retracted = true, updated_at = clock_timestamp(),"
        " rev = nextval('event_rev') WHERE id = %s RETURNING rev",
        (stop_event_id,),
    ).fetchone()[0]


def stored_payload(db: Any, table: str, event_id: str) -> dict[str, Any]:
    cur = db.cursor(
        row_factory=lambda c: lambda values: dict(zip([d.name for d in c.description], values, strict=True))
    )
    return event_payload(
        cur.execute(f"SELECT '{table}' AS \"table\", * FROM {table} WHERE id = %s", (event_id,)).fetchone()
    )


def start_at_head(db: Any, *channels: str) -> None:
    """Cursors of ``channels`` at the newest stored rev: as if everything before were delivered."""
    for channel in channels:
        db.execute(
            "INSERT INTO delivery_cursors (channel, last_rev) SELECT %(c)s, coalesce(max(rev), 0) FROM"
            " (SELECT max(rev) AS rev FROM alerts UNION ALL SELECT max(rev) FROM stop_events"
            " UNION ALL SELECT max(rev) FROM eta_updates) r"
            " ON CONFLICT (channel) DO UPDATE SET last_rev = excluded.last_rev",
            {"c": channel},
        )


def cursor(db: Any, channel: str) -> tuple[int, int]:
    return db.execute("SELECT last_rev, delivered FROM delivery_cursors WHERE channel = %s", (channel,)).fetchone()


# ------------------------------------------------------------------ the fleet manager's side


@dataclass
class Subscriber:
    """A paho v5 client with the monitor account on ``alerts/<tenant>/#`` and ``stops/<tenant>/#``.

    A persistent session (fixed client id, session expiry), so a broker restart loses nothing queued for it.
    """

    settings: Settings
    tenant: str
    messages: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)  # topic, payload, qos
    cond: threading.Condition = field(default_factory=threading.Condition)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self.tenant}-monitor", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(*mqtt_account(self.settings, "monitor"))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe([(f"alerts/{self.tenant}/#", 1), (f"stops/{self.tenant}/#", 1)])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, json.loads(msg.payload), msg.qos))
            self.cond.notify_all()

    def start(self) -> Subscriber:
        expiry = Properties(mqtt.PacketTypes.CONNECT)
        expiry.SessionExpiryInterval = 300
        self.client.connect(*self.settings.mqtt_endpoint(), keepalive=10, clean_start=False, properties=expiry)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK"
        return self

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[tuple[str, dict[str, Any], int]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= count, timeout_s), (
                f"{len(self.messages)} of {count} messages after {timeout_s} s: {self.messages}"
            )
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Hit:
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 (a free port) answering every POST with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.hits.append(Hit(time.monotonic(), dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/fleet"

    def of(self, tenant: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.payload.get("tenant") == tenant]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receivers() -> Iterator[Callable[[int], Receiver]]:
    made: list[Receiver] = []

    def make(status: int = 200) -> Receiver:
        made.append(Receiver(status))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture()
def subscriber(services_settings: Settings, tenant: str) -> Iterator[Subscriber]:
    sub = Subscriber(services_settings, tenant).start()
    yield sub
    sub.close()


def assert_signed(hit: Hit) -> None:
    """Verify as a receiver would: HMAC-SHA256 over timestamp "." raw body, constant-time compare."""
    ts = hit.headers["X-Fleetstream-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + hit.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, hit.headers["X-Fleetstream-Signature"])
    assert abs(int(ts) - time.time()) < 60
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Fleetstream-Event-Id"] == hit.payload["id"]


@contextlib.contextmanager
def delivering(settings: Settings) -> Iterator[threading.Thread]:
    """``run_delivery`` in a thread; stopped (and checked to stop) on exit."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_delivery(settings, mqtt_account(settings, "alerts"), stop)
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=target, name="run_delivery", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "run_delivery did not stop"
        assert not errors, errors


def delivery_settings(settings: Settings, *urls: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_urls": ",".join(urls),
        "webhook_secret": SECRET,
        "webhook_backoff_s": 0.05,
        "webhook_max_attempts": 3,
        "delivery_poll_ms": 50,
    }
    return replace(settings, **{**values, **changes})


# ------------------------------------------------------------------ tests


def test_mqtt_gets_every_change_in_rev_order(
    services_settings: Settings, db: Any, tenant: str, subscriber: Subscriber
) -> None:
    start_at_head(db, "mqtt")
    a1, r1 = add_alert(db, tenant, "van-1")
    s1, r2 = add_stop(db, tenant, "van-1", "arrival")
    a2, r3 = add_alert(db, tenant, "van-2", "route_drift")
    with delivering(delivery_settings(services_settings)):
        subscriber.wait_for(3)
        r4 = resolve_alert(db, a1)  # new versions of rows already delivered, and a new row
        r5 = retract_stop(db, s1)
        s2, r6 = add_stop(db, tenant, "van-2", "departure", "s9")
        got = subscriber.wait_for(6)
    assert [(topic, m["kind"], m["id"], m["rev"]) for topic, m, _ in got] == [
        (f"alerts/{tenant}/van-1", "alert", a1, r1),
        (f"stops/{tenant}/van-1", "stop_event", s1, r2),
        (f"alerts/{tenant}/van-2", "alert", a2, r3),
        (f"alerts/{tenant}/van-1", "alert", a1, r4),
        (f"stops/{tenant}/van-1", "stop_event", s1, r5),
        (f"stops/{tenant}/van-2", "stop_event", s2, r6),
    ]
    assert all(qos == 1 for _, _, qos in got)
    first, resolved = got[0][1], got[3][1]
    assert (first["status"], first["end_time"], resolved["status"]) == ("open", None, "resolved")
    assert first["h3_cell"] == h3.int_to_str(CELL) and first["start_time"].endswith("Z")
    assert (got[1][1]["type"], got[1][1]["retracted"], got[4][1]["retracted"]) == ("arrival", False, True)
    # the latest version of each row arrives exactly as stored
    assert resolved == stored_payload(db, "alerts", a1)
    assert got[2][1] == stored_payload(db, "alerts", a2)
    assert got[4][1] == stored_payload(db, "stop_events", s1)
    assert got[5][1] == stored_payload(db, "stop_events", s2)
    assert cursor(db, "mqtt")[0] >= r6


def test_mqtt_backlog_arrives_complete_and_in_order(
    services_settings: Settings, db: Any, tenant: str, subscriber: Subscriber
) -> None:
    start_at_head(db, "mqtt")
    revs = []
    with db.transaction():  # interleaved, more than two pages (500 rows per table and read)
        for i in range(1200):
            revs.append(
                add_stop(db, tenant, f"van-{i % 7}")[1] if i % 3 == 0 else add_alert(db, tenant, f"van-{i % 7}")[1]
            )
    started = time.monotonic()
    with delivering(delivery_settings(services_settings)):
        got = subscriber.wait_for(len(revs), 60)
        took = time.monotonic() - started
    assert [m["rev"] for _, m, _ in got] == revs
    assert all(topic.split("/")[2] == m["vehicle"] for topic, m, _ in got)
    print(f"{len(revs)} changes over MQTT in {took:.2f} s")


def test_webhook_gets_every_alert_signed(
    services_settings: Settings, db: Any, tenant: str, receivers: Callable[[int], Receiver]
) -> None:
    hook = receivers(200)
    a1, r1 = add_alert(db, tenant, "van-1")
    add_stop(db, tenant, "van-1", "arrival")  # stop events are not sent to webhooks
    a2, r2 = add_alert(db, tenant, "van-2", "temp_excursion")
    # a new channel starts at rev 0: it gets everything stored, these two included
    with delivering(delivery_settings(services_settings, hook.url, alert_mqtt=0)):
        wait_until(lambda: len(hook.of(tenant)) >= 2, 60, "the stored alerts")
        r3 = resolve_alert(db, a1)
        wait_until(lambda: len(hook.of(tenant)) >= 3, 15, "the resolved alert")
        time.sleep(0.3)  # a few more polls: nothing else may come
    hits = hook.of(tenant)
    assert [(h.payload["kind"], h.payload["id"], h.payload["rev"]) for h in hits] == [
        ("alert", a1, r1),
        ("alert", a2, r2),
        ("alert", a1, r3),
    ]
    for hit in hits:
        assert_signed(hit)
    assert hits[2].payload == stored_payload(db, "alerts", a1)
    assert all(h.payload["kind"] == "alert" for h in hook.hits)
    last_rev, delivered = cursor(db, f"webhook:{hook.url}")
    assert last_rev >= r3 and delivered >= 3


def test_failing_webhook_delays_nothing_else(
    services_settings: Settings, db: Any, tenant: str, subscriber: Subscriber, receivers: Callable[[int], Receiver]
) -> None:
    good, bad = receivers(200), receivers(500)
    settings = delivery_settings(services_settings, bad.url, good.url, webhook_backoff_s=1.0)  # bad: 1 s, 2 s
    start_at_head(db, "mqtt", f"webhook:{good.url}", f"webhook:{bad.url}")
    alerts = [add_alert(db, tenant, f"van-{i}") for i in range(3)]
    stop_event = add_stop(db, tenant, "van-0")
    ids = {a for a, _ in alerts}
    with delivering(settings):
        wait_until(lambda: len(good.of(tenant)) == 3, 15, "the good endpoint")
        subscriber.wait_for(4)
        # everything is out while the bad endpoint is still on its first alert
        attempts_so_far = len(bad.of(tenant))
        assert 1 <= attempts_so_far < settings.webhook_max_attempts, attempts_so_far
        wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM delivery_failures WHERE channel = %s", (f"webhook:{bad.url}",)
                ).fetchone()[0]
                == 3
            ),
            30,
            "three delivery failures",
        )
        time.sleep(0.5)  # no further attempts after giving up
    tried = bad.of(tenant)
    assert len(tried) == 3 * settings.webhook_max_attempts
    for alert_id, _ in alerts:
        times = [h.at for h in tried if h.payload["id"] == alert_id]
        assert len(times) == settings.webhook_max_attempts
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps  # the backoff schedule: 1 s, then 2 s
    for hit in tried:
        assert_signed(hit)
    failures = db.execute(
        "SELECT event_id::text, rev, attempts, error FROM delivery_failures WHERE channel = %s ORDER BY rev",
        (f"webhook:{bad.url}",),
    ).fetchall()
    assert failures == [(a, r, 3, "HTTP 500") for a, r in alerts]
    assert {h.payload["id"] for h in good.of(tenant)} == ids
    assert [m["id"] for _, m, _ in subscriber.messages] == [a for a, _ in alerts] + [stop_event[0]]
    # the bad channel moved on: its cursor is past the failed alerts
    assert cursor(db, f"webhook:{bad.url}")[0] >= alerts[-1][1]


class TricklingReceiver:
    """An HTTP endpoint that reads the request, then answers one byte every ``every_s`` seconds
    (a bounded loop: at most ``max_bytes``), recording when each connection began and ended."""

    def __init__(self, every_s: float = 0.3, max_bytes: int = 200) -> None:
        self.every_s, self.max_bytes = every_s, max_bytes
        self.spans: list[tuple[float, float, int]] = []  # (accepted, closed, bytes sent)
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        accepted, sent = time.monotonic(), 0
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(65536)  # the request (small enough for one read)
                for byte in answer[: self.max_bytes]:
                    conn.sendall(bytes([byte]))
                    sent += 1
                    if self.stop.wait(self.every_s):
                        break
        with self.lock:
            self.spans.append((accepted, time.monotonic(), sent))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_trickling_webhook_is_cut_off_at_the_timeout(services_settings: Settings, db: Any, tenant: str) -> None:
    slow = TricklingReceiver(every_s=0.3)
    settings = delivery_settings(
        services_settings, slow.url, alert_mqtt=0, webhook_timeout_s=1.0, webhook_max_attempts=2
    )
    start_at_head(db, f"webhook:{slow.url}")
    alert_id, rev = add_alert(db, tenant)
    try:
        t0 = time.monotonic()
        with delivering(settings):
            failure = wait_until(
                lambda: db.execute(
                    "SELECT attempts, error FROM delivery_failures WHERE channel = %s AND event_id = %s",
                    (f"webhook:{slow.url}", alert_id),
                ).fetchone(),
                20,
                "the trickling endpoint given up",
            )
        took = time.monotonic() - t0
    finally:
        slow.close()
    assert failure[0] == 2 and failure[1].startswith("TimeoutError"), failure
    with slow.lock:
        spans = list(slow.spans)
    assert len(spans) == 2
    for accepted, closed, sent in spans:
        # each attempt was cut about webhook_timeout_s after it began, though bytes kept coming
        assert 0.9 <= closed - accepted < 1.9, closed - accepted
        assert sent >= 3
    assert took < 8, took  # two attempts of 1 s and the backoff, not minutes
    assert cursor(db, f"webhook:{slow.url}")[0] >= rev


def test_restart_resumes_from_the_cursor(
    services_settings: Settings, db: Any, tenant: str, subscriber: Subscriber, receivers: Callable[[int], Receiver]
) -> None:
    hook = receivers(200)
    settings = delivery_settings(services_settings, hook.url)
    start_at_head(db, "mqtt", f"webhook:{hook.url}")
    a1, _ = add_alert(db, tenant)
    s1, _ = add_stop(db, tenant)
    with delivering(settings):
        subscriber.wait_for(2)
        wait_until(lambda: len(hook.of(tenant)) == 1, 15, "the first alert")
    mqtt_before, hook_before = cursor(db, "mqtt"), cursor(db, f"webhook:{hook.url}")
    a2, r2 = add_alert(db, tenant)  # written while the deliverer is down
    with delivering(settings):
        s2, r3 = add_stop(db, tenant, kind="departure")
        subscriber.wait_for(4)
        wait_until(lambda: len(hook.of(tenant)) == 2, 15, "the second alert")
        time.sleep(0.5)  # ten polls: anything re-sent would show up
    assert [m["id"] for _, m, _ in subscriber.messages] == [a1, s1, a2, s2]
    assert [h.payload["id"] for h in hook.of(tenant)] == [a1, a2]
    mqtt_after, hook_after = cursor(db, "mqtt"), cursor(db, f"webhook:{hook.url}")
    assert mqtt_after[0] >= r3 > mqtt_before[0] and mqtt_after[1] == mqtt_before[1] + 2
    assert hook_after[0] >= r2 > hook_before[0] and hook_after[1] == hook_before[1] + 1


def test_refused_publish_is_retried_not_skipped(
    services_settings: Settings, db: Any, tenant: str, subscriber: Subscriber
) -> None:
    # an account whose ACL has no alerts/# (dispatch: write dispatch/# only): PUBACK 0x87
    user, password = credentials.service_account(services_settings, "dispatch")
    host, port = services_settings.mqtt_endpoint()
    wrong = delivery_settings(services_settings, mqtt_url=f"mqtt://{user}:{password}@{host}:{port}")
    start_at_head(db, "mqtt")
    head = cursor(db, "mqtt")
    alert_id, rev = add_alert(db, tenant)
    with delivering(wrong):
        time.sleep(1.5)  # publishes refused, retried with backoff
    assert subscriber.messages == [] and cursor(db, "mqtt") == head
    with delivering(delivery_settings(services_settings)):
        got = subscriber.wait_for(1)
    assert [(m["id"], m["rev"]) for _, m, _ in got] == [(alert_id, rev)]


def test_broker_and_database_outages_are_waited_out(
    services_settings: Settings, db: Any, tenant: str, subscriber: Subscriber, receivers: Callable[[int], Receiver]
) -> None:
    hook = receivers(200)
    settings = delivery_settings(services_settings, hook.url)
    start_at_head(db, "mqtt", f"webhook:{hook.url}")

    def published() -> list[tuple[str, int]]:  # deduped on (id, rev), as a receiver does
        with subscriber.cond:
            return list(dict.fromkeys((m["id"], m["rev"]) for _, m, _ in subscriber.messages))

    def posted() -> list[tuple[str, int]]:
        return list(dict.fromkeys((h.payload["id"], h.payload["rev"]) for h in hook.of(tenant)))

    with delivering(settings) as thread:
        a1 = add_alert(db, tenant)
        wait_until(lambda: published() == [a1], 15, "the first alert on MQTT")
        # broker down: MQTT waits (nothing skipped) while the webhook keeps delivering
        fs_services.stop_broker(services_settings)
        try:
            a2, s2 = add_alert(db, tenant), add_stop(db, tenant)
            wait_until(lambda: posted() == [a1, a2], 15, "the webhook during the broker outage")
            time.sleep(1.0)
        finally:
            fs_services.start_broker(services_settings)
        wait_until(lambda: published() == [a1, a2, s2], 60, "MQTT after the broker outage")
        # database crash: both channels wait, reconnect and go on
        fs_services.restart_postgres(services_settings, hard=True)
        with connect(services_settings.dsn(), autocommit=True, attempts=30) as db2:
            a3 = add_alert(db2, tenant)
        wait_until(lambda: published() == [a1, a2, s2, a3], 60, "MQTT after the database crash")
        wait_until(lambda: posted() == [a1, a2, a3], 60, "the webhook after the database crash")
        assert thread.is_alive()
