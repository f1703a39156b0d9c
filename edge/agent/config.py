"""The edge agent's configuration: one TOML file -> frozen dataclasses.

Every knob has a default that works except the device's identity (``[device]
tenant`` and ``vehicle``). Unknown keys, wrong types and out-of-range values are
refused with a :class:`ConfigError` naming the file, the table and the key.
Relative paths are relative to the configuration file's folder. The annotated
reference is ``edge/agent/example.toml``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from core.contract import READING_TYPES, ContractError, Limits, topic_for
from edge.agent.outbox import DEFAULT_DROP_ORDER
from edge.agent.sampling import GpsPolicy, TemperaturePolicy

__all__ = [
    "ConfigError",
    "AgentConfig",
    "DeviceConfig",
    "BrokerConfig",
    "OutboxConfig",
    "SenderConfig",
    "GpsSensorConfig",
    "TemperatureSensorConfig",
    "DoorSensorConfig",
    "load_config",
    "parse_config",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class DeviceConfig:
    """Who this device is: ids match ``[A-Za-z0-9_-]{1,64}``."""

    tenant: str
    vehicle: str


@dataclass(frozen=True)
class BrokerConfig:
    """The MQTT broker. Seconds; ``ca_file`` (PEM) switches TLS on: the broker's certificate is
    verified against it, host name included. ``cert_file`` and ``key_file`` (PEM): a client
    certificate the agent presents (for a broker that asks for one)."""

    host: str = "127.0.0.1"
    port: int = 18830  # the embedded broker's plaintext port (loopback); from a van: its TLS port
    username: str = ""  # empty: "<tenant>.<vehicle>"
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = ""  # empty: the username (fleetstream's broker accepts no other)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600


@dataclass(frozen=True)
class OutboxConfig:
    """The durable queue: SQLite file, byte cap and what is dropped over it."""

    path: Path = Path("/var/lib/fleetstream-edge/outbox.sqlite3")
    max_bytes: int = 64_000_000
    drop_order: tuple[str, ...] = DEFAULT_DROP_ORDER


@dataclass(frozen=True)
class SenderConfig:
    """Batching and heartbeats. Bytes and seconds."""

    batch_max_readings: int = 500
    batch_max_bytes: int = 64 * 1024  # per MQTT message; at most the contract's max_payload_bytes
    max_inflight_batches: int = 4  # messages published and not yet covered by a receipt (or PUBACK)
    status_interval_s: float = 60.0  # heartbeat on fleet/<tenant>/<vehicle>/status
    refused_retry_s: float = 60.0  # wait before resending readings the broker refused
    receipts: bool = True  # delete only what the gateway's stored receipts cover (false: on PUBACK)
    receipt_timeout_s: float = 30.0  # after the PUBACK, send again what no receipt covered this long


@dataclass(frozen=True)
class GpsSensorConfig:
    """``source``: ``gpsd``, ``fake`` or ``off``."""

    source: str = "gpsd"
    host: str = "127.0.0.1"
    port: int = 2947
    fake_rate_hz: float = 1.0
    fake_speed_mps: float = 10.0


@dataclass(frozen=True)
class TemperatureSensorConfig:
    """``source``: ``w1`` (DS18B20 via sysfs), ``fake`` or ``off``. ``names``: probe id -> sensor name."""

    source: str = "w1"
    devices_dir: Path = Path("/sys/bus/w1/devices")
    poll_s: float = 10.0
    names: tuple[tuple[str, str], ...] = ()
    fake_rate_hz: float = 0.1
    fake_sensors: tuple[str, ...] = ("reefer",)


@dataclass(frozen=True)
class DoorSensorConfig:
    """One door contact. ``source``: ``gpio`` or ``fake``; ``open_level``: the line level (0/1)
    that means open; ``bias``: ``pull_up``, ``pull_down`` or ``none``."""

    name: str
    source: str = "gpio"
    chip: str = "/dev/gpiochip0"
    line: int = 17
    open_level: int = 1
    bias: str = "pull_up"
    debounce_s: float = 0.2
    fake_toggle_s: float = 30.0


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, from one file (``source``)."""

    device: DeviceConfig
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    gps_sampling: GpsPolicy = field(default_factory=GpsPolicy)
    temp_sampling: TemperaturePolicy = field(default_factory=TemperaturePolicy)
    gps: GpsSensorConfig = field(default_factory=GpsSensorConfig)
    temperature: TemperatureSensorConfig = field(default_factory=TemperatureSensorConfig)
    doors: tuple[DoorSensorConfig, ...] = ()
    door_poll_s: float = 0.1  # each wake-up costs CPU: 10 Hz catches any door, stamps it to 0.1 s
    log_level: str = "INFO"
    source: Path | None = None

    @property
    def username(self) -> str:
        return self.broker.username or f"{self.device.tenant}.{self.device.vehicle}"

    @property
    def client_id(self) -> str:
        return self.broker.client_id or self.username


