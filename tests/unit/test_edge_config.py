"""The edge agent's TOML configuration: defaults that work, clear errors for bad files."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.agent.config import AgentConfig, ConfigError, load_config
from edge.agent.outbox import DEFAULT_DROP_ORDER
from edge.agent.sampling import GpsPolicy, TemperaturePolicy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "edge" / "agent" / "example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


MINIMAL = '[device]\ntenant = "acme"\nvehicle = "van-7"\n'


def test_the_shipped_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert (config.device.tenant, config.device.vehicle) == ("acme", "van-007")
    assert config.username == "acme.van-007" and config.client_id == "acme.van-007"
    assert config.temperature.names == (("28-0000075565c2", "reefer"),)
    assert [d.name for d in config.doors] == ["rear"] and config.doors[0].debounce_s == 0.2
    assert config.source == EXAMPLE


def test_only_the_identity_is_required_and_defaults_work(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert isinstance(config, AgentConfig)
    assert config.broker.host == "127.0.0.1" and config.broker.port == 18830 and config.broker.ca_file is None
    assert config.outbox.drop_order == DEFAULT_DROP_ORDER == ("gps", "temp")
    assert config.outbox.max_bytes == 64_000_000
    assert config.gps_sampling == GpsPolicy() and config.temp_sampling == TemperaturePolicy()
    assert config.gps.source == "gpsd" and config.gps.port == 2947
    assert config.temperature.source == "w1" and config.doors == ()
    assert config.door_poll_s == 0.1


def test_everything_can_be_set(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config(
        write(
            tmp_path,
            MINIMAL
            + """
