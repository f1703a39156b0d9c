"""The learned ETA correction: a gradient-boosted model over the profile estimate.

Target: ``log(actual_s / profile_s)``, the log of the ratio between the seconds the
vehicle really took to reach the stop and the profile estimate made at the same
moment. A ratio suits travel times, whose errors grow with the horizon (a model of
the residual in seconds would be dominated by the long horizons), and its log is
symmetric (x2 and /2 weigh the same); it is fitted for its median (absolute-error loss),
which suits ETAs judged by their mean absolute error. The prediction is clipped to
[``-MAX_LOG_RATIO``, ``MAX_LOG_RATIO``] (a factor of 4 either way) so a confused model
cannot produce absurd ETAs; served seconds = ``profile_s * exp(prediction)``.

Features (``FEATURES``, one row per (moment, remaining stop), built by ``features``):

=================  =====================================================================
remaining_m        metres left to drive to the stop along the chosen path
profile_s          the profile estimate: seconds to the stop (driving + planned service)
speed_mps          the vehicle's current speed (m/s, smoothed); NaN when unknown
stops_before       remaining stops to serve before this one
hour_of_week       UTC hour of week of the moment (0 = Monday 00 UTC)
dwell_s            seconds standing still so far (0 while moving)
cross_track_m      metres off the planned route (0 without a route or when on it)
service_before_s   planned service seconds before this stop (included in profile_s)
=================  =====================================================================

Serving: ``predict_log_ratio`` does not call scikit-learn, whose per-tree predictor costs
milliseconds a call (more on a busy machine: it starts its OpenMP threads for a few rows).
``CompiledTrees`` lays the fitted trees out once as flat arrays, each padded to a complete
tree of the ensemble's depth (``max_depth``, 6 by default; rounded up to a multiple of 3),
and walks every tree for every row together in numpy, three levels a step: the same
numbers (to rounding) in tens of microseconds.

Persistence: ``save(path)`` writes the regressor with joblib at ``path`` and a JSON
sidecar at ``path`` + ``.json`` with format, version, features, target, training
metrics, trained_at (UTC) and the scikit-learn version. ``load`` refuses a model whose
features differ from ``FEATURES``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # scikit-learn and joblib load only to train, save or load (the tracker needs `features`)
    from sklearn.ensemble import HistGradientBoostingRegressor

__all__ = ["FEATURES", "MAX_LOG_RATIO", "CompiledTrees", "EtaModel", "features", "train"]

FEATURES: tuple[str, ...] = (
    "remaining_m",
    "profile_s",
    "speed_mps",
    "stops_before",
    "hour_of_week",
    "dwell_s",
    "cross_track_m",
    "service_before_s",
)
MAX_LOG_RATIO = math.log(4.0)
TARGET = "log(actual_s / profile_s)"
_FORMAT = 1
_PROFILE = FEATURES.index("profile_s")
_MIN_PROFILE_S = 1.0  # ratios to a near-zero estimate are meaningless


def features(
    remaining_m: float,
    profile_s: float,
    speed_mps: float | None,
    stops_before: int,
    hour_of_week: int,
    dwell_s: float = 0.0,
    cross_track_m: float = 0.0,
    service_before_s: float = 0.0,
) -> list[float]:
    """One feature row in ``FEATURES`` order (a missing speed becomes NaN, which the model handles)."""
    return [
        float(remaining_m),
        float(profile_s),
        math.nan if speed_mps is None else float(speed_mps),
        float(stops_before),
        float(hour_of_week),
        float(dwell_s),
        float(cross_track_m),
        float(service_before_s),
    ]


_LEVELS = 3  # tree levels decided per numpy step: 7 comparisons at once, then a 128-entry table


def _subtree_heap(h: np.ndarray, j: int) -> np.ndarray:
    """Heap index of node ``j`` (heap order inside the subtree) of the subtree rooted at heap nodes ``h``."""
    d = (j + 1).bit_length() - 1
    out: np.ndarray = (2**d) * (h + 1) - 1 + (j + 1 - 2**d)
    return out


def _step_table(levels: int) -> np.ndarray:
    """For each pattern of the ``2**levels - 1`` comparisons of a subtree (bit ``j``: node ``j``
    goes right), the leaf of the subtree reached (0 .. ``2**levels - 1``, left to right)."""
    inner = 2**levels - 1
    table = np.zeros(2**inner, dtype=np.intp)
    for code in range(2**inner):
        j = 0
        for _ in range(levels):
            j = 2 * j + 1 + ((code >> j) & 1)
        table[code] = j - inner
    return table


class CompiledTrees:
    """A fitted ``HistGradientBoostingRegressor`` as flat arrays, evaluated without scikit-learn.

    Each tree becomes a complete binary tree of depth ``depth`` in heap order (node ``i`` has
    children ``2i+1`` and ``2i+2``): a leaf reached early is padded below with nodes that
    always go left, and every padded leaf under it carries its value; ``depth`` is the
    deepest fitted tree's, rounded up to a multiple of 3. A row goes left when its feature is
    at or below the node's threshold, or is missing (NaN) where the fitted tree sent missing
    values left. Built from scikit-learn's fitted predictors (a private layout, checked
    against its own ``predict`` when built by ``EtaModel``).

    ``predict`` walks every tree for every row together in numpy, three levels a step: the
    seven comparisons of the three-level subtree under each row's node are made at once,
    read as a 7-bit number, and a table maps it to the subtree's leaf reached (the same path
    as comparing level by level, in a third of the numpy calls: a call costs about a
    microsecond whatever its size, and the arrays here are small).
    """

    def __init__(self, regressor: HistGradientBoostingRegressor) -> None:
        trees = [per_iteration[0] for per_iteration in regressor._predictors]
        fitted = max((int(t.nodes["depth"].max()) for t in trees), default=0)
        if fitted > 12:
            raise ValueError(f"trees {fitted} deep would pad to {2**fitted} leaves each: train with max_depth")
        self.depth = -(-fitted // _LEVELS) * _LEVELS
        inner, n = 2**self.depth - 1, len(trees)
        feature = np.zeros((n, max(inner, 1)), dtype=np.intp)
        threshold = np.full((n, max(inner, 1)), np.inf)
        missing_left = np.ones((n, max(inner, 1)), dtype=bool)
        leaves = np.zeros((n, 2**self.depth))
        for t, tree in enumerate(trees):
            nodes = tree.nodes
            stack = [(0, 0, 0)]  # (fitted node, heap node, depth)
            while stack:
                i, h, d = stack.pop()
                if nodes["is_leaf"][i]:
                    lo = hi = h
                    for _ in range(self.depth - d):
                        lo, hi = 2 * lo + 1, 2 * hi + 2
                    leaves[t, lo - inner : hi - inner + 1] = nodes["value"][i]
                    continue
                feature[t, h] = nodes["feature_idx"][i]
                threshold[t, h] = nodes["num_threshold"][i]
                missing_left[t, h] = nodes["missing_go_to_left"][i]
                stack += [(int(nodes["left"][i]), 2 * h + 1, d + 1), (int(nodes["right"][i]), 2 * h + 2, d + 1)]
        self.trees, self.inner = n, inner
        # per tree, the roots of its 3-level subtrees (the nodes at depths 0, 3, 6, ...: 1, 8, 64, ...
        # of them), level after level, each with its 7 nodes: (trees x roots, 7) tables, small enough
        # to stay in the CPU's caches between calls (one row per heap node would be seven times larger)
        sub, steps = 2**_LEVELS - 1, self.depth // _LEVELS
        starts = [sum(2 ** (_LEVELS * i) for i in range(k)) for k in range(steps + 1)]
        heap = np.concatenate([2 ** (_LEVELS * k) - 1 + np.arange(2 ** (_LEVELS * k)) for k in range(steps)] or [[0]])
        at = np.stack([_subtree_heap(heap, j) for j in range(sub)], axis=1)
        at = np.minimum(at, max(inner, 1) - 1)  # no steps (single-leaf trees): a row that is never read
        roots = len(heap)
        self._feature = feature[:, at].reshape(-1, sub)
        self._threshold = threshold[:, at].reshape(-1, sub)
        self._missing_right = ~missing_left[:, at].reshape(-1, sub)
        self._bits = 2 ** np.arange(sub)
        self._step = _step_table(_LEVELS)
        self._leaves = leaves.ravel()
        self._step_base = [(np.arange(n) * roots + starts[k])[None, :] for k in range(steps)]
        self._leaf_base = (np.arange(n) * 2**self.depth)[None, :]
        self._row_base: dict[tuple[int, int], np.ndarray] = {}
        self.baseline = float(np.ravel(regressor._baseline_prediction)[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The raw prediction (the regressor's ``predict``) of each row of ``X`` (rows x features)."""
        rows, columns = X.shape
        flat_x = np.ascontiguousarray(X, dtype=float).ravel()
        row_base = self._row_base.get((rows, columns))
        if row_base is None:  # the flat offset of each row, kept per shape (a few numpy calls saved a call)
            row_base = self._row_base[(rows, columns)] = (np.arange(rows) * columns)[:, None, None]
        missing = math.isnan(flat_x.sum())  # only an unknown speed is ever missing: mostly none
        pos: np.ndarray | None = None  # each row's node in each tree, within its level (None: the roots)
        for base in self._step_base:
            at = base if pos is None else pos + base
            x = flat_x.take(self._feature.take(at, axis=0) + row_base)
            right = x > self._threshold.take(at, axis=0)
            if missing:
                right |= np.isnan(x) & self._missing_right.take(at, axis=0)
            step = self._step.take(right @ self._bits)
            if pos is None:
                pos = step
            else:
                pos *= 2**_LEVELS
                pos += step
        leaf = self._leaf_base if pos is None else pos + self._leaf_base
        out: np.ndarray = self._leaves.take(leaf).sum(axis=1)
        out += self.baseline
        if pos is None:  # single-leaf trees: one value for every row
            out = np.broadcast_to(out, (rows,)).copy()
        return out


