"""The state folder's layout, and what is recorded in it: locks and service pids.

Shared by ``services`` (which starts the embedded Mosquitto and TimescaleDB) and
``credentials`` (which generates the broker's accounts file and changes the running broker's accounts).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from core.settings import Settings

__all__ = ["alive", "broker_paths", "broker_pid", "cmdline", "read_pid", "state_lock", "state_path"]


def state_path(settings: Settings) -> Path:
    return Path(settings.state_dir).resolve()


def broker_paths(settings: Settings) -> dict[str, Path]:
    base = state_path(settings) / "mosquitto"
    return {
        "base": base,
        "conf": base / "mosquitto.conf",
        "data": base / "data",
        "log": base / "mosquitto.log",
        "pid": base / "mosquitto.pid",
        "dynsec": base / "dynsec" / "dynamic-security.json",
    }


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (our daemons are reparented to an init
    that may not reap them quickly)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return []


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first)
    except (FileNotFoundError, ValueError):
        return None


@contextlib.contextmanager
def state_lock(settings: Settings, name: str) -> Iterator[None]:
    """An exclusive lock across processes on ``state_dir/.{name}.lock``."""
    state = state_path(settings)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / f".{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def broker_pid(settings: Settings) -> int | None:
    """Pid of this state dir's Mosquitto when it runs, else None (stale pid files are ignored)."""
    p = broker_paths(settings)
    pid = read_pid(p["pid"])
    if pid is None or not alive(pid):
        return None
    cmd = cmdline(pid)
    if not cmd or Path(cmd[0]).name != "mosquitto" or str(p["conf"]) not in cmd:
        return None  # pid reused by something else
    return pid
