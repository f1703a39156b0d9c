"""The edge agent's main loop: sensors -> sampler -> outbox -> sender.

Threads, one concern each::

    sensor threads (gps, temp, doors) --samples--> queue --> recorder: sampler decides,
        the outbox stores (durably, with the device's seq) what is to be sent
    sender: while connected, leases the oldest readings, publishes them as batch
        messages (``encode_batch``, each under the size limit: a batch too large is
        split) asking for stored receipts, and deletes them from the outbox only when
        the gateway's receipt on ``fleet/<tenant>/<vehicle>/cmd/stored`` says the
        database holds them (or refused them as dead letters). The broker's PUBACK is
        flow control only: what no receipt covered ``receipt_timeout_s`` after its
        PUBACK, or, at a reconnect, what the broker took on an earlier connection, is
        sent again (a repeat is a duplicate the server drops). A PUBACK 0x10 ("no matching subscribers": the broker dropped it) is
        never a delivery; the publisher sends it again. With ``receipts = false`` the
        PUBACK deletes, for servers without receipts. It publishes an ``online``
        status on every connect and a ``heartbeat`` every ``status_interval_s``. The
        MQTT last will is an ``offline`` status.
    main: waits for a stop signal; pings systemd's watchdog while the recorder and
        sender are alive.

A reading the recorder stored is never lost by the agent: it stays in the outbox
through disconnects, broker outages and crashes (queued messages a killed broker had
not saved), process kills and power cuts, until the database holds it, and is sent
again after a restart (the server deduplicates on ``seq``). Only the outbox's byte
cap drops readings, as its drop policy says, and counts them.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from core.contract import (
    READING_TYPES,
    ContractError,
    DoorEvent,
    GpsFix,
    Limits,
    Reading,
    Receipt,
    TemperatureReading,
    decode_receipt,
    encode_batch,
    encode_status,
    receipt_topic,
    topic_for,
)
from edge.agent.config import AgentConfig
from edge.agent.outbox import Outbox, StoredReading
from edge.agent.sampling import GpsSample, Sample, Sampler, TemperatureSample
from edge.agent.sensors.door import DoorContact, DoorLine, DoorPoller, FakeDoorLine, GpiodLine
from edge.agent.sensors.gps import FakeGps, GpsdSource
from edge.agent.sensors.temperature import FakeThermometers, W1Thermometers
from edge.publisher import DevicePublisher

__all__ = ["Agent", "SampleSource", "build_sources", "plan_messages", "to_reading", "reading_fields", "AGENT_VERSION"]

log = logging.getLogger("fleetstream.edge.agent")

AGENT_VERSION = "0.1.0"
_ENVELOPE_RESERVE = 160  # bytes of a batch message besides its readings (v, vehicle, device_time, brackets)
_EPOCH_FLOOR = datetime(2000, 1, 1, tzinfo=UTC)  # the contract refuses older fix times
_HEALTHY_WITHIN_S = 60.0  # a worker loop that has not turned for this long is stuck
_MAINTENANCE_EVERY_S = 600.0


class SampleSource(Protocol):
    """A sensor: ``run`` blocks until ``stop`` is set, emitting samples; ``faults`` counts problems."""

    def run(self, emit: Callable[[Any], None], stop: threading.Event) -> None: ...

    def faults(self) -> dict[str, int]: ...


# ---------------------------------------------------------------- pure helpers


def reading_fields(sample: Sample) -> tuple[str, dict[str, Any]]:
    """(kind, contract fields) of a sample; optional GPS fields outside the contract's
    ranges are left out rather than get the reading refused."""
    if isinstance(sample, GpsSample):
        fields: dict[str, Any] = {"lat": sample.lat, "lon": sample.lon}
        for key, value, lo, hi in (
            ("speed_mps", sample.speed_mps, 0.0, 150.0),
            ("heading_deg", sample.heading_deg, 0.0, 360.0),
            ("accuracy_m", sample.accuracy_m, 0.0, 1e5),
            ("alt_m", sample.alt_m, -1000.0, 20000.0),
        ):
            if value is not None and lo <= value <= hi:
                fields[key] = value
        return "gps", fields
    if isinstance(sample, TemperatureSample):
        return "temp", {"sensor": sample.sensor, "celsius": sample.celsius}
    return "door", {"door": sample.door, "open": sample.open}


def to_reading(tenant: str, vehicle: str, stored: StoredReading) -> Reading:
    """The contract reading of an outbox row (same seq and fix time on every resend)."""
    fix_time = datetime.fromisoformat(stored.fix_time)
    f = stored.fields
    if stored.kind == "gps":
        return GpsFix(
            tenant,
            vehicle,
            stored.seq,
            fix_time,
            f["lat"],
            f["lon"],
            speed_mps=f.get("speed_mps"),
            heading_deg=f.get("heading_deg"),
            accuracy_m=f.get("accuracy_m"),
            alt_m=f.get("alt_m"),
        )
    if stored.kind == "temp":
        return TemperatureReading(tenant, vehicle, stored.seq, fix_time, f["sensor"], f["celsius"])
    return DoorEvent(tenant, vehicle, stored.seq, fix_time, f["door"], f["open"])


def plan_messages(
    tenant: str,
    vehicle: str,
    rows: list[StoredReading],
    max_bytes: int,
    device_time: datetime | None = None,
    receipt: bool = False,
) -> tuple[list[tuple[bytes, list[int]]], list[int]]:
    """Batch messages of at most ``max_bytes`` bytes for ``rows`` (oldest first); ``receipt``:
    they ask for stored receipts.

    Returns ([(payload, seqs)], undeliverable seqs): a batch over the limit is split in
    halves until each fits; a single reading that cannot fit alone is undeliverable.
    """
    messages: list[tuple[bytes, list[int]]] = []
    undeliverable: list[int] = []
    pending = [rows]
    while pending:
        part = pending.pop(0)
        readings = [to_reading(tenant, vehicle, r) for r in part]
        _, payload = encode_batch(tenant, vehicle, readings, device_time, receipt)
        if len(payload) <= max_bytes:
            messages.append((payload, [r.seq for r in part]))
        elif len(part) == 1:
            undeliverable.append(part[0].seq)
        else:
            half = len(part) // 2
            pending[:0] = [part[:half], part[half:]]
    return messages, undeliverable


def build_sources(config: AgentConfig) -> dict[str, SampleSource]:
    """The configured sensors (real or fake) by name: ``gps``, ``temp``, ``door``."""
    sources: dict[str, SampleSource] = {}
    if config.gps.source == "gpsd":
        sources["gps"] = GpsdSource(config.gps.host, config.gps.port)
    elif config.gps.source == "fake":
        sources["gps"] = FakeGps(config.gps.fake_rate_hz, speed_mps=config.gps.fake_speed_mps)
    t = config.temperature
    if t.source == "w1":
        sources["temp"] = W1Thermometers(t.devices_dir, dict(t.names), poll_s=t.poll_s)
    elif t.source == "fake":
        sources["temp"] = FakeThermometers(t.fake_sensors, t.fake_rate_hz)
    if config.doors:
        contacts = []
        for door in config.doors:
            line: DoorLine = (
                FakeDoorLine(toggle_s=door.fake_toggle_s)
                if door.source == "fake"
                else GpiodLine(door.chip, door.line, bias=door.bias)
            )
            contacts.append(DoorContact(door.name, line, debounce_s=door.debounce_s, open_level=door.open_level))
        sources["door"] = DoorPoller(contacts, config.door_poll_s)
    return sources


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify, WatchdogSec) how we are; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %s: %s", message, exc)


@dataclass
class _Counters:
    recorded: Counter[str]
    published_messages: int = 0  # batch messages the broker took (PUBACK 0x00)
    published_readings: int = 0  # readings deleted as delivered: covered by a receipt (or PUBACKed)
    refused_readings: int = 0  # readings a receipt said are dead letters
    refused_messages: int = 0
    receipt_timeouts: int = 0  # batches sent again because no receipt covered them in time
    undeliverable: int = 0
    store_errors: int = 0
    clock_not_set: int = 0
    last_publish_at: datetime | None = None


@dataclass
class _Flight:
    """A batch message sent: the seqs no receipt covered yet, and when the broker took it."""

    seqs: set[int]
    acked_at: float | None = None  # monotonic time of its PUBACK
    acked_on: int = 0  # the publisher's connection generation its PUBACK came on


# ---------------------------------------------------------------- the agent


class Agent:
    """One device's agent. ``run(stop)`` is the whole life; ``start``/``stop`` for tests.

    ``sources`` replaces the configured sensors (tests pass fakes).
    """

    def __init__(self, config: AgentConfig, sources: dict[str, SampleSource] | None = None) -> None:
        self.config = config
        self.tenant, self.vehicle = config.device.tenant, config.device.vehicle
        self.batch_topic = topic_for(self.tenant, self.vehicle, "batch")
        self.outbox = Outbox(config.outbox.path, config.outbox.max_bytes, config.outbox.drop_order)
        self.sampler = Sampler.from_policies(config.gps_sampling, config.temp_sampling)
        self.sources = build_sources(config) if sources is None else dict(sources)
        self.counters = _Counters(Counter({kind: 0 for kind in READING_TYPES}))  # fixed keys: read from 2 threads
        s = config.sender
        self.max_message_bytes = min(s.batch_max_bytes, Limits().max_payload_bytes)
        self.publisher = DevicePublisher(
            config.broker.host,
            config.broker.port,
            config.username,
            config.broker.password,
            client_id=config.client_id,
            will=(self.tenant, self.vehicle),
            session_expiry_s=config.broker.session_expiry_s,
            keepalive_s=config.broker.keepalive_s,
            max_payload_bytes=self.max_message_bytes,
            max_pending=4 * s.max_inflight_batches + 64,
            publish_timeout_s=5.0,
            on_settled=self._on_settled,
            tls_ca_file=None if config.broker.ca_file is None else str(config.broker.ca_file),
            tls_cert_file=None if config.broker.cert_file is None else str(config.broker.cert_file),
            tls_key_file=None if config.broker.key_file is None else str(config.broker.key_file),
        )
        self._samples: queue.Queue[Sample] = queue.Queue(maxsize=10_000)
        self._settled: queue.SimpleQueue[tuple[Hashable, bool, int]] = queue.SimpleQueue()
        self._receipts: queue.SimpleQueue[Receipt] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop_sensors = threading.Event()
        self._stop_recorder = threading.Event()
        self._stop_sender = threading.Event()
        self._inflight: dict[int, _Flight] = {}  # message key -> its flight; sender thread only
        self._flight_of: dict[int, int] = {}  # seq -> key of the flight carrying it; sender thread only
        self._next_key = 0
        self._generation = 0  # the publisher's connection the sender last saw; sender thread only
        self._status_n = 0
        self._refused_until = 0.0
        self._threads: list[threading.Thread] = []
        self._beats: dict[str, float] = {}
        self._started_at = time.monotonic()
        self.fatal: str | None = None
        self._fatal_event = threading.Event()

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Connect in the background (for ever) and start every thread."""
        if self.config.sender.receipts:
            self.publisher.subscribe(receipt_topic(self.tenant, self.vehicle), self._on_receipt)
        self.publisher.connect(timeout=None)
        self._spawn("recorder", self._record_loop)
        self._spawn("sender", self._send_loop)
        for name, source in self.sources.items():
            self._spawn(f"sensor-{name}", functools.partial(source.run, self._emit, self._stop_sensors))
        log.info(
            "agent %s/%s: started (outbox %s: %d readings waiting, next seq %d)",
            self.tenant,
            self.vehicle,
            self.outbox.path,
            self.outbox.depth(),
            self.outbox.next_seq(),
        )

    def run(self, stop: threading.Event) -> int:
        """Start, serve until ``stop`` is set (or a worker dies), stop cleanly. Exit code."""
        self.start()
        _sd_notify("READY=1")
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        ping_every = watchdog_usec / 2e6 if watchdog_usec else None
        next_ping = time.monotonic()
        while not stop.wait(1.0 if ping_every is None else min(1.0, ping_every)):
            if self._fatal_event.is_set():
                break
            if ping_every is not None and time.monotonic() >= next_ping and self.healthy():
                _sd_notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping_every
        _sd_notify("STOPPING=1")
        self.stop()
        return 1 if self.fatal else 0

    def stop(self, drain_s: float = 3.0) -> None:
        """Stop sensors, store what they sent, try ``drain_s`` seconds to send the rest, close."""
        self._stop_sensors.set()
        self._join("sensor-", 5.0)
        self._stop_recorder.set()
        self._join("recorder", 30.0)
        deadline = time.monotonic() + drain_s
        while self.publisher.connected and self.outbox.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop_sender.set()
        self._wake.set()
        self._join("sender", 10.0)
        if self.publisher.connected:
            self._publish_status("offline", {"reason": "shutdown"})
            self.publisher.flush(2.0)
        self.publisher.close()
        self.outbox.close()
        log.info("agent %s/%s: stopped", self.tenant, self.vehicle)

    def healthy(self) -> bool:
        """Recorder and sender threads alive and turning."""
        now = time.monotonic()
        return all(t.is_alive() for t in self._threads if not t.name.startswith("sensor-")) and all(
            now - self._beats.get(name, now) < _HEALTHY_WITHIN_S for name in ("recorder", "sender")
        )

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException:
                log.exception("agent: thread %s died", name)
                self.fatal = name
                self._fatal_event.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _join(self, prefix: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.name.startswith(prefix):
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("agent: thread %s did not stop in time", thread.name)

    # ------------------------------------------------------------ recording

    def _emit(self, sample: Sample) -> None:
        self._samples.put(sample)

    def record(self, sample: Sample) -> int | None:
        """Sampler, then outbox: the reading's seq when it is to be sent, else None."""
        if sample.time < _EPOCH_FLOOR:
            self.counters.clock_not_set += 1  # the contract refuses it; the system clock is not set yet
            return None
        if not self.sampler.update(sample):
            return None
        kind, fields = reading_fields(sample)
        seq = self.outbox.add(kind, sample.time, fields)
        self.counters.recorded[kind] += 1
        self._wake.set()
        return seq

    def _record_loop(self) -> None:
        while True:
            self._beats["recorder"] = time.monotonic()
            try:
                sample = self._samples.get(timeout=1.0)  # idle wake-ups cost CPU on a Pi
            except queue.Empty:
                if self._stop_recorder.is_set():
                    return
                continue
            try:
                self.record(sample)
            except Exception as exc:  # a full disk must not kill the agent: count, log, go on
                self.counters.store_errors += 1
                log.error("outbox: cannot store a %s sample: %s", type(sample).__name__, exc)
                time.sleep(0.1)

    # ------------------------------------------------------------ sending

    def _on_settled(self, key: Hashable, ok: bool) -> None:
        """From the publisher (paho's thread, which also runs its connects: the generation read
        here is the connection the PUBACK came on): hand over to the sender thread."""
        self._settled.put((key, ok, self.publisher.generation))
        self._wake.set()

    def _on_receipt(self, payload: bytes) -> None:
        """A stored receipt (paho's thread): hand over to the sender thread."""
        try:
            receipt = decode_receipt(payload)
        except ContractError as exc:
            log.warning("ignored a stored receipt that is not one: %s", exc)
            return
        if receipt.vehicle == self.vehicle:
            self._receipts.put(receipt)
            self._wake.set()

    def _drain_settled(self) -> None:
        """PUBACKs and receipts that came in: move flights on, delete what the database holds."""
        receipts = self.config.sender.receipts
        delete: list[int] = []
        while True:
            try:
                key, ok, generation = self._settled.get_nowait()
            except queue.Empty:
                break
            flight = self._inflight.get(key) if isinstance(key, int) else None
            if flight is None or not isinstance(key, int):
                continue  # a status message, or a flight that receipts covered before its PUBACK
            if ok:
                self.counters.published_messages += 1
                self.counters.last_publish_at = datetime.now(UTC)
                if receipts:  # flow control only: the receipt deletes
                    flight.acked_at, flight.acked_on = time.monotonic(), generation
                    continue
                delete.extend(flight.seqs)
                self.counters.published_readings += len(flight.seqs)
                self._land(key)
            else:
                self.counters.refused_messages += 1
                self._refused_until = time.monotonic() + self.config.sender.refused_retry_s
                refusal = self.publisher.refusals[-1] if self.publisher.refusals else None
                log.warning(
                    "broker refused a batch of %d readings (%s); kept, retrying in %.0f s",
                    len(flight.seqs),
                    refusal.reason if refusal else "?",
                    self.config.sender.refused_retry_s,
                )
                self._land(key, release=True)
        while True:
            try:
                receipt = self._receipts.get_nowait()
            except queue.Empty:
                break
            covered = receipt.seqs()
            refused = {s for lo, hi in receipt.refused for s in range(lo, hi + 1)}
            delete.extend(covered)
            for seq in covered:
                carrier = self._flight_of.pop(seq, None)
                flight = self._inflight.get(carrier) if carrier is not None else None
                if carrier is None or flight is None or seq not in flight.seqs:
                    continue  # covered before (a repeat), or by an earlier send of the same reading
                flight.seqs.discard(seq)
                if seq in refused:
                    self.counters.refused_readings += 1
                else:
                    self.counters.published_readings += 1
                if not flight.seqs:
                    self._land(carrier)
        if delete:
            self.outbox.ack(delete)
        if receipts:
            self._expire()

    def _land(self, key: int, release: bool = False) -> None:
        """The flight ``key`` is over; ``release``: its uncovered readings go back to be sent again."""
        flight = self._inflight.pop(key, None)
        if flight is None:
            return
        for seq in flight.seqs:
            if self._flight_of.get(seq) == key:
                del self._flight_of[seq]
        if release and flight.seqs:
            self.outbox.release(flight.seqs)

    def _expire(self, acked_before: int | None = None) -> None:
        """Send again what no receipt covered ``receipt_timeout_s`` after its PUBACK; with
        ``acked_before`` (a connection generation), also every flight the broker took on an
        earlier connection, as after a reconnect: a broker that crashed may have lost it.

        Never what the broker took on the current connection: its receipt is on the way, and
        a second copy, sent after newer readings, could reach a faster gateway shard first
        and be the one stored (with the later ``device_time``)."""
        limit = time.monotonic() - self.config.sender.receipt_timeout_s
        late = [
            key
            for key, f in self._inflight.items()
            if f.acked_at is not None
            and f.seqs
            and (f.acked_at < limit or (acked_before is not None and f.acked_on < acked_before))
        ]
        for key in late:
            self.counters.receipt_timeouts += 1
            self._land(key, release=True)
        if late:
            log.info("%d batches sent again: no stored receipt covered them", len(late))

    def _send_loop(self) -> None:
        s = self.config.sender
        was_connected = False
        next_status = next_maintenance = time.monotonic()
        while not self._stop_sender.is_set():
            self._beats["sender"] = time.monotonic()
            self._wake.clear()
            self._drain_settled()
            connected = self.publisher.connected
            generation = self.publisher.generation
            now = time.monotonic()
            # a new connection, by generation: the loop may sleep through a drop and a reconnect,
            # and PUBACKs of the new connection may be drained before it is noticed here
            if connected and generation != self._generation:
                self._connected(generation)
                next_status = now + s.status_interval_s
            elif was_connected and not connected:
                log.warning(
                    "broker %s:%s: connection lost; readings wait in the outbox",
                    self.config.broker.host,
                    self.config.broker.port,
                )
            was_connected = connected
            if connected and now >= next_status:
                self._publish_status("heartbeat")
                next_status = now + s.status_interval_s
            if now >= next_maintenance:
                self.outbox.maintain()
                next_maintenance = now + _MAINTENANCE_EVERY_S
            if connected and now >= self._refused_until and self._send_batch():
                continue
            self._wake.wait(1.0)  # woken at once by new readings and PUBACKs
        self._drain_settled()

    def _connected(self, generation: int) -> None:
        """The publisher's connection ``generation`` is up: send again what the broker took
        before it (a broker that restarted may have lost it) and say ``online``."""
        self._generation = generation
        log.info(
            "broker %s:%s: connected as %s", self.config.broker.host, self.config.broker.port, self.config.username
        )
        if self.config.sender.receipts:
            self._expire(acked_before=generation)
        self._publish_status("online")

    def _send_batch(self) -> bool:
        """Lease and publish one batch when there is room in flight; True when it did."""
        s = self.config.sender
        if len(self._inflight) >= s.max_inflight_batches:
            return False
        rows = self.outbox.lease(s.batch_max_readings, self.max_message_bytes - _ENVELOPE_RESERVE)
        if not rows:
            return False
        messages, undeliverable = plan_messages(
            self.tenant, self.vehicle, rows, self.max_message_bytes, datetime.now(UTC), s.receipts
        )
        if undeliverable:
            self.counters.undeliverable += len(undeliverable)
            log.error(
                "%d readings cannot fit one %d-byte message: removed (seqs %s)",
                len(undeliverable),
                self.max_message_bytes,
                undeliverable[:10],
            )
            self.outbox.ack(undeliverable)
        for i, (payload, seqs) in enumerate(messages):
            key = self._next_key
            self._next_key += 1
            self._inflight[key] = _Flight(set(seqs))  # before publish: its PUBACK may come back at once
            self._flight_of.update((seq, key) for seq in seqs)
            try:
                self.publisher.publish(self.batch_topic, payload, key=key)
            except (ValueError, TimeoutError) as exc:
                self._land(key, release=True)
                # the lease's later messages were never published: they go back too, or stay
                # leased (unsent) until a restart
                self.outbox.release(seq for _, rest in messages[i + 1 :] for seq in rest)
                log.warning("publish of %d readings failed: %s; kept", len(seqs), exc)
                return False
        return True

    # ------------------------------------------------------------ status

    def status_details(self) -> dict[str, Any]:
        """What the heartbeat reports: queue, drops, sensor faults, last publish."""
        stats = self.outbox.stats()
        faults: dict[str, Any] = {name: source.faults() for name, source in self.sources.items()}
        c = self.counters
        faults["agent"] = {
            k: v
            for k, v in (
                ("clock_not_set", c.clock_not_set),
                ("store_errors", c.store_errors),
                ("undeliverable", c.undeliverable),
            )
            if v
        }
        return {
            "agent_version": AGENT_VERSION,
            "queue_depth": stats.depth,
            "queue_bytes": stats.bytes,
            "queue_cap_bytes": stats.max_bytes,
            "oldest_unsent_age_s": stats.oldest_age_s,
            "in_flight": self.outbox.leased,
            "dropped": stats.dropped,
            "cap_exceeded": stats.cap_exceeded,
            "sensor_faults": faults,
            "recorded": dict(c.recorded),
            "published_readings": c.published_readings,
            "refused_readings": c.refused_readings,
            "refused_messages": c.refused_messages,
            "receipt_timeouts": c.receipt_timeouts,
            "unrouted_messages": self.publisher.unrouted,
            "last_publish_at": None if c.last_publish_at is None else c.last_publish_at.isoformat(),
            "next_seq": stats.next_seq,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
        }

    def _publish_status(self, state: str, extra: dict[str, Any] | None = None) -> None:
        try:
            details = {**self.status_details(), **(extra or {})}
            topic, payload = encode_status(self.tenant, self.vehicle, state, datetime.now(UTC), details)
            self._status_n += 1
            self.publisher.publish(topic, payload, key=f"status-{self._status_n}", timeout=1.0)
        except (ValueError, TimeoutError) as exc:
            log.warning("status %s not published: %s", state, exc)
