"""The MQTT gateway: one shard of a shared subscription, committing before acking.

Each shard is a persistent MQTT v5 session (``clean_start=False`` on every
connect, a session expiry), so the broker queues the shard's share of the
traffic while it is down. Messages are buffered, decoded and validated in
batches, committed by ``ShardWriter``, and only then acknowledged (PUBACK), in
the order they arrived. A message whose connection has since dropped is not
acknowledged: the broker redelivers it and the store deduplicates it.

Nothing one message holds can stall a shard. The contract turns what the database
could not hold into dead letters; if the database still refuses a batch (anything
but an outage, see ``writer.is_outage``), the batch is split in halves, again and
again, until the messages it refuses are alone: each is dead-lettered
(``db_refused``, with the database's error) and the rest is stored. Only a database
that is away keeps a batch unacknowledged (retried with backoff).

Stored receipts: after each commit, every device whose messages asked for one
(``receipt``) gets the seqs now held by the database, and those refused, on
``fleet/<tenant>/<vehicle>/cmd/stored`` (QoS 0: a lost receipt only makes the
device send again, and a repeat is a duplicate).

The shards also read ``owntracks/#`` (OwnTracks phones, ``ingest/owntracks.py``): those
messages are translated for the vehicles their users are provisioned for and committed in the
same batches, under the same rule.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.contract import Limits, encode_receipt, receipt_topic, subscription_filter
from core.metrics import COMMIT_LATENCY, CONFLICTS, DEAD_LETTERS, DUPLICATES, MESSAGES, READINGS_STORED
from core.settings import Settings
from ingest.batching import Coverage, Prepared, Received, dead_letter_row
from ingest.frontend import TrackerDirectory
from ingest.owntracks import TOPIC_FILTER as OWNTRACKS_FILTER
from ingest.owntracks import OwnTracksFrontEnd
from ingest.writer import ShardWriter, WriteResult, is_outage

__all__ = ["GatewayShard", "SHARE_GROUP", "ready_file", "run_gateway"]

T = TypeVar("T")

log = logging.getLogger("fleetstream.gateway")
SHARE_GROUP = "fleetstream"


def ready_file(settings: Settings, shard: int) -> Path:
    """Exists once the shard's subscription is in place (removed when the engine respawns it)."""
    return settings.state_dir / "run" / f"gateway-{shard}.ready"


@dataclass(frozen=True, slots=True)
class _Pending:
    generation: int  # which connection it arrived on
    mid: int
    qos: int
    message: Received


