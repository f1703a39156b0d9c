"""The agent's GPS sensor against a real gpsd, fed by gpsfake with real receivers' NMEA logs.

The logs are gpsd's own test data (``test/daemon/*.log`` in Debian's gpsd source
package). They are fetched at set-up time with ``apt-get source --download-only
gpsd`` into a cache folder outside the repository (``$FLEETSTREAM_CACHE_DIR/gpsd-src``,
default ``/var/cache/fleetstream/gpsd-src``), through a private sources list whose
``deb-src`` URI is read from the machine's own apt configuration; the system's apt
state is not touched. Needs Debian's ``gpsd`` and ``gpsd-clients`` (gpsfake).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.agent.sampling import GpsPolicy, GpsSample, GpsSampler, distance_m, turn_deg
from edge.agent.sensors.gps import GpsdSource

pytestmark = pytest.mark.skipif(
    shutil.which("gpsfake") is None or shutil.which("gpsd") is None,
    reason="gpsfake/gpsd not installed (Debian packages gpsd and gpsd-clients)",
)

CACHE = Path(os.environ.get("FLEETSTREAM_CACHE_DIR", "/var/cache/fleetstream")) / "gpsd-src"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BOAT = "bundg_zeus_9.log"  # B&G Zeus² chartplotter on the IJsselmeer, moving at ~5.5 knots
WALK = "haicom-305N.log"  # SiRF-II receiver near Brisbane, walking
KNOT = 1852.0 / 3600.0  # m/s


# ---------------------------------------------------------------- fetching gpsd's test logs


def _debian_mirror_uri() -> str:
    """The machine's main Debian archive URI (deb822 sources first, then sources.list)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for stanza in re.split(r"\n\s*\n", deb822.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if fields.get("URIs") and "security" not in fields.get("Suites", ""):
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if "://" in p)
    raise RuntimeError("no Debian archive URI in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")


def _codename() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or "bookworm"
    return "bookworm"


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def fetch_gpsd_logs(cache: Path = CACHE) -> Path:
    """gpsd's ``test/daemon/*.log`` files, extracted into ``cache/logs`` (downloaded once)."""
    logs = cache / "logs"
    if (logs / BOAT).exists() and (logs / WALK).exists():
        return logs
    apt, src = cache / "apt", cache / "src"
    for d in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial", src):
        d.mkdir(parents=True, exist_ok=True)
    if not list(src.glob("gpsd_*.orig.tar.*")):
        (apt / "sources.list").write_text(f"deb-src [signed-by={KEYRING}] {_debian_mirror_uri()} {_codename()} main\n")
        opts = [
            "-o",
            f"Dir::Etc::SourceList={apt / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            f"Dir::State::Lists={apt / 'lists'}",
            "-o",
            f"Dir::Cache={apt / 'cache'}",
        ]
        _run(["apt-get", "-q", *opts, "update"])
        _run(["apt-get", "-q", *opts, "source", "--download-only", "gpsd"], cwd=src)
    tarball = sorted(src.glob("gpsd_*.orig.tar.*"))[-1]
    tmp = cache / "logs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and parts[-3:-1] == ("test", "daemon") and member.name.endswith(".log"):
                extracted = tar.extractfile(member)
                assert extracted is not None
                (tmp / parts[-1]).write_bytes(extracted.read())
    shutil.rmtree(logs, ignore_errors=True)
    tmp.rename(logs)
    return logs


