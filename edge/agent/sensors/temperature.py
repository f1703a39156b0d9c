"""DS18B20 1-Wire temperature probes via the kernel's sysfs, and a fake twin.

The w1-therm driver exposes each probe as ``/sys/bus/w1/devices/28-<serial>/w1_slave``;
reading it runs a conversion (about 750 ms) and returns two lines::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

The first line ends in ``YES`` when the scratchpad's CRC is right; ``t=`` on the
second is the temperature in milli-degrees Celsius. Faults are counted and
reported, never sent as readings:

``crc``       the first line ends in ``NO`` (a noisy or long bus)
``power_on``  ``t=85000``: the power-on reset value, the probe lost power mid-conversion
``no_data``   an all-zero scratchpad (a probe that dropped off the bus) or no ``t=``
``missing``   a configured probe's folder is gone
``read_error`` the file could not be read
``no_probes`` no ``28-*`` probe was found at all
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge.agent.sampling import TemperatureSample

__all__ = ["W1Thermometers", "FakeThermometers", "ProbeFault", "parse_w1_slave", "W1_DEVICES"]

log = logging.getLogger("fleetstream.edge.temperature")

W1_DEVICES = Path("/sys/bus/w1/devices")
DS18B20_FAMILY = "28-"
POWER_ON_MILLI_C = 85000


class ProbeFault(Exception):
    """A probe read that must not become a reading; ``kind`` is a stable code."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def parse_w1_slave(text: str) -> float:
    """Degrees Celsius from the contents of ``w1_slave``; raises :class:`ProbeFault`."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2:
        raise ProbeFault("no_data", f"{len(lines)} line(s)")
    if not lines[0].endswith("YES"):
        raise ProbeFault("crc", lines[0])
    scratchpad = lines[0].split(":", 1)[0].split()
    if scratchpad and all(byte == "00" for byte in scratchpad):
        raise ProbeFault("no_data", "all-zero scratchpad")
    _, sep, raw = lines[1].rpartition("t=")
    if not sep:
        raise ProbeFault("no_data", "no t= field")
    try:
        milli = int(raw)
    except ValueError:
        raise ProbeFault("no_data", f"t={raw!r}") from None
    if milli == POWER_ON_MILLI_C:
        raise ProbeFault("power_on", "t=85000 (power-on reset value)")
    return milli / 1000.0


class W1Thermometers:
    """Polls DS18B20 probes every ``poll_s`` seconds.

    ``names`` maps probe ids (``28-0000075565c2``) to sensor names (``reefer``); when
    empty, every ``28-*`` probe present is read under its own id.
    """

    def __init__(
        self,
        devices_dir: str | Path = W1_DEVICES,
        names: dict[str, str] | None = None,
        *,
        poll_s: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.devices_dir = Path(devices_dir)
        self.names = dict(names or {})
        self.poll_s = poll_s
        self._clock = clock
        self._faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.readings = 0

    def faults(self) -> dict[str, int]:
        """Fault counts keyed ``<sensor>.<kind>`` (``all.no_probes`` when none is found)."""
        with self._lock:
            return dict(self._faults)

    def _fault(self, sensor: str, kind: str, detail: str) -> None:
        with self._lock:
            self._faults[f"{sensor}.{kind}"] += 1
            first = self._faults[f"{sensor}.{kind}"] == 1
        (log.warning if first else log.debug)("probe %s: %s %s", sensor, kind, detail)

    def probes(self) -> dict[str, str]:
        """{probe id: sensor name} to read now."""
        if self.names:
            return dict(self.names)
        found = sorted(p.name for p in self.devices_dir.glob(f"{DS18B20_FAMILY}*"))
        return {probe: probe for probe in found}

    def read(self) -> list[TemperatureSample]:
        """One reading of every probe; faults are counted, not returned."""
        out: list[TemperatureSample] = []
        probes = self.probes()
        if not probes:
            self._fault("all", "no_probes", f"no {DS18B20_FAMILY}* folder in {self.devices_dir}")
        for probe, sensor in probes.items():
            path = self.devices_dir / probe / "w1_slave"
            try:
                text = path.read_text(encoding="ascii", errors="replace")
                when = self._clock()
                celsius = parse_w1_slave(text)
            except FileNotFoundError:
                self._fault(sensor, "missing", str(path))
                continue
            except OSError as exc:
                self._fault(sensor, "read_error", str(exc))
                continue
            except ProbeFault as fault:
                self._fault(sensor, fault.kind, str(fault))
                continue
            self.readings += 1
            out.append(TemperatureSample(when, sensor, celsius))
        return out

    def run(self, emit: Callable[[TemperatureSample], None], stop: threading.Event) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            for sample in self.read():
                emit(sample)
            next_at = max(next_at + self.poll_s, time.monotonic())
            stop.wait(max(0.0, next_at - time.monotonic()))


class FakeThermometers:
    """Probes that swing slowly round ``base_c`` (±``swing_c`` over ``cycle_s`` seconds) in
    DS18B20 steps of 1/16 °C, one reading per probe every 1/``rate_hz`` seconds."""

    def __init__(
        self,
        sensors: tuple[str, ...] = ("reefer",),
        rate_hz: float = 0.1,
        *,
        base_c: float = 4.0,
        swing_c: float = 3.0,
        cycle_s: float = 600.0,
        seed: int = 7,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self.sensors, self.rate_hz = tuple(sensors), rate_hz
        self.base_c, self.swing_c, self.cycle_s = base_c, swing_c, cycle_s
        self._rng = random.Random(seed)
        self._clock = clock
        self._t0 = time.monotonic()
        self.readings = 0

    def faults(self) -> dict[str, int]:
        return {}

    def read(self) -> list[TemperatureSample]:
        when = self._clock()
        phase = 2 * math.pi * (time.monotonic() - self._t0) / self.cycle_s
        out = []
        for i, sensor in enumerate(self.sensors):
            raw = self.base_c + self.swing_c * math.sin(phase + i) + self._rng.gauss(0.0, 0.05)
            out.append(TemperatureSample(when, sensor, round(raw * 16) / 16))
        self.readings += len(out)
        return out

    def run(self, emit: Callable[[TemperatureSample], None], stop: threading.Event) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not stop.is_set():
            for sample in self.read():
                emit(sample)
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))
