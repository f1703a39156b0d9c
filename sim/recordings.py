"""Real dense GPS recordings as ground truth: parse them, find where the vehicle stood, and
thin them to what a sparse device would have sent.

Formats: GPX (1.0 and 1.1, ``trkpt`` only, with the 1.0 ``speed`` / ``course`` when there),
TCX (``Trackpoint``) and NMEA 0183 (``RMC``, checksums verified; ``GGA`` adds the HDOP).
Times are UTC. Pure: text in, values out (``fleetstream/traces.py`` fetches the files).

Ground truth from the dense trace (``dense_stops``), by the definitions used throughout:
a fix's *speed* is its displacement across a window of +-3 s (at least one fix on each
side; a logger that records less often, or not at all while it stands, leaves none: then
its nearest fixes up to 300 s away) over the window's span; a *stop* is a run of fixes slower than 1 m/s lasting more
than 20 s, placed at the median of its positions. ``subsample`` keeps the first fix at or
after each tick of a grid of ``period_s`` seconds from ``offset_s`` (what a device
reporting every ``period_s`` seconds would have sent).
"""

from __future__ import annotations

import math
import re
import statistics
import xml.etree.ElementTree as ET
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.geo import haversine_m

__all__ = [
    "DenseStop",
    "Fix",
    "dense_speeds",
    "dense_stops",
    "parse",
    "parse_gpx",
    "parse_nmea",
    "parse_tcx",
    "sessions",
    "subsample",
]

KNOT_MPS = 1852.0 / 3600.0


@dataclass(frozen=True, slots=True)
class Fix:
    """One recorded fix: UTC time, degrees, the device's speed (m/s) and course (degrees) when
    it recorded them, and the HDOP-based accuracy in metres (5 m per unit of HDOP) when known."""

    time: datetime
    lat: float
    lon: float
    speed_mps: float | None = None
    heading_deg: float | None = None
    accuracy_m: float | None = None


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None and text.strip() else None
    except ValueError:
        return None


def parse_gpx(text: str) -> list[Fix]:
    """The ``trkpt`` fixes of a GPX file (waypoints and route points are not a track), in time order."""
    out: list[Fix] = []
    for el in ET.fromstring(text).iter():
        if _local(el.tag) != "trkpt":
            continue
        lat, lon = _float(el.get("lat")), _float(el.get("lon"))
        children = {_local(c.tag): c.text for c in el}
        if lat is None or lon is None or not children.get("time"):
            continue
        hdop = _float(children.get("hdop"))
        out.append(
            Fix(
                _time(children["time"] or ""),
                lat,
                lon,
                _float(children.get("speed")),
                _float(children.get("course")),
                None if hdop is None else 5.0 * hdop,
            )
        )
    out.sort(key=lambda f: f.time)
    return out


def parse_tcx(text: str) -> list[Fix]:
    """The ``Trackpoint`` fixes with a position of a TCX file, in time order."""
    out: list[Fix] = []
    for el in ET.fromstring(text).iter():
        if _local(el.tag) != "Trackpoint":
            continue
        when = lat = lon = None
        for c in el.iter():
            name = _local(c.tag)
            if name == "Time":
                when = c.text
            elif name == "LatitudeDegrees":
                lat = _float(c.text)
            elif name == "LongitudeDegrees":
                lon = _float(c.text)
        if when and lat is not None and lon is not None:
            out.append(Fix(_time(when), lat, lon))
    out.sort(key=lambda f: f.time)
    return out


def _nmea_ok(line: str) -> bool:
    m = re.fullmatch(r"\$([^*]+)\*([0-9A-Fa-f]{2})", line.strip())
    if m is None:
        return False
    check = 0
    for ch in m.group(1):
        check ^= ord(ch)
    return check == int(m.group(2), 16)


