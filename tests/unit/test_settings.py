"""Every knob has a default, an environment override and a range checked at start (its docs line:
test_docs.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core.settings import Settings, SettingsError, load_settings


def test_environment_overrides_with_types(monkeypatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_GATEWAY_WORKERS", "3")
    monkeypatch.setenv("FLEETSTREAM_FLOW_EPOCH_S", "0.5")
    monkeypatch.setenv("FLEETSTREAM_STATE_DIR", "/tmp/x")
    s = load_settings(sim_vehicles=4)
    assert (s.gateway_workers, s.flow_epoch_s, s.state_dir, s.sim_vehicles) == (3, 0.5, Path("/tmp/x"), 4)


def test_external_services_are_parsed() -> None:
    s = Settings(mqtt_url="mqtt://gw:secret@broker:1884", pg_dsn="postgresql://db/fleet")
    assert s.mqtt_endpoint() == ("broker", 1884)
    assert s.mqtt_url_account() == ("gw", "secret")
    assert s.dsn() == "postgresql://db/fleet"
    assert not s.embedded_mqtt and not s.embedded_pg


def test_the_embedded_broker_also_listens_where_told() -> None:
    from fleetstream.services import _broker_conf

    plain = [line for line in _broker_conf(Settings(mqtt_port=18830)).splitlines() if line.startswith("listener")]
    assert plain == ["listener 18830 127.0.0.1"]
    extra = Settings(mqtt_port=18830, mqtt_also_listen=" 10.9.0.1, ::1 ,")
    assert extra.mqtt_also_listen_on() == ["10.9.0.1", "::1"]
    assert [line for line in _broker_conf(extra).splitlines() if line.startswith("listener")] == [
        "listener 18830 127.0.0.1",
        "listener 18830 10.9.0.1",
        "listener 18830 ::1",
    ]


def test_an_unknown_variable_is_refused_with_a_hint() -> None:
    with pytest.raises(
        SettingsError,
        match=r"unknown setting FLEETSTREAM_GATEWAY_WORKER \(did you mean FLEETSTREAM_GATEWAY_WORKERS\?\)",
    ):
        load_settings({"FLEETSTREAM_GATEWAY_WORKER": "2"})


def test_test_and_bootstrap_variables_are_not_settings() -> None:
    s = load_settings({"FLEETSTREAM_TEST_PG_PORT": "1", "FLEETSTREAM_CACHE_DIR": "/x", "FLEETSTREAM_PG_MAJOR": "15"})
    assert s == Settings()


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("FLEETSTREAM_GATEWAY_WORKERS", "two", r"FLEETSTREAM_GATEWAY_WORKERS='two' is not an integer"),
        ("FLEETSTREAM_FLOW_EPOCH_S", "1,5", r"FLEETSTREAM_FLOW_EPOCH_S='1,5' is not a number"),
        ("FLEETSTREAM_GATEWAY_WORKERS", "0", r"gateway_workers must be between 1 and 64, got 0"),
        ("FLEETSTREAM_MQTT_PORT", "70000", r"mqtt_port must be between 1 and 65535"),
        ("FLEETSTREAM_OFFLINE_AFTER_S", "-5", r"offline_after_s must be at least 0"),
        ("FLEETSTREAM_FLOW_ETA", "2", r"flow_eta must be between 0 and 1"),
        ("FLEETSTREAM_EXCURSION_MIN_S", "nan", r"excursion_min_s must be a finite number"),
        ("FLEETSTREAM_TELTONIKA_PORT", "65536", r"teltonika_port must be between 0 and 65535"),
        ("FLEETSTREAM_DEVICE_MAX_CONNECTIONS", "0", r"device_max_connections must be between 1 and 1000000"),
    ],
)
def test_bad_values_name_the_variable(variable: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({variable: raw})


def test_overrides_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'gateway_worker'"):
        load_settings({}, gateway_worker=2)
    with pytest.raises(SettingsError, match="h3_resolution must be between 0 and 15"):
        replace(Settings(), h3_resolution=16)


def test_the_tracker_listeners_and_the_shards_the_dataflow_replays() -> None:
    s = load_settings({"FLEETSTREAM_GT06_PORT": "0", "FLEETSTREAM_GATEWAY_WORKERS": "3"})
    assert s.listener_ports() == {"teltonika": 5027, "osmand": 5055}  # 0 = off
    # the gateway's shards, then the front ends' fixed ones: off or on, a listener's shard is replayed
    assert s.replay_shards() == [0, 1, 2, 100, 101, 102]
