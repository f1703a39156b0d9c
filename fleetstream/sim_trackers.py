"""Simulated vans that carry a tracker instead of the edge agent: Teltonika, GT06, a Traccar Client
phone (OsmAnd) or an OwnTracks phone, each over its real protocol to the engine's listeners.

``TrackerFleet`` is a sink of ``sim.fleet.run_simulation`` for the vans it was given. Each van
queues what the simulator hands it and a sender thread sends it as its device would, forgetting a
reading only when the server accepted it (Teltonika: the record count; GT06: the serial reply;
OsmAnd: 200; OwnTracks: the PUBACK), reconnecting and sending again after a failure. What a
protocol cannot carry is counted, not sent: GT06 and the phones send positions only; a Teltonika
box sends positions, its Dallas probe (0.1 degC) and its door input (DIN1, as ``rear``). A
simulated duplicate is the last frame sent once more (as a device that missed our answer does);
a malformed message is a frame with a broken checksum (Teltonika, GT06), a request with a bad
number (OsmAnd) or a payload that is not JSON (OwnTracks).
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading, format_time
from core.settings import Settings
from edge.publisher import DevicePublisher
from ingest.protocols import gt06, owntracks, teltonika
from ingest.protocols.teltonika import CODEC_8E, AvlRecord, IoElement
from sim.simulator import RawMessage, SimEvent

__all__ = ["TrackerFleet", "TrackerVan", "VanTracker"]

log = logging.getLogger("fleetstream.sim.trackers")
_RECORDS_PER_PACKET = 20
_ANSWER_TIMEOUT_S = 60.0
_READING, _AGAIN, _BAD = "reading", "again", "bad"


@dataclass(frozen=True)
class VanTracker:
    """Which tracker a simulated van carries: protocol, identity (IMEI, OsmAnd id or OwnTracks
    user) and, for OwnTracks, the MQTT password."""

    vehicle: str
    protocol: str
    identity: str
    password: str | None = None


class TrackerVan:
    """One van's tracker: a queue and a sender thread (subclasses speak the protocol)."""

    carries: tuple[type, ...] = (GpsFix,)

    def __init__(self, settings: Settings, tracker: VanTracker) -> None:
        self.settings, self.tracker = settings, tracker
        self.queue: collections.deque[tuple[str, Reading | None]] = collections.deque()
        self.cond = threading.Condition()
        self.counts: Counter[str] = Counter()
        self.busy = False
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"tracker-{tracker.vehicle}", daemon=True)
        self.thread.start()

    def put(self, kind: str, reading: Reading | None) -> None:
        with self.cond:
            self.queue.append((kind, reading))
            self.cond.notify()

    @property
    def pending(self) -> int:
        with self.cond:
            return len(self.queue) + (1 if self.busy else 0)

    def _take(self) -> list[tuple[str, Reading | None]]:
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait(0.5)
            if not self.queue:
                return []
            first = self.queue[0]
            items = [first]
            if first[0] == _READING:
                while len(items) < self.batch_size() and len(self.queue) > len(items):
                    nxt = self.queue[len(items)]
                    if nxt[0] != _READING:
                        break
                    items.append(nxt)
            self.busy = True
            return items

    def batch_size(self) -> int:
        return 1

    def _run(self) -> None:
        delay = 0.2
        while True:
            items = self._take()
            if not items:
                break
            while True:
                try:
                    self.send(items)
                    delay = 0.2
                    break
                except (OSError, ConnectionError, http.client.HTTPException) as exc:
                    self.counts["reconnects"] += 1
                    log.debug("%s: %s; sending again", self.tracker.vehicle, exc)
                    self.disconnect()
                    if self.stopping and time.monotonic() > self.give_up_at:
                        return
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
            with self.cond:
                for _ in items:
                    self.queue.popleft()
                self.busy = False
                self.cond.notify_all()
        self.disconnect()

    give_up_at = float("inf")

    def send(self, items: list[tuple[str, Reading | None]]) -> None:
        raise NotImplementedError

    def disconnect(self) -> None:
        pass

    def finish(self, timeout: float) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while (self.queue or self.busy) and time.monotonic() < deadline:
                self.cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            self.stopping = True
            self.give_up_at = deadline
            self.cond.notify_all()
        self.thread.join(max(0.1, deadline - time.monotonic()) + 2.0)


