"""The ETA's training history read from the real TimescaleDB, and ``fleetstream train eta``
end to end: frame shapes and filters on a tiny hand-made history, the clear refusal when
there is none, and a small simulated history loaded, trained and published where the
engine loads it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h3.api.basic_int as h3
import polars as pl
import pytest

from core.plan import Plan, Stop
from core.settings import Settings
from fleetstream.bench.eta import load_history
from fleetstream.eta_evaluation import EtaEvalDay, simulated_history
from fleetstream.train_eta import eta_models_dir, run_train_eta
from models import registry
from models.eta_versions import current_version
from models.roads import RoadNetwork
from store.db import connect, migrate
from store.history import load_eta_history
from store.plans import store_plan

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module", autouse=True)
def schema(services_settings: Settings) -> None:
    migrate(services_settings.dsn())


def tenant() -> str:
    return f"eh{uuid.uuid4().hex[:8]}"


def add_fix(conn: Any, t: str, vehicle: str, at: datetime, lat: float, speed: float | None) -> None:
    conn.execute(
        "INSERT INTO positions (fix_time, tenant, vehicle_id, seq, lat, lon, speed_mps, h3_cell, received_at, "
        "shard, shard_seq) VALUES (%s, %s, %s, 0, %s, 24.94, %s, %s, now(), 98, 0)",
        (at, t, vehicle, lat, speed, h3.latlng_to_cell(lat, 24.94, 9)),
    )


def add_stop_event(
    conn: Any,
    t: str,
    vehicle: str,
    stop_id: str,
    version: int,
    at: datetime,
    *,
    kind: str = "arrival",
    visit: int = 1,
    retracted: bool = False,
) -> None:
    conn.execute(
        "INSERT INTO stop_events (id, kind, tenant, vehicle_id, stop_id, plan_version, visit, at, retracted, "
        "detected_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (uuid.uuid4(), kind, t, vehicle, stop_id, version, visit, at, retracted, at),
    )


def test_history_frames_from_the_database(services_settings: Settings) -> None:
    t, other = tenant(), tenant()
    stops = (Stop("s1", 60.001, 24.94, service_s=60.0), Stop("s2", 60.002, 24.94))
    with connect(services_settings.dsn(), autocommit=True) as conn:
        for version in (1, 2, 3):  # version 3 has no arrival: not read
            assert store_plan(conn, Plan(t, "v1", 0, stops[:1] if version == 2 else stops), "test")[0] == version
        for k in range(4):
            add_fix(conn, t, "v1", T0 + timedelta(seconds=5 * k), 60.0 + k * 0.0001, None if k == 0 else 8.5)
        add_fix(conn, t, "v1", T0 - timedelta(hours=3), 60.0, 1.0)  # before since - lead: left out
        add_fix(conn, other, "v1", T0, 60.0, 1.0)
        add_stop_event(conn, t, "v1", "s1", 1, T0 + timedelta(minutes=10))
        add_stop_event(conn, t, "v1", "s1", 1, T0 + timedelta(minutes=50), visit=2)  # a second visit: the first counts
        add_stop_event(conn, t, "v1", "s2", 1, T0 + timedelta(minutes=20), retracted=True)
        add_stop_event(conn, t, "v1", "s2", 1, T0 + timedelta(minutes=30), kind="departure")
        add_stop_event(conn, t, "v1", "s1", 2, T0 + timedelta(minutes=40))
        add_stop_event(conn, other, "v1", "s1", 1, T0 + timedelta(minutes=10))
        history = load_eta_history(conn, t, since=T0, until=T0 + timedelta(hours=2), lead_s=3600)
        everything = load_eta_history(conn, t)
    pos = history.positions
    assert pos.columns == ["tenant", "vehicle_id", "fix_time", "lat", "lon", "speed_mps", "h3_cell"]
    assert pos.dtypes == [pl.String, pl.String, pl.Datetime("us", "UTC"), pl.Float64, pl.Float64, pl.Float64, pl.Int64]
    assert pos.sort("fix_time")["fix_time"].to_list() == [T0 + timedelta(seconds=5 * k) for k in range(4)]
    assert pos.sort("fix_time")["speed_mps"].to_list() == [None, 8.5, 8.5, 8.5]
    assert pos["lat"].sort().to_list() == [60.0 + k * 0.0001 for k in range(4)]  # floats round-trip exactly
    assert pos["h3_cell"][0] == h3.latlng_to_cell(pos["lat"][0], 24.94, 9)
    arr = history.arrivals.sort("at")
    assert arr.columns == ["tenant", "vehicle_id", "stop_id", "plan_version", "at"]
    assert arr.select("stop_id", "plan_version", "at").rows() == [
        ("s1", 1, T0 + timedelta(minutes=10)),
        ("s1", 2, T0 + timedelta(minutes=40)),
    ]
    assert sorted(p.version for p in history.plans) == [1, 2]
    assert [p for p in history.plans if p.version == 1][0].stops == stops
    assert everything.positions.height == 5 and everything.arrivals.height == 2


def test_train_eta_without_history_says_so(services_settings: Settings, tmp_path: Path) -> None:
    said: list[str] = []
    code, summary = run_train_eta(
        replace(services_settings, state_dir=tmp_path, pg_dsn=services_settings.dsn("migrate")),
        tenant(),
        say=said.append,
    )
    assert code == 1 and summary["arrivals"] == 0
    assert "no ETA history" in said[0]
    assert not (tmp_path / "models").exists()


def test_train_eta_from_a_loaded_simulated_history(services_settings: Settings, tmp_path: Path) -> None:
    t = tenant()
    network = RoadNetwork.load("helsinki", tmp_path / "roads-cache")
    days = [EtaEvalDay(T0 + timedelta(days=d), 20 + d, d + 1) for d in range(2)]
    history = simulated_history(network, days, 3, tenant=t, stagger_s=3600.0)
    # the models go to tmp_path; the database stays the suite's (its owner's login)
    settings = replace(services_settings, state_dir=tmp_path, sim_seed=1, pg_dsn=services_settings.dsn("migrate"))
    with connect(settings.dsn(), autocommit=True) as conn:
        counts = load_history(conn, history)
        read = load_eta_history(conn, t)
    assert counts == {"positions": history.positions.height, "arrivals": history.arrivals.height, "plans": 6}
    assert read.positions.sort("vehicle_id", "fix_time").equals(history.positions.sort("vehicle_id", "fix_time"))
    assert read.arrivals.sort("vehicle_id", "at").equals(history.arrivals.sort("vehicle_id", "at"))
    assert sorted(read.plans, key=lambda p: (p.vehicle, p.version)) == sorted(
        history.plans, key=lambda p: (p.vehicle, p.version)
    )
    code, summary = run_train_eta(settings, t, say=lambda *_: None)
    assert code == 0 and summary["rows"] > 50
    root = eta_models_dir(settings)
    assert current_version(root) == summary["version"]
    loaded = registry.load_dir(root, name="test-eta-history")
    try:
        assert loaded.model is not None and loaded.model.metrics == summary["metrics"]
        assert loaded.profiles is not None and loaded.detour_factor == pytest.approx(summary["detour_factor"], abs=1e-3)
    finally:
        registry.clear("test-eta-history")


def test_train_eta_from_a_history_without_device_speed(services_settings: Settings, tmp_path: Path) -> None:
    """Trackers and phones often send no speed: a fix every 30 s with jitter, no speed, tunnels."""
    from sim.simulator import Realism

    t = tenant()
    network = RoadNetwork.load("helsinki", tmp_path / "roads-cache")
    days = [EtaEvalDay(T0 + timedelta(days=d), 40 + d, d + 1) for d in range(2)]
    sparse = Realism(period_jitter=0.3, no_speed_share=1.0, gaps_per_hour=1.0, depot_stop=True)
    history = simulated_history(network, days, 4, tenant=t, stagger_s=3600.0, gps_period_s=30.0, realism=sparse)
    assert history.positions["speed_mps"].is_null().all()
    # plans without service times, as dispatchers often send them: the time at a stop is learned
    history = replace(
        history, plans=[replace(p, stops=tuple(replace(s, service_s=0.0) for s in p.stops)) for p in history.plans]
    )
    # the models go to tmp_path; the database stays the suite's (its owner's login), as above
    settings = replace(services_settings, state_dir=tmp_path, pg_dsn=services_settings.dsn("migrate"))
    with connect(settings.dsn(), autocommit=True) as conn:
        load_history(conn, history)
    said: list[str] = []
    code, summary = run_train_eta(settings, t, say=said.append)
    assert code == 0, said
    assert summary["rows"] > 20 and summary["profile_cells"] > 0
    assert summary["mean_speed_mps"] is not None and 1.0 < summary["mean_speed_mps"] < 20.0
    assert {"mae_s", "straight_mae_s", "naive_mae_s"} <= set(summary["metrics"])
    # the vans served each stop 3-5 minutes (x 0.5-2): learned from arrivals and positions alone
    assert summary["stop_dwell_s"] is not None and 90.0 <= summary["stop_dwell_s"] <= 900.0
    loaded = registry.load_dir(eta_models_dir(settings), name="test-eta-dwell")
    try:
        assert loaded.stop_dwell_s == pytest.approx(summary["stop_dwell_s"], abs=0.05)
    finally:
        registry.clear("test-eta-dwell")
