"""The MQTT gateway: one shard of a shared subscription, committing before acking.

Each shard is a persistent MQTT v5 session (``clean_start=False`` on every
connect, a session expiry), so the broker queues the shard's share of the
traffic while it is down. Messages are buffered, decoded and validated in
batches, committed by ``ShardWriter``, and only then acknowledged (PUBACK), in
the order they arrived. A message whose connection has since dropped is not
acknowledged: the broker redelivers it and the store deduplicates it.

The shards also read ``owntracks/#`` (OwnTracks phones, ``ingest/owntracks.py``): those
messages are translated for the vehicles their users are provisioned for and committed in the
same batches, under the same rule.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.contract import Limits, subscription_filter
from core.settings import Settings
from ingest.batching import Received
from ingest.frontend import TrackerDirectory
from ingest.owntracks import TOPIC_FILTER as OWNTRACKS_FILTER
from ingest.owntracks import OwnTracksFrontEnd
from ingest.writer import ShardWriter

__all__ = ["GatewayShard", "SHARE_GROUP", "ready_file", "run_gateway"]

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
        self.totals = {"messages": 0, "stored": 0, "duplicates": 0, "conflicts": 0, "dead_letters": 0}

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

    def _commit(self, batch: list[_Pending], stop: threading.Event) -> None:
        messages = [p.message for p in batch]
        delay = 0.5
        while True:
            try:
                prepared = self.front.prepare(messages)  # looks OwnTracks users up: inside the retry
                result = self.writer.write(prepared, len(batch))
                break
            except psycopg.OperationalError as exc:  # database away: keep the batch, retry, never ack
                log.warning(
                    "shard %d: database unavailable (%s); retrying in %.1f s", self.shard, str(exc).strip()[:120], delay
                )
                self.writer.close()
                if stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)
        with self._cond:
            generation = self._generation
        for p in batch:  # PUBACK in arrival order, only on the connection they arrived on
            if p.generation == generation and p.qos > 0:
                self.client.ack(p.mid, p.qos)
        for key, value in (
            ("messages", len(batch)),
            ("stored", result.stored),
            ("duplicates", result.duplicates),
            ("conflicts", result.conflicts),
            ("dead_letters", result.dead_letters),
        ):
            self.totals[key] += value

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


def run_gateway(settings: Settings, shard: int, account: tuple[str, str]) -> None:
    """Process entry point: serve one shard until SIGTERM/SIGINT, logged in as ``account``
    (username, password)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    GatewayShard(settings, shard, account).run(stop)
