"""Start, stop and inspect the project-local services.

* PostgreSQL 15 with TimescaleDB preloaded: a cluster in ``state_dir/pg/data``
  (owned by the ``postgres`` OS user), listening on ``settings.pg_host:pg_port``
  only, unix socket in ``state_dir/pg/run``, trust auth for local and 127.0.0.1.
* Mosquitto: config, password/ACL files, persistence, log and pid file in
  ``state_dir/mosquitto``; drops root privileges to the ``mosquitto`` user. The broker is
  ``mqtt_broker_bin``, else the Mosquitto 2.1 that ``scripts/bootstrap.sh`` builds
  (``.venv/opt/mosquitto``), else ``mosquitto`` on the PATH. With 2.1's persist-sqlite
  plugin next to it, persistence is that plugin (it saves shared subscriptions, so a
  restarted broker queues for the gateway shards at once); else Mosquitto 2.0's own file.

Everything comes from :class:`core.settings.Settings`; nothing here knows a
fixed path or port. All entry points are idempotent and safe to call from several
processes (an exclusive lock on ``state_dir/.services.lock`` serialises them).
Only processes whose pid this module recorded (pid files it wrote or that the
service wrote for it) are ever signalled.

Public API::

    up(settings) -> dict                  start what is embedded and not running
    down(settings) -> dict                stop both (SIGTERM / fast shutdown)
    status(settings) -> dict
    broker_pid(settings) -> int | None
    postgres_pid(settings) -> int | None
    restart_broker(settings, hard=False) -> int        hard: SIGKILL
    restart_postgres(settings, hard=False) -> int      hard: immediate shutdown (crash)
    start_broker / stop_broker / start_postgres / stop_postgres (settings)
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetstream import credentials
from fleetstream.state import alive, broker_paths, broker_pid, cmdline, read_pid, state_lock, state_path

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "ServiceError",
    "up",
    "down",
    "status",
    "broker_pid",
    "postgres_pid",
    "restart_broker",
    "restart_postgres",
    "start_broker",
    "stop_broker",
    "start_postgres",
    "stop_postgres",
    "broker_executable",
    "broker_paths",
    "broker_sqlite_plugin",
    "postgres_paths",
    "POSTGRES_OPTIONS",
]

log = logging.getLogger(__name__)

PG_MAJOR = 15
PG_USER = "postgres"  # OS user owning the cluster, and the database superuser
MQTT_USER = "mosquitto"  # Mosquitto drops root privileges to this user

# Server settings for a small (2-core) box; port/sockets/preload are added per Settings.
# synchronous_commit stays on: an acknowledged reading must survive a crash.
POSTGRES_OPTIONS: dict[str, str] = {
    "shared_buffers": "512MB",
    "effective_cache_size": "2GB",
    "maintenance_work_mem": "256MB",
    "work_mem": "16MB",
    "wal_buffers": "16MB",
    "max_wal_size": "2GB",
    "min_wal_size": "256MB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_compression": "on",
    "synchronous_commit": "on",
    "max_connections": "100",
    "max_worker_processes": "16",
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "1",
    "timescaledb.max_background_workers": "0",
    "random_page_cost": "1.1",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_checkpoints": "on",
    "log_min_messages": "warning",
}

PG_START_TIMEOUT_S = 120
PG_STOP_TIMEOUT_S = 60
BROKER_START_TIMEOUT_S = 20
BROKER_STOP_TIMEOUT_S = 30


class ServiceError(RuntimeError):
    """A project-local service could not be started or stopped."""


# =============================================================== helpers


def postgres_paths(settings: Settings) -> dict[str, Path]:
    base = state_path(settings) / "pg"
    return {"base": base, "data": base / "data", "run": base / "run", "log": base / "postgres.log"}


def _is_root() -> bool:
    return os.geteuid() == 0


def _ids(user: str) -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _as_user(user: str, cmd: list[str]) -> list[str]:
    """Run ``cmd`` as ``user`` when we are root (initdb and pg_ctl refuse root)."""
    if _is_root():
        return ["runuser", "-u", user, "--", *cmd]
    return cmd


def _chown(path: Path, user: str) -> None:
    if not _is_root():
        return
    ids = _ids(user)
    if ids is None:
        raise ServiceError(f"OS user {user!r} does not exist (is its package installed? run scripts/bootstrap.sh)")
    os.chown(path, *ids)


def _make_traversable(path: Path) -> None:
    """Give 'others' search permission on ``path`` and its parents (service users must reach it)."""
    if not _is_root():
        return
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & 0o001:
            os.chmod(p, (mode & 0o7777) | 0o001)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    return state_lock(settings, "services")


def _prepare_state_dir(settings: Settings) -> Path:
    state = state_path(settings)
    state.mkdir(parents=True, exist_ok=True)
    _make_traversable(state)
    return state


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


# =============================================================== PostgreSQL


def _pg_bindir(settings: Settings) -> Path:
    if settings.pg_bindir:
        return Path(settings.pg_bindir)
    preferred = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
    if (preferred / "postgres").exists():
        return preferred
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("pg_ctl")
    if exe:
        return Path(exe).parent
    raise ServiceError("PostgreSQL binaries not found (run scripts/bootstrap.sh)")


def _pg(settings: Settings, name: str) -> str:
    return str(_pg_bindir(settings) / name)


def postgres_pid(settings: Settings) -> int | None:
    """The postmaster's pid (from ``postmaster.pid``) when it runs, else None."""
    paths = postgres_paths(settings)
    pid = read_pid(paths["data"] / "postmaster.pid")
    if pid is None or not alive(pid):
        return None
    cmd = cmdline(pid)
    if not cmd or not Path(cmd[0]).name.startswith(("postgres", "postmaster")):
        return None  # a stale pid file whose pid now belongs to something else
    return pid