@pytest.fixture(scope="module")
def gpsd_logs() -> Path:
    return fetch_gpsd_logs()


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gpsfake(log: Path, port: int, cycle_s: float = 0.002) -> Iterator[subprocess.Popen[bytes]]:
    """A real gpsd on ``port`` replaying ``log`` once, one sentence every ``cycle_s`` seconds.

    ``-n``: gpsd reads the fake receiver at once, not only once a client watches (else
    the first sentences pile up unread in the pty and a short log may never be seen).
    """
    proc = subprocess.Popen(
        ["gpsfake", "-P", str(port), "-n", "-1", "-q", "-c", str(cycle_s), str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # its own group: gpsfake and the gpsd it runs
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert proc.poll() is None, f"gpsfake exited with {proc.returncode}"
            time.sleep(0.1)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Collector:
    """Runs a GpsdSource in a thread and keeps what it emits."""

    def __init__(self, source: GpsdSource) -> None:
        self.source = source
        self.samples: list[GpsSample] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(self.samples.append, self.stop), daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Callable[[list[GpsSample]], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(list(self.samples)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what} ({len(self.samples)} fixes)")
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def rmc_fixes(log: Path, day: datetime) -> dict[datetime, tuple[float, float, float | None]]:
    """{fix time: (lat, lon, speed m/s)} of the valid RMC sentences in an NMEA log."""
    out = {}
    for line in log.read_bytes().decode("ascii", errors="replace").splitlines():
        f = line.split("*")[0].split(",")
        if not (f[0].startswith("$") and f[0].endswith("RMC")) or len(f) < 8 or f[2] != "A" or not f[1]:
            continue
        hhmmss = f[1].split(".")[0]
        when = day.replace(hour=int(hhmmss[:2]), minute=int(hhmmss[2:4]), second=int(hhmmss[4:6]))
        lat = (int(f[3][:2]) + float(f[3][2:]) / 60) * (-1 if f[4] == "S" else 1)
        lon = (int(f[5][:3]) + float(f[5][3:]) / 60) * (-1 if f[6] == "W" else 1)
        out[when] = (lat, lon, float(f[7]) * KNOT if f[7] else None)
    return out


# ---------------------------------------------------------------- tests


def test_fixes_from_a_real_receiver_log_match_its_nmea(gpsd_logs: Path) -> None:
    log = gpsd_logs / BOAT
    truth = rmc_fixes(log, datetime(2018, 8, 20, tzinfo=UTC))
    assert len(truth) > 100
    port = free_port()
    with gpsfake(log, port):
        collector = Collector(GpsdSource("127.0.0.1", port, reconnect_min_s=0.2, reconnect_max_s=1.0))
        try:
            collector.wait_for(lambda got: len({s.time for s in got}) >= 80, 120, "80 distinct fix times")
        finally:
            collector.close()
    samples = collector.samples
    assert all(s.mode in (2, 3) for s in samples)
    assert all(b.time >= a.time for a, b in zip(samples, samples[1:], strict=False))  # gpsd reports in order
    checked = 0
    speeds: list[bool] = []
    for s in samples:
        assert s.time.tzinfo is not None
        near = [truth[t] for t in (s.time, s.time - timedelta(seconds=1)) if t in truth]
        if not near:
            continue
        lat, lon, speed = near[0]
        assert distance_m(s.lat, s.lon, lat, lon) < 30.0, (s, near[0])
        if speed is not None and s.speed_mps is not None:
            speeds.append(abs(s.speed_mps - speed) < 1.0)
        checked += 1
    assert checked >= 0.8 * len(samples)
    # this chartplotter also sends sentences from which gpsd reports speed 0: most agree with RMC
    assert sum(speeds) >= 0.7 * len(speeds), f"{sum(speeds)} of {len(speeds)} speeds agree with RMC"
    assert any(s.accuracy_m is not None for s in samples) and any(s.heading_deg is not None for s in samples)

    # the sampler thins ~2 minutes of a slow-moving boat down to a few fixes
    sampler = GpsSampler(GpsPolicy())
    sent = [s for s in samples if sampler.update(s)]
    assert sent[0] is samples[0]
    assert 3 <= len(sent) <= 30, len(sent)
    for a, b in zip(sent, sent[1:], strict=False):
        moved = distance_m(a.lat, a.lon, b.lat, b.lon) >= 100
        waited = (b.time - a.time).total_seconds() >= 30
        turned = (
            a.heading_deg is not None and b.heading_deg is not None and turn_deg(a.heading_deg, b.heading_deg) >= 30
        )
        assert moved or waited or turned


def test_the_sensor_reconnects_when_gpsd_goes_away_and_comes_back(gpsd_logs: Path) -> None:
    port = free_port()
    collector = Collector(GpsdSource("127.0.0.1", port, reconnect_min_s=0.2, reconnect_max_s=0.5))
    try:
        with gpsfake(gpsd_logs / WALK, port, cycle_s=0.02):
            collector.wait_for(lambda got: any(s.lat < -27 for s in got), 90, "fixes near Brisbane")
        deadline = time.monotonic() + 20
        while collector.source.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not collector.source.connected
        with gpsfake(gpsd_logs / BOAT, port):  # a new gpsd on the same port, another receiver
            collector.wait_for(lambda got: any(s.lat > 52 for s in got), 90, "fixes on the IJsselmeer")
        assert collector.source.faults().get("disconnected", 0) >= 1
    finally:
        collector.close()