class GatewayShard:
    """One gateway worker: shard ``shard`` of the ``$share/fleetstream`` group."""

    def __init__(self, settings: Settings, shard: int, account: tuple[str, str]) -> None:
        self.settings = settings
        self.account = account
        self.shard = shard
        self.limits = Limits(settings.max_payload_bytes, settings.max_batch_readings, settings.max_future_skew_s)
        self.writer = ShardWriter(settings.dsn(), shard, settings.dead_letter_raw_cap)
        # OwnTracks phones publish on owntracks/<user>/...: translated for their vehicles in the same batches
        self.front = OwnTracksFrontEnd(
            TrackerDirectory(settings.dsn()), self.limits, settings.h3_resolution, settings.dead_letter_raw_cap
        )
        self._pending: list[_Pending] = []
        self._cond = threading.Condition()
        self._generation = 0
        self._connected = threading.Event()
        self.client = self._make_client()
        self.totals = {"messages": 0, "stored": 0, "duplicates": 0, "conflicts": 0, "dead_letters": 0, "receipts": 0}

    # ---------------------------------------------------------------- MQTT

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fleetstream-gw-{self.shard}", protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.username_pw_set(*self.account)
        # Back before any device: Mosquitto 2.0 restores a shared-subscription session from its
        # persistence file but queues nothing for it until the member reconnects, so what a
        # device publishes after a broker restart and before a shard is back is dropped.
        client.reconnect_delay_set(min_delay=0.1, max_delay=1.0)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        if reason.is_failure:
            log.error("shard %d: broker refused connection: %s", self.shard, reason)
            return
        with self._cond:
            self._generation += 1
        client.subscribe([(f"$share/{SHARE_GROUP}/{f}", 1) for f in (subscription_filter(), OWNTRACKS_FILTER)])
        self._connected.set()
        log.info("shard %d: connected (session present: %s)", self.shard, getattr(_flags, "session_present", "?"))

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: object, _mid: int, reasons: list[ReasonCode], _props: object
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("shard %d: subscription refused: %s", self.shard, reasons)
            return
        # the engine waits for this before it reports ready: from now on the broker
        # queues this shard's share even while the shard is down
        ready = ready_file(self.settings, self.shard)
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.touch()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        self._connected.clear()
        with self._cond:
            self._generation += 1  # nothing received so far may be acked on the next connection
        log.warning("shard %d: disconnected: %s", self.shard, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        item = _Pending(self._generation, msg.mid, msg.qos, Received(msg.topic, bytes(msg.payload), time.time()))
        with self._cond:
            self._pending.append(item)
            if len(self._pending) >= self.settings.gateway_batch_max:
                self._cond.notify()

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.gateway_receive_maximum
        host, port = self.settings.mqtt_endpoint()
        self.client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()

    # ---------------------------------------------------------------- batches

    def _take_batch(self, timeout_s: float) -> list[_Pending]:
        with self._cond:
            if len(self._pending) < self.settings.gateway_batch_max:
                self._cond.wait(timeout_s)
            batch = self._pending[: self.settings.gateway_batch_max]
            del self._pending[: len(batch)]
            return batch

    def _prepare(self, messages: list[Received]) -> Prepared:
        """Rows for ``messages`` (OwnTracks users are looked up in the database: an outage raises)."""
        return self.front.prepare(messages)

    def _retrying(self, action: Callable[[], T], stop: threading.Event) -> T:
        """``action()``, retried while the database is away; raises what it refuses."""
        delay = 0.5
        while True:
            try:
                return action()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # database away: keep the batch, retry, never ack
                log.warning(
                    "shard %d: database unavailable (%s); retrying in %.1f s", self.shard, str(exc).strip()[:120], delay
                )
                self.writer.close()
                if stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)

    def _write(self, prepared: Prepared, messages: int, stop: threading.Event) -> WriteResult:
        """Commit ``prepared``, retrying while the database is away; raises what it refuses."""
        return self._retrying(lambda: self.writer.write(prepared, messages), stop)

    def store(self, messages: list[Received], stop: threading.Event) -> list[tuple[Prepared, WriteResult]]:
        """Commit ``messages`` (stored, or dead letters with a reason): what the database refuses
        is split until the refused messages are alone, and those become ``db_refused`` dead
        letters. Retries while the database is away (until ``stop``: then it raises). Returns each
        committed part and what its commit did."""
        try:
            prepared = self._retrying(lambda: self._prepare(messages), stop)
            return [(prepared, self._write(prepared, len(messages), stop))]
        except Exception as exc:
            if is_outage(exc):
                raise  # only when stop was set during an outage
            if len(messages) > 1:
                half = len(messages) // 2
                log.warning(
                    "shard %d: the database refused a batch of %d messages (%s): isolating",
                    self.shard,
                    len(messages),
                    str(exc).strip()[:200],
                )
                return self.store(messages[:half], stop) + self.store(messages[half:], stop)
            return [self._refuse(messages[0], exc, stop)]

    def _refuse(self, msg: Received, exc: Exception, stop: threading.Event) -> tuple[Prepared, WriteResult]:
        """Dead-letter one message the database refused; its readings are refused in its receipt."""
        log.error("shard %d: dead letter db_refused on %s: %s", self.shard, msg.topic, str(exc).strip()[:300])
        received_at = datetime.fromtimestamp(msg.received_ts, UTC)
        detail = f"{type(exc).__name__}: {str(exc).strip()}"
        row = dead_letter_row(
            msg.topic, msg.payload, received_at, "db_refused", detail, None, self.settings.dead_letter_raw_cap
        )
        refused = Prepared(dead_letters=[row])
        try:
            covered = self._prepare([msg]).receipts
        except Exception:  # the contract itself failed on it: nothing to tell the device
            covered = {}
        refused.receipts = {key: Coverage(set(), c.stored | c.refused) for key, c in covered.items()}
        return refused, self._write(refused, 1, stop)

    def _commit(self, batch: list[_Pending], stop: threading.Event) -> None:
        committed = self.store([p.message for p in batch], stop)
        latency_s = time.time() - min(p.message.received_ts for p in batch)
        MESSAGES.inc(len(batch))
        for _, result in committed:
            _count(result, latency_s)
        with self._cond:
            generation = self._generation
        for p in batch:  # PUBACK in arrival order, only on the connection they arrived on
            if p.generation == generation and p.qos > 0:
                self.client.ack(p.mid, p.qos)
        self._send_receipts(committed)
        self.totals["messages"] += len(batch)
        for _, result in committed:
            for key, value in (
                ("stored", result.stored),
                ("duplicates", result.duplicates),
                ("conflicts", result.conflicts),
                ("dead_letters", result.dead_letters),
            ):
                self.totals[key] += value

    def _send_receipts(self, committed: list[tuple[Prepared, WriteResult]]) -> None:
        """One stored receipt per device that asked, covering this whole commit."""
        merged: dict[tuple[str, str], Coverage] = {}
        for prepared, result in committed:
            for key, coverage in prepared.receipts.items():
                into = merged.setdefault(key, Coverage())
                lost = {seq for seq in coverage.stored if (*key, seq) in result.conflicted}
                into.stored |= coverage.stored - lost
                into.refused |= coverage.refused | lost
        for (tenant, vehicle), coverage in merged.items():
            if coverage.stored or coverage.refused:
                payload = encode_receipt(vehicle, coverage.stored, coverage.refused)
                self.client.publish(receipt_topic(tenant, vehicle), payload, qos=0)
        self.totals["receipts"] += len(merged)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then commit what is buffered and disconnect."""
        self.writer.open()
        self._connect()
        flush_s = self.settings.gateway_flush_ms / 1000
        last_log = time.monotonic()
        try:
            while not stop.is_set():
                batch = self._take_batch(flush_s)
                if batch:
                    self._commit(batch, stop)
                if time.monotonic() - last_log > 10:
                    last_log = time.monotonic()
                    log.info("shard %d: %s", self.shard, self.totals)
            batch = self._take_batch(0)
            while batch:
                self._commit(batch, stop)
                batch = self._take_batch(0)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.writer.close()
            self.front.directory.close()


def _count(result: WriteResult, latency_s: float) -> None:
    """One commit into the metrics (``core/metrics.py``); ``latency_s``: from the batch's first
    message received to its commit."""
    for stream, stored in result.stored_by_stream.items():
        if stored:
            READINGS_STORED.labels(stream).inc(stored)
    for reason, count in result.dead_letters_by_reason.items():
        DEAD_LETTERS.labels(reason).inc(count)
    if result.duplicates:
        DUPLICATES.inc(result.duplicates)
    if result.conflicts:
        CONFLICTS.inc(result.conflicts)
    COMMIT_LATENCY.observe(max(0.0, latency_s))


def run_gateway(settings: Settings, shard: int, account: tuple[str, str]) -> None:
    """Process entry point: serve one shard until SIGTERM/SIGINT, logged in as ``account``
    (username, password)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    GatewayShard(settings, shard, account).run(stop)
