"""RoadNetwork: the bundled Helsinki extract, its cache, and path queries (no network access)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import networkx as nx
import pytest

from models.roads import RoadNetwork, bundled_pbf, distance_to_polyline_m, haversine_m, parse_maxspeed


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # shared with test_simulator.py within one session: only the first load builds
    return tmp_path_factory.getbasetemp() / "roads-cache"


@pytest.fixture(scope="module")
def network(cache_dir: Path) -> RoadNetwork:
    return RoadNetwork.load("helsinki", cache_dir)


def test_bundled_extract_is_found_without_download() -> None:
    path = bundled_pbf("helsinki")
    assert path.name == "Helsinki.osm.pbf" and path.stat().st_size > 100_000
    with pytest.raises(ValueError):
        bundled_pbf("atlantis")


def test_cached_load_is_fast_and_identical(network: RoadNetwork, cache_dir: Path) -> None:
    assert list(cache_dir.glob("roads-helsinki-*.pickle"))
    started = time.perf_counter()
    again = RoadNetwork.load("helsinki", cache_dir)
    assert time.perf_counter() - started < 1.0
    assert again.nodes == network.nodes
    assert sorted(again.graph.edges) == sorted(network.graph.edges)


def test_graph_is_one_strongly_connected_driving_network(network: RoadNetwork) -> None:
    graph = network.graph
    assert graph.number_of_nodes() > 1000 and graph.number_of_edges() > 1500
    assert nx.is_strongly_connected(graph)
    for _, _, data in graph.edges(data=True):
        assert data["length_m"] > 0
        assert 5 <= data["speed_kmh"] <= 130
        assert data["travel_s"] == pytest.approx(data["length_m"] / (data["speed_kmh"] / 3.6))
    lat, lon = network.node_coords.mean(axis=0)
    assert 60.1 < lat < 60.25 and 24.85 < lon < 25.05  # central Helsinki


def test_random_node_is_deterministic(network: RoadNetwork) -> None:
    a = [network.random_node(random.Random(5)) for _ in range(3)]
    b = [network.random_node(random.Random(5)) for _ in range(3)]
    assert a == b and all(node in network.graph for node in a)


def test_shortest_path_is_contiguous_and_memoised(network: RoadNetwork) -> None:
    rng = random.Random(11)
    for _ in range(20):
        a, b = network.random_node(rng), network.random_node(rng)
        path = network.shortest_path(a, b)
        assert path.points[0] == network.coords(a) and path.points[-1] == network.coords(b)
        assert len(path.lengths_m) == len(path.speeds_kmh) == len(path.points) - 1
        for (p, q), length in zip(zip(path.points, path.points[1:], strict=False), path.lengths_m, strict=True):
            assert haversine_m(*p, *q) == pytest.approx(length, rel=0.05, abs=0.5)
        assert network.shortest_path(a, b) is path
    same = network.shortest_path(a, a)
    assert same.points == (network.coords(a),) and same.length_m == 0


def test_route_concatenates_legs(network: RoadNetwork) -> None:
    rng = random.Random(3)
    stops = [network.random_node(rng) for _ in range(4)]
    route = network.route(stops)
    legs = [network.shortest_path(a, b) for a, b in zip(stops, stops[1:], strict=False)]
    assert route.length_m == pytest.approx(sum(leg.length_m for leg in legs))
    assert route.points[0] == network.coords(stops[0]) and route.points[-1] == network.coords(stops[-1])
    assert route.travel_s == pytest.approx(sum(leg.travel_s for leg in legs))


def test_distances_to_roads(network: RoadNetwork) -> None:
    lats, lons = network.node_coords[:50, 0], network.node_coords[:50, 1]
    assert network.distance_to_road_m(lats, lons).max() < 0.5
    far = network.distance_to_road_m([60.0], [24.9])  # ~18 km south, in the sea
    assert far[0] > 10_000
    node = network.nodes[10]
    assert network.nearest_node(*network.coords(node)) == node
    assert distance_to_polyline_m([(60.0, 25.0)], [(60.0, 25.0), (60.001, 25.0)])[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "kmh"),
    [("30", 30.0), ("20 mph", 32.18688), ("FI:urban", 50.0), ("none", None), (None, None), ("40;50", 40.0)],
)
def test_parse_maxspeed(raw: str | None, kmh: float | None) -> None:
    assert parse_maxspeed(raw) == (pytest.approx(kmh) if kmh is not None else None)
