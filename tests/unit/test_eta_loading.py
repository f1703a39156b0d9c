"""The engine's ETA models: loaded at start from <state_dir>/models/eta, reloaded on SIGHUP;
nothing there or a corrupt set never stops the flow. And the ETA payload on MQTT."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.geo import haversine_m
from core.settings import Settings
from delivery.deliverer import event_payload, event_topic, merge_pages
from models import registry
from models.profiles import SpeedProfiles
from pipelines.run import eta_config, eta_models_dir, eta_network, load_eta_models


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    registry.clear("default")
    yield
    registry.clear("default")


def test_nothing_there_serves_the_constant_estimate(tmp_path: Path) -> None:
    assert eta_models_dir(Settings(state_dir=tmp_path)) == tmp_path / "models" / "eta"
    assert load_eta_models(tmp_path / "models" / "eta") is False
    assert registry.current() == registry.EtaModels()


def test_a_set_loads_and_a_corrupt_reload_keeps_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry.save_dir(tmp_path, registry.EtaModels(profiles=SpeedProfiles.constant(9.0), detour_factor=1.4))
    assert load_eta_models(tmp_path) is True
    assert registry.current().detour_factor == 1.4 and registry.current().profiles is not None
    (tmp_path / registry.DETOUR_FILE).write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="fleetstream.flow"):
        assert load_eta_models(tmp_path, keep_current=True) is False
    assert "could not load the ETA models" in caplog.text
    assert registry.current().detour_factor == 1.4  # the reload kept what was serving
    assert load_eta_models(tmp_path) is False  # at start: serve without it
    assert registry.current() == registry.EtaModels()


def test_a_model_file_that_is_not_a_model_is_an_error_not_a_crash(tmp_path: Path, caplog) -> None:
    (tmp_path / registry.MODEL_FILE).write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR, logger="fleetstream.flow"):
        assert load_eta_models(tmp_path) is False
    assert "serving ETAs without a model" in caplog.text
    assert registry.current().model is None


def test_flow_eta_off_gives_no_eta_config() -> None:
    assert eta_config(Settings(flow_eta=0)) is None
    cfg = eta_config(Settings(eta_reemit_s=30.0, eta_every_s=10.0, h3_resolution=8))
    assert cfg is not None and (cfg.reemit_s, cfg.estimate_every_s, cfg.cell_resolution) == (30.0, 10.0, 8)


def test_eta_payload_and_topic() -> None:
    t = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    row = {
        "table": "eta_updates",
        "id": "5b0c8c1e-0000-5000-8000-000000000000",
        "rev": 7,
        "tenant": "acme",
        "vehicle_id": "van-1",
        "stop_id": "s1",
        "plan_version": 2,
        "at": t,
        "eta": t.replace(minute=30),
        "h3_cell": 0x8908996AB7BFFFF,
        "window_end": None,
        "method": "route",
        "state": "moving",
        "details": {"remaining_m": 1000.0},
        "retracted": False,
        "detected_at": t,
        "updated_at": t,
    }
    doc = event_payload(row)
    assert doc == {
        "v": 1,
        "kind": "eta",
        "id": row["id"],
        "rev": 7,
        "tenant": "acme",
        "vehicle": "van-1",
        "stop_id": "s1",
        "plan_version": 2,
        "at": "2026-11-23T08:00:00.000Z",
        "eta": "2026-11-23T08:30:00.000Z",
        "h3_cell": "8908996ab7bffff",
        "window_end": None,
        "method": "route",
        "state": "moving",
        "details": {"remaining_m": 1000.0},
        "retracted": False,
        "detected_at": "2026-11-23T08:00:00.000Z",
        "updated_at": "2026-11-23T08:00:00.000Z",
    }
    assert event_topic(doc) == "etas/acme/van-1"
    assert [r["rev"] for r in merge_pages([{"rev": 1}, {"rev": 5}], [], 2, [{"rev": 3}, {"rev": 4}])] == [1, 3, 4]


def test_a_configured_road_network_serves_plans_without_a_route_and_survives_reloads(tmp_path: Path) -> None:
    from core.plan import Plan, Stop
    from core.thresholds import EtaConfig
    from pipelines.trackers.eta import EtaTracker
    from pipelines.trackers.quality import CheckedFix

    assert eta_network(Settings(state_dir=tmp_path)) is None  # the default: no network
    network = eta_network(Settings(state_dir=tmp_path, eta_road_network="helsinki"))
    assert network is not None and len(network.network) > 1000
    assert load_eta_models(tmp_path / "none", network=network) is False  # no trained set: the network still serves
    assert registry.current().network is network
    registry.save_dir(tmp_path / "set", registry.EtaModels(detour_factor=1.4))
    assert load_eta_models(tmp_path / "set", keep_current=True, network=network) is True
    assert registry.current().network is network and registry.current().detour_factor == 1.4

    roads = network.network
    a, b, c = (roads.coords(roads.nodes[i]) for i in (0, len(roads) // 2, len(roads) - 1))
    stops = (Stop("s1", *b), Stop("s2", *c))
    tracker = EtaTracker("acme", "van-1", EtaConfig())
    tracker.set_plan(Plan("acme", "van-1", 1, stops))  # no route
    out = tracker.update(CheckedFix(datetime(2026, 11, 23, 8, tzinfo=UTC), a[0], a[1], 8.0, 5.0, None), stops)
    assert {e.stop_id for e in out} == {"s1", "s2"}
    assert {e.details["method"] for e in out} == {"network"}
    # along the roads, never shorter than the straight line between the points
    assert all(
        e.details["remaining_m"] >= haversine_m(*a, *stop) * 0.99
        for e, stop in zip(sorted(out, key=lambda e: e.stop_id), ((b[0], b[1]), (c[0], c[1])), strict=True)
    )
