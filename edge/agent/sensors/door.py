"""Door contacts on GPIO lines (via the ``gpiod`` package), debounced; and a fake line.

A reed switch wired between a GPIO line and ground, with the line's pull-up on,
reads low while the magnet holds it closed and high when the door opens:
``open_level = 1`` (the default). A contact bounces for a few milliseconds; a new
level counts only once it has held for ``debounce_s`` seconds, and the event is
stamped with the moment the level first changed.

``gpiod`` is optional: both its 1.x API (Debian's ``python3-libgpiod``) and its 2.x
API (the ``gpiod`` package) are supported. Without it, :class:`GpiodLine` raises
:class:`DoorSensorError` with what to install.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from edge.agent.sampling import DoorSample

__all__ = ["Debouncer", "DoorLine", "GpiodLine", "FakeDoorLine", "DoorContact", "DoorPoller", "DoorSensorError"]

log = logging.getLogger("fleetstream.edge.door")
CONSUMER = "fleetstream-edge"


class DoorSensorError(RuntimeError):
    """A door line that cannot be opened (no ``gpiod``, no such chip or line)."""


class DoorLine(Protocol):
    """A digital input: ``get_value()`` returns 0 or 1."""

    def get_value(self) -> int: ...


@dataclass
class Debouncer:
    """A level counts once it has held for ``debounce_s`` seconds (pure; time is passed in).

    ``update(level, now)`` returns the new stable level when it changes (the first
    stable level included), else None; ``since`` is when that level began.
    """

    debounce_s: float
    stable: int | None = None
    candidate: int | None = None
    since: float = 0.0

    def update(self, level: int, now: float) -> int | None:
        if level != self.candidate:
            self.candidate, self.since = level, now
        if self.candidate != self.stable and now - self.since >= self.debounce_s:
            self.stable = self.candidate
            return self.stable
        return None


class FakeDoorLine:
    """A line for tests and demos: set ``value``, or give ``toggle_s`` to flip it on its own."""

    def __init__(
        self, value: int = 0, toggle_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.value = value
        self.toggle_s = toggle_s
        self._clock = clock
        self._t0 = clock()

    def get_value(self) -> int:
        if self.toggle_s:
            return (self.value + int((self._clock() - self._t0) / self.toggle_s)) % 2
        return self.value


class GpiodLine:
    """One input line of a GPIO chip (``/dev/gpiochip0``, line offset ``line``), pull-up on."""

    def __init__(self, chip: str, line: int, *, bias: str = "pull_up") -> None:
        try:
            gpiod: Any = importlib.import_module("gpiod")
        except ImportError:
            raise DoorSensorError(
                "a GPIO door contact needs the 'gpiod' Python package (pip install gpiod, or Debian's "
                "python3-libgpiod in a venv made with --system-site-packages); set the door's source to "
                "'fake' or 'off' to run without it"
            ) from None
        self.chip, self.line = chip, line
        try:
            if hasattr(gpiod, "request_lines"):  # gpiod 2.x
                from gpiod.line import Bias, Direction, Value

                biases = {"pull_up": Bias.PULL_UP, "pull_down": Bias.PULL_DOWN, "none": Bias.DISABLED}
                settings = gpiod.LineSettings(direction=Direction.INPUT, bias=biases[bias])
                request = gpiod.request_lines(chip, consumer=CONSUMER, config={line: settings})
                self._read: Callable[[], int] = lambda: int(request.get_value(line) == Value.ACTIVE)
            else:  # gpiod 1.x
                flags = {
                    "pull_up": getattr(gpiod, "LINE_REQ_FLAG_BIAS_PULL_UP", 0),
                    "pull_down": getattr(gpiod, "LINE_REQ_FLAG_BIAS_PULL_DOWN", 0),
                    "none": 0,
                }[bias]
                handle = gpiod.Chip(chip).get_line(line)
                handle.request(consumer=CONSUMER, type=gpiod.LINE_REQ_DIR_IN, flags=flags)
                self._read = lambda: int(handle.get_value())
        except (OSError, ValueError, KeyError) as exc:
            raise DoorSensorError(f"cannot open GPIO line {line} of {chip}: {exc}") from exc

    def get_value(self) -> int:
        return self._read()


class DoorContact:
    """One door: a line, its open level and a debouncer. ``poll`` returns a sample on a change."""

    def __init__(self, door: str, line: DoorLine, *, debounce_s: float = 0.2, open_level: int = 1) -> None:
        self.door, self.line, self.open_level = door, line, open_level
        self.debouncer = Debouncer(debounce_s)

    def poll(self, now: float, wall: datetime) -> DoorSample | None:
        """Read the line at monotonic ``now`` / UTC ``wall``; a sample when the stable state changed."""
        level = self.line.get_value()
        stable = self.debouncer.update(level, now)
        if stable is None:
            return None
        began = wall - timedelta(seconds=max(0.0, now - self.debouncer.since))
        return DoorSample(began, self.door, stable == self.open_level)


class DoorPoller:
    """Polls door contacts every ``poll_s`` seconds (one thread for all doors)."""

    def __init__(
        self,
        contacts: Sequence[DoorContact],
        poll_s: float = 0.1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.contacts = list(contacts)
        self.poll_s = poll_s
        self._clock = clock
        self._faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.events = 0

    def faults(self) -> dict[str, int]:
        """``<door>.read_error`` counts."""
        with self._lock:
            return dict(self._faults)

    def run(self, emit: Callable[[DoorSample], None], stop: threading.Event) -> None:
        while not stop.is_set():
            now, wall = time.monotonic(), self._clock()
            for contact in self.contacts:
                try:
                    sample = contact.poll(now, wall)
                except OSError as exc:
                    with self._lock:
                        self._faults[f"{contact.door}.read_error"] += 1
                    log.warning("door %s: %s", contact.door, exc)
                    continue
                if sample is not None:
                    self.events += 1
                    emit(sample)
            stop.wait(self.poll_s)