# ---------------------------------------------------------------- parsing


class _Table:
    """One TOML table being read: typed getters, and unknown keys refused at the end."""

    def __init__(self, where: str, name: str, raw: Any) -> None:
        self.where, self.name = where, name
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.error(None, "must be a table")
        self.raw: dict[str, Any] = raw
        self.seen: set[str] = set()

    def error(self, key: str | None, why: str) -> ConfigError:
        at = f"[{self.name}]" + (f" {key}" if key else "")
        return ConfigError(f"{self.where}: {at} {why}")

    def _get(self, key: str, default: T, kinds: tuple[type, ...], what: str) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self.error(key, f"must be {what}, got {value!r}")
        return value

    def text(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, default, (str,), "a string")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, default, (bool,), "true or false"))

    def integer(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        value = self._get(key, default, (int,), "an integer")
        self._check_range(key, value, lo, hi)
        return int(value)

    def number(self, key: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if not math.isfinite(value):
            raise self.error(key, "must be a finite number")
        self._check_range(key, value, lo, hi)
        return value

    def path(self, key: str, default: Path | None, base: Path) -> Path | None:
        value = self._get(key, None, (str,), "a path string")
        if value is None:
            return default
        if value == "":
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list(default), (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def numbers(self, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        value = self._get(key, list(default), (list,), "a list of numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise self.error(key, f"must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)

    def table(self, key: str) -> _Table:
        self.seen.add(key)
        return _Table(self.where, f"{self.name}.{key}" if self.name else key, self.raw.get(key))

    def _check_range(self, key: str, value: float, lo: float | None, hi: float | None) -> None:
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.error(key, f"must be <= {hi}, got {value}")

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise self.error(None, f"has unknown key(s): {', '.join(unknown)}")


def _device(t: _Table) -> DeviceConfig:
    values = {}
    for key in ("tenant", "vehicle"):
        value = t.text(key, "")
        if not value:
            raise t.error(key, "is required")
        values[key] = value
    try:
        topic_for(values["tenant"], values["vehicle"], "batch")
    except ContractError as exc:
        raise t.error(None, f"bad id: {exc.detail}") from None
    t.done()
    return DeviceConfig(**values)


def _broker(t: _Table, base: Path) -> BrokerConfig:
    d = BrokerConfig()
    password = t.text("password", "")
    password_file = t.path("password_file", None, base)
    if password and password_file:
        raise t.error("password_file", "and password are both set: use one")
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise t.error("password_file", f"cannot be read: {exc}") from None
    ca_file = t.path("ca_file", None, base)
    if ca_file is not None and not ca_file.is_file():
        raise t.error("ca_file", f"{ca_file} does not exist")
    cert_file, key_file = t.path("cert_file", None, base), t.path("key_file", None, base)
    for key, path in (("cert_file", cert_file), ("key_file", key_file)):
        if path is not None and not path.is_file():
            raise t.error(key, f"{path} does not exist")
    if (cert_file is None) != (key_file is None):
        raise t.error("cert_file" if cert_file is None else "key_file", "cert_file and key_file go together")
    if cert_file is not None and ca_file is None:
        raise t.error("cert_file", "needs ca_file: a client certificate is presented over TLS only")
    host = t.text("host", d.host)
    if not host:
        raise t.error("host", "must not be empty")
    config = BrokerConfig(
        host=host,
        port=t.integer("port", d.port, 1, 65535),
        username=t.text("username", d.username),
        password=password,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        client_id=t.text("client_id", d.client_id),
        keepalive_s=t.integer("keepalive_s", d.keepalive_s, 5, 65535),
        session_expiry_s=t.integer("session_expiry_s", d.session_expiry_s, 0, 2**32 - 1),
    )
    t.done()
    return config


def _outbox(t: _Table, base: Path) -> OutboxConfig:
    d = OutboxConfig()
    order = t.strings("drop_order", d.drop_order)
    for kind in order:
        if kind not in READING_TYPES:
            raise t.error("drop_order", f"lists {kind!r}; kinds are {', '.join(READING_TYPES)}")
    if len(set(order)) != len(order):
        raise t.error("drop_order", f"lists a kind twice: {list(order)}")
    path = t.path("path", d.path, base)
    if path is None:
        raise t.error("path", "must not be empty")
    config = OutboxConfig(path=path, max_bytes=t.integer("max_bytes", d.max_bytes, 16 * 1024), drop_order=order)
    t.done()
    return config


def _sender(t: _Table) -> SenderConfig:
    d = SenderConfig()
    limits = Limits()
    config = SenderConfig(
        batch_max_readings=t.integer("batch_max_readings", d.batch_max_readings, 1, limits.max_batch_readings),
        batch_max_bytes=t.integer("batch_max_bytes", d.batch_max_bytes, 1024, limits.max_payload_bytes),
        max_inflight_batches=t.integer("max_inflight_batches", d.max_inflight_batches, 1, 1000),
        status_interval_s=t.number("status_interval_s", d.status_interval_s, 1.0),
        refused_retry_s=t.number("refused_retry_s", d.refused_retry_s, 0.1),
        receipts=t.flag("receipts", d.receipts),
        receipt_timeout_s=t.number("receipt_timeout_s", d.receipt_timeout_s, 0.5),
    )
    t.done()
    return config


def _gps_policy(t: _Table) -> GpsPolicy:
    d = GpsPolicy()
    config = GpsPolicy(
        min_distance_m=t.number("min_distance_m", d.min_distance_m, 0.0),
        min_turn_deg=t.number("min_turn_deg", d.min_turn_deg, 0.0, 180.0),
        moving_period_s=t.number("moving_period_s", d.moving_period_s, 0.0),
        parked_period_s=t.number("parked_period_s", d.parked_period_s, 0.0),
        moving_speed_mps=t.number("moving_speed_mps", d.moving_speed_mps, 0.0),
    )
    t.done()
    return config


def _temp_policy(t: _Table) -> TemperaturePolicy:
    d = TemperaturePolicy()
    config = TemperaturePolicy(
        period_s=t.number("period_s", d.period_s, 0.0),
        thresholds_c=t.numbers("thresholds_c", d.thresholds_c),
        hysteresis_c=t.number("hysteresis_c", d.hysteresis_c, 0.0),
    )
    t.done()
    return config


def _gps_sensor(t: _Table) -> GpsSensorConfig:
    d = GpsSensorConfig()
    config = GpsSensorConfig(
        source=t.text("source", d.source, ("gpsd", "fake", "off")),
        host=t.text("host", d.host),
        port=t.integer("port", d.port, 1, 65535),
        fake_rate_hz=t.number("fake_rate_hz", d.fake_rate_hz, 0.001, 1000.0),
        fake_speed_mps=t.number("fake_speed_mps", d.fake_speed_mps, 0.0, 100.0),
    )
    t.done()
    return config


def _temp_sensor(t: _Table, base: Path) -> TemperatureSensorConfig:
    d = TemperatureSensorConfig()
    names_table = t.table("names")
    names = []
    for probe, name in names_table.raw.items():
        names_table.seen.add(probe)
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise names_table.error(probe, f"must be a sensor name of 1-64 characters, got {name!r}")
        names.append((probe, name))
    fake_sensors = t.strings("fake_sensors", d.fake_sensors)
    if not fake_sensors or not all(0 < len(s) <= 64 for s in fake_sensors):
        raise t.error("fake_sensors", "must list 1-64 character names")
    devices_dir = t.path("devices_dir", d.devices_dir, base)
    if devices_dir is None:
        raise t.error("devices_dir", "must not be empty")
    config = TemperatureSensorConfig(
        source=t.text("source", d.source, ("w1", "fake", "off")),
        devices_dir=devices_dir,
        poll_s=t.number("poll_s", d.poll_s, 0.5),
        names=tuple(names),
        fake_rate_hz=t.number("fake_rate_hz", d.fake_rate_hz, 0.001, 1000.0),
        fake_sensors=fake_sensors,
    )
    t.done()
    return config


def _door(t: _Table) -> DoorSensorConfig:
    name = t.text("name", "")
    if not 0 < len(name) <= 64:
        raise t.error("name", "is required (1-64 characters, e.g. rear)")
    d = DoorSensorConfig(name)
    config = DoorSensorConfig(
        name=name,
        source=t.text("source", d.source, ("gpio", "fake")),
        chip=t.text("chip", d.chip),
        line=t.integer("line", d.line, 0, 1023),
        open_level=t.integer("open_level", d.open_level, 0, 1),
        bias=t.text("bias", d.bias, ("pull_up", "pull_down", "none")),
        debounce_s=t.number("debounce_ms", d.debounce_s * 1000, 0.0, 10_000.0) / 1000.0,
        fake_toggle_s=t.number("fake_toggle_s", d.fake_toggle_s, 0.01),
    )
    t.done()
    return config


def parse_config(data: dict[str, Any], where: str = "<config>", base: Path | None = None) -> AgentConfig:
    """Build the configuration from parsed TOML ``data``; ``where`` names it in errors,
    ``base`` anchors relative paths (default: the current folder)."""
    base = base or Path.cwd()
    root = _Table(where, "", data)
    device = _device(root.table("device"))
    broker = _broker(root.table("broker"), base)
    outbox = _outbox(root.table("outbox"), base)
    sender = _sender(root.table("sender"))
    sampling = root.table("sampling")
    gps_sampling = _gps_policy(sampling.table("gps"))
    temp_sampling = _temp_policy(sampling.table("temp"))
    sampling.done()
    sensors = root.table("sensors")
    gps = _gps_sensor(sensors.table("gps"))
    temperature = _temp_sensor(sensors.table("temp"), base)
    raw_doors = sensors.raw.get("doors", [])
    sensors.seen.add("doors")
    if not isinstance(raw_doors, list):
        raise sensors.error("doors", "must be an array of tables ([[sensors.doors]])")
    doors = tuple(_door(_Table(where, f"sensors.doors #{i + 1}", raw)) for i, raw in enumerate(raw_doors))
    names = [door.name for door in doors]
    if len(set(names)) != len(names):
        raise sensors.error("doors", f"names must be unique, got {names}")
    door_poll_s = sensors.number("door_poll_ms", 100.0, 5.0, 5000.0) / 1000.0
    sensors.done()
    agent = root.table("agent")
    log_level = agent.text("log_level", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
    agent.done()
    root.done()
    if sender.batch_max_bytes > Limits().max_payload_bytes:
        raise ConfigError(f"{where}: [sender] batch_max_bytes exceeds the contract's {Limits().max_payload_bytes}")
    return AgentConfig(
        device=device,
        broker=broker,
        outbox=outbox,
        sender=sender,
        gps_sampling=gps_sampling,
        temp_sampling=temp_sampling,
        gps=gps,
        temperature=temperature,
        doors=doors,
        door_poll_s=door_poll_s,
        log_level=log_level,
    )


def load_config(path: str | Path) -> AgentConfig:
    """Read and check one TOML file; raises :class:`ConfigError` with the reason."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(data, str(path), path.resolve().parent)
    return replace(config, source=path.resolve())
