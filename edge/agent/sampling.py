"""Which sensor samples become readings: the edge agent's sampling policy (pure).

Commercial trackers do not send every GPS fix. A fix is sent when the vehicle
moved at least ``min_distance_m`` metres or turned at least ``min_turn_deg``
degrees since the last fix sent, or when ``moving_period_s`` seconds passed
while moving (``parked_period_s`` while parked). A temperature is sent every
``period_s`` seconds per probe, and at once when it crosses one of
``thresholds_c``. A door change is always sent.

Everything here is pure: time comes from the samples (UTC), nothing reads the
clock or does I/O, so the samplers can be tested with a scripted stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "GpsSample",
    "TemperatureSample",
    "DoorSample",
    "Sample",
    "GpsPolicy",
    "TemperaturePolicy",
    "GpsSampler",
    "TemperatureSampler",
    "DoorSampler",
    "Sampler",
    "distance_m",
    "turn_deg",
]

_EARTH_RADIUS_M = 6_371_008.8


# ---------------------------------------------------------------- samples


@dataclass(frozen=True, slots=True)
class GpsSample:
    """One fix from the receiver. ``time`` is the fix time (UTC); degrees WGS84,
    m/s, degrees clockwise from north, metres. ``mode``: 1 no fix, 2 2D, 3 3D."""

    time: datetime
    lat: float
    lon: float
    mode: int = 3
    speed_mps: float | None = None
    heading_deg: float | None = None
    accuracy_m: float | None = None
    alt_m: float | None = None


@dataclass(frozen=True, slots=True)
class TemperatureSample:
    """One probe reading in degrees Celsius taken at ``time`` (UTC)."""

    time: datetime
    sensor: str
    celsius: float


@dataclass(frozen=True, slots=True)
class DoorSample:
    """A door's debounced state (``open`` true when open) since ``time`` (UTC)."""

    time: datetime
    door: str
    open: bool


Sample = GpsSample | TemperatureSample | DoorSample


# ---------------------------------------------------------------- policies


@dataclass(frozen=True)
class GpsPolicy:
    """When a fix is sent. Metres, degrees, seconds, m/s. A threshold of 0 sends every fix."""

    min_distance_m: float = 100.0
    min_turn_deg: float = 30.0
    moving_period_s: float = 30.0
    parked_period_s: float = 300.0
    moving_speed_mps: float = 1.5  # at or above: moving (and the heading is trusted)


@dataclass(frozen=True)
class TemperaturePolicy:
    """When a probe reading is sent: every ``period_s`` seconds (0: every reading), and
    at once when it rises above a threshold (°C) or falls ``hysteresis_c`` below it."""

    period_s: float = 300.0
    thresholds_c: tuple[float, ...] = (2.0, 8.0)
    hysteresis_c: float = 0.3


# ---------------------------------------------------------------- geometry


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine on the mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def turn_deg(a: float, b: float) -> float:
    """Smallest angle in degrees (0-180) between two headings."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


# ---------------------------------------------------------------- samplers


@dataclass
class GpsSampler:
    """Decides per fix whether to send it; remembers the last fix sent."""

    policy: GpsPolicy = field(default_factory=GpsPolicy)
    last: GpsSample | None = None

    def update(self, fix: GpsSample) -> bool:
        """True when ``fix`` should be sent (and it becomes the reference)."""
        if fix.mode < 2:
            return False
        if self._should_send(fix):
            self.last = fix
            return True
        return False

    def _should_send(self, fix: GpsSample) -> bool:
        last, p = self.last, self.policy
        if last is None:
            return True
        elapsed = (fix.time - last.time).total_seconds()
        if elapsed < 0:
            return True  # the receiver's clock jumped back: restart from this fix
        if distance_m(last.lat, last.lon, fix.lat, fix.lon) >= p.min_distance_m:
            return True
        moving = fix.speed_mps is not None and fix.speed_mps >= p.moving_speed_mps
        if (
            moving
            and fix.heading_deg is not None
            and last.heading_deg is not None
            and turn_deg(fix.heading_deg, last.heading_deg) >= p.min_turn_deg
        ):
            return True
        return elapsed >= (p.moving_period_s if moving else p.parked_period_s)

    def snapshot(self) -> dict[str, Any]:
        return {"last": self.last}


@dataclass
class _ProbeState:
    last_sent: datetime
    above: list[bool]


@dataclass
class TemperatureSampler:
    """Decides per probe reading whether to send it."""

    policy: TemperaturePolicy = field(default_factory=TemperaturePolicy)
    probes: dict[str, _ProbeState] = field(default_factory=dict)

    def update(self, sample: TemperatureSample) -> bool:
        """True when ``sample`` should be sent: first of its probe, period over, or a crossing."""
        p = self.policy
        state = self.probes.get(sample.sensor)
        if state is None:
            self.probes[sample.sensor] = _ProbeState(sample.time, [sample.celsius > t for t in p.thresholds_c])
            return True
        crossed = False
        for i, threshold in enumerate(p.thresholds_c):
            if not state.above[i] and sample.celsius > threshold:
                state.above[i] = crossed = True
            elif state.above[i] and sample.celsius < threshold - p.hysteresis_c:
                state.above[i] = False
                crossed = True
        elapsed = (sample.time - state.last_sent).total_seconds()
        if crossed or elapsed >= p.period_s or elapsed < 0:
            state.last_sent = sample.time
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        return {name: {"last_sent": s.last_sent, "above": list(s.above)} for name, s in self.probes.items()}


@dataclass
class DoorSampler:
    """Sends a door's first known state and every change of it."""

    states: dict[str, bool] = field(default_factory=dict)

    def update(self, sample: DoorSample) -> bool:
        if self.states.get(sample.door) is sample.open:
            return False
        self.states[sample.door] = sample.open
        return True

    def snapshot(self) -> dict[str, Any]:
        return dict(self.states)


@dataclass
class Sampler:
    """The three samplers behind one verb: ``update(sample) -> send?``."""

    gps: GpsSampler = field(default_factory=GpsSampler)
    temperature: TemperatureSampler = field(default_factory=TemperatureSampler)
    door: DoorSampler = field(default_factory=DoorSampler)

    @classmethod
    def from_policies(cls, gps: GpsPolicy, temperature: TemperaturePolicy) -> Sampler:
        return cls(GpsSampler(gps), TemperatureSampler(temperature), DoorSampler())

    def update(self, sample: Sample) -> bool:
        if isinstance(sample, GpsSample):
            return self.gps.update(sample)
        if isinstance(sample, TemperatureSample):
            return self.temperature.update(sample)
        return self.door.update(sample)

    def snapshot(self) -> dict[str, Any]:
        return {"gps": self.gps.snapshot(), "temperature": self.temperature.snapshot(), "door": self.door.snapshot()}
