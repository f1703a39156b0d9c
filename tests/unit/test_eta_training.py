"""The ETA training set from frames: vans driving a straight north-south route at constant
speeds (a fix every 5 s), arrivals where they pass the stops; rows at the horizons with
exact labels, detour pairs, and a model trained end to end."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta

import h3.api.basic_int as h3
import polars as pl
import pytest

from core.geo import EARTH_RADIUS_M
from core.plan import Plan, Stop
from models.paths import fit_detour_factor
from models.profiles import SpeedProfiles
from training.eta import (
    build_training_rows,
    derive_speeds,
    detour_pairs,
    mean_trip_speed,
    stop_dwells,
    train_eta_from_frames,
    trip_legs,
    typical_stop_dwell,
)

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LON = 24.94
ROUTE = [(60.0 + i * 0.001, LON) for i in range(21)]
STOPS = (Stop("s1", 60.005, LON), Stop("s2", 60.010, LON), Stop("s3", 60.015, LON))
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180


def m(dlat: float) -> float:
    return M_PER_DEG * dlat


def drive(vehicle: str, speed: float, start: datetime = T0) -> tuple[list[dict], list[dict]]:
    """Fixes every 5 s from the route's start at ``speed`` m/s, and the arrivals at the stops."""
    fixes = []
    for k in range(int(m(0.02) / speed / 5) + 1):
        lat = 60.0 + speed * 5 * k / M_PER_DEG
        fixes.append(
            {
                "tenant": "acme",
                "vehicle_id": vehicle,
                "fix_time": start + timedelta(seconds=5 * k),
                "lat": lat,
                "lon": LON,
                "speed_mps": speed,
                "h3_cell": h3.latlng_to_cell(lat, LON, 9),
            }
        )
    arrivals = [
        {
            "tenant": "acme",
            "vehicle_id": vehicle,
            "stop_id": s.id,
            "at": start + timedelta(seconds=m(s.lat - 60.0) / speed),
        }
        for s in STOPS
    ]
    return fixes, arrivals


def frames(speeds: dict[str, float]) -> tuple[pl.DataFrame, pl.DataFrame, list[Plan]]:
    fixes, arrivals, plans = [], [], []
    for vehicle, speed in speeds.items():
        f, a = drive(vehicle, speed)
        fixes += f
        arrivals += a
        plans.append(Plan("acme", vehicle, 1, STOPS, ROUTE))
    return pl.DataFrame(fixes), pl.DataFrame(arrivals), plans


def test_rows_at_each_horizon_with_exact_labels() -> None:
    positions, arrivals, plans = frames({"van-1": 10.0})
    rows = build_training_rows(
        positions, arrivals, plans, profiles=SpeedProfiles.constant(10.0), detour_factor=1.3, horizons_s=(30, 60)
    )
    s2 = rows.filter(pl.col("stop_id") == "s2").sort("horizon_s")
    # s2 is reached at 111.2 s; 30 s before is 81.2 s: the fix at 80 s (800 m up the route)
    assert s2["fix_time"].to_list() == [T0 + timedelta(seconds=80), T0 + timedelta(seconds=50)]
    assert s2["label_s"].to_list() == pytest.approx([m(0.01) / 10 - 80, m(0.01) / 10 - 50])
    assert s2["remaining_m"].to_list() == pytest.approx([m(0.01) - 800, m(0.01) - 500])
    assert s2["profile_s"].to_list() == pytest.approx(s2["label_s"].to_list())  # it drove at the profile speed
    assert s2["naive_s"].to_list() == pytest.approx(s2["label_s"].to_list())
    assert s2["stops_before"].to_list() == [0.0, 1.0]  # at 50 s s1 (55.6 s) was still ahead
    assert set(rows["method"]) == {"route"}
    # s1 is reached at 55.6 s: 60 s before that there was no fix yet, so no row
    assert sorted(zip(rows["stop_id"], rows["horizon_s"], strict=True)) == [
        ("s1", 30.0),
        ("s2", 30.0),
        ("s2", 60.0),
        ("s3", 30.0),
        ("s3", 60.0),
    ]


def test_detour_pairs_of_a_straight_drive_are_one() -> None:
    positions, arrivals, _ = frames({"van-1": 10.0})
    pairs = detour_pairs(positions, arrivals)
    assert len(pairs) == 3  # the trip's start -> s1 (the first stop counts too), s1 -> s2, s2 -> s3
    for straight, travelled in pairs:
        assert travelled == pytest.approx(straight)
    assert fit_detour_factor(pairs, min_straight_m=100) == pytest.approx(1.0)


def test_train_end_to_end_with_the_naive_baseline() -> None:
    positions, arrivals, plans = frames({f"van-{i}": 6.0 + i for i in range(8)})
    result = train_eta_from_frames(
        positions, arrivals, plans, horizons_s=(30, 60, 90, 120), random_state=0, max_iter=20, trained_at=T0
    )
    assert result.rows.height > 50 and result.rows["trip"].n_unique() == 8
    metrics = result.model.metrics
    assert metrics["n_test"] + metrics["n_train"] == result.rows.height
    assert {"mae_s", "profile_mae_s", "naive_mae_s", "naive_model_mae_s", "naive_rows"} <= set(metrics)
    assert metrics["naive_mae_s"] == pytest.approx(0.0, abs=1.0)  # constant speeds: the naive guess is exact
    assert result.detour_factor == pytest.approx(1.0)
    assert result.profiles.samples == positions.height


