"""GPS from gpsd (JSON protocol over TCP, port 2947), and a fake twin.

:class:`GpsdSource` connects, asks for JSON reports with
``?WATCH={"enable":true,"json":true}``, turns every TPV report with a fix into a
:class:`~edge.agent.sampling.GpsSample`, and reconnects for ever (1 s doubling to
30 s) when gpsd goes away or stays silent for ``idle_timeout_s`` seconds.

TPV fields used: ``mode`` (1 no fix, 2 2D, 3 3D), ``time`` (UTC), ``lat``, ``lon``
(degrees), ``speed`` (m/s), ``track`` (degrees from true north), ``eph`` or the
larger of ``epx``/``epy`` (metres, ~95 % horizontal error), ``altHAE``/``altMSL``/``alt`` (m).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge.agent.sampling import GpsSample

__all__ = ["GpsdSource", "FakeGps", "parse_tpv", "parse_report", "WATCH_COMMAND"]

log = logging.getLogger("fleetstream.edge.gps")

WATCH_COMMAND = b'?WATCH={"enable":true,"json":true}\n'
_MAX_LINE = 64 * 1024  # gpsd's reports are a few KiB; anything longer is garbage


def _finite(obj: dict[str, Any], key: str) -> float | None:
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def parse_tpv(obj: dict[str, Any]) -> GpsSample | None:
    """A TPV report as a sample; None without a 2D/3D fix, a time or a position."""
    mode = obj.get("mode")
    if not isinstance(mode, int) or mode < 2:
        return None
    lat, lon, stamp = _finite(obj, "lat"), _finite(obj, "lon"), obj.get("time")
    if lat is None or lon is None or not isinstance(stamp, str) or not -90 <= lat <= 90 or not -180 <= lon <= 180:
        return None
    try:
        fix_time = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if fix_time.tzinfo is None:
        fix_time = fix_time.replace(tzinfo=UTC)  # gpsd reports UTC
    speed = _finite(obj, "speed")
    track = _finite(obj, "track")
    eph = _finite(obj, "eph")
    if eph is None:
        errors = [e for e in (_finite(obj, "epx"), _finite(obj, "epy")) if e is not None]
        eph = max(errors) if errors else None
    alt = None
    if mode == 3:
        alt = next((a for a in (_finite(obj, k) for k in ("altHAE", "altMSL", "alt")) if a is not None), None)
    return GpsSample(
        time=fix_time.astimezone(UTC),
        lat=lat,
        lon=lon,
        mode=mode,
        speed_mps=None if speed is None else max(0.0, speed),
        heading_deg=None if track is None else track % 360.0,
        accuracy_m=eph,
        alt_m=alt,
    )


def parse_report(line: bytes) -> tuple[str | None, GpsSample | None]:
    """(class, sample) of one gpsd JSON line; class None for a line that is not JSON."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    cls = obj.get("class")
    if cls == "TPV":
        return "TPV", parse_tpv(obj)
    return str(cls), None


class GpsdSource:
    """A gpsd client that never gives up. ``run`` blocks until ``stop`` is set."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2947,
        *,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 60.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self._faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.fixes = 0
        self.connected = False

    def faults(self) -> dict[str, int]:
        """Counts of: ``connect_failed``, ``disconnected``, ``idle`` (silent too long),
        ``no_fix`` (TPV without a fix), ``bad_report`` (unparsable line)."""
        with self._lock:
            return dict(self._faults)

    def _count(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def run(self, emit: Callable[[GpsSample], None], stop: threading.Event) -> None:
        delay = self.reconnect_min_s
        while not stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            except OSError as exc:
                self._count("connect_failed")
                log.debug("gpsd %s:%s: %s", self.host, self.port, exc)
                stop.wait(delay)
                delay = min(self.reconnect_max_s, delay * 2)
                continue
            try:
                self.connected = True
                log.info("gpsd %s:%s: connected", self.host, self.port)
                if self._session(sock, emit, stop):
                    delay = self.reconnect_min_s  # it worked for a while: retry soon
            except OSError as exc:
                log.info("gpsd %s:%s: connection lost (%s)", self.host, self.port, exc)
                self._count("disconnected")
            finally:
                self.connected = False
                sock.close()
            if not stop.is_set():
                stop.wait(delay)
                delay = min(self.reconnect_max_s, delay * 2)

    def _session(self, sock: socket.socket, emit: Callable[[GpsSample], None], stop: threading.Event) -> bool:
        """Read reports until the connection ends; True when at least one report came."""
        sock.settimeout(1.0)  # wake up to look at ``stop``
        sock.sendall(WATCH_COMMAND)
        buf = bytearray()
        got_any = False
        last_data = time.monotonic()
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() - last_data > self.idle_timeout_s:
                    self._count("idle")
                    log.info("gpsd %s:%s: silent for %.0f s, reconnecting", self.host, self.port, self.idle_timeout_s)
                    return got_any
                continue
            if not chunk:
                self._count("disconnected")
                log.info("gpsd %s:%s: closed the connection", self.host, self.port)
                return got_any
            last_data = time.monotonic()
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    break
                line = bytes(buf[:end]).strip()
                del buf[: end + 1]
                if line:
                    got_any = True
                    self._handle(line, emit)
            if len(buf) > _MAX_LINE:
                self._count("bad_report")
                buf.clear()
        return got_any

    def _handle(self, line: bytes, emit: Callable[[GpsSample], None]) -> None:
        cls, sample = parse_report(line)
        if cls is None:
            self._count("bad_report")
        elif cls == "TPV":
            if sample is None:
                self._count("no_fix")
            else:
                self.fixes += 1
                emit(sample)


class FakeGps:
    """A van driving round a circle (radius ``radius_m`` metres at ``speed_mps`` m/s) with a
    fix every 1/``rate_hz`` seconds, stamped with the system clock (UTC)."""

    def __init__(
        self,
        rate_hz: float = 1.0,
        *,
        lat: float = 60.1699,
        lon: float = 24.9384,
        radius_m: float = 500.0,
        speed_mps: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self.rate_hz, self.lat, self.lon = rate_hz, lat, lon
        self.radius_m, self.speed_mps = radius_m, speed_mps
        self._clock = clock
        self._t0 = time.monotonic()
        self.fixes = 0
        self.connected = True

    def faults(self) -> dict[str, int]:
        return {}

    def sample(self, elapsed_s: float, when: datetime) -> GpsSample:
        """The fix ``elapsed_s`` seconds into the drive."""
        angle = self.speed_mps * elapsed_s / self.radius_m  # radians travelled, counter-clockwise
        north, east = self.radius_m * math.sin(angle), self.radius_m * math.cos(angle)
        lat = self.lat + math.degrees(north / 6_371_008.8)
        lon = self.lon + math.degrees(east / (6_371_008.8 * math.cos(math.radians(self.lat))))
        heading = (math.degrees(math.atan2(-math.sin(angle), math.cos(angle))) + 360.0) % 360.0  # tangent
        return GpsSample(
            time=when,
            lat=lat,
            lon=lon,
            mode=3,
            speed_mps=self.speed_mps,
            heading_deg=heading,
            accuracy_m=3.0,
            alt_m=15.0,
        )

    def run(self, emit: Callable[[GpsSample], None], stop: threading.Event) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not stop.is_set():
            emit(self.sample(time.monotonic() - self._t0, self._clock()))
            self.fixes += 1
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))
