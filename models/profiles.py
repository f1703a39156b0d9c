"""Speed profiles: typical driving speed per H3 cell and hour of week, learned from stored positions.

Input: one row per stored fix with ``h3_cell`` (int64, H3 resolution ``resolution`` or
finer), ``hour_of_week`` (0 = Monday 00:00-01:00 UTC ... 167, as ``dwell.hour_of_week``)
and ``speed_mps`` (m/s, the device's reported speed).

Only moving samples count (``speed_mps >= min_speed_mps``, 1 m/s by default): a profile
is the speed *while driving* through a cell. Time standing (at stops, parked, queued at
a light) is left out on purpose: parked vans would otherwise drag every cell near a
depot to zero, and the ETA adds planned service times separately; what the profile
misses of short traffic stops the ETA model's correction learns. Fixes are sampled
in time, so the arithmetic mean of their speeds is distance / time: the right speed
to divide a path length by.

Shrinkage (the estimate ``E``), with ``n`` the number of moving samples, ``m`` their mean
speed, ``k = prior_weight`` and levels ``resolution > parent_levels[0] > ... > top``::

    E(fleet)          = mean speed of all moving samples
    E(top cell, all)  = (n * m + k * E(fleet))          / (n + k)   # the coarsest cell over every hour
    E(top cell, h)    = (n * m + k * E(top cell, all))  / (n + k)
    E(cell, h)        = (n * m + k * E(parent cell, h)) / (n + k)   # each finer level, parent one level up

so a cell-hour with no data (``n = 0``) is exactly its prior, and one with plenty of
data is its own mean. ``speed(cell, hour)`` answers for any cell, seen or not, by that
rule. The object is a few plain dicts of ints to floats: it pickles small and
``to_dict`` / ``from_dict`` give its JSON form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h3.api.basic_int as h3

if TYPE_CHECKING:  # polars loads only to build profiles: the trackers just look speeds up
    import polars as pl

__all__ = ["MIN_SPEED_MPS", "SpeedProfiles", "build_speed_profiles", "hour_of_week_expr"]

MIN_SPEED_MPS = 1.0  # slower samples are standing, not driving
_MEMO = 200_000  # cell-hour answers kept by a SpeedProfiles (about 20 MB at most)
_FORMAT_VERSION = 1


def _key(cell: int, hour: int) -> int:
    # (cell, hour) packed in one int: hours need 8 bits; keeps the tables dicts of int -> float
    return cell << 8 | hour


@dataclass(slots=True)
class SpeedProfiles:
    """Shrunk mean driving speeds (m/s) per H3 cell and UTC hour of week; see the module docstring.

    ``levels`` are the H3 resolutions, finest first; ``cell_hour[i]`` maps a packed
    (cell at ``levels[i]``, hour) to its estimate; ``cell_all`` maps a cell at the
    coarsest level to its all-hours estimate. Only cells with data are stored.
    """

    levels: tuple[int, ...]
    prior_weight: float
    fleet_mean_mps: float
    cell_hour: list[dict[int, float]] = field(default_factory=list)
    cell_all: dict[int, float] = field(default_factory=dict)
    samples: int = 0
    min_speed_mps: float = MIN_SPEED_MPS
    _memo: dict[int, float] = field(default_factory=dict, repr=False, compare=False)  # answers so far

    @classmethod
    def constant(cls, speed_mps: float, resolution: int = 9) -> SpeedProfiles:
        """Profiles that know nothing but one speed (m/s) everywhere, at every hour."""
        return cls((resolution,), 0.0, float(speed_mps), [{}], {}, 0)

    @property
    def resolution(self) -> int:
        """The finest H3 resolution (that of the positions it was built from)."""
        return self.levels[0]

    def speed(self, cell: int, hour: int) -> float:
        """Driving speed in m/s for an H3 cell (any resolution) at UTC hour of week ``hour``.

        Finer cells than ``resolution`` use their ancestor; the finest level holding the
        cell-hour answers (an unseen cell-hour equals its prior, so this is exact). Answers are
        memoised (up to ``_MEMO`` of them): routes of many vehicles cross the same cells.
        """
        key = cell << 8 | hour
        known = self._memo.get(key)
        if known is not None:
            return known
        value = self._lookup(cell, hour)
        if len(self._memo) >= _MEMO:
            self._memo.clear()
        self._memo[key] = value
        return value

    def _lookup(self, cell: int, hour: int) -> float:
        res = h3.get_resolution(cell)
        top = None
        for level, table in zip(self.levels, self.cell_hour, strict=True):
            if level > res:
                continue
            top = cell if level == res else h3.cell_to_parent(cell, level)
            value = table.get(top << 8 | hour)
            if value is not None:
                return value
        if top is not None:
            value = self.cell_all.get(top)
            if value is not None:
                return value
        return self.fleet_mean_mps

    def speeds(self, cells: Iterable[int], hour: int) -> list[float]:
        """``speed`` for many cells at one hour."""
        return [self.speed(c, hour) for c in cells]

    # ------------------------------------------------------------ JSON form

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: tables as lists of ``[cell, hour, m/s]`` and ``[cell, m/s]``."""
        return {
            "format": _FORMAT_VERSION,
            "levels": list(self.levels),
            "prior_weight": self.prior_weight,
            "min_speed_mps": self.min_speed_mps,
            "fleet_mean_mps": self.fleet_mean_mps,
            "samples": self.samples,
            "cell_hour": [[[k >> 8, k & 0xFF, v] for k, v in sorted(table.items())] for table in self.cell_hour],
            "cell_all": [[c, v] for c, v in sorted(self.cell_all.items())],
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SpeedProfiles:
        """Read what ``to_dict`` wrote."""
        if obj.get("format") != _FORMAT_VERSION:
            raise ValueError(f"speed profiles format {obj.get('format')!r} is not {_FORMAT_VERSION}")
        levels = tuple(int(v) for v in obj["levels"])
        tables = [{_key(int(c), int(h)): float(v) for c, h, v in rows} for rows in obj["cell_hour"]]
        if len(tables) != len(levels):
            raise ValueError("speed profiles: one cell_hour table per level expected")
        return cls(
            levels,
            float(obj["prior_weight"]),
            float(obj["fleet_mean_mps"]),
            tables,
            {int(c): float(v) for c, v in obj["cell_all"]},
            int(obj["samples"]),
            float(obj.get("min_speed_mps", MIN_SPEED_MPS)),
        )


def hour_of_week_expr(column: str = "fix_time") -> pl.Expr:
    """Polars expression: the UTC hour of week (0 = Monday 00 UTC) of a datetime column."""
    import polars as pl

    t = pl.col(column).dt.convert_time_zone("UTC")
    return ((t.dt.weekday().cast(pl.Int32) - 1) * 24 + t.dt.hour().cast(pl.Int32)).alias("hour_of_week")


def build_speed_profiles(
    df: pl.DataFrame,
    resolution: int = 9,
    parent_levels: Sequence[int] = (7, 5),
    prior_weight: float = 10.0,
    min_speed_mps: float = MIN_SPEED_MPS,
) -> SpeedProfiles:
    """Learn ``SpeedProfiles`` from columns ``h3_cell``, ``hour_of_week``, ``speed_mps``.

    ``prior_weight`` (k) is in samples: a cell-hour with k moving fixes is half its own
    mean, half its parent's (10 fixes = under a minute of driving at a fix every 5 s).
    Rows with a null speed or one below ``min_speed_mps`` are dropped. Raises
    ValueError when no moving sample is left or the levels are not strictly coarser.
    """
    import polars as pl

    levels = (resolution, *parent_levels)
    if any(b >= a for a, b in zip(levels, levels[1:], strict=False)) or not 0 <= levels[-1] <= resolution <= 15:
        raise ValueError(f"parent_levels {tuple(parent_levels)} must be strictly coarser than resolution {resolution}")
    if prior_weight < 0:
        raise ValueError("prior_weight must be >= 0")
    moving = (
        df.lazy()
        .select(
            pl.col("h3_cell").cast(pl.Int64),
            pl.col("hour_of_week").cast(pl.Int32),
            pl.col("speed_mps").cast(pl.Float64),
        )
        .filter(
            pl.col("speed_mps").is_not_null()
            & (pl.col("speed_mps") >= min_speed_mps)
            & pl.col("hour_of_week").is_between(0, 167)
        )
        .group_by("h3_cell", "hour_of_week")
        .agg(n=pl.len(), total=pl.col("speed_mps").sum())
        .collect()
    )
    if moving.height == 0:
        raise ValueError("no moving samples (speed_mps >= min_speed_mps) to build speed profiles from")
    k = float(prior_weight)
    fleet = float(moving["total"].sum()) / float(moving["n"].sum())

    # each distinct input cell's ancestor at every level (h3 in Python, once per distinct cell)
    cells = moving["h3_cell"].unique().to_list()
    ancestors: dict[str, list[int]] = {f"c{level}": [] for level in levels}
    for cell in cells:
        res = h3.get_resolution(cell)
        if res < resolution:
            raise ValueError(f"h3_cell {cell} has resolution {res}, coarser than {resolution}")
        for level in levels:
            ancestors[f"c{level}"].append(cell if level == res else h3.cell_to_parent(cell, level))
    mapping = pl.DataFrame(
        {"h3_cell": cells, **ancestors}, schema={"h3_cell": pl.Int64, **{c: pl.Int64 for c in ancestors}}
    )
    moving = moving.join(mapping, on="h3_cell")

    def grouped(level: int) -> pl.DataFrame:
        # cell-hour sums at ``level``, with the parent one level up for the prior
        i = levels.index(level)
        keys = [f"c{level}", *([f"c{levels[i + 1]}"] if i + 1 < len(levels) else [])]
        return moving.group_by(*keys, "hour_of_week").agg(n=pl.col("n").sum(), total=pl.col("total").sum())

    top = f"c{levels[-1]}"
    top_all = (
        moving.group_by(top)
        .agg(n=pl.col("n").sum(), total=pl.col("total").sum())
        .with_columns(all_est=(pl.col("total") + k * fleet) / (pl.col("n") + k))
    )
    prior = (
        grouped(levels[-1])
        .join(top_all.select(top, "all_est"), on=top)
        .with_columns(est=(pl.col("total") + k * pl.col("all_est")) / (pl.col("n") + k))
    )
    estimates: dict[int, pl.DataFrame] = {levels[-1]: prior}
    for i in range(len(levels) - 2, -1, -1):
        level, parent = levels[i], levels[i + 1]
        parent_est = estimates[parent].select(pl.col(f"c{parent}"), "hour_of_week", pl.col("est").alias("prior"))
        estimates[level] = (
            grouped(level)
            .join(parent_est, on=[f"c{parent}", "hour_of_week"])
            .with_columns(est=(pl.col("total") + k * pl.col("prior")) / (pl.col("n") + k))
        )

    tables = [
        {_key(c, h): float(v) for c, h, v in estimates[level].select(f"c{level}", "hour_of_week", "est").iter_rows()}
        for level in levels
    ]
    cell_all = {c: float(v) for c, v in top_all.select(top, "all_est").iter_rows()}
    return SpeedProfiles(levels, k, fleet, tables, cell_all, int(moving["n"].sum()), float(min_speed_mps))
