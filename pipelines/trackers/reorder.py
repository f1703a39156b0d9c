"""Per-vehicle reorder buffer: releases readings in fix-time order after a bounded wait.

The buffer's watermark is the fix time up to which it has released everything:
the larger of (the newest fix time seen - ``max_delay_s``) and, through
``on_timer(now)``, (the server clock - ``max_delay_s``). The second bound means a
reading is never held longer than ``max_delay_s`` behind the server clock even when
no newer reading arrives (device clocks far ahead of the server wait for newer data
instead). A reading that arrives with a fix time behind the watermark is released
at once, flagged ``late`` with its lateness in seconds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

__all__ = ["ReorderBuffer", "Released"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Released(Generic[T]):
    """One item leaving the buffer. ``lateness_s``: seconds its fix time was behind the
    watermark when it arrived (0.0 unless ``late``)."""

    item: T
    fix_time: datetime
    late: bool
    lateness_s: float


class ReorderBuffer(Generic[T]):
    """Holds items until the watermark passes their fix time (UTC), then releases them sorted.

    Items with equal fix times leave in arrival order.
    """

    def __init__(self, max_delay_s: float) -> None:
        self.max_delay = timedelta(seconds=max_delay_s)
        self.watermark: datetime | None = None
        self._heap: list[tuple[datetime, int, T]] = []
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T, fix_time: datetime) -> list[Released[T]]:
        """Add one item; returns what can now be released (oldest first)."""
        if self.watermark is not None and fix_time < self.watermark:
            return [Released(item, fix_time, True, (self.watermark - fix_time).total_seconds())]
        self._arrivals += 1
        heapq.heappush(self._heap, (fix_time, self._arrivals, item))
        return self._release_until(fix_time - self.max_delay)

    def on_timer(self, now: datetime) -> list[Released[T]]:
        """Processing-time flush: release everything with a fix time <= ``now - max_delay``."""
        return self._release_until(now - self.max_delay)

    def next_timer(self) -> datetime | None:
        """Server time at which ``on_timer`` releases the oldest held item, None when empty."""
        return self._heap[0][0] + self.max_delay if self._heap else None

    def held(self) -> list[T]:
        """The items held, in no particular order."""
        return [item for _, _, item in self._heap]

    def flush(self) -> list[Released[T]]:
        """Release everything held."""
        return self._release_until(self._heap[-1][0] if self._heap else None, everything=True)

    def _release_until(self, mark: datetime | None, everything: bool = False) -> list[Released[T]]:
        if mark is None:
            return []
        if self.watermark is not None and self.watermark > mark:
            mark = self.watermark
        out: list[Released[T]] = []
        heap = self._heap
        while heap and (everything or heap[0][0] <= mark):
            fix_time, _, item = heapq.heappop(heap)
            out.append(Released(item, fix_time, False, 0.0))
            mark = max(mark, fix_time)
        if self.watermark is None or mark > self.watermark:
            self.watermark = mark
        return out
