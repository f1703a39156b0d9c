"""The ETA model: feature rows, a correction it can learn (the profile is 2x too optimistic
beyond two stops), determinism, held-out metrics, clipping, and save / load with its sidecar."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from models.eta import FEATURES, MAX_LOG_RATIO, EtaModel, features, train

TRAINED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def dataset(n: int = 600, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [
        features(
            remaining_m=float(rng.uniform(100, 20_000)),
            profile_s=float(rng.uniform(60, 3600)),
            speed_mps=float(rng.uniform(0, 15)),
            stops_before=int(rng.integers(0, 6)),
            hour_of_week=int(rng.integers(0, 168)),
            dwell_s=0.0,
        )
        for _ in range(n)
    ]
    X = np.array(rows)
    factor = np.where(X[:, FEATURES.index("stops_before")] > 2, 2.0, 1.0)
    return X, X[:, FEATURES.index("profile_s")] * factor


def test_feature_rows_follow_the_feature_list() -> None:
    row = features(1500.0, 300.0, None, 2, 8, dwell_s=40.0, cross_track_m=12.0, service_before_s=120.0)
    assert len(row) == len(FEATURES) == 8
    assert dict(zip(FEATURES, row, strict=True)) == {
        "remaining_m": 1500.0,
        "profile_s": 300.0,
        "speed_mps": pytest.approx(math.nan, nan_ok=True),
        "stops_before": 2.0,
        "hour_of_week": 8.0,
        "dwell_s": 40.0,
        "cross_track_m": 12.0,
        "service_before_s": 120.0,
    }


def test_learns_the_correction_deterministically_and_reports_held_out_error() -> None:
    X, y = dataset()
    model = train(X, y, random_state=0, trained_at=TRAINED_AT)
    again = train(X, y, random_state=0, trained_at=TRAINED_AT)
    assert np.array_equal(model.predict(X), again.predict(X))
    assert model.version == "eta-20261123T120000Z"
    assert model.metrics["n_train"] == 480 and model.metrics["n_test"] == 120
    assert model.metrics["mae_s"] < 0.1 * model.metrics["profile_mae_s"]
    probe = np.array([features(5000, 600, 8.0, 4, 10), features(5000, 600, 8.0, 1, 10)])
    assert model.predict(probe) == pytest.approx([1200.0, 600.0], rel=0.05)


def test_groups_are_held_out_whole() -> None:
    X, y = dataset(100)
    groups = np.repeat(np.arange(10), 10)  # ten trips of ten rows
    model = train(X, y, groups=groups, random_state=3, trained_at=TRAINED_AT)
    assert model.metrics["n_test"] == 20 and model.metrics["n_train"] == 80


def test_the_model_that_serves_learned_from_the_held_out_trips_too() -> None:
    # two trips: the split holds one out to measure; the model returned knows both (with a
    # handful of trips, fitting on 80 % of them left out what the held-out one taught)
    X, y = dataset(200)
    first = X[:, FEATURES.index("remaining_m")] < 10_000
    y = np.where(first, X[:, 1] * 0.5, X[:, 1] * 2.0)  # trip a: half the profile; trip b: twice
    model = train(X, y, groups=np.where(first, "a", "b"), random_state=0, trained_at=TRAINED_AT)
    assert model.metrics["n_test"] in (int(first.sum()), int((~first).sum()))  # one trip measured it
    probe = np.array([features(2_000, 600, 8.0, 1, 10), features(18_000, 600, 8.0, 1, 10)])
    assert model.predict(probe) == pytest.approx([300.0, 1200.0], rel=0.05)


def test_predictions_are_clipped_to_a_factor_of_four() -> None:
    X, y = dataset(200)
    model = train(X, y * 10.0, random_state=0, trained_at=TRAINED_AT)  # a 10x ratio is beyond belief
    assert model.predict_log_ratio(X[:5]) == pytest.approx([MAX_LOG_RATIO] * 5)
    assert model.predict(X[:5]) == pytest.approx(X[:5, 1] * 4.0)


def test_save_and_load_with_sidecar(tmp_path: Path) -> None:
    X, y = dataset(200)
    model = train(X, y, random_state=0, trained_at=TRAINED_AT, version="eta-test-1")
    path = model.save(tmp_path / "eta_model.joblib")
    meta = json.loads((tmp_path / "eta_model.joblib.json").read_text())
    assert meta["version"] == "eta-test-1" and meta["features"] == list(FEATURES)
    assert meta["trained_at"] == "2026-11-23T12:00:00+00:00" and meta["metrics"] == model.metrics
    assert meta["target"] == "log(actual_s / profile_s)"
    loaded = EtaModel.load(path)
    assert np.array_equal(loaded.predict(X), model.predict(X))
    assert (loaded.version, loaded.trained_at, loaded.metrics) == ("eta-test-1", TRAINED_AT, model.metrics)
    (tmp_path / "eta_model.joblib.json").write_text(json.dumps({**meta, "features": ["remaining_m"]}))
    with pytest.raises(ValueError, match="features"):
        EtaModel.load(path)


def test_too_little_data_is_refused() -> None:
    X, y = dataset(5)
    with pytest.raises(ValueError, match="at least 10"):
        train(X, y)


def test_registry_saves_and_loads_a_model_set(tmp_path: Path) -> None:
    from models import registry
    from models.profiles import SpeedProfiles

    assert registry.current("nothing-here") == registry.EtaModels()  # nothing required
    X, y = dataset(100)
    model = train(X, y, random_state=0, trained_at=TRAINED_AT, version="eta-test-2")
    registry.save_dir(
        tmp_path, registry.EtaModels(SpeedProfiles.constant(9.0), model, 1.4, mean_speed_mps=7.5, stop_dwell_s=95.0)
    )
    try:
        loaded = registry.load_dir(tmp_path, name="test-registry")
        assert registry.current("test-registry") is loaded
        assert loaded.profiles == SpeedProfiles.constant(9.0) and loaded.detour_factor == 1.4
        assert (loaded.mean_speed_mps, loaded.stop_dwell_s) == (7.5, 95.0)
        assert loaded.model is not None and loaded.model.version == "eta-test-2"
        kept = registry.set_models("test-registry", detour_factor=1.2)  # replaces one part, keeps the rest
        assert kept.model is loaded.model and kept.detour_factor == 1.2
    finally:
        registry.clear("test-registry")
    assert registry.load_dir(tmp_path / "empty", name="test-empty") == registry.EtaModels()
    registry.clear("test-empty")


def test_compiled_trees_predict_what_scikit_learn_predicts_without_calling_it() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from models.eta import CompiledTrees

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, len(FEATURES)))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing speeds and the like
    y = np.nansum(X[:, :3], axis=1) + np.sin(np.nan_to_num(X[:, 3]))
    regressor = HistGradientBoostingRegressor(max_iter=40, max_depth=5, early_stopping=False).fit(X, y)
    compiled = CompiledTrees(regressor)
    assert compiled.depth == 6 and compiled.trees == 40  # 5 levels padded to two steps of three
    assert np.allclose(compiled.predict(X[:500]), regressor.predict(X[:500]))
    for depth in (1, 2, 4, 7):  # every padding: to 3, 3, 6 and 9 levels
        shallow = HistGradientBoostingRegressor(max_iter=5, max_depth=depth, early_stopping=False).fit(X, y)
        walked = CompiledTrees(shallow)
        assert walked.depth == -(-depth // 3) * 3
        for rows in (X[:1], X[:7], X[:300]):  # one stop, a few, many
            assert np.allclose(walked.predict(rows), shallow.predict(rows))
    # too deep to pad: refused (the model then serves through scikit-learn)
    deep = HistGradientBoostingRegressor(max_iter=3, max_leaf_nodes=200, early_stopping=False).fit(X, y)
    if max(int(t[0].nodes["depth"].max()) for t in deep._predictors) > 12:
        with pytest.raises(ValueError):
            CompiledTrees(deep)