class _SocketVan(TrackerVan):
    sock: socket.socket | None = None

    def connection(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection(self.endpoint(), timeout=_ANSWER_TIMEOUT_S)
            try:
                self.login(sock)
            except BaseException:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def endpoint(self) -> tuple[str, int]:
        raise NotImplementedError

    def login(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @staticmethod
    def receive(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data


class TeltonikaVan(_SocketVan):
    """A Teltonika box: Codec 8E packets of up to 20 records, each acknowledged with its count."""

    carries = (GpsFix, TemperatureReading, DoorEvent)
    last: bytes | None = None

    def endpoint(self) -> tuple[str, int]:
        return self.settings.device_listen_host, self.settings.teltonika_port

    def batch_size(self) -> int:
        return _RECORDS_PER_PACKET

    def login(self, sock: socket.socket) -> None:
        sock.sendall(teltonika.encode_imei(self.tracker.identity))
        if self.receive(sock, 1) != b"\x01":
            raise ConnectionRefusedError(f"IMEI {self.tracker.identity} refused")

    @staticmethod
    def record(reading: Reading | None) -> AvlRecord:
        assert reading is not None
        ms = round(reading.fix_time.timestamp() * 1000)
        if isinstance(reading, GpsFix):
            return AvlRecord(
                ms,
                0,
                round(reading.lon * 1e7),
                round(reading.lat * 1e7),
                round(reading.alt_m or 0),
                round(reading.heading_deg or 0) % 360,
                9,
                round((reading.speed_mps or 0) * 3.6),
                0,
                (IoElement(239, 1, 1), IoElement(66, 2, 13_800)),  # ignition on, 13.8 V
            )
        if isinstance(reading, TemperatureReading):
            return AvlRecord(ms, 0, 0, 0, 0, 0, 0, 0, 0, (IoElement(72, 2, round(reading.celsius * 10) % 65_536),))
        assert isinstance(reading, DoorEvent)
        return AvlRecord(ms, 1, 0, 0, 0, 0, 0, 0, 1, (IoElement(1, 1, int(reading.open)),))

    def send(self, items: list[tuple[str, Reading | None]]) -> None:
        kind = items[0][0]
        if kind == _AGAIN and self.last is None:
            return
        if kind == _AGAIN:
            raw = self.last
        elif kind == _BAD:
            raw = teltonika.encode_packet(CODEC_8E, [self.record(items[0][1])], crc=0xFFFF)
        else:
            raw = teltonika.encode_packet(CODEC_8E, [self.record(r) for _, r in items])
        assert raw is not None
        sock = self.connection()
        sock.sendall(raw)
        accepted = int.from_bytes(self.receive(sock, 4), "big")
        self.counts["frames"] += 1
        if kind == _READING:
            self.last = raw
            self.counts["acked"] += accepted
            self.counts["refused"] += len(items) - accepted


class Gt06Van(_SocketVan):
    """A GT06 tracker: a login, then one 0x22 location per fix, each answered with its serial."""

    serial = 1
    last: bytes | None = None

    def endpoint(self) -> tuple[str, int]:
        return self.settings.device_listen_host, self.settings.gt06_port

    def next_serial(self) -> int:
        self.serial = self.serial % 0xFFFF + 1
        return self.serial

    def login(self, sock: socket.socket) -> None:
        sock.sendall(gt06.encode_login(self.tracker.identity, self.next_serial()))
        self.receive(sock, 10)

    def send(self, items: list[tuple[str, Reading | None]]) -> None:
        kind, reading = items[0]
        if kind == _AGAIN and self.last is None:
            return
        sock = self.connection()
        if kind == _AGAIN:
            assert self.last is not None
            sock.sendall(self.last)
            self.receive(sock, 10)
            return
        assert isinstance(reading, GpsFix)
        raw = gt06.encode_location(
            reading.fix_time,
            reading.lat,
            reading.lon,
            min(255, round((reading.speed_mps or 0) * 3.6)),
            round(reading.heading_deg or 0) % 360,
            self.next_serial(),
        )
        if kind == _BAD:
            sock.sendall(raw[:-4] + b"\x00\x00" + raw[-2:])  # a broken checksum: dead-lettered, not answered
            return
        sock.sendall(raw)
        self.receive(sock, 10)
        self.last = raw
        self.counts["frames"] += 1
        self.counts["acked"] += 1


class OsmAndVan(TrackerVan):
    """A Traccar Client phone: one JSON POST per fix on a keep-alive connection; 200 = stored."""

    conn: http.client.HTTPConnection | None = None
    last: bytes | None = None

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def post(self, target: str, body: bytes) -> int:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(
                self.settings.device_listen_host, self.settings.osmand_port, timeout=_ANSWER_TIMEOUT_S
            )
        headers = {"Content-Type": "application/json"} if body else {}
        self.conn.request("POST", target, body=body, headers=headers)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def send(self, items: list[tuple[str, Reading | None]]) -> None:
        kind, reading = items[0]
        if kind == _AGAIN:
            if self.last is not None:
                self.post("/", self.last)
            return
        assert isinstance(reading, GpsFix)
        if kind == _BAD:
            self.post(f"/?id={self.tracker.identity}&lat=north&lon={reading.lon}", b"")
            return
        coords: dict[str, Any] = {"latitude": reading.lat, "longitude": reading.lon}
        for key, value in (
            ("speed", reading.speed_mps),
            ("heading", reading.heading_deg),
            ("accuracy", reading.accuracy_m),
            ("altitude", reading.alt_m),
        ):
            coords[key] = -1 if value is None else value
        body = json.dumps(
            {
                "device_id": self.tracker.identity,
                "location": {"timestamp": format_time(reading.fix_time), "coords": coords},
            }
        ).encode()
        status = self.post("/", body)
        self.counts["frames"] += 1
        self.counts["acked" if status == 200 else "refused"] += 1
        self.last = body


class OwnTracksVan(TrackerVan):
    """An OwnTracks phone: a location message per fix, QoS 1, under its own ``owntracks/<user>/``."""

    last: tuple[str, bytes] | None = None

    def __init__(self, settings: Settings, tracker: VanTracker) -> None:
        host, port = settings.mqtt_endpoint()
        self.publisher = DevicePublisher(
            host, port, tracker.identity, tracker.password, client_id=f"{tracker.identity}-phone"
        )
        self.publisher.connect()
        super().__init__(settings, tracker)

    def send(self, items: list[tuple[str, Reading | None]]) -> None:
        kind, reading = items[0]
        topic = f"{owntracks.ROOT}/{self.tracker.identity}/phone"
        if kind == _AGAIN:
            if self.last is not None:
                self.publisher.publish(*self.last)
            return
        if kind == _BAD:
            self.publisher.publish(topic, b'{"_type":"location","tst":')
            return
        assert isinstance(reading, GpsFix)
        message = owntracks.encode_location(
            self.tracker.identity,
            "phone",
            reading.fix_time,
            reading.lat,
            reading.lon,
            reading.speed_mps,
            reading.heading_deg,
            reading.accuracy_m,
            reading.alt_m,
        )
        self.publisher.publish(*message)
        self.last = message
        self.counts["frames"] += 1

    def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        super().finish(timeout)
        self.publisher.flush(max(0.0, deadline - time.monotonic()))
        self.counts["acked"] = self.publisher.acked
        self.publisher.close()


_VANS: dict[str, type[TrackerVan]] = {
    "teltonika": TeltonikaVan,
    "gt06": Gt06Van,
    "osmand": OsmAndVan,
    "owntracks": OwnTracksVan,
}


class TrackerFleet:
    """The simulator's sink for the vans that carry trackers (``sim.fleet.run_simulation(trackers=...)``)."""

    def __init__(self, settings: Settings, trackers: list[VanTracker], counts: Counter[str]) -> None:
        self.counts = counts  # the simulation's own counts: readings, malformed, duplicates, late
        self.vans: dict[str, TrackerVan] = {}
        try:
            for t in trackers:
                self.vans[t.vehicle] = _VANS[t.protocol](settings, t)
        except BaseException:
            self.close()
            raise
        self.vehicles = set(self.vans)

    def dispatch(self, event: SimEvent) -> None:
        van, item = self.vans[event.vehicle], event.item
        if isinstance(item, RawMessage):  # the simulator's malformed message: this protocol's kind of broken
            van.put(_BAD, van_reading(event))
            self.counts["malformed"] += 1
            return
        if event.duplicate:
            van.put(_AGAIN, None)
            self.counts["duplicates"] += 1
            return
        if not isinstance(item, van.carries):
            self.counts[f"not_carried_{item.kind}"] += 1
            return
        if event.late:
            self.counts["late"] += 1
        van.put(_READING, item)
        self.counts[item.kind] += 1
        self.counts["published"] += 1
        self.counts[f"{van.tracker.protocol}_readings"] += 1

    def tick(self, now: float) -> None:
        pass

    def progress(self) -> dict[str, int]:
        """What the trackers still hold and what their servers accepted (the shared counts are the simulation's)."""
        return {
            "pending": sum(v.pending for v in self.vans.values()),
            "acked": sum(v.counts["acked"] for v in self.vans.values()),
        }

    def finish(self, timeout: float) -> dict[str, Any]:
        threads = [threading.Thread(target=v.finish, args=(timeout,), daemon=True) for v in self.vans.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 10)
        totals: Counter[str] = Counter()
        for van in self.vans.values():
            totals.update(van.counts)
        pending = sum(v.pending for v in self.vans.values())
        return {
            "tracker_frames": totals["frames"],
            "tracker_refused": totals["refused"],
            "tracker_reconnects": totals["reconnects"],
            "tracker_pending": pending,
            "tracker_flushed": pending == 0,
        }

    def close(self) -> None:
        for van in self.vans.values():
            with van.cond:
                van.stopping = True
                van.give_up_at = 0.0
                van.cond.notify_all()
            if isinstance(van, OwnTracksVan):
                van.publisher.close()


def van_reading(event: SimEvent) -> GpsFix | None:
    """The fix a malformed simulated message was made from (its payload is the contract's JSON)."""
    item = event.item
    assert isinstance(item, RawMessage)
    try:
        body = json.loads(item.payload)
        lat = float(body.get("lat", 0.0))
        lon = float(body.get("lon", 0.0))
    except (ValueError, TypeError, AttributeError):
        lat, lon = 60.17, 24.94
    return GpsFix("sim", event.vehicle, 0, event.at, lat if abs(lat) <= 90 else 60.17, lon)
