"""The ETA evaluation's scoring on fixed numbers, its targets and table, and the simulated
history it trains on (frame shapes, true arrivals, one plan version per day)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from fleetstream.eta_evaluation import (
    EtaEvalDay,
    eta_targets_missed,
    format_eta_table,
    score_eta,
    simulated_history,
)
from models.roads import RoadNetwork

NAN = math.nan


def rows(data: list[tuple[float, float, float, float, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        data,
        schema={
            "horizon_s": pl.Float64,
            "label_s": pl.Float64,
            "model_s": pl.Float64,
            "profile_s": pl.Float64,
            "naive_s": pl.Float64,
        },
        orient="row",
    )


FIXED = rows(
    [
        # horizon, label, model, profile, naive
        (300.0, 300.0, 330.0, 360.0, 400.0),  # errors 30, 60, 100
        (300.0, 400.0, 380.0, 300.0, 200.0),  # errors 20, 100, 200
        (300.0, 500.0, 500.0, 600.0, None),  # the van stood: no naive answer
        (900.0, 900.0, 990.0, 1080.0, 1800.0),  # errors 90, 180, 900
    ]
)


def test_errors_per_horizon_on_the_rows_where_naive_answers() -> None:
    five, fifteen = score_eta(FIXED, (300.0, 900.0))
    assert (five["rows"], five["naive_rows"]) == (3, 2)
    assert five["model_mae_s"] == pytest.approx(25.0)
    assert five["profile_mae_s"] == pytest.approx(80.0)
    assert five["naive_mae_s"] == pytest.approx(150.0)
    assert five["model_mape_pct"] == pytest.approx((30 / 300 + 20 / 400) / 2 * 100)
    assert five["naive_mape_pct"] == pytest.approx((100 / 300 + 200 / 400) / 2 * 100)
    assert five["model_mae_all_s"] == pytest.approx((30 + 20 + 0) / 3)
    assert five["profile_mae_all_s"] == pytest.approx((60 + 100 + 100) / 3)
    assert fifteen["model_mae_s"] == pytest.approx(90.0) and fifteen["naive_mape_pct"] == pytest.approx(100.0)


def test_a_horizon_without_rows_scores_none_and_misses() -> None:
    (thirty,) = score_eta(FIXED, (1800.0,))
    assert thirty["rows"] == 0 and thirty["model_mae_s"] is None and thirty["model_mae_all_s"] is None
    assert eta_targets_missed([thirty]) == ["30 min: no rows to score"]


def test_targets_need_30_percent_below_naive_and_below_profile() -> None:
    table = score_eta(FIXED, (300.0, 900.0))
    assert eta_targets_missed(table) == []
    worse = score_eta(rows([(300.0, 300.0, 380.0, 360.0, 400.0)]), (300.0,))  # model 80, profile 60, naive 100
    assert eta_targets_missed(worse) == [
        "5 min: model MAE 80 s is not 30% below naive 100 s",
        "5 min: model MAE 80 s is not below the profile's 60 s",
    ]


def test_table_has_a_line_per_horizon() -> None:
    text = format_eta_table(score_eta(FIXED, (300.0, 900.0)))
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2] == "| 5 min | 3 (2) | 25 s | 80 s | 150 s | -83 % | 7.5 % | 22.5 % | 41.7 % | 17 s / 87 s |"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> RoadNetwork:
    return RoadNetwork.load("helsinki", tmp_path_factory.getbasetemp() / "roads-cache")


def test_simulated_history_frames(network: RoadNetwork) -> None:
    start = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    days = [EtaEvalDay(start, 1, 1), EtaEvalDay(start + timedelta(days=1), 2, 2)]
    h = simulated_history(network, days, 2, tenant="acme", stagger_s=600.0)
    assert h.positions.columns == ["tenant", "vehicle_id", "fix_time", "lat", "lon", "speed_mps", "h3_cell"]
    assert h.positions["fix_time"].dtype == pl.Datetime("us", "UTC")
    assert h.arrivals.columns == ["tenant", "vehicle_id", "stop_id", "plan_version", "at"]
    assert sorted((p.vehicle, p.version) for p in h.plans) == [
        ("veh-001", 1),
        ("veh-001", 2),
        ("veh-002", 1),
        ("veh-002", 2),
    ]
    # every arrival is a stop of its day's plan, on that day
    stops = {(p.vehicle, p.version): {s.id for s in p.stops} for p in h.plans}
    for vehicle, stop_id, version, at in h.arrivals.select("vehicle_id", "stop_id", "plan_version", "at").iter_rows():
        assert stop_id in stops[(vehicle, version)]
        assert at.date() == days[version - 1].start.date()
    assert h.positions["h3_cell"].null_count() == 0 and not h.is_empty()
