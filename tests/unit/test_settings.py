"""Every knob has a default, an environment override and a line in the README."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from core.settings import Settings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [f.name for f in fields(Settings) if f"`{f.name}`" not in text]
    assert missing == []


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