def test_detour_pairs_leave_out_gps_noise_while_standing() -> None:
    fixes, arrivals = drive("van-1", 10.0)
    s1_at = arrivals[0]["at"]
    # 12 fixes standing at s1 after arriving, jumping 5 m east and back (speed 0), then driving on
    stand = [
        {
            **fixes[0],
            "fix_time": s1_at + timedelta(seconds=k),
            "lat": STOPS[0].lat,
            "lon": LON + (5.0 / (M_PER_DEG * math.cos(math.radians(60.005))) if k % 2 else 0.0),
            "speed_mps": 0.0,
        }
        for k in range(12)
    ]
    later = [{**f, "fix_time": f["fix_time"] + timedelta(seconds=12)} for f in fixes if f["fix_time"] > s1_at]
    early = [f for f in fixes if f["fix_time"] <= s1_at]
    arrivals = [arrivals[0]] + [{**a, "at": a["at"] + timedelta(seconds=12)} for a in arrivals[1:]]
    _, (straight, travelled), _ = detour_pairs(pl.DataFrame(early + stand + later), pl.DataFrame(arrivals))
    assert travelled == pytest.approx(straight, abs=10.0)  # 11 noise steps of 5 m would add 55 m


def test_training_works_without_device_speed_and_learns_from_one_stop_trips() -> None:
    positions, arrivals, plans = frames({f"van-{i}": 6.0 + i for i in range(8)})
    positions = positions.with_columns(speed_mps=pl.lit(None, pl.Float64))  # trackers and phones often send none
    derived = derive_speeds(positions)
    assert derived["speed_derived"].sum() == derived.height - 8 * 2  # the first 10 s of each van: no baseline yet
    van0 = derived.filter(pl.col("vehicle_id") == "van-0")["speed_mps"].drop_nulls()
    assert van0.mean() == pytest.approx(6.0 - 5.0 / 10.0, abs=0.01)  # (60 m - 5 m of noise) / 10 s
    # one-stop plans (a taxi trip): only s3, reached from the start
    one_stop = arrivals.filter(pl.col("stop_id") == "s3")
    legs = trip_legs(positions, one_stop)
    assert len(legs) == 8 and all(t == pytest.approx(s, rel=1e-6) for s, t, _ in legs)
    assert mean_trip_speed(legs) == pytest.approx(8 / sum(1 / v for v in range(6, 14)), rel=0.01)  # metres / seconds
    result = train_eta_from_frames(
        positions,
        arrivals,
        [Plan("acme", p.vehicle, 1, STOPS, None) for p in plans],  # no route: straight legs
        horizons_s=(30, 60, 90, 120),
        random_state=0,
        max_iter=20,
        trained_at=T0,
    )
    assert result.profiles.samples > 0 and result.mean_speed_mps is not None
    assert result.detour_factor == pytest.approx(1.0)
    assert {"straight_mae_s", "straight_model_mae_s"} <= set(result.model.metrics)
    assert result.rows["straight_s"].is_not_null().all()


def _visits(*legs: tuple[float, float, float]) -> pl.DataFrame:
    """Fixes of one van from (seconds after T0, metres north of s1, speed or NaN) triples."""
    return pl.DataFrame(
        [
            {
                "tenant": "acme",
                "vehicle_id": "van-1",
                "fix_time": T0 + timedelta(seconds=s),
                "lat": STOPS[0].lat + north / M_PER_DEG,
                "lon": LON,
                "speed_mps": None,
                "h3_cell": 0,
            }
            for s, north, _ in legs
        ]
    )


def test_the_time_at_a_stop_is_learned_from_visits_to_stops_without_planned_service() -> None:
    radius = STOPS[0].radius_m
    arrival = {"tenant": "acme", "vehicle_id": "van-1", "stop_id": "s1", "at": T0 + timedelta(seconds=30)}
    # a fix every 30 s: inside from 30 s to 150 s, then 30 s later 2 * radius north (left at 10 m/s)
    stood = _visits((0, -300, 0), (30, 0, 0), (60, 2, 0), (150, 3, 0), (180, 2 * radius, 0))
    plan = Plan("acme", "van-1", 1, STOPS, None)
    (dwell,) = stop_dwells(stood, pl.DataFrame([arrival]), [plan])
    assert dwell == pytest.approx(120 + 30 * (radius - 3) / (2 * radius - 3))  # the exit, interpolated
    # the tracker went quiet while the van stood: seen outside 400 s later, 200 m on; it left at
    # 8 m/s just in time to be there, not halfway through the silence
    quiet = _visits((0, -300, 0), (30, 0, 0), (430, 200, 0))
    (dwell,) = stop_dwells(quiet, pl.DataFrame([arrival]), [plan])
    assert dwell == pytest.approx(400 - (200 - radius) / 8.0)
    # planned service: nothing to learn there; parked for the night: no visit to learn from
    served = Plan("acme", "van-1", 1, (Stop("s1", STOPS[0].lat, LON, service_s=300.0), *STOPS[1:]), None)
    assert stop_dwells(stood, pl.DataFrame([arrival]), [served]) == []
    parked = _visits((0, -300, 0), (30, 0, 0), (3700, 0, 0), (3730, 300, 0))
    assert stop_dwells(parked, pl.DataFrame([arrival]), [plan]) == []
    assert typical_stop_dwell([60.0, 90.0, 120.0, 150.0]) is None  # too few visits to say
    assert typical_stop_dwell([60.0, 90.0, 120.0, 150.0, 600.0]) == 120.0  # the median: one long stay moves it not


def test_training_learns_the_time_at_stops_the_plans_give_no_service_for() -> None:
    positions, arrivals, plans = frames({f"van-{i}": 6.0 + i for i in range(8)})
    result = train_eta_from_frames(
        positions, arrivals, plans, horizons_s=(30, 60, 90, 120), random_state=0, max_iter=20, trained_at=T0
    )
    # they drove through each stop (arrived at its centre): from there to the circle's edge
    assert result.stop_dwell_s == pytest.approx(statistics.median(75.0 / v for v in range(6, 14)), abs=0.5)
