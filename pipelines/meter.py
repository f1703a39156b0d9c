"""Where the analytics dataflow's wall time goes, so a stall says why.

The flow runs in one process (one Bytewax worker), so its source, its per-vehicle step and
its sink share one ``FlowMeter`` (``METER``). Each of them wraps its work in ``phase(name)``:

- ``source``: reading committed rows from TimescaleDB;
- ``step``: the vehicles' analytics on an input batch (with the late-data replays it ran:
  ``corrections``, ``replayed`` history entries);
- ``notify``: vehicles woken by their timers;
- ``sink``: writing results;
- ``snapshot``: Bytewax asking each vehicle for its state at the end of an epoch.

Wall time between two phases is Bytewax's own work; after a ``snapshot`` phase it is
serialising the states and writing the recovery store (``snapshot_s``), otherwise
``other_s``. Garbage collection is timed through ``gc.callbacks`` (``gc_s``, which
overlaps the phases it interrupted). ``lag_s`` is the wall time since the newest reading
the step has seen was committed (its ``received_at``): how far the analysis runs behind.

The sink takes (``take``) the totals about once a second into ``flow_lag``; an interval
with a gap over ``STALL_S`` or a lag over ``STALL_LAG_S`` is also logged with its breakdown.
Pure bookkeeping: a clock is passed in.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime

__all__ = ["METER", "STALL_LAG_S", "STALL_S", "FlowMeter", "LagSample"]

STALL_S = 2.0  # a gap of wall time this long between two pieces of the flow's work is a stall
STALL_LAG_S = 10.0  # or the analysis this far behind the commits


@dataclass(slots=True)
class LagSample:
    """One interval of the flow (seconds of wall time; ``at`` the wall clock at its end, UTC)."""

    at: datetime
    interval_s: float = 0.0
    lag_s: float | None = None
    readings: int = 0
    batches: int = 0
    corrections: int = 0
    replayed: int = 0
    source_s: float = 0.0
    step_s: float = 0.0
    notify_s: float = 0.0
    sink_s: float = 0.0
    snapshot_s: float = 0.0
    other_s: float = 0.0
    gc_s: float = 0.0
    max_gap_s: float = 0.0
    max_gap_after: str = ""  # the phase the longest gap followed

    def cause(self) -> str:
        """The largest share of the interval, by name (``snapshot``, ``gc``, ``step``, ...)."""
        parts = {
            "source": self.source_s,
            "step": self.step_s,
            "notify": self.notify_s,
            "sink": self.sink_s,
            "snapshot": self.snapshot_s,
            "bytewax": self.other_s,
            "gc": self.gc_s,
        }
        return max(parts, key=lambda k: parts[k])

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


COLUMNS = tuple(f.name for f in fields(LagSample))


class FlowMeter:
    """Phase totals and counters since the last ``take``; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._began = clock()
        self._last_exit: float | None = None
        self._after = ""
        self._gc_started: float | None = None
        self._newest: datetime | None = None
        self._reset()

    def _reset(self) -> None:
        self.totals = dict.fromkeys(("source", "step", "notify", "sink", "snapshot", "other", "gc"), 0.0)
        self.counts = dict.fromkeys(("readings", "batches", "corrections", "replayed"), 0)
        self.max_gap, self.max_gap_after = 0.0, ""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one piece of the flow's work (``source``, ``step``, ``notify``, ``sink``, ``snapshot``)."""
        start = self.clock()
        if self._last_exit is not None:
            gap = start - self._last_exit
            self.totals["snapshot" if self._after == "snapshot" else "other"] += gap
            if gap > self.max_gap:
                self.max_gap, self.max_gap_after = gap, self._after
        try:
            yield
        finally:
            end = self.clock()
            self.totals[name] += end - start
            self._last_exit, self._after = end, name

    def count(self, **counts: int) -> None:
        for key, n in counts.items():
            self.counts[key] += n

    def seen(self, received_at: datetime) -> None:
        """A reading committed at ``received_at`` reached the step."""
        if self._newest is None or received_at > self._newest:
            self._newest = received_at

    def take(self, wall: datetime) -> LagSample:
        """The interval since the last take (``wall``: the wall clock now, UTC), and start another."""
        now = self.clock()
        sample = LagSample(
            wall,
            interval_s=round(now - self._began, 3),
            lag_s=round((wall - self._newest).total_seconds(), 3) if self._newest is not None else None,
            readings=self.counts["readings"],
            batches=self.counts["batches"],
            corrections=self.counts["corrections"],
            replayed=self.counts["replayed"],
            max_gap_s=round(self.max_gap, 3),
            max_gap_after=self.max_gap_after,
            **{f"{k}_s": round(v, 3) for k, v in self.totals.items()},
        )
        self._began = now
        self._reset()
        return sample

    def stalled(self, sample: LagSample) -> bool:
        return sample.max_gap_s >= STALL_S or (sample.lag_s is not None and sample.lag_s >= STALL_LAG_S)

    # ---------------------------------------------------------------- garbage collection

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = self.clock()
        elif self._gc_started is not None:
            self.totals["gc"] += self.clock() - self._gc_started
            self._gc_started = None

    def watch_gc(self) -> None:
        if self.gc_callback not in gc.callbacks:
            gc.callbacks.append(self.gc_callback)


METER = FlowMeter()