[broker]
host = "broker.fleet.internal"
port = 8883
password_file = "secret"
ca_file = "ca.pem"
username = "custom"
client_id = "van-7-pi"
[outbox]
path = "state/outbox.sqlite3"
max_bytes = 100000
drop_order = ["temp"]
[sender]
batch_max_readings = 50
status_interval_s = 5
[sampling.gps]
min_distance_m = 0
moving_period_s = 0
[sampling.temp]
period_s = 0
thresholds_c = [-18, 5]
[sensors]
door_poll_ms = 20
[sensors.gps]
source = "fake"
fake_rate_hz = 20
[sensors.temp]
source = "fake"
fake_sensors = ["front", "back"]
[[sensors.doors]]
name = "rear"
source = "fake"
fake_toggle_s = 0.5
debounce_ms = 30
[[sensors.doors]]
name = "side"
line = 27
open_level = 0
[agent]
log_level = "DEBUG"
""",
        )
    )
    assert config.broker.password == "s3cret" and config.broker.ca_file == tmp_path / "ca.pem"
    assert config.username == "custom" and config.client_id == "van-7-pi"
    assert config.outbox.path == tmp_path / "state" / "outbox.sqlite3"
    assert config.outbox.drop_order == ("temp",)
    assert config.gps_sampling.min_distance_m == 0 and config.temp_sampling.thresholds_c == (-18.0, 5.0)
    assert config.gps.fake_rate_hz == 20 and config.temperature.fake_sensors == ("front", "back")
    assert [(d.name, d.source, d.line, d.open_level) for d in config.doors] == [
        ("rear", "fake", 17, 1),
        ("side", "gpio", 27, 0),
    ]
    assert config.doors[0].debounce_s == pytest.approx(0.03) and config.door_poll_s == pytest.approx(0.02)
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"\[device\] tenant is required"),
        ('[device]\ntenant = "acme"\n', r"\[device\] vehicle is required"),
        ('[device]\ntenant = "acme"\nvehicle = "van 7"\n', r"\[device\] bad id"),
        (MINIMAL + "colour = 3\n", r"unknown key\(s\): colour"),
        (MINIMAL + "[broker]\nprot = 1883\n", r"\[broker\] has unknown key\(s\): prot"),
        (MINIMAL + '[broker]\nport = "1883"\n', r"\[broker\] port must be an integer"),
        (MINIMAL + "[broker]\nport = 70000\n", r"\[broker\] port must be <= 65535"),
        (MINIMAL + "[broker]\nport = true\n", r"\[broker\] port must be an integer"),
        (MINIMAL + '[broker]\nca_file = "/nonexistent/ca.pem"\n', r"ca_file .* does not exist"),
        (MINIMAL + '[broker]\npassword = "a"\npassword_file = "b"\n', r"both set"),
        (MINIMAL + '[outbox]\ndrop_order = ["gps", "humidity"]\n', r"drop_order lists 'humidity'"),
        (MINIMAL + '[outbox]\ndrop_order = ["gps", "gps"]\n', r"twice"),
        (MINIMAL + "[outbox]\nmax_bytes = 10\n", r"max_bytes must be >= 16384"),
        (MINIMAL + '[outbox]\npath = ""\n', r"path must not be empty"),
        (MINIMAL + "[sender]\nbatch_max_bytes = 300000\n", r"batch_max_bytes must be <= 262144"),
        (MINIMAL + "[sampling.gps]\nmin_turn_deg = 200\n", r"\[sampling.gps\] min_turn_deg must be <= 180"),
        (MINIMAL + '[sampling.temp]\nthresholds_c = ["hot"]\n', r"thresholds_c must be a list of numbers"),
        (MINIMAL + '[sensors.gps]\nsource = "serial"\n', r"source must be one of gpsd, fake, off"),
        (MINIMAL + '[sensors.temp.names]\n"28-1" = 5\n', r"\[sensors.temp.names\] 28-1 must be a sensor name"),
        (MINIMAL + "[[sensors.doors]]\nline = 4\n", r"\[sensors.doors #1\] name is required"),
        (MINIMAL + '[[sensors.doors]]\nname = "r"\n[[sensors.doors]]\nname = "r"\n', r"names must be unique"),
        (MINIMAL + '[agent]\nlog_level = "LOUD"\n', r"log_level must be one of"),
        ("broker = 5\n" + MINIMAL, r"\[broker\] must be a table"),
    ],
)
def test_bad_configurations_say_where_and_why(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[device\ntenant = "))
    with pytest.raises(ConfigError, match="password_file cannot be read"):
        load_config(write(tmp_path, MINIMAL + '[broker]\npassword_file = "nope"\n'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.agent", "--config", str(config), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_reports_each_missing_piece_with_its_fix(tmp_path: Path) -> None:
    """Nothing listening, no password, no probes, no GPIO chip: each is a FAIL line with a fix."""
    (tmp_path / "w1").mkdir()
    config = write(
        tmp_path,
        MINIMAL + f"[broker]\nport = {_free_port()}\n[sensors.gps]\nport = {_free_port()}\n"
        f'[sensors.temp]\ndevices_dir = "{tmp_path / "w1"}"\n'
        f'[[sensors.doors]]\nname = "rear"\nchip = "{tmp_path / "gpiochip9"}"\n',
    )
    done = _check(config)
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout
    assert "FAIL broker: cannot reach 127.0.0.1:" in out and "services status" in out
    assert "FAIL gpsd: no gpsd on 127.0.0.1:" in out and "apt install gpsd" in out
    assert f"FAIL 1-wire: no DS18B20 probe (28-*) under {tmp_path / 'w1'}" in out and "dtoverlay=w1-gpio" in out
    assert f"FAIL door rear: {tmp_path / 'gpiochip9'} does not exist" in out
    assert out.count("     fix: ") == 4
    assert "not ready: broker, gpsd, 1-wire, door rear" in out
    bad = _check(write(tmp_path, ""))
    assert bad.returncode == 2 and "tenant is required" in bad.stderr


def test_check_passes_what_is_there(tmp_path: Path) -> None:
    """A gpsd that greets, the named probe present: ok lines (the broker is the integration test's)."""
    (tmp_path / "w1" / "28-0000075565c2").mkdir(parents=True)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def greet() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b'{"class":"VERSION","release":"3.25","proto_major":3,"proto_minor":15}\r\n')

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        config = write(
            tmp_path,
            MINIMAL + f"[broker]\nport = {_free_port()}\n[sensors.gps]\nport = {port}\n"
            f'[sensors.temp]\ndevices_dir = "{tmp_path / "w1"}"\n[sensors.temp.names]\n"28-0000075565c2" = "reefer"\n',
        )
        done = _check(config)
        thread.join(5)
    out = done.stdout
    assert f"ok   gpsd: 127.0.0.1:{port} answers (gpsd 3.25)" in out
    assert "ok   1-wire: 1 probe(s)" in out and "28-0000075565c2" in out
    assert done.returncode == 2 and "not ready: broker" in out  # no broker here
