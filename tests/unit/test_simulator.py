"""FleetSimulator: determinism, realism and labelled anomalies (pure: no broker)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.contract import DoorEvent, GpsFix, TemperatureReading, decode, encode_single
from models.roads import RoadNetwork, distance_to_polyline_m, haversine_m
from sim.fleet import simulated_clock
from sim.simulator import (
    ANOMALY_TYPES,
    DEVIATION_AMBIGUOUS_S,
    DEVIATION_M,
    DEVIATION_MIN_S,
    STOP_RADIUS_M,
    TEMP_RANGE_C,
    AnomalyPlan,
    FleetSimulator,
    RawMessage,
    SimEvent,
    vehicle_ids,
)

START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> RoadNetwork:
    return RoadNetwork.load("helsinki", tmp_path_factory.getbasetemp() / "roads-cache")


@pytest.fixture(scope="module")
def clean(network: RoadNetwork) -> tuple[FleetSimulator, list[SimEvent]]:
    sim = FleetSimulator(network, vehicles=6, seed=3, start=START, anomalies=AnomalyPlan.none())
    return sim, list(sim.events())


@pytest.fixture(scope="module")
def faulty(network: RoadNetwork) -> tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]]:
    sim = FleetSimulator(network, vehicles=8, seed=11, start=START, anomalies=AnomalyPlan.every(within_s=1800.0))
    return sim, list(sim.events()), sim.labels()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _by_vehicle(events: list[SimEvent]) -> dict[str, list[SimEvent]]:
    out: dict[str, list[SimEvent]] = defaultdict(list)
    for event in events:
        out[event.vehicle].append(event)
    return out


def _fixes(events: list[SimEvent]) -> list[GpsFix]:
    return [e.item for e in events if isinstance(e.item, GpsFix) and not e.duplicate]


# ---------------------------------------------------------------- determinism and ordering


def test_same_seed_gives_identical_stream(network: RoadNetwork) -> None:
    until = START + timedelta(minutes=40)
    kwargs: dict[str, Any] = {"vehicles": 4, "seed": 5, "start": START, "anomalies": AnomalyPlan.every()}
    first = list(FleetSimulator(network, **kwargs).events(until))
    second = FleetSimulator(network, **kwargs)
    assert list(second.events(until)) == first
    assert list(second.events(until)) == first  # restartable
    assert second.plans() == FleetSimulator(network, **kwargs).plans()
    other = list(FleetSimulator(network, **{**kwargs, "seed": 6}).events(until))
    assert other != first
    assert len(first) > 1000


def test_until_gives_a_prefix(faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]]) -> None:
    sim, events, _ = faulty
    until = START + timedelta(minutes=25)
    assert list(sim.events(until)) == [e for e in events if e.at <= until]


def test_events_ordered_and_fix_time_never_after_yield(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    _, events, _ = faulty
    assert all(a.at <= b.at for a, b in zip(events, events[1:], strict=False))
    for event in events:
        if not isinstance(event.item, RawMessage):
            assert event.item.fix_time <= event.at
            assert event.item.fix_time.microsecond % 1000 == 0  # milliseconds, like the wire format
            assert event.item.vehicle == event.vehicle and event.item.tenant == "demo"


def test_seq_per_vehicle_is_monotonic_without_gaps(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    _, events, _ = faulty
    for vehicle, mine in _by_vehicle(events).items():
        seqs = [e.item.seq for e in mine if not isinstance(e.item, RawMessage) and not e.duplicate]
        assert seqs == list(range(len(seqs))), vehicle
        kinds = {e.item.kind for e in mine if not isinstance(e.item, RawMessage)}
        assert kinds == {"gps", "temp", "door"}


def test_readings_survive_the_wire_format(clean: tuple[FleetSimulator, list[SimEvent]]) -> None:
    _, events = clean
    for event in events[:3000]:
        topic, payload = encode_single(event.item)  # type: ignore[arg-type]
        decoded = decode(topic, payload, event.at)
        assert not decoded.rejected and decoded.readings == [event.item]


def test_vehicle_ids_are_contract_ids() -> None:
    assert vehicle_ids(3) == ["veh-001", "veh-002", "veh-003"]
    assert vehicle_ids(2, "r3-") == ["r3-veh-001", "r3-veh-002"]  # a run id: never a stored vehicle again


# ---------------------------------------------------------------- realism


def test_fixes_lie_near_roads_and_on_the_planned_route(
    network: RoadNetwork, clean: tuple[FleetSimulator, list[SimEvent]]
) -> None:
    sim, events = clean
    fixes = _fixes(events)
    off_road = network.distance_to_road_m([f.lat for f in fixes], [f.lon for f in fixes])
    assert off_road.max() < 25.0  # ~5 m noise; 25 m is more than 7 sigma per axis
    assert 2.0 < float(np.mean(off_road)) < 8.0
    routes = {plan["vehicle"]: plan["route"] for plan in sim.plans()}
    for vehicle, mine in _by_vehicle(events).items():
        mine_fixes = _fixes(mine)
        off_route = distance_to_polyline_m([(f.lat, f.lon) for f in mine_fixes], routes[vehicle])
        assert off_route.max() < 25.0, vehicle


def test_speeds_are_plausible(clean: tuple[FleetSimulator, list[SimEvent]]) -> None:
    _, events = clean
    fixes = _fixes(events)
    speeds = np.array([f.speed_mps for f in fixes]) * 3.6
    assert speeds.max() < 130.0
    moving = speeds[speeds > 3.6]
    assert len(moving) > 0.2 * len(speeds)
    assert 15.0 <= moving.mean() <= 60.0
    for f in fixes:
        assert f.accuracy_m is not None and 1.0 <= f.accuracy_m <= 15.0
        assert f.heading_deg is None or 0.0 <= f.heading_deg < 360.0
    # speeds implied by consecutive fixes agree: nothing teleports
    for mine in _by_vehicle(events).values():
        seq_fixes = _fixes(mine)
        for a, b in zip(seq_fixes, seq_fixes[1:], strict=False):
            dt = (b.fix_time - a.fix_time).total_seconds()
            assert haversine_m(a.lat, a.lon, b.lat, b.lon) / dt < 130 / 3.6 + 30 / dt


def test_stops_visited_in_order_with_door_pairs(clean: tuple[FleetSimulator, list[SimEvent]]) -> None:
    sim, events = clean
    plans = {plan["vehicle"]: plan for plan in sim.plans()}
    visits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sim.labels():
        if row["kind"] == "stop_visit":
            visits[row["vehicle"]].append(row)
    for vehicle, mine in _by_vehicle(events).items():
        stops = plans[vehicle]["stops"]
        assert 8 <= len(stops) <= 15
        assert [v["stop_id"] for v in visits[vehicle]] == [s["id"] for s in stops]
        arrivals = [_at(v["arrival"]) for v in visits[vehicle]]
        assert arrivals == sorted(arrivals)
        doors = [e.item for e in mine if isinstance(e.item, DoorEvent)]
        assert [d.open for d in doors] == [True, False] * len(stops)
        fixes = _fixes(mine)
        for stop, visit, (opened, closed) in zip(
            stops, visits[vehicle], zip(doors[::2], doors[1::2], strict=True), strict=True
        ):
            assert _at(visit["arrival"]) < opened.fix_time < closed.fix_time < _at(visit["departure"])
            assert opened.fix_time == _at(visit["door_open"]) and closed.fix_time == _at(visit["door_close"])
            during = [f for f in fixes if opened.fix_time <= f.fix_time <= closed.fix_time]
            assert during, stop["id"]
            assert all(haversine_m(f.lat, f.lon, stop["lat"], stop["lon"]) < STOP_RADIUS_M for f in during)
        services = [(_at(v["departure"]) - _at(v["arrival"])).total_seconds() for v in visits[vehicle]]
        assert 60 <= min(services) and max(services) <= 900


def test_vehicles_start_staggered(clean: tuple[FleetSimulator, list[SimEvent]]) -> None:
    sim, events = clean
    firsts = {}
    for event in events:
        firsts.setdefault(event.vehicle, event.at)
    assert len(set(firsts.values())) == len(firsts)
    assert max(firsts.values()) - START <= timedelta(seconds=sim.stagger_s)


def test_temperature_drifts_within_range_and_warms_with_the_door_open(
    clean: tuple[FleetSimulator, list[SimEvent]],
) -> None:
    _, events = clean
    temps = [e.item for e in events if isinstance(e.item, TemperatureReading)]
    values = np.array([t.celsius for t in temps])
    assert TEMP_RANGE_C[0] <= values.min() and values.max() <= TEMP_RANGE_C[1]
    assert values.std() > 0.2
    for mine in _by_vehicle(events).values():
        probe = [e.item for e in mine if isinstance(e.item, TemperatureReading)]
        gaps = {round((b.fix_time - a.fix_time).total_seconds(), 3) for a, b in zip(probe, probe[1:], strict=False)}
        assert gaps == {30.0}


# ---------------------------------------------------------------- anomalies


def _labels_of(labels: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [row for row in labels if row["kind"] == "anomaly" and row["type"] == kind]


def test_every_anomaly_type_is_labelled(faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]]) -> None:
    _, _, labels = faulty
    assert {row["type"] for row in labels if row["kind"] == "anomaly"} == set(ANOMALY_TYPES)
    for kind in ("long_dwell", "door_away", "offline", "temp_excursion"):
        assert len(_labels_of(labels, kind)) >= 6, kind  # 8 vehicles, each should get one
    # a detour is labelled only when it clearly exceeds the engine's drift definition (150 m
    # for 90 s): on this small map many legs have no room for one
    assert len(_labels_of(labels, "route_deviation")) >= 1
    for row in labels:
        if row["kind"] == "anomaly":
            assert _at(row["start"]) <= _at(row["end"])


def test_long_dwell_stands_still_away_from_stops(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    sim, events, labels = faulty
    plans = {plan["vehicle"]: plan for plan in sim.plans()}
    by_vehicle = _by_vehicle(events)
    for label in _labels_of(labels, "long_dwell"):
        start, end, here = _at(label["start"]), _at(label["end"]), (label["details"]["lat"], label["details"]["lon"])
        assert (end - start).total_seconds() >= 600
        fixes = [f for f in _fixes(by_vehicle[label["vehicle"]]) if start < f.fix_time < end]
        assert len(fixes) >= 100
        assert all(haversine_m(f.lat, f.lon, *here) < 25 and f.speed_mps < 1.0 for f in fixes)
        assert all(haversine_m(*here, s["lat"], s["lon"]) >= 100 for s in plans[label["vehicle"]]["stops"])


def test_route_deviation_leaves_the_planned_leg(
    network: RoadNetwork, faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]]
) -> None:
    sim, events, labels = faulty
    plans = {plan["vehicle"]: plan for plan in sim.plans()}
    by_vehicle = _by_vehicle(events)
    for label in _labels_of(labels, "route_deviation"):
        plan = plans[label["vehicle"]]
        ids = [s["id"] for s in plan["stops"]]
        points = [(plan["depot"]["lat"], plan["depot"]["lon"])] + [(s["lat"], s["lon"]) for s in plan["stops"]]
        index = ids.index(label["stop_id"]) + 1 if label["stop_id"] else 0
        origin = points[index - 1] if index else points[-1]
        target = points[index]
        leg = network.shortest_path(network.nearest_node(*origin), network.nearest_node(*target))
        start, end = _at(label["start"]), _at(label["end"])
        fixes = [f for f in _fixes(by_vehicle[label["vehicle"]]) if start <= f.fix_time <= end]
        off = distance_to_polyline_m([(f.lat, f.lon) for f in fixes], leg.points)
        assert off.max() > 250.0
        assert label["details"]["max_off_leg_m"] >= 300.0
        # ground truth by the engine's definition: past DEVIATION_M from the route for DEVIATION_MIN_S
        assert label["details"]["max_off_route_m"] > DEVIATION_M
        span = (end - start).total_seconds()
        assert span >= DEVIATION_MIN_S or (label["details"].get("ambiguous") and span >= DEVIATION_AMBIGUOUS_S)
        inside = [f for f in fixes if start + timedelta(seconds=10) <= f.fix_time <= end - timedelta(seconds=10)]
        assert distance_to_polyline_m([(f.lat, f.lon) for f in inside], plan["route"]).min() > DEVIATION_M - 30
        after = [f for f in _fixes(by_vehicle[label["vehicle"]]) if f.fix_time > end + timedelta(seconds=30)][:20]
        # back within the DEVIATION_M corridor (a parallel street may lead back onto the plan)
        assert distance_to_polyline_m([(f.lat, f.lon) for f in after], plan["route"]).max() < DEVIATION_M + 15.0


def test_temperature_excursion_goes_above_range(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    _, events, labels = faulty
    excursions = defaultdict(list)
    for label in _labels_of(labels, "temp_excursion"):
        excursions[label["vehicle"]].append((_at(label["start"]), _at(label["end"])))
    assert excursions
    for event in events:
        item = event.item
        if not isinstance(item, TemperatureReading) or event.duplicate:
            continue
        inside = any(s <= item.fix_time < e for s, e in excursions[event.vehicle])
        if item.fix_time in {s for s, _ in excursions[event.vehicle]}:
            assert item.celsius > TEMP_RANGE_C[1]
        if not inside:
            assert item.celsius <= TEMP_RANGE_C[1], (event.vehicle, item.fix_time)
    for label in _labels_of(labels, "temp_excursion"):
        assert label["details"]["peak_celsius"] > 10.0
        assert (_at(label["end"]) - _at(label["start"])).total_seconds() >= 300


def test_door_opened_away_from_stops(faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]]) -> None:
    sim, events, labels = faulty
    plans = {plan["vehicle"]: plan for plan in sim.plans()}
    by_vehicle = _by_vehicle(events)
    for label in _labels_of(labels, "door_away"):
        mine = by_vehicle[label["vehicle"]]
        doors = {(d.item.fix_time, d.item.open) for d in mine if isinstance(d.item, DoorEvent)}
        assert (_at(label["start"]), True) in doors and (_at(label["end"]), False) in doors
        fixes = [f for f in _fixes(mine) if _at(label["start"]) <= f.fix_time <= _at(label["end"])]
        assert fixes
        for f in fixes:
            nearest = min(haversine_m(f.lat, f.lon, s["lat"], s["lon"]) for s in plans[label["vehicle"]]["stops"])
            assert nearest > 2 * STOP_RADIUS_M - 25


def test_offline_window_is_silent_then_bursts(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    _, events, labels = faulty
    by_vehicle = _by_vehicle(events)
    for label in _labels_of(labels, "offline"):
        start, end = _at(label["start"]), _at(label["end"])
        mine = by_vehicle[label["vehicle"]]
        assert not [e for e in mine if start < e.at < end]
        burst = [e for e in mine if e.late]
        assert len(burst) >= (end - start).total_seconds() / 5 - 2
        assert all(e.at == end for e in burst)
        assert all(start <= e.item.fix_time < end for e in burst if not isinstance(e.item, RawMessage))
        assert [e for e in mine if e.at > end]  # and it goes on afterwards
    assert all(e.at > e.item.fix_time for e in events if e.late and not isinstance(e.item, RawMessage))


def test_malformed_messages_are_rejected_for_their_labelled_reason(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    _, events, labels = faulty
    raws = [e for e in events if isinstance(e.item, RawMessage)]
    assert {e.item.reason for e in raws} == {
        "bad_json",
        "not_finite",
        "out_of_range",
        "vehicle_mismatch",
        "missing_field",
    }
    for event in raws:
        raw = event.item
        assert isinstance(raw, RawMessage)
        assert raw.topic.startswith(f"fleet/demo/{event.vehicle}/")
        decoded = decode(raw.topic, raw.payload, event.at)
        assert not decoded.readings and [r.reason for r in decoded.rejected] == [raw.reason]
    assert len(_labels_of(labels, "malformed")) == len(raws)


def test_duplicates_repeat_the_previous_message(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    _, events, labels = faulty
    dups = [i for i, e in enumerate(events) if e.duplicate]
    assert dups and len(_labels_of(labels, "duplicate")) == len(dups)
    for i in dups:
        original = next(
            e
            for e in reversed(events[:i])
            if e.vehicle == events[i].vehicle and not e.duplicate and not isinstance(e.item, RawMessage)
        )
        assert original.item == events[i].item and original.at == events[i].at


# ---------------------------------------------------------------- plans, labels, clock


def test_plans_are_json_and_complete(clean: tuple[FleetSimulator, list[SimEvent]]) -> None:
    sim, _ = clean
    plans = json.loads(json.dumps(sim.plans()))
    assert [p["vehicle"] for p in plans] == sim.vehicle_ids
    for plan in plans:
        assert plan["route"][0] == pytest.approx([plan["depot"]["lat"], plan["depot"]["lon"]], abs=1e-6)
        assert plan["route"][-1] == plan["route"][0]
        for stop in plan["stops"]:
            assert set(stop) >= {"id", "lat", "lon", "radius_m", "window_start", "window_end", "planned_service_s"}
            assert _at(stop["window_start"]) < _at(stop["planned_arrival"]) < _at(stop["window_end"])
            assert distance_to_polyline_m([(stop["lat"], stop["lon"])], plan["route"])[0] < 1.0


def test_write_labels(tmp_path: Path, faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]]) -> None:
    sim, _, labels = faulty
    until = START + timedelta(minutes=20)
    count = sim.write_labels(tmp_path / "sim" / "labels.jsonl", until=until)
    rows = [json.loads(line) for line in (tmp_path / "sim" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == count and {r["kind"] for r in rows} == {"trip", "stop_visit", "anomaly"}
    assert all(_at(r["start"]) <= until for r in rows if r["kind"] == "anomaly")
    assert all(r["arrival"] is None or _at(r["arrival"]) <= until for r in rows if r["kind"] == "stop_visit")
    assert len(labels) > count


@pytest.mark.parametrize(("minutes", "speedup"), [(3.0, 10.0), (1.0, 1.0), (2.0, 0.5)])
def test_simulated_clock_never_runs_ahead_of_the_wall(minutes: float, speedup: float) -> None:
    wall = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    sim_start, sim_end = simulated_clock(wall, minutes, speedup)
    assert (sim_end - sim_start).total_seconds() == pytest.approx(minutes * 60 * speedup)
    for fraction in (0.0, 0.3, 0.999, 1.0):
        wall_now = wall + timedelta(seconds=fraction * minutes * 60)
        sim_now = sim_start + timedelta(seconds=fraction * minutes * 60 * speedup)
        assert sim_now <= wall_now + timedelta(microseconds=1)
    if speedup > 1:
        assert sim_end == wall + timedelta(minutes=minutes)


def test_contract_plans_are_valid_engine_plans(
    faulty: tuple[FleetSimulator, list[SimEvent], list[dict[str, Any]]],
) -> None:
    from core.plan import Plan

    sim, _, _ = faulty
    plans = [Plan.from_dict(p) for p in sim.contract_plans()]
    by_vehicle = {p["vehicle"]: p for p in sim.plans()}
    assert [p.vehicle for p in plans] == sim.vehicle_ids
    for plan in plans:
        raw = by_vehicle[plan.vehicle]
        assert [s.id for s in plan.stops] == [s["id"] for s in raw["stops"]]
        assert [s.service_s for s in plan.stops] == [s["planned_service_s"] for s in raw["stops"]]
        assert plan.route is not None and len(plan.route) == len(raw["route"])
        assert plan.temp_range_c == TEMP_RANGE_C
