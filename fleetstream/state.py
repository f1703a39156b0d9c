"""The state folder's layout, and what is recorded in it: locks and service pids.

Shared by ``services`` (which starts the embedded Mosquitto and TimescaleDB) and
``credentials`` (which generates the broker's accounts file and changes the running broker's accounts).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from core.settings import Settings

__all__ = [
    "StateBusy",
    "alive",
    "exclusive_use",
    "broker_paths",
    "broker_pid",
    "cmdline",
    "read_pid",
    "state_lock",
    "state_path",
]


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


class StateBusy(RuntimeError):
    """Another engine, demo or test session uses the state folder (the message names its pid)."""


# "<pid>@<state folder>" of the process that holds a state folder's session lock: its children
# (a test session's demos, a demo's in-process evaluation) nest under it instead of being refused
_HOLDER_ENV = "FLEETSTREAM_STATE_HOLDER"


@contextlib.contextmanager
def exclusive_use(settings: Settings, what: str) -> Iterator[None]:
    """Hold the state folder for ``what`` (an engine, a demo, a test session): refused at once
    with :class:`StateBusy` naming the holder's pid when another one holds it, never waited for.

    The lock is ``flock`` on ``state_dir/.session.lock``, so it dies with its process (no stale
    lock after a ``kill -9``). A process started by the holder (``FLEETSTREAM_STATE_HOLDER`` names
    it) takes the holder's nested lock ``.session-<pid>.lock`` instead: a test session may run a
    demo in its folder, but two such demos still exclude each other.
    """
    state = state_path(settings)
    state.mkdir(parents=True, exist_ok=True)
    name = ".session.lock"
    holder = os.environ.get(_HOLDER_ENV, "")
    pid_text, _, folder = holder.partition("@")
    if folder == str(state) and pid_text.isdigit() and alive(int(pid_text)):
        name = f".session-{pid_text}.lock"
    path = state / name
    fh = open(path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "a process that has not written its pid yet"
            raise StateBusy(
                f"the state folder {state} is in use by {other}; wait for it to end or stop it, "
                "or give this run its own folder (FLEETSTREAM_STATE_DIR and other ports)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{what} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})\n")
        fh.flush()
        previous = os.environ.get(_HOLDER_ENV)
        os.environ[_HOLDER_ENV] = f"{os.getpid()}@{state}"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(_HOLDER_ENV, None)
            else:
                os.environ[_HOLDER_ENV] = previous
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
