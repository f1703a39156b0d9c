"""The dispatch listener: delivery plans from MQTT into the plan store.

A dispatch system publishes one plan JSON object (the form in
``core/plan.py``) to ``dispatch/<tenant>/plan`` at QoS 1 with the
``dispatch`` account (:func:`publish_plan`). The listener is one persistent MQTT v5
session (client id ``fleetstream-dispatch``, gateway account, ``clean_start=False``
on every connect, session expiry ``session_expiry_s``) subscribed to
``dispatch/+/plan``, so the broker queues plans while it is down. One message at a
time: check it (the plan limits ``plan_max_*`` included), store it
(:func:`store.plans.store_plan`, source ``mqtt``) or write a dead letter
(``oversized``, ``bad_json``, ``bad_plan``, ``db_refused``; shard -1), commit, and only
then PUBACK. While the database is away the message stays un-acked and is retried
with backoff; nothing is acknowledged that is not stored. Nothing a message holds
can crash the listener: a check that fails unexpectedly is a ``bad_plan``, and a plan
the database refuses is a ``db_refused`` dead letter.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.contract import Rejected
from core.metrics import DEAD_LETTERS
from core.plan import Plan, PlanError, PlanLimits
from core.settings import Settings
from ingest.batching import dead_letter_row
from ingest.writer import is_outage, store_dead_letters
from store.db import connect
from store.plans import store_plan

__all__ = [
    "CLIENT_ID",
    "DEAD_LETTER_SHARD",
    "PLAN_FILTER",
    "DispatchListener",
    "PublishError",
    "check_plan_message",
    "plan_topic",
    "publish_plan",
    "ready_file",
    "run_dispatch",
]

log = logging.getLogger("fleetstream.dispatch")

PLAN_FILTER = "dispatch/+/plan"  # a plain subscription: one listener, plans in publish order
CLIENT_ID = "fleetstream-dispatch"
DEAD_LETTER_SHARD = -1  # dead_letters.shard of the dispatch listener (gateway shards are >= 0)
_RECEIVE_MAXIMUM = 16  # un-acked plans the broker may send at once; bounds memory at 16 x max_payload_bytes
_NO_MATCHING_SUBSCRIBERS = 0x10
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # tenant ids, as for devices (core/contract.py)


class PublishError(RuntimeError):
    """The broker refused a login or a plan publish; ``reason_code`` is its MQTT v5 reason."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


def plan_topic(tenant: str) -> str:
    """The topic a tenant's plans are published on: ``dispatch/<tenant>/plan``."""
    if not _ID.match(tenant):
        raise ValueError(f"tenant id {tenant!r} is not [A-Za-z0-9_-]{{1,64}}")
    return f"dispatch/{tenant}/plan"


def ready_file(settings: Settings) -> Path:
    """Exists while the listener's subscription is in place (the engine may wait for it)."""
    return settings.state_dir / "run" / "dispatch.ready"


def check_plan_message(
    topic: str, payload: bytes, max_payload_bytes: int, limits: PlanLimits | None = None
) -> Plan | Rejected:
    """The plan in one MQTT message, or why it is a dead letter (``limits``: past one is a
    ``bad_plan``). Pure; never raises."""
    try:
        return _check_plan_message(topic, payload, max_payload_bytes, limits)
    except Exception as exc:  # a check that broke on odd input: the plan is refused, the listener goes on
        log.exception("dispatch: checking a plan on %s failed", topic)
        return Rejected("bad_plan", f"unreadable plan: {type(exc).__name__}: {str(exc)[:200]}")


def _check_plan_message(
    topic: str, payload: bytes, max_payload_bytes: int, limits: PlanLimits | None
) -> Plan | Rejected:
    if len(payload) > max_payload_bytes:
        return Rejected("oversized", f"{len(payload)} bytes is over max_payload_bytes {max_payload_bytes}")
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "dispatch" or parts[2] != "plan" or not _ID.match(parts[1]):
        return Rejected("bad_topic", f"{topic!r} is not dispatch/<tenant>/plan")
    try:
        obj = json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return Rejected("bad_json", str(exc))
    except RecursionError:
        return Rejected("bad_json", "nested too deeply")
    try:
        plan = Plan.from_dict(obj)
        if limits is not None:
            limits.check(plan)
    except PlanError as exc:
        return Rejected("bad_plan", str(exc))
    if plan.tenant != parts[1]:
        return Rejected("bad_plan", f"tenant: {plan.tenant!r} does not match the topic's tenant {parts[1]!r}")
    return plan