def _degrees(value: str, hemisphere: str) -> float:
    raw = float(value)
    deg = int(raw // 100)
    out = deg + (raw - 100 * deg) / 60.0
    return -out if hemisphere in ("S", "W") else out


def parse_nmea(text: str) -> list[Fix]:
    """Fixes from the valid ``RMC`` sentences (status A, checksum right) of an NMEA log; the
    ``GGA`` just before gives the HDOP. Two-digit years are taken as 20YY."""
    out: list[Fix] = []
    hdop: float | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("$") or not _nmea_ok(line):
            continue
        fields = line.split("*")[0].split(",")
        kind = fields[0][3:]
        if kind == "GGA" and len(fields) > 8:
            hdop = _float(fields[8])
        elif kind == "RMC" and len(fields) > 9 and fields[2] == "A" and fields[3] and fields[5] and fields[9]:
            hms, date = fields[1], fields[9]
            when = datetime(
                2000 + int(date[4:6]),
                int(date[2:4]),
                int(date[0:2]),
                int(hms[0:2]),
                int(hms[2:4]),
                int(float(hms[4:])),
                int(round((float(hms[4:]) % 1) * 1e6)) % 1_000_000,
                tzinfo=UTC,
            )
            knots = _float(fields[7])
            out.append(
                Fix(
                    when,
                    _degrees(fields[3], fields[4]),
                    _degrees(fields[5], fields[6]),
                    None if knots is None else knots * KNOT_MPS,
                    _float(fields[8]),
                    None if hdop is None else 5.0 * hdop,
                )
            )
    out.sort(key=lambda f: f.time)
    return out


def parse(name: str, text: str) -> list[Fix]:
    """By the file's extension: ``.gpx``, ``.tcx`` or ``.nmea``."""
    if name.endswith(".gpx"):
        return parse_gpx(text)
    if name.endswith(".tcx"):
        return parse_tcx(text)
    if name.endswith(".nmea"):
        return parse_nmea(text)
    raise ValueError(f"{name}: not a GPX, TCX or NMEA file")


def sessions(fixes: Sequence[Fix], gap_s: float = 300.0) -> list[list[Fix]]:
    """The recording cut at gaps longer than ``gap_s`` (multi-day and multi-trip files)."""
    out: list[list[Fix]] = []
    for f in fixes:
        if out and (f.time - out[-1][-1].time).total_seconds() <= gap_s:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def dense_speeds(fixes: Sequence[Fix], half_window_s: float = 3.0, reach_s: float = 300.0) -> list[float | None]:
    """Each fix's speed (m/s): displacement across +-``half_window_s`` (the furthest fixes within
    it, at least one on each side; a logger that records less often, or pauses while the
    vehicle stands, leaves none: then the nearest one up to ``reach_s`` away, so a pause of a
    few minutes with the vehicle where it was reads as standing) over their time span; None
    at the ends."""
    times = [f.time.timestamp() for f in fixes]
    out: list[float | None] = []
    for i, t in enumerate(times):
        a = bisect_left(times, t - half_window_s - 1e-6)
        b = bisect_left(times, t + half_window_s + 1e-6) - 1
        if a >= i and i > 0 and t - times[i - 1] <= reach_s:
            a = i - 1
        if b <= i and i + 1 < len(times) and times[i + 1] - t <= reach_s:
            b = i + 1
        if a >= i or b <= i:
            out.append(None)
            continue
        span = times[b] - times[a]
        out.append(haversine_m(fixes[a].lat, fixes[a].lon, fixes[b].lat, fixes[b].lon) / span if span > 0 else None)
    return out


@dataclass(frozen=True, slots=True)
class DenseStop:
    """Where a dense trace stood: from ``start`` to ``end`` (UTC) at (lat, lon), the median
    of its positions; ``spread_m`` is their largest distance from it."""

    start: datetime
    end: datetime
    lat: float
    lon: float
    spread_m: float

    @property
    def dwell_s(self) -> float:
        return (self.end - self.start).total_seconds()


def dense_stops(fixes: Sequence[Fix], slow_mps: float = 1.0, min_s: float = 20.0) -> list[DenseStop]:
    """Runs of fixes slower than ``slow_mps`` lasting more than ``min_s`` seconds."""
    speeds = dense_speeds(fixes)
    out: list[DenseStop] = []
    run: list[Fix] = []

    def close() -> None:
        if run and (run[-1].time - run[0].time).total_seconds() > min_s:
            lat = statistics.median(f.lat for f in run)
            lon = statistics.median(f.lon for f in run)
            spread = max(haversine_m(lat, lon, f.lat, f.lon) for f in run)
            out.append(DenseStop(run[0].time, run[-1].time, lat, lon, spread))

    for f, v in zip(fixes, speeds, strict=True):
        if v is not None and v < slow_mps:
            run.append(f)
        else:
            close()
            run = []
    close()
    return out


def subsample(fixes: Sequence[Fix], period_s: float, offset_s: float = 0.0) -> list[Fix]:
    """The first fix at or after each tick ``t0 + offset_s + k * period_s`` (each fix at most once)."""
    if not fixes:
        return []
    t0 = fixes[0].time + timedelta(seconds=offset_s)
    out: list[Fix] = []
    tick = t0
    for f in fixes:
        if f.time >= tick:
            out.append(f)
            k = math.floor((f.time - t0).total_seconds() / period_s) + 1
            tick = t0 + timedelta(seconds=k * period_s)
    return out


def path_points(fixes: Iterable[Fix]) -> list[tuple[float, float]]:
    """(lat, lon) of the fixes."""
    return [(f.lat, f.lon) for f in fixes]
