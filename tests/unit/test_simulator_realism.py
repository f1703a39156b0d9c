"""The simulator's real-world looks (``Realism``): reporting interval and jitter per van,
devices without speed, lost readings, plans ending at the depot, bus routes with close
stops and pass-throughs, and the fence-crossing truth of each visit."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from core.contract import GpsFix
from core.geo import haversine_m
from core.plan import Plan
from core.settings import load_settings
from models.roads import RoadNetwork
from sim.fleet import SCENARIOS, realism
from sim.simulator import AnomalyPlan, FleetSimulator, Realism


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> RoadNetwork:
    return RoadNetwork.load("helsinki", tmp_path_factory.getbasetemp() / "roads-cache")


def fixes_by_vehicle(sim: FleetSimulator) -> dict[str, list[GpsFix]]:
    out: dict[str, list[GpsFix]] = {}
    for e in sim.events():
        if isinstance(e.item, GpsFix) and not e.duplicate:
            out.setdefault(e.vehicle, []).append(e.item)
    return out


def test_the_scenarios_are_settings_bundles() -> None:
    sparse = realism(load_settings(**SCENARIOS["sparse"]))
    assert (sparse.period_s, sparse.no_speed_share, sparse.depot_stop) == (None, 1.0, True)  # 30 s for every van
    bus = realism(load_settings(**SCENARIOS["bus"]))
    assert bus.bus and bus.period_s == (20.0, 30.0) and bus.pass_through_share == 0.25


def test_sparse_devices_report_every_30_s_with_jitter_without_speed_and_lose_readings(network: RoadNetwork) -> None:
    real = Realism(period_jitter=0.3, no_speed_share=1.0, gaps_per_hour=2.0, silence_share=1.0, depot_stop=True)
    sim = FleetSimulator(network, vehicles=6, seed=3, gps_period_s=30.0, anomalies=AnomalyPlan.none(), realism=real)
    labels = sim.labels()
    by_vehicle = fixes_by_vehicle(sim)
    gaps = [
        (b.fix_time - a.fix_time).total_seconds()
        for fixes in by_vehicle.values()
        for a, b in zip(fixes, fixes[1:], strict=False)
    ]
    assert 25 < statistics.median(gaps) < 35 and min(gaps) >= 21 - 0.01
    assert all(f.speed_mps is None and f.heading_deg is None for fixes in by_vehicle.values() for f in fixes)
    silences = [r for r in labels if r["kind"] == "silence"]
    long_ones = [r for r in labels if r["kind"] == "anomaly" and r["type"] == "offline" and r["details"].get("lost")]
    assert silences and len(long_ones) == 6  # every van has its dead zone, labelled offline
    for row in silences:  # nothing is sent from inside a lost window
        inside = [f for f in by_vehicle[row["vehicle"]] if row["start"] <= f.fix_time.isoformat() < row["end"]]
        assert inside == []
    plans = [Plan.from_dict(p) for p in sim.contract_plans()]
    assert all(p.stops[-1].id.endswith("-depot") for p in plans)
    trips = {r["vehicle"]: r for r in labels if r["kind"] == "trip"}
    assert all(r["last_stop"].endswith("-depot") and not r["sends_speed"] for r in trips.values())
    depot_visits = [r for r in labels if r["kind"] == "stop_visit" and r["stop_id"].endswith("-depot")]
    assert len(depot_visits) == 6 and all(v["departure"] is None and v["fence_exit"] is None for v in depot_visits)


def test_bus_routes_have_close_stops_pass_throughs_and_fence_truth(network: RoadNetwork) -> None:
    sim = FleetSimulator(network, vehicles=4, seed=5, anomalies=AnomalyPlan.none(), realism=Realism(bus=True))
    plans = [Plan.from_dict(p) for p in sim.contract_plans()]
    for plan in plans:
        assert plan.temp_range_c is None and len(plan.stops) >= 12
        gaps = [haversine_m(a.lat, a.lon, b.lat, b.lon) for a, b in zip(plan.stops, plan.stops[1:], strict=False)]
        assert statistics.median(gaps) < 160 and all(s.radius_m == 35.0 for s in plan.stops)
    visits = [r for r in sim.labels() if r["kind"] == "stop_visit"]
    kinds = Counter(v["pass_through"] for v in visits)
    assert kinds[True] > 0 and kinds[False] > kinds[True]
    for v in visits:
        assert v["fence_entry"] <= v["arrival"]  # the circle is entered before the stop point is reached
        if v["pass_through"]:
            assert v["stood_s"] < 41.0  # only a red light could have held it there
        elif v["departure"] is not None:
            assert v["stood_s"] >= 10.0 and v["fence_exit"] >= v["departure"]
    assert {type(e.item).__name__ for e in sim.events()} == {"GpsFix"}  # no reefer probe, no door sensor
