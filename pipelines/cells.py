"""One vehicle's per-minute, per-H3-cell contribution: fixes, speed, standing time.

The control tower's ``h3_minute_stats`` sums these over vehicles. Each (minute, cell)
row is re-emitted whole whenever a fix changes it, so a sink that overwrites by key
stays right when late fixes arrive or a replay repeats some. Pure: no I/O, no clock.

Standing time: a fix slower than ``standing_speed_mps`` credits the seconds since the
vehicle's previous fix (at most ``max_gap_s``, so an outage is not counted as
standing) to its own cell and minute. A late fix (behind the newest one) credits
nothing: which gap it closes is unknown without re-sorting, and the rows must stay
cheap. Rows older than ``keep_s`` behind the newest fix are forgotten, and fixes
that old are not counted (a fresh row would overwrite the stored one with less).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

__all__ = ["CellMinute", "CellMinutes"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CellMinute(NamedTuple):
    """Row of ``cell_minutes``: one vehicle in one H3 cell during one UTC minute."""

    minute: datetime
    tenant: str
    h3_cell: int
    vehicle: str
    fixes: int
    speed_sum: float  # m/s summed over fixes that reported a speed
    speed_n: int
    stopped_s: float  # seconds


class CellMinutes:
    """Accumulates a vehicle's rows; ``add`` returns the row the fix changed, ``take_changed``
    the rows changed since it was last called."""

    _changed: set[tuple[int, int]] | None = None  # class default: state pickled before it existed still loads

    def __init__(
        self,
        tenant: str,
        vehicle: str,
        standing_speed_mps: float = 1.0,
        max_gap_s: float = 60.0,
        keep_s: float = 3600.0,
    ) -> None:
        self.tenant, self.vehicle = tenant, vehicle
        self.standing_speed_mps, self.max_gap_s, self.keep_s = standing_speed_mps, max_gap_s, keep_s
        self._rows: dict[tuple[int, int], list[float]] = {}  # (minute since 1970, cell) -> [fixes, sum, n, stopped]
        self._newest: datetime | None = None
        self._horizon = -(2**62)  # minutes before this are forgotten
        self._changed: set[tuple[int, int]] | None = set()  # rows changed since the last ``take_changed``

    def add(self, fix_time: datetime, h3_cell: int, speed_mps: float | None) -> CellMinute | None:
        """One GPS fix (UTC fix time, H3 cell, reported speed in m/s or None); None when too old."""
        minute = int((fix_time - _EPOCH).total_seconds() // 60)
        if minute < self._horizon:
            return None
        row = self._rows.get((minute, h3_cell))
        if row is None:
            row = self._rows[(minute, h3_cell)] = [0, 0.0, 0, 0.0]
        row[0] += 1
        if self._changed is None:
            self._changed = set()
        self._changed.add((minute, h3_cell))
        if speed_mps is not None:
            row[1] += speed_mps
            row[2] += 1
        newest = self._newest
        if newest is None or fix_time > newest:
            if newest is not None and speed_mps is not None and speed_mps < self.standing_speed_mps:
                row[3] += min((fix_time - newest).total_seconds(), self.max_gap_s)
            self._newest = fix_time
            horizon = minute - int(self.keep_s // 60)
            if horizon > self._horizon:
                self._horizon = horizon
                self._rows = {k: v for k, v in self._rows.items() if k[0] >= horizon}
        return self._row(minute, h3_cell, row)

    def take_changed(self) -> list[CellMinute]:
        """The rows ``add`` changed since the last call (each once, as it stands now): a caller
        that writes a batch of fixes at once writes each minute-cell once, not once per fix."""
        rows, changed = self._rows, self._changed or ()
        out = [self._row(m, c, rows[(m, c)]) for m, c in sorted(changed) if (m, c) in rows]
        self._changed = set()
        return out

    def _row(self, minute: int, h3_cell: int, row: list[float]) -> CellMinute:
        return CellMinute(
            _EPOCH + timedelta(minutes=minute),
            self.tenant,
            h3_cell,
            self.vehicle,
            int(row[0]),
            row[1],
            int(row[2]),
            row[3],
        )

    def __len__(self) -> int:
        return len(self._rows)