def _pg_ready(settings: Settings) -> bool:
    proc = subprocess.run(
        [
            _pg(settings, "pg_isready"),
            "-q",
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-h",
            settings.pg_host,
            "-p",
            str(settings.pg_port),
            "-t",
            "1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return proc.returncode == 0


def _run(cmd: list[str], what: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc


_HBA = """\
# generated by fleetstream.services: trust on the local socket and loopback only
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
"""


def _pg_init(settings: Settings) -> None:
    paths = postgres_paths(settings)
    base, data, run = paths["base"], paths["data"], paths["run"]
    for d in (base, run):
        d.mkdir(parents=True, exist_ok=True)
        _chown(d, PG_USER)
    os.chmod(base, 0o755)
    os.chmod(run, 0o755)
    _make_traversable(base)
    if not paths["log"].exists():
        paths["log"].touch()
    _chown(paths["log"], PG_USER)
    if (data / "PG_VERSION").exists():
        return
    if data.exists() and any(data.iterdir()):
        raise ServiceError(f"{data} is not empty but holds no cluster (no PG_VERSION): move it away")
    data.mkdir(parents=True, exist_ok=True)
    _chown(data, PG_USER)
    os.chmod(data, 0o700)
    t0 = time.monotonic()
    _run(
        _as_user(
            PG_USER,
            [
                _pg(settings, "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        ),
        "initdb",
        timeout=300,
    )
    hba = data / "pg_hba.conf"
    hba.write_text(_HBA)
    _chown(hba, PG_USER)
    log.info("postgres: initdb %s in %.1f s", data, time.monotonic() - t0)


def _pg_options(settings: Settings) -> str:
    run = postgres_paths(settings)["run"]
    opts = {
        "port": str(settings.pg_port),
        "listen_addresses": settings.pg_host,
        "unix_socket_directories": str(run),
        "shared_preload_libraries": "timescaledb",
        "timescaledb.telemetry_level": "off",
        **POSTGRES_OPTIONS,
    }
    # pg_ctl hands -o to /bin/sh: quote every "-c name=value"
    return " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in opts.items())


def _ensure_database(settings: Settings) -> None:
    import psycopg
    from psycopg import sql

    base = f"host={settings.pg_host} port={settings.pg_port} user={PG_USER} connect_timeout=10"
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.pg_database,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent creator won
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
    with psycopg.connect(f"{base} dbname={settings.pg_database}", autocommit=True) as conn:
        has = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        if not has:
            with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")


def _start_postgres_locked(settings: Settings) -> int:
    paths = postgres_paths(settings)
    pid = postgres_pid(settings)
    if pid is not None:
        if not _wait_ready(settings, 30):
            raise ServiceError(f"postgres pid {pid} runs but does not accept connections on port {settings.pg_port}")
        _ensure_database(settings)
        return pid
    if _port_open(settings.pg_host, settings.pg_port):
        raise ServiceError(
            f"port {settings.pg_host}:{settings.pg_port} is taken by another process; "
            "the project-local postgres cannot start there"
        )
    if Path(_pg(settings, "pg_config")).exists():
        sharedir = _run([_pg(settings, "pg_config"), "--sharedir"], "pg_config").stdout.strip()
        control = Path(sharedir, "extension", "timescaledb.control")
        if not control.exists():
            raise ServiceError(f"TimescaleDB is not installed ({control} missing): run scripts/bootstrap.sh")
    _prepare_state_dir(settings)
    _pg_init(settings)
    t0 = time.monotonic()
    proc = subprocess.run(
        _as_user(
            PG_USER,
            [
                _pg(settings, "pg_ctl"),
                "start",
                "-D",
                str(paths["data"]),
                "-l",
                str(paths["log"]),
                "-w",
                "-t",
                str(PG_START_TIMEOUT_S),
                "-o",
                _pg_options(settings),
            ],
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ServiceError(
            f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()}\n--- {paths['log']} ---\n{_tail(paths['log'])}"
        )
    if not _wait_ready(settings, PG_START_TIMEOUT_S):
        raise ServiceError(f"postgres did not accept connections in time\n{_tail(paths['log'])}")
    pid = postgres_pid(settings)
    if pid is None:
        raise ServiceError(f"postgres started but postmaster.pid is unreadable\n{_tail(paths['log'])}")
    _ensure_database(settings)
    log.info("postgres: started pid %s on port %s in %.1f s", pid, settings.pg_port, time.monotonic() - t0)
    return pid


def _wait_ready(settings: Settings, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if _pg_ready(settings):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _stop_postgres_locked(settings: Settings, mode: str = "fast") -> bool:
    pid = postgres_pid(settings)
    if pid is None:
        return False
    data = postgres_paths(settings)["data"]
    proc = subprocess.run(
        _as_user(
            PG_USER, [_pg(settings, "pg_ctl"), "stop", "-D", str(data), "-m", mode, "-w", "-t", str(PG_STOP_TIMEOUT_S)]
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if not _wait_gone(pid, 10 if proc.returncode == 0 else 1):
        if mode != "immediate":
            log.warning("postgres pid %s did not stop in %s mode; using immediate", pid, mode)
            return _stop_postgres_locked(settings, "immediate")
        raise ServiceError(f"postgres pid {pid} did not stop: {proc.stderr.strip()}")
    return True


def start_postgres(settings: Settings) -> int:
    """Start (initdb first if needed) the cluster, create the database + extension; its pid."""
    with _lock(settings):
        return _start_postgres_locked(settings)


def stop_postgres(settings: Settings, mode: str = "fast") -> bool:
    """Stop the cluster (``fast``: roll back open transactions, checkpoint); True if it ran."""
    with _lock(settings):
        return _stop_postgres_locked(settings, mode)


def restart_postgres(settings: Settings, hard: bool = False) -> int:
    """Stop and start the cluster; ``hard`` = immediate shutdown (crash recovery at start)."""
    with _lock(settings):
        _stop_postgres_locked(settings, "immediate" if hard else "fast")
        return _start_postgres_locked(settings)


# =============================================================== Mosquitto


# 0 = no cap from the broker. MQTT v5 clients bound what the broker sends them with their
# own Receive Maximum (the gateway sets gateway_receive_maximum); with a non-zero value
# Mosquitto also advertises it as *its* Receive Maximum in CONNACK, throttling publishers.
BROKER_MAX_INFLIGHT = 0
# max_packet_size covers the whole packet: payload limit + topic (<= 64 KiB) + properties.
# A packet above it makes Mosquitto disconnect the client (reason 0x95); a payload above
# message_size_limit only gets a PUBACK with 0x97/0x83 and the connection stays up.
_PACKET_HEADROOM = 65_536 + 4_096


def broker_executable(settings: Settings) -> Path:
    """The Mosquitto to run: ``mqtt_broker_bin``, else the one scripts/bootstrap.sh built
    (``<venv>/opt/mosquitto/sbin/mosquitto``), else ``mosquitto`` on the PATH."""
    if settings.mqtt_broker_bin:
        return Path(settings.mqtt_broker_bin)
    built = Path(sys.prefix) / "opt" / "mosquitto" / "sbin" / "mosquitto"
    if built.exists():
        return built
    return Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto")


def broker_sqlite_plugin(settings: Settings) -> Path | None:
    """Mosquitto 2.1's persist-sqlite plugin installed with the broker, or None (a 2.0 broker)."""
    plugin = broker_executable(settings).resolve().parent.parent / "lib" / "mosquitto_persist_sqlite.so"
    return plugin if plugin.exists() else None


def _persistence_lines(settings: Settings) -> list[str]:
    data = broker_paths(settings)["data"]
    plugin = broker_sqlite_plugin(settings)
    if plugin is None:
        # Mosquitto 2.0: one file, saved every autosave_interval (it wrote every 2 s with 1 here);
        # shared subscriptions are not in it (the gateway shards subscribe again on connect)
        return [
            "persistence true",
            f"persistence_location {data}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            "autosave_on_changes false",
        ]
    # Mosquitto 2.1's persist-sqlite plugin: sessions, shared subscriptions included, and queued
    # messages in data/mosquitto.sqlite3, committed every flush_period seconds. 2.1 refuses
    # "persistence true" beside it. Its flush runs from the broker's timer loop, which an idle
    # broker only turns every sys_interval seconds: hence sys_interval 1 below.
    return [
        f"persistence_location {data}/",
        f"plugin {plugin}",
        "plugin_opt_flush_period 1",
        "plugin_opt_sync normal",
    ]


def _migrate_2_0_persistence(settings: Settings) -> None:
    """A state folder a Mosquitto 2.0 ran in holds its sessions and queued messages in
    ``mosquitto.db``, which 2.1's persist-sqlite plugin does not read: convert it once with
    upstream's converter (installed by bootstrap.sh), and keep the old file as ``.migrated``."""
    data = broker_paths(settings)["data"]
    old, new = data / "mosquitto.db", data / "mosquitto.sqlite3"
    if not old.exists() or new.exists():
        return
    prefix = broker_executable(settings).resolve().parent.parent
    script = prefix / "share" / "mosquitto" / "migrate_to_persist_sqlite.py"
    dump = prefix / "bin" / "mosquitto_db_dump"
    if not script.exists() or not dump.exists():
        raise ServiceError(
            f"{old} holds Mosquitto 2.0's sessions and queued messages, and the converter for 2.1 "
            f"({script}) is missing: run scripts/bootstrap.sh, or drain the queues with 2.0 "
            "(mqtt_broker_bin=/usr/sbin/mosquitto) and delete the file"
        )
    # the converter writes mosquitto.sqlite3 next to itself
    local = data / ".migrate_to_persist_sqlite.py"
    shutil.copyfile(script, local)
    try:
        _run(
            [sys.executable, str(local), "--persistence-db", str(old), "--dump-tool", str(dump)],
            "converting Mosquitto 2.0's persistence file",
            timeout=600,
        )
    finally:
        local.unlink(missing_ok=True)
    os.replace(old, data / "mosquitto.db.migrated")
    log.warning("mosquitto: converted %s (2.0) into %s for Mosquitto 2.1", old, new)


def _broker_conf(settings: Settings) -> str:
    p = broker_paths(settings)
    limit = int(settings.broker_message_size_limit)
    lines = [
        "# generated by fleetstream.services from Settings: do not edit (rewritten at every start)",
        # (per_listener_settings is false by default: auth and ACL apply to every listener)
        f"listener {settings.mqtt_port} {settings.mqtt_host}",
        *(f"listener {settings.mqtt_port} {addr}" for addr in settings.mqtt_also_listen_on()),
        "allow_anonymous false",
        f"password_file {p['passwd']}",
        f"acl_file {p['acl']}",
        "",
        *_persistence_lines(settings),
        "persistent_client_expiration 14d",
        "",
        f"max_queued_messages {int(settings.broker_max_queued_messages)}",
        f"max_queued_bytes {int(settings.broker_max_queued_bytes)}",
        "queue_qos0_messages false",
        f"max_inflight_messages {BROKER_MAX_INFLIGHT}",
        f"message_size_limit {limit}",
        f"max_packet_size {limit + _PACKET_HEADROOM}" if limit > 0 else "# max_packet_size: no limit",
        "set_tcp_nodelay true",
        "max_keepalive 65535",
        "",
        f"log_dest file {p['log']}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        f"pid_file {p['pid']}",
        "sys_interval 1",
    ]
    if _is_root():
        lines.append(f"user {MQTT_USER}")
    return "\n".join(lines) + "\n"


def _check_writable_by(user: str, path: Path) -> None:
    if not _is_root():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ServiceError(f"{path} is not writable")
        return
    probe = f"{path}/.write-probe-{os.getpid()}"
    proc = subprocess.run(
        ["runuser", "-u", user, "--", "sh", "-c", 'touch "$1" && rm -f "$1"', "sh", probe],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ServiceError(
            f"the broker's persistence folder {path} is not writable by the {user!r} user "
            f"(Mosquitto drops root privileges to it): {proc.stderr.strip()}. "
            f"Fix: chown -R {user}: {path} and make its parents traversable (chmod o+x)."
        )


def _prepare_broker(settings: Settings) -> Path:
    _prepare_state_dir(settings)
    p = broker_paths(settings)
    p["base"].mkdir(parents=True, exist_ok=True)
    p["data"].mkdir(parents=True, exist_ok=True)
    os.chmod(p["base"], 0o750 if _is_root() else 0o700)
    os.chmod(p["data"], 0o700)
    if not p["log"].exists():
        p["log"].touch()
    credentials.sync_broker_files(settings)
    if broker_sqlite_plugin(settings) is not None:
        _migrate_2_0_persistence(settings)
    if _is_root():
        for path in (p["base"], p["data"], p["log"], p["passwd"], p["acl"]):
            _chown(path, MQTT_USER)
        for child in p["data"].iterdir():
            _chown(child, MQTT_USER)
        if p["pid"].exists():
            _chown(p["pid"], MQTT_USER)
    conf = p["conf"]
    conf.write_text(_broker_conf(settings))
    os.chmod(conf, 0o644)
    _check_writable_by(MQTT_USER, p["data"])
    return conf


def _start_broker_locked(settings: Settings) -> int:
    pid = broker_pid(settings)
    if pid is not None:
        if not _wait_port(settings, pid, BROKER_START_TIMEOUT_S):
            raise ServiceError(f"mosquitto pid {pid} runs but {settings.mqtt_host}:{settings.mqtt_port} is closed")
        return pid
    if _port_open(settings.mqtt_host, settings.mqtt_port):
        raise ServiceError(
            f"port {settings.mqtt_host}:{settings.mqtt_port} is taken by another process; "
            "the project-local mosquitto cannot start there"
        )
    exe = str(broker_executable(settings))
    if not Path(exe).exists():
        raise ServiceError(f"mosquitto not found at {exe} (run scripts/bootstrap.sh)")
    p = broker_paths(settings)
    conf = _prepare_broker(settings)
    with contextlib.suppress(FileNotFoundError):
        p["pid"].unlink()  # stale: the broker is not running
    t0 = time.monotonic()
    # -d: Mosquitto daemonises (reparented to init, detached from our session) and
    # writes pid_file itself. Config errors are reported before it forks.
    proc = subprocess.run(
        [exe, "-d", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise ServiceError(
            f"mosquitto -d -c {conf} failed ({proc.returncode}): {proc.stderr.strip()}\n{_tail(p['log'])}"
        )
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    pid = None
    while time.monotonic() < deadline:
        pid = broker_pid(settings)
        if pid is not None and _port_open(settings.mqtt_host, settings.mqtt_port, 0.2):
            log.info("mosquitto: started pid %s on port %s in %.2f s", pid, settings.mqtt_port, time.monotonic() - t0)
            return pid
        if pid is None and p["pid"].exists() and time.monotonic() - t0 > 1.0:
            written = read_pid(p["pid"])
            if written is not None and not alive(written):
                break  # it started and died (bind error, unreadable files...)
        time.sleep(0.02)
    raise ServiceError(f"mosquitto did not come up on {settings.mqtt_host}:{settings.mqtt_port}\n{_tail(p['log'])}")


def _wait_port(settings: Settings, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(settings.mqtt_host, settings.mqtt_port, 0.2):
            return True
        if not alive(pid):
            return False
        time.sleep(0.02)
    return False


def _stop_broker_locked(settings: Settings, hard: bool = False) -> bool:
    pid = broker_pid(settings)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            broker_paths(settings)["pid"].unlink()
        return False
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    # SIGTERM: Mosquitto writes its persistence file before exiting
    if not _wait_gone(pid, BROKER_STOP_TIMEOUT_S):
        log.warning("mosquitto pid %s ignored SIGTERM for %s s; sending SIGKILL", pid, BROKER_STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)
    with contextlib.suppress(FileNotFoundError):
        broker_paths(settings)["pid"].unlink()
    return True


def start_broker(settings: Settings) -> int:
    """Start the embedded Mosquitto (no-op if running); its pid."""
    with _lock(settings):
        return _start_broker_locked(settings)


def stop_broker(settings: Settings, hard: bool = False) -> bool:
    """Stop the embedded Mosquitto (SIGTERM, or SIGKILL if ``hard``); True if it ran."""
    with _lock(settings):
        return _stop_broker_locked(settings, hard)


def restart_broker(settings: Settings, hard: bool = False) -> int:
    """Stop (``hard``: SIGKILL, nothing saved at exit) and start the broker; the new pid."""
    with _lock(settings):
        _stop_broker_locked(settings, hard)
        return _start_broker_locked(settings)


# =============================================================== all


def up(settings: Settings) -> dict[str, Any]:
    """Start the embedded services that are not running; returns :func:`status`."""
    with _lock(settings):
        if settings.embedded_pg:
            _start_postgres_locked(settings)
        if settings.embedded_mqtt:
            _start_broker_locked(settings)
    return status(settings)


def down(settings: Settings) -> dict[str, Any]:
    """Stop the embedded services this state dir runs; returns :func:`status`."""
    with _lock(settings):
        if settings.embedded_mqtt:
            _stop_broker_locked(settings)
        if settings.embedded_pg:
            _stop_postgres_locked(settings)
    return status(settings)


def status(settings: Settings) -> dict[str, Any]:
    """What runs, where, and whether it answers."""
    out: dict[str, Any] = {"state_dir": str(state_path(settings))}
    if settings.embedded_pg:
        pid = postgres_pid(settings)
        out["postgres"] = {
            "embedded": True,
            "running": pid is not None,
            "pid": pid,
            "host": settings.pg_host,
            "port": settings.pg_port,
            "accepting": pid is not None and _pg_ready(settings),
            "data_dir": str(postgres_paths(settings)["data"]),
            "log": str(postgres_paths(settings)["log"]),
        }
    else:
        out["postgres"] = {"embedded": False, "dsn": "(external)"}
    if settings.embedded_mqtt:
        pid = broker_pid(settings)
        out["mosquitto"] = {
            "embedded": True,
            "running": pid is not None,
            "pid": pid,
            "host": settings.mqtt_host,
            "port": settings.mqtt_port,
            "accepting": pid is not None and _port_open(settings.mqtt_host, settings.mqtt_port),
            "conf": str(broker_paths(settings)["conf"]),
            "log": str(broker_paths(settings)["log"]),
        }
    else:
        host, port = settings.mqtt_endpoint()
        out["mosquitto"] = {"embedded": False, "host": host, "port": port}
    return out