@dataclass
class EtaModel:
    """A trained correction: ``predict(X)`` gives seconds to each row's stop.

    ``metrics`` are measured on the held-out split the model never saw; ``version``
    names the training run (UTC time of ``trained_at`` unless given).
    """

    regressor: HistGradientBoostingRegressor
    version: str
    trained_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES
    compiled: CompiledTrees | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.compiled is None:
            try:
                self.compiled = CompiledTrees(self.regressor)
            except (AttributeError, KeyError, ValueError):
                self.compiled = None  # an unexpected layout or deep trees: scikit-learn serves
            else:  # the private layout read right? check on a few rows
                probe = np.array(
                    [[1000.0, 120.0, 8.0, 0.0, 10.0, 0.0, 0.0, 0.0], [5.0, 2.0, math.nan, 3.0, 0, 60, 9, 600]]
                )
                if not np.allclose(self.compiled.predict(probe), self.regressor.predict(probe), atol=1e-9):
                    self.compiled = None

    def predict_log_ratio(self, X: Any) -> np.ndarray:
        """The clipped predicted ``log(actual_s / profile_s)`` per row."""
        X = np.asarray(X, dtype=float)
        raw = self.compiled.predict(X) if self.compiled is not None else self.regressor.predict(X)
        clipped: np.ndarray = np.minimum(np.maximum(raw, -MAX_LOG_RATIO), MAX_LOG_RATIO)  # np.clip, cheaper
        return clipped

    def predict(self, X: Any) -> np.ndarray:
        """Predicted seconds to the stop per row: ``profile_s * exp(log ratio)``."""
        X = np.asarray(X, dtype=float)
        seconds: np.ndarray = X[:, _PROFILE] * np.exp(self.predict_log_ratio(X))
        return seconds

    def sidecar(self) -> dict[str, Any]:
        """What the JSON sidecar holds."""
        return {
            "format": _FORMAT,
            "version": self.version,
            "features": list(self.features),
            "target": TARGET,
            "metrics": self.metrics,
            "trained_at": self.trained_at.astimezone(UTC).isoformat(),
            "sklearn": _sklearn_version(),
        }

    def save(self, path: Path | str) -> Path:
        """Write the regressor (joblib) to ``path`` and the sidecar to ``path.json``, each atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        import joblib

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        joblib.dump(self.regressor, tmp)
        os.replace(tmp, path)
        meta = _sidecar_path(path)
        tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.sidecar(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, meta)
        return path

    @classmethod
    def load(cls, path: Path | str) -> EtaModel:
        """Read what ``save`` wrote; ValueError when the sidecar's format or features do not match."""
        path = Path(path)
        meta = json.loads(_sidecar_path(path).read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: ETA model format {meta.get('format')!r} is not {_FORMAT}")
        if tuple(meta.get("features", ())) != FEATURES:
            raise ValueError(f"{path}: model features {meta.get('features')} differ from {list(FEATURES)}")
        import joblib

        regressor = joblib.load(path)
        trained_at = datetime.fromisoformat(meta["trained_at"]).astimezone(UTC)
        return cls(regressor, str(meta["version"]), trained_at, dict(meta.get("metrics", {})), FEATURES)


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def train(
    X: Any,
    y: Any,
    *,
    groups: Sequence[Any] | None = None,
    test_fraction: float = 0.2,
    random_state: int = 0,
    max_iter: int = 60,
    learning_rate: float = 0.2,
    max_leaf_nodes: int = 31,
    max_depth: int = 6,
    loss: str = "absolute_error",
    version: str | None = None,
    trained_at: datetime | None = None,
    baselines: Mapping[str, Sequence[float | None]] | None = None,
) -> EtaModel:
    """Fit an ``EtaModel`` on rows ``X`` (``FEATURES`` order) and labels ``y`` (actual seconds to the stop).

    A ``test_fraction`` of the rows is held out (whole ``groups`` at a time when given,
    e.g. one id per trip, so rows of one trip never straddle the split) and a model is
    fitted on the rest; ``metrics``: ``mae_s`` of that model and ``profile_mae_s`` of the
    profile estimate alone on the held-out rows, their medians, and the row counts. The
    model returned is then fitted again on every row (the same settings), so no trip is
    wasted on the measurement.
    Same inputs and ``random_state``, same model. Rows with a profile estimate under
    1 s or a non-positive label are dropped. ``baselines`` (name -> seconds per row,
    None/NaN where it has no answer, e.g. ``naive``) add ``<name>_mae_s`` and
    ``<name>_rows`` over the held-out rows where the baseline answers, with
    ``<name>_model_mae_s``: the model's error on those same rows.

    ``max_depth`` bounds each tree (6: at most 64 leaves) so that the compiled trees that serve
    it stay small and a prediction takes ``max_depth`` numpy steps; a serving costs about in
    proportion to ``max_iter`` (60 trees at a learning rate of 0.2 scored as well as 200 at 0.1
    on the sparse simulated fleet, for under a third of the cost).

    ``loss`` is scikit-learn's: ``absolute_error`` (the default) fits the median log ratio,
    so the served seconds are the median outcome, which is what a mean absolute error in
    seconds rewards; on simulated fleets it cut the held-out MAE by about a quarter
    against ``squared_error`` (the mean log ratio), most at the short horizons.
    """
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or X.shape[1] != len(FEATURES) or len(y) != len(X):
        raise ValueError(f"X must be (n, {len(FEATURES)}) with one label per row")
    keep = (X[:, _PROFILE] >= _MIN_PROFILE_S) & (y > 0) & np.isfinite(y)
    X, y = X[keep], y[keep]
    others = {
        name: np.array([np.nan if v is None else v for v in values], dtype=float)[keep]
        for name, values in (baselines or {}).items()
    }
    group = np.asarray(groups)[keep] if groups is not None else np.arange(len(y))
    if len(y) < 10:
        raise ValueError(f"need at least 10 usable rows to train, got {len(y)}")
    rng = np.random.default_rng(random_state)
    unique = np.unique(group)
    held = rng.permutation(len(unique))[: max(1, round(test_fraction * len(unique)))]
    test = np.isin(group, unique[held])
    if test.all():
        raise ValueError("the held-out split would take every row: need more groups")
    target = np.log(y / X[:, _PROFILE])
    regressor = HistGradientBoostingRegressor(
        loss=loss,
        max_iter=max_iter,
        learning_rate=learning_rate,
        max_leaf_nodes=max_leaf_nodes,
        max_depth=max_depth,
        early_stopping=False,
        random_state=random_state,
    )
    regressor.fit(X[~test], target[~test])
    trained_at = trained_at or datetime.now(UTC)
    version = version or f"eta-{trained_at.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    err = np.abs(EtaModel(regressor, version, trained_at).predict(X[test]) - y[test])
    # what serves learns from every trip: the held-out ones measured it, and would be wasted
    # (with a handful of trips, which ones were left out changed the model more than anything)
    model = EtaModel(clone(regressor).fit(X, target), version, trained_at)
    base = np.abs(X[test, _PROFILE] - y[test])
    model.metrics = {
        "mae_s": round(float(err.mean()), 3),
        "median_ae_s": round(float(np.median(err)), 3),
        "profile_mae_s": round(float(base.mean()), 3),
        "profile_median_ae_s": round(float(np.median(base)), 3),
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
    }
    for name, values in others.items():
        answered = np.isfinite(values[test])
        if answered.any():
            model.metrics[f"{name}_mae_s"] = round(float(np.abs(values[test][answered] - y[test][answered]).mean()), 3)
            model.metrics[f"{name}_model_mae_s"] = round(float(err[answered].mean()), 3)
        model.metrics[f"{name}_rows"] = int(answered.sum())
    return model
