"""A QoS 1 MQTT publisher that never loses a message it accepted.

One :class:`DevicePublisher` is one paho-mqtt 2.x client (MQTT v5) for one
device or service account. Every accepted message stays in an ordered
``pending`` map, keyed by an application id, until the broker acknowledges it:

* PUBACK 0x00 (success): removed, counted in ``acked``;
* PUBACK 0x10 (no matching subscribers): the broker *dropped* the message (no
  session subscribes to the topic, e.g. while a restarted Mosquitto 2.0 waits for
  the gateway to subscribe again). Not a delivery: it stays pending, is counted in
  ``unrouted`` and is published again after ``unrouted_retry_s`` seconds; so is a
  PUBACK 0x97 (quota exceeded: the broker is full for now);
* PUBACK with a failure code (>= 0x80, e.g. 0x87 Not authorized): removed,
  recorded in ``refusals`` and counted in ``refused``; never retried;
* connection lost: on every reconnect paho's own copies are dropped and
  everything still pending is published again, in order (``resent``). The
  server deduplicates readings, so a resend is harmless.

An optional ``on_settled(key, ok)`` callback hears of each message leaving the
ledger (``ok`` true for a success PUBACK, false for a refusal). A PUBACK says only
that the broker took the message; what the database holds, a device learns from
the gateway's stored receipts (:meth:`subscribe` to its ``cmd/stored`` topic).

Sessions are persistent (``clean_start=False`` on every connect plus a session
expiry interval), payloads are size-checked before they reach paho (an
oversized QoS 1 message would be refused and resent forever), and ``publish``
blocks when ``max_pending`` messages are unacknowledged.

Depends only on paho-mqtt, the standard library and ``core.contract`` so it
can run on the Raspberry Pi edge agent.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.contract import Limits, encode_status

__all__ = ["NO_MATCHING_SUBSCRIBERS", "DevicePublisher", "Refusal"]

log = logging.getLogger("fleetstream.edge.publisher")

# CONNACK reasons that retrying cannot fix (bad credentials, banned, bad client id)
_PERMANENT_CONNACK = {0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
# a PUBACK may arrive before publish() has recorded its mid; older leftovers of a
# reconnect race are ignored so a recycled 16-bit mid never settles the wrong message
_EARLY_TTL_S = 5.0
NO_MATCHING_SUBSCRIBERS = 0x10  # a success code in MQTT v5, yet the broker dropped the message
_RETRY_LATER = {NO_MATCHING_SUBSCRIBERS, 0x97}  # 0x97 quota exceeded: a failure code, but a passing one


@dataclass(frozen=True)
class Refusal:
    """A message the broker refused with a PUBACK failure code (not retried)."""

    key: Hashable
    topic: str
    reason_code: int
    reason: str


@dataclass
class _Pending:
    topic: str
    payload: bytes
    transmissions: int = 0
    generation: int = -1  # connection generation it was last handed to paho on
    retry_at: float | None = None  # monotonic time of the resend after a PUBACK 0x10


class DevicePublisher:
    """QoS 1 publisher with its own resend-until-PUBACK ledger. Thread-safe.

    ``will`` is (tenant, vehicle): the broker then publishes an ``offline`` status
    for that vehicle if the connection drops without a clean disconnect.
    ``session_expiry_s`` is how long (seconds) the broker keeps the session;
    ``max_payload_bytes`` the largest payload accepted (bytes); ``max_pending`` how many
    unacknowledged messages ``publish`` allows before it blocks (up to
    ``publish_timeout_s`` seconds); ``max_inflight`` how many paho sends before waiting
    for PUBACKs.

    ``on_settled(key, ok)`` (optional) is called once per accepted message when the
    broker acknowledged it (``ok`` true) or refused it (``ok`` false), from paho's
    network thread (or the publishing thread): keep it short, do not block in it.
    ``tls_ca_file`` (optional): a PEM CA bundle; TLS is used when it is given, and the broker's
    certificate must be signed by it and name ``host``. ``tls_cert_file`` / ``tls_key_file``
    (optional, PEM): a client certificate to present when the broker asks for one.
    ``unrouted_retry_s``: seconds before a message answered with PUBACK 0x10 is sent again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        will: tuple[str, str] | None = None,
        session_expiry_s: int = 24 * 3600,
        keepalive_s: int = 30,
        max_payload_bytes: int = Limits().max_payload_bytes,
        max_pending: int = 10_000,
        max_inflight: int = 1000,
        publish_timeout_s: float = 60.0,
        on_settled: Callable[[Hashable, bool], None] | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        unrouted_retry_s: float = 1.0,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id or username or f"fleetstream-{uuid.uuid4().hex[:12]}"
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.max_payload_bytes = max_payload_bytes
        self.max_pending = max_pending
        self.publish_timeout_s = publish_timeout_s
        self.on_settled = on_settled
        self.unrouted_retry_s = unrouted_retry_s

        self._cond = threading.Condition()
        self._pending: collections.OrderedDict[Hashable, _Pending] = collections.OrderedDict()
        self._by_mid: dict[int, Hashable] = {}  # paho mid -> key, current connection only
        self._early: dict[int, tuple[float, ReasonCode]] = {}  # PUBACKs that beat the mid bookkeeping
        self._generation = 0
        self._connected = False
        self._connect_result: ReasonCode | None = None
        self._next_key = 0
        self._sent = self._acked = self._resent = self._refused = self._unrouted = 0
        self.refusals: collections.deque[Refusal] = collections.deque(maxlen=1000)
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._retry_thread: threading.Thread | None = None

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, password)
        if tls_ca_file is not None:
            # verifies the chain and the host name (paho's default: ssl.CERT_REQUIRED, check_hostname)
            client.tls_set(ca_certs=tls_ca_file, certfile=tls_cert_file, keyfile=tls_key_file)
        elif tls_cert_file is not None:
            raise ValueError("a client certificate needs TLS: give tls_ca_file too")
        client.max_inflight_messages_set(max_inflight)
        # paho only ever holds what is pending here (plus a rare race duplicate)
        client.max_queued_messages_set(2 * max_pending + 100)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if will is not None:
            topic, payload = encode_status(
                will[0], will[1], "offline", datetime.now(UTC), {"reason": "connection lost"}
            )
            client.will_set(topic, payload, qos=1, retain=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._started = False

    # ------------------------------------------------------------ counters

    @property
    def sent(self) -> int:
        """Messages accepted by :meth:`publish`."""
        with self._cond:
            return self._sent

    @property
    def acked(self) -> int:
        """Messages the broker acknowledged with success."""
        with self._cond:
            return self._acked

    @property
    def resent(self) -> int:
        """Transmissions repeated after a reconnect."""
        with self._cond:
            return self._resent

    @property
    def unrouted(self) -> int:
        """PUBACKs 0x10 (no matching subscribers) and 0x97 (quota exceeded): messages the broker
        dropped, sent again later."""
        with self._cond:
            return self._unrouted

    @property
    def refused(self) -> int:
        """Messages the broker refused (PUBACK >= 0x80); details in ``refusals``."""
        with self._cond:
            return self._refused

    @property
    def pending(self) -> int:
        """Accepted messages not yet acknowledged or refused."""
        with self._cond:
            return len(self._pending)

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def generation(self) -> int:
        """Connections made so far (one per accepted CONNACK): a PUBACK heard while it reads
        ``n`` came on connection ``n``. Read it in ``on_settled`` to know which connection
        a PUBACK came on."""
        with self._cond:
            return self._generation

    # ------------------------------------------------------------ verbs

    def subscribe(self, topic: str, on_message: Callable[[bytes], None]) -> None:
        """Subscribe to ``topic`` (QoS 1) on every connect from now on; ``on_message(payload)``
        runs on paho's network thread for each message: keep it short."""
        with self._cond:
            self._subscriptions[topic] = on_message
            connected = self._connected
        if connected:
            self._client.subscribe(topic, qos=1)

    def connect(self, timeout: float | None = 10.0) -> None:
        """Start the network thread and connect (retrying in the background for ever).

        Waits up to ``timeout`` seconds for the first CONNACK (None: do not wait) and
        raises ``ConnectionError`` when it does not come or the broker refuses for good
        (bad credentials); the publisher is then closed.
        """
        if self._started:
            return
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self._client.connect_async(
            self.host, self.port, keepalive=self.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._started = True
        self._retry_thread = threading.Thread(target=self._retry_loop, name="publisher-retry", daemon=True)
        self._retry_thread.start()
        if timeout is None:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._connected:
                result = self._connect_result
                if result is not None and result.value in _PERMANENT_CONNACK:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.25))
            ok, result = self._connected, self._connect_result
        if not ok:
            self.close()
            why = f"refused: {result.getName()} (0x{result.value:02x})" if result is not None else "no CONNACK"
            raise ConnectionError(f"MQTT {self.host}:{self.port} as {self.client_id!r}: {why} within {timeout} s")

    def publish(
        self, topic: str, payload: bytes | str, key: Hashable | None = None, timeout: float | None = None
    ) -> Hashable:
        """Accept one QoS 1 message; returns its key (``key`` or a generated int).

        Raises ``ValueError`` for a payload over ``max_payload_bytes`` or a key already
        pending, and ``TimeoutError`` when ``max_pending`` messages stayed unacknowledged
        for ``timeout`` seconds (default ``publish_timeout_s``).
        """
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if len(data) > self.max_payload_bytes:
            raise ValueError(f"payload of {len(data)} bytes exceeds the {self.max_payload_bytes}-byte limit")
        wait = self.publish_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            while len(self._pending) >= self.max_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._pending)} messages unacknowledged for {wait} s")
                self._cond.wait(left)
            if key is None:
                key = self._next_key
                self._next_key += 1
            elif key in self._pending:
                raise ValueError(f"key {key!r} is already pending")
            entry = self._pending[key] = _Pending(topic, data)
            self._sent += 1
            generation = self._generation if self._connected else None
        if generation is not None:
            self._transmit(key, entry, generation)
        return key

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending; False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            return True

    def close(self) -> None:
        """Disconnect cleanly (the will is not sent) and stop the network thread.

        Messages still pending are not delivered by this publisher any more: call
        :meth:`flush` first.
        """
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if self._retry_thread is not None:
            self._retry_thread.join(5.0)
            self._retry_thread = None

    def __enter__(self) -> DevicePublisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _transmit(self, key: Hashable, entry: _Pending, generation: int) -> None:
        """Hand one pending message to paho on connection ``generation``."""
        with self._cond:
            if generation != self._generation or key not in self._pending:
                return  # a reconnect took over: it (re)sends everything pending
            entry.generation = generation
            if entry.transmissions:
                self._resent += 1
            entry.transmissions += 1
        # never call paho while holding our lock: paho calls _on_publish holding its own
        info = self._client.publish(entry.topic, entry.payload, qos=1)
        settled = None
        with self._cond:
            if generation != self._generation:
                return
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                entry.generation = -1  # paho refused to queue it: the next connect resends it
                return
            early = self._early.pop(info.mid, None)
            if early is not None and time.monotonic() - early[0] < _EARLY_TTL_S:
                settled = self._settle(key, early[1])
            else:
                self._by_mid[info.mid] = key
        self._notify_settled(settled)

    def _settle(self, key: Hashable, reason: ReasonCode) -> tuple[Hashable, bool] | None:
        """Caller holds the lock; returns (key, ok) for :meth:`_notify_settled`, called after release."""
        if reason.value in _RETRY_LATER:
            entry = self._pending.get(key)
            if entry is not None:  # dropped by the broker: send it again a little later
                self._unrouted += 1
                entry.generation = -1
                entry.retry_at = time.monotonic() + self.unrouted_retry_s
                self._cond.notify_all()
            return None
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        if reason.is_failure:
            self._refused += 1
            self.refusals.append(Refusal(key, entry.topic, reason.value, reason.getName()))
        else:
            self._acked += 1
        self._cond.notify_all()
        return key, not reason.is_failure

    def _notify_settled(self, settled: tuple[Hashable, bool] | None) -> None:
        """Tell ``on_settled``; never lets its exception reach paho's network thread."""
        if settled is None or self.on_settled is None:
            return
        try:
            self.on_settled(*settled)
        except Exception:
            log.exception("on_settled callback failed for key %r", settled[0])

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._cond:
            key = self._by_mid.pop(mid, None)
            if key is None:
                if len(self._early) < 10_000:
                    self._early[mid] = (time.monotonic(), reason)
                return
            settled = self._settle(key, reason)
        self._notify_settled(settled)

    def _retry_loop(self) -> None:
        """Send again what the broker dropped with PUBACK 0x10, once its ``retry_at`` has come."""
        while True:
            with self._cond:
                if not self._started:
                    return
                now = time.monotonic()
                due = [
                    (key, entry)
                    for key, entry in self._pending.items()
                    if entry.retry_at is not None and entry.retry_at <= now
                ]
                for _, entry in due:
                    entry.retry_at = None
                generation = self._generation if self._connected else None
                if not due:
                    waits = [e.retry_at - now for e in self._pending.values() if e.retry_at is not None]
                    self._cond.wait(min([0.5, *waits]))
                    continue
            if generation is None:
                continue  # the next connect sends everything pending
            for key, entry in due:
                self._transmit(key, entry, generation)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            handler = self._subscriptions.get(message.topic)
        if handler is None:
            return
        try:
            handler(bytes(message.payload))
        except Exception:  # never let it reach paho's network thread
            log.exception("handler of %s failed", message.topic)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._cond:
            self._connect_result = reason
            if reason.is_failure:
                self._cond.notify_all()
                return
        # paho would resend its own copies too: drop them, our ledger is the truth
        client.drop_out_messages()
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._by_mid.clear()
            self._early.clear()
            self._connected = True
            backlog = list(self._pending.items())
            for _, entry in backlog:
                entry.retry_at = None
            topics = list(self._subscriptions)
            self._cond.notify_all()
        for topic in topics:  # the session keeps them, but a new or expired session does not
            client.subscribe(topic, qos=1)
        for key, entry in backlog:
            self._transmit(key, entry, generation)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
