"""Learned dwell baselines, looked up by the dwell tracker: typical seconds per H3 cell and hour of week.

The table ``dwell_baselines`` is learned from departures by ``fleetstream train dwell``;
the engine loads it at start into this module. ``dwell_baseline`` is a module-level
function, so tracker state that refers to it pickles by name, without the table.
A cell-hour with fewer than ``min_samples`` departures is unknown (None): the dwell
tracker then uses its fixed threshold. Pure: loading is the caller's job.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["dwell_baseline", "set_dwell_baselines", "baseline_count"]

_BASELINES: dict[tuple[int, int], float] = {}


def set_dwell_baselines(rows: Iterable[tuple[int, int, int, float]], min_samples: int) -> int:
    """Replace the table with ``(h3_cell, hour_of_week, samples, median_s)`` rows; returns the cell-hours kept."""
    _BASELINES.clear()
    for cell, how, samples, median_s in rows:
        if samples >= min_samples and median_s > 0:
            _BASELINES[(int(cell), int(how))] = float(median_s)
    return len(_BASELINES)


def dwell_baseline(h3_cell: int, hour_of_week: int) -> float | None:
    """Typical dwell in seconds at this cell (the dwell tracker's resolution) and hour, or None."""
    return _BASELINES.get((h3_cell, hour_of_week))


def baseline_count() -> int:
    """Cell-hours currently known."""
    return len(_BASELINES)
