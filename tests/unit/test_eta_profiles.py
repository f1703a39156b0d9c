"""Speed profiles: moving samples only, shrinkage cell-hour -> parent -> coarsest cell -> fleet,
fallbacks for unseen cells, and the JSON / pickle forms. Every expected value is the
module docstring's formula on the numbers below, k = 2."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import h3.api.basic_int as h3
import polars as pl
import pytest

from models.profiles import SpeedProfiles, build_speed_profiles, hour_of_week_expr

C9A = h3.latlng_to_cell(60.17, 24.94, 9)
A7 = h3.cell_to_parent(C9A, 7)
A5 = h3.cell_to_parent(C9A, 5)
C9B = min(c for c in h3.cell_to_children(A7, 9) if c != C9A)  # same res-7 parent as C9A
O7 = min(c for c in h3.cell_to_children(A5, 7) if c != A7)  # another res-7 cell in A5
C9C = h3.cell_to_center_child(O7, 9)
B5 = h3.latlng_to_cell(61.5, 23.8, 5)  # another res-5 cell
C9D = h3.cell_to_center_child(B5, 9)
K = 2.0

ROWS = [  # (cell, hour of week, m/s)
    (C9A, 8, 10.0),
    (C9A, 8, 14.0),
    (C9A, 8, 0.5),  # 0.5 m/s is standing: dropped
    (C9A, 9, 6.0),
    (C9B, 8, 8.0),
    (C9B, 8, 8.0),
    (C9B, 8, 8.0),
    (C9B, 8, 8.0),
    (C9C, 8, 20.0),
    (C9D, 8, 4.0),
]

# the formula by hand: E = (sum + k * prior) / (n + k)
FLEET = (10 + 14 + 6 + 8 * 4 + 20 + 4) / 9
A5_ALL = (82 + K * FLEET) / (8 + K)
B5_ALL = (4 + K * FLEET) / (1 + K)
A5_8 = (76 + K * A5_ALL) / (7 + K)  # 10, 14, 8 x4, 20
A5_9 = (6 + K * A5_ALL) / (1 + K)
B5_8 = (4 + K * B5_ALL) / (1 + K)
A7_8 = (56 + K * A5_8) / (6 + K)  # 10, 14, 8 x4
A7_9 = (6 + K * A5_9) / (1 + K)
O7_8 = (20 + K * A5_8) / (1 + K)
C9A_8 = (24 + K * A7_8) / (2 + K)
C9A_9 = (6 + K * A7_9) / (1 + K)
C9B_8 = (32 + K * A7_8) / (4 + K)


def frame() -> pl.DataFrame:
    cells, hours, speeds = zip(*ROWS, strict=True)
    return pl.DataFrame(
        {"h3_cell": list(cells), "hour_of_week": list(hours), "speed_mps": list(speeds)},
        schema={"h3_cell": pl.Int64, "hour_of_week": pl.Int16, "speed_mps": pl.Float32},
    )


@pytest.fixture(scope="module")
def profiles() -> SpeedProfiles:
    return build_speed_profiles(frame(), resolution=9, parent_levels=(7, 5), prior_weight=K)


def test_fleet_mean_and_sample_count_use_moving_samples_only(profiles: SpeedProfiles) -> None:
    assert profiles.samples == 9
    assert profiles.fleet_mean_mps == pytest.approx(FLEET)
    assert profiles.levels == (9, 7, 5) and profiles.resolution == 9


def test_shrinkage_at_every_level(profiles: SpeedProfiles) -> None:
    assert profiles.speed(C9A, 8) == pytest.approx(C9A_8)  # between its own mean (12) and its parent's
    assert 9.5 < A7_8 < C9A_8 < 12
    assert profiles.speed(C9A, 9) == pytest.approx(C9A_9)
    assert profiles.speed(C9B, 8) == pytest.approx(C9B_8)
    assert profiles.speed(C9C, 8) == pytest.approx((20 + K * O7_8) / (1 + K))
    b7_8 = (4 + K * B5_8) / (1 + K)
    assert profiles.speed(C9D, 8) == pytest.approx((4 + K * b7_8) / (1 + K))
    assert profiles.cell_all == pytest.approx({A5: 91 / 9, B5: 208 / 27})  # (82 + 2 * 86/9) / 10, (4 + 2 * 86/9) / 3


def test_unseen_cells_and_hours_fall_back_to_parents_then_fleet(profiles: SpeedProfiles) -> None:
    sibling = max(c for c in h3.cell_to_children(A7, 9) if c not in (C9A, C9B))
    assert profiles.speed(sibling, 8) == pytest.approx(A7_8)  # unseen cell: its res-7 parent at that hour
    assert profiles.speed(
        h3.cell_to_center_child(min(c for c in h3.cell_to_children(A5, 7) if c not in (A7, O7)), 9), 8
    ) == pytest.approx(A5_8)  # unseen res-7 cell: the res-5 cell at that hour
    assert profiles.speed(C9A, 10) == pytest.approx(A5_ALL)  # unseen hour everywhere up: the res-5 cell, all hours
    assert profiles.speed(h3.latlng_to_cell(40.0, -3.7, 9), 8) == pytest.approx(FLEET)  # unknown region
    assert profiles.speed(h3.cell_to_center_child(C9A, 11), 8) == pytest.approx(C9A_8)  # finer cells use their ancestor
    assert profiles.speed(A7, 8) == pytest.approx(A7_8)  # coarser cells start at their own level
    assert profiles.speeds([C9A, C9B], 8) == pytest.approx([C9A_8, C9B_8])


def test_no_prior_weight_gives_raw_means() -> None:
    raw = build_speed_profiles(frame(), prior_weight=0)
    assert raw.speed(C9A, 8) == pytest.approx(12.0)
    assert raw.speed(C9B, 8) == pytest.approx(8.0)
    assert raw.speed(C9A, 10) == pytest.approx(82 / 8)


def test_json_and_pickle_round_trips(profiles: SpeedProfiles) -> None:
    again = SpeedProfiles.from_dict(json.loads(json.dumps(profiles.to_dict())))
    assert again == profiles
    assert again.speed(C9A, 8) == pytest.approx(C9A_8)
    blob = pickle.dumps(profiles)
    assert pickle.loads(blob) == profiles and len(blob) < 1000
    with pytest.raises(ValueError):
        SpeedProfiles.from_dict({**profiles.to_dict(), "format": 99})


def test_constant_profiles_know_one_speed() -> None:
    flat = SpeedProfiles.constant(7.5)
    assert flat.speed(C9A, 3) == 7.5 and flat.speed(A5, 100) == 7.5


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no moving samples"):
        build_speed_profiles(frame().with_columns(speed_mps=pl.lit(0.2)))
    with pytest.raises(ValueError, match="coarser"):
        build_speed_profiles(frame(), resolution=9, parent_levels=(9, 5))
    with pytest.raises(ValueError, match="resolution 7"):
        build_speed_profiles(pl.DataFrame({"h3_cell": [A7], "hour_of_week": [8], "speed_mps": [5.0]}))


def test_hour_of_week_expression_matches_the_trackers() -> None:
    times = [datetime(2026, 11, 23, 8, 30, tzinfo=UTC), datetime(2026, 11, 29, 23, 59, tzinfo=UTC)]
    df = pl.DataFrame({"fix_time": times}).with_columns(hour_of_week_expr())
    assert df["hour_of_week"].to_list() == [8, 167]