@dataclass(frozen=True, slots=True)
class _Message:
    generation: int  # which connection it arrived on
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_at: datetime


class DispatchListener:
    """The single consumer of ``dispatch/+/plan``: store or dead-letter, commit, then PUBACK."""

    def __init__(self, settings: Settings, account: tuple[str, str]) -> None:
        self.account = account
        self.settings = settings
        self.totals = {"messages": 0, "stored": 0, "unchanged": 0, "dead_letters": 0}
        self._inbox: queue.Queue[_Message] = queue.Queue()
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = threading.Event()
        self._conn: psycopg.Connection | None = None
        self.client = self._make_client()

    # ---------------------------------------------------------------- MQTT

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5, manual_ack=True)
        client.username_pw_set(*self.account)
        client.reconnect_delay_set(min_delay=0.1, max_delay=2.0)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(
        self, client: mqtt.Client, _userdata: object, flags: Any, reason: ReasonCode, _props: object
    ) -> None:
        if reason.is_failure:
            log.error("dispatch: broker refused connection: %s", reason)
            return
        session_present = bool(getattr(flags, "session_present", False))
        with self._lock:
            self._generation += 1
            if session_present:
                # the broker redelivers every un-acked message of this session; handling the
                # old copies too would store A, B, A, B as four revisions
                while not self._inbox.empty():
                    self._inbox.get_nowait()
        client.subscribe(PLAN_FILTER, qos=1)
        self._connected.set()
        log.info("dispatch: connected (session present: %s)", session_present)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: object, _mid: int, reasons: list[ReasonCode], _props: object
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("dispatch: subscription to %s refused: %s", PLAN_FILTER, reasons)
            return
        ready = ready_file(self.settings)
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.touch()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        self._connected.clear()
        with self._lock:
            self._generation += 1  # nothing received so far may be acked on the next connection
        (log.warning if reason.is_failure else log.info)("dispatch: disconnected: %s", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            item = _Message(self._generation, msg.mid, msg.qos, msg.topic, bytes(msg.payload), datetime.now(UTC))
            self._inbox.put(item)

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = _RECEIVE_MAXIMUM
        host, port = self.settings.mqtt_endpoint()
        self.client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()

    # ---------------------------------------------------------------- database

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings.dsn(), autocommit=True)
        return self._conn

    def _close_db(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _dead_letter(self, conn: psycopg.Connection, msg: _Message, rejected: Rejected) -> None:
        row = dead_letter_row(
            msg.topic,
            msg.payload,
            msg.received_at,
            rejected.reason,
            rejected.detail,
            None,
            self.settings.dead_letter_raw_cap,
        )
        with conn.transaction(), conn.cursor() as cur:
            for reason, count in store_dead_letters(cur, [row], DEAD_LETTER_SHARD).items():
                DEAD_LETTERS.labels(reason).inc(count)

    def _commit(self, msg: _Message, stop: threading.Event) -> bool:
        """Store or dead-letter ``msg``; False when ``stop`` came first (left un-acked)."""
        outcome = check_plan_message(
            msg.topic, msg.payload, self.settings.max_payload_bytes, self.settings.plan_limits()
        )
        delay = 0.5
        while True:
            try:
                conn = self._db()
                if isinstance(outcome, Plan):
                    try:
                        version, stored = store_plan(conn, outcome, "mqtt")
                    except Exception as exc:
                        if is_outage(exc):
                            raise
                        # valid by the checks, yet refused: the database's word is final
                        log.error("dispatch: the database refused a plan on %s: %s", msg.topic, exc)
                        outcome = Rejected("db_refused", f"{type(exc).__name__}: {str(exc).strip()}")
                        continue
                    self.totals["stored" if stored else "unchanged"] += 1
                    log.info(
                        "dispatch: plan %s/%s %s version %d",
                        outcome.tenant,
                        outcome.vehicle,
                        "stored as" if stored else "unchanged at",
                        version,
                    )
                else:
                    self._dead_letter(conn, msg, outcome)
                    self.totals["dead_letters"] += 1
                    log.warning("dispatch: dead letter %s on %s: %s", outcome.reason, msg.topic, outcome.detail)
                return True
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # database away: keep the message, retry, never ack
                log.warning("dispatch: database unavailable (%s); retrying in %.1f s", str(exc).strip()[:120], delay)
                self._close_db()
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)

    def _handle(self, msg: _Message, stop: threading.Event) -> None:
        if not self._commit(msg, stop):
            return
        self.totals["messages"] += 1
        with self._lock:
            current = self._generation
        if msg.generation == current and msg.qos > 0:  # PUBACK only on the connection it arrived on
            self.client.ack(msg.mid, msg.qos)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; un-acked messages stay with the broker for next time."""
        ready = ready_file(self.settings)
        ready.unlink(missing_ok=True)
        self._connect()
        try:
            while not stop.is_set():
                # while disconnected, wait: on a resumed session the broker resends what is queued here
                if not self._connected.wait(0.2):
                    continue
                try:
                    msg = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._handle(msg, stop)
        finally:
            ready.unlink(missing_ok=True)
            self.client.disconnect()
            self.client.loop_stop()
            self._close_db()
            log.info("dispatch: stopped: %s", self.totals)


def run_dispatch(settings: Settings, account: tuple[str, str], stop: threading.Event | None = None) -> None:
    """Run the dispatch listener, logged in as ``account`` (username, password), until ``stop`` is set; without one (a process of its own),
    until SIGTERM/SIGINT (call it from the main thread then)."""
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    DispatchListener(settings, account).run(stop)


# ---------------------------------------------------------------- publishing


def _tenant_of(payload: bytes) -> str:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        obj = None
    tenant = obj.get("tenant") if isinstance(obj, dict) else None
    if not isinstance(tenant, str):
        raise ValueError("cannot tell the tenant of this payload; pass tenant=")
    return tenant


def publish_plan(
    settings: Settings,
    plan: Plan | Mapping[str, Any] | bytes,
    *,
    tenant: str | None = None,
    credentials: tuple[str, str],
    timeout_s: float = 10.0,
) -> None:
    """Publish one plan to ``dispatch/<tenant>/plan`` at QoS 1 and wait for the broker's PUBACK.

    A ``Plan`` or dict is validated first (PlanError) and size-checked against
    ``max_payload_bytes`` (ValueError); bytes are sent as they are (the listener judges
    them), on the topic of ``tenant`` or else of the payload's ``tenant`` field.
    ``credentials``: the (username, password) to publish with (the ``dispatch`` role's account).

    Raises PublishError when the broker refuses the login or the publish (e.g. 0x87 Not
    authorized), or answers 0x10 No matching subscribers: then no listener session
    exists and the plan would be dropped. TimeoutError after ``timeout_s`` seconds
    without an answer; OSError when the broker cannot be reached. Retrying is safe: the
    store keeps a re-sent identical plan at its version.
    """
    if isinstance(plan, (bytes, bytearray)):
        payload = bytes(plan)
        tenant = tenant if tenant is not None else _tenant_of(payload)
    else:
        parsed = plan if isinstance(plan, Plan) else Plan.from_dict(dict(plan))
        payload = json.dumps(parsed.to_dict(), separators=(",", ":"), allow_nan=False).encode()
        if len(payload) > settings.max_payload_bytes:
            raise ValueError(f"plan is {len(payload)} bytes, over max_payload_bytes {settings.max_payload_bytes}")
        tenant = tenant if tenant is not None else parsed.tenant
    topic = plan_topic(tenant)
    username, password = credentials

    cond = threading.Condition()
    connack: list[ReasonCode] = []
    pubacks: dict[int, ReasonCode] = {}

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        with cond:
            connack.append(reason)
            cond.notify_all()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        with cond:
            pubacks[mid] = reason  # may come before publish() has returned the mid
            cond.notify_all()

    # one-shot sender: a clean session, nothing for the broker to keep
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"fleetstream-plan-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.on_publish = on_publish
    deadline = time.monotonic() + timeout_s
    host, port = settings.mqtt_endpoint()
    client.connect(host, port, keepalive=30, clean_start=True)
    client.loop_start()
    try:
        with cond:
            if not cond.wait_for(lambda: connack, max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no CONNACK from {host}:{port} within {timeout_s} s")
        if connack[0].is_failure:
            raise PublishError(f"broker refused the login of {username!r}: {connack[0]}", int(connack[0].value))
        info = client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish to {topic} failed locally: {mqtt.error_string(info.rc)}")
        with cond:
            if not cond.wait_for(lambda: info.mid in pubacks, max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no PUBACK for the plan on {topic} within {timeout_s} s")
        reason = pubacks[info.mid]
        code = int(reason.value)
        if reason.is_failure:
            raise PublishError(f"broker refused the plan on {topic}: {reason} (0x{code:02X})", code)
        if code == _NO_MATCHING_SUBSCRIBERS:
            raise PublishError(
                f"no subscriber on {topic}: the dispatch listener has never run here, so the broker dropped the plan",
                code,
            )
    finally:
        client.disconnect()
        client.loop_stop()
