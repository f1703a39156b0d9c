"""The engine: gateway shard processes, the tracker listeners, the dataflow, the dispatch listener,
the deliverer and the API, supervised.

Each part runs in its own process (the gateway is CPU-bound Python, so shards
use both cores). A child that dies is restarted; the dataflow resumes from its
Bytewax recovery snapshot. Children get PDEATHSIG so a killed supervisor never
leaves orphans that would hold a shard.

Metrics: every child writes its Prometheus metrics to ``<state_dir>/metrics``
(``PROMETHEUS_MULTIPROC_DIR``, set here for all of them), emptied when the engine
starts; the API serves them merged. A child that exits is marked dead there, so its
``live`` gauges stop counting while its counters keep their totals.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields

from core.settings import Settings
from ingest.dispatch import ready_file as dispatch_ready_file
from ingest.gateway import ready_file
from ingest.listener import ready_file as listener_ready_file

__all__ = ["Engine", "settings_env"]

log = logging.getLogger("fleetstream.engine")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _flow_name(process: int) -> str:
    """``flow`` for the dataflow's (first) process, ``flow-<i>`` for the others of a cluster."""
    return "flow" if process == 0 else f"flow-{process}"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    env = dict(os.environ)
    for f in fields(Settings):
        env[f"FLEETSTREAM_{f.name.upper()}"] = str(getattr(settings, f.name))
    return env


@dataclass
class _Child:
    name: str
    argv: list[str]
    shard: int | None = None
    protocol: str | None = None  # a tracker listener's
    flow: int | None = None  # a dataflow process's place in its cluster
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


class Engine:
    """Start, watch and stop the engine's processes."""

    def __init__(
        self,
        settings: Settings,
        with_flow: bool = True,
        with_dispatch: bool = True,
        with_delivery: bool | None = None,
        with_api: bool | None = None,
        with_listeners: bool = True,
    ) -> None:
        self.settings = settings
        cli = [sys.executable, "-m", "fleetstream.cli"]
        self.children = [
            _Child(f"gateway-{i}", [*cli, "gateway", "--shard", str(i)], shard=i)
            for i in range(settings.gateway_workers)
        ]
        # the tracker front ends whose port is not 0, one process each (its own writer shard)
        if with_listeners:
            self.children += [_Child(f"listen-{p}", [*cli, "listen", p], protocol=p) for p in settings.listener_ports()]
        if with_flow:  # the dataflow: one process, or a Bytewax cluster of flow_processes on this host
            cluster = settings.flow_cluster()
            if settings.flow_addresses.strip():
                raise ValueError(
                    "flow_addresses names a cluster across hosts: run `fleetstream flow --process I` on each "
                    "host and the engine without its dataflow (`fleetstream engine --no-flow`)"
                )
            self.children += [
                _Child(_flow_name(i), [*cli, "flow", "--process", str(i)], flow=i) for i in range(max(1, len(cluster)))
            ]
        # one dispatch listener per broker (its client id is fixed): plans over MQTT
        self.with_dispatch = with_dispatch
        if with_dispatch:
            self.children.append(_Child("dispatch", [*cli, "dispatch"]))
        # alerts and stop events to MQTT and webhooks: with the analytics, unless told otherwise
        if with_delivery if with_delivery is not None else (with_flow and bool(settings.flow_analytics)):
            self.children.append(_Child("deliver", [*cli, "deliver"]))
        # the HTTP API and the page: with the settings' engine_api, unless told otherwise
        if with_api if with_api is not None else bool(settings.engine_api):
            self.children.append(_Child("api", [*cli, "api"]))
        self._log = settings.state_dir / "logs"
        self._env = {**settings_env(settings), "PROMETHEUS_MULTIPROC_DIR": str(settings.metrics_dir)}

    def _forget_ready(self, child: _Child) -> None:
        """Remove the child's ready file: before it starts, and once it stopped (a stale one
        would tell the next engine's wait, or a person, that a stopped process is subscribed)."""
        if child.shard is not None:
            ready_file(self.settings, child.shard).unlink(missing_ok=True)
        if child.name == "dispatch":
            dispatch_ready_file(self.settings).unlink(missing_ok=True)
        if child.protocol is not None:
            listener_ready_file(self.settings, child.protocol).unlink(missing_ok=True)

    def _spawn(self, child: _Child) -> None:
        self._log.mkdir(mode=0o700, parents=True, exist_ok=True)  # logs quote payloads and errors
        self._forget_ready(child)
        with open(self._log / f"{child.name}.log", "ab") as out:
            child.proc = subprocess.Popen(
                child.argv,
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        log.info("engine: started %s (pid %d)", child.name, child.proc.pid)

    def start(self) -> None:
        metrics = self.settings.metrics_dir
        metrics.mkdir(mode=0o700, parents=True, exist_ok=True)
        for private in (metrics, self._log, self.settings.recovery_dir):
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            private.chmod(0o700)
        for old in metrics.glob("*.db"):  # a new engine: counters start from zero
            old.unlink(missing_ok=True)
        self._prepare_flow()
        for child in self.children:
            self._spawn(child)

    def _flows(self) -> list[_Child]:
        return [c for c in self.children if c.flow is not None]

    def _prepare_flow(self) -> None:
        """Create the recovery store once for all the dataflow's processes, and tell each whether
        the run resumes an earlier one (each deciding alone would race with the one creating it)."""
        flows = self._flows()
        if not flows:
            return
        from pipelines.run import prepare_recovery

        resumed = "yes" if prepare_recovery(self.settings) else "no"
        for child in flows:
            child.argv = [*child.argv[: child.argv.index("flow") + 3], "--resumed", resumed]

    def _exited(self, child: _Child) -> None:
        """A child is gone: its live gauges leave the metrics (prometheus-client multiprocess mode)."""
        if child.proc is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child.proc.pid, str(self.settings.metrics_dir))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every gateway shard (and the dispatch listener) has subscribed, so their queues
        exist in the broker, and every tracker listener accepts connections."""
        deadline = time.monotonic() + timeout_s
        shards = [c.shard for c in self.children if c.shard is not None]
        files = [ready_file(self.settings, s) for s in shards]
        files += [listener_ready_file(self.settings, c.protocol) for c in self.children if c.protocol is not None]
        if self.with_dispatch:
            files.append(dispatch_ready_file(self.settings))
        while not all(f.exists() for f in files):
            if time.monotonic() > deadline:
                missing = ", ".join(f.stem for f in files if not f.exists())
                raise TimeoutError(f"not ready after {timeout_s} s: {missing}; see {self._log}")
            time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self.children if c.proc is not None}

    def watch(self, stop: threading.Event) -> None:
        """Restart children that exit until ``stop`` is set. The dataflow's processes restart
        together: a Bytewax cluster that lost one process cannot go on, and resumes as a whole."""
        while not stop.wait(0.5):
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    log.warning("engine: %s exited with %s; restarting", child.name, child.proc.returncode)
                    self._exited(child)
                    child.restarts += 1
                    time.sleep(min(5.0, 0.5 * child.restarts))
                    if child.flow is not None and len(self._flows()) > 1:
                        self._restart_flows()
                    else:
                        self._spawn(child)

    def _restart_flows(self) -> None:
        """Kill what is left of the dataflow's cluster (by pid: our own children) and start it again."""
        flows = self._flows()
        for child in flows:
            if child.proc is not None and child.proc.poll() is None:
                log.warning("engine: stopping %s (pid %d) to restart the cluster", child.name, child.proc.pid)
                child.proc.kill()
                child.proc.wait()
                self._exited(child)
        self._prepare_flow()
        for child in flows:
            self._spawn(child)

    def reload_models(self) -> None:
        """Make the dataflow reload its ETA models (SIGHUP; it logs what it loaded)."""
        for child in self.children:
            if child.flow is not None and child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGHUP)
                log.info("engine: asked the flow (pid %d) to reload its ETA models", child.proc.pid)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child (SIGINT for the dataflow), then SIGKILL what is left."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT if child.flow is not None else signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("engine: %s did not stop; killing pid %d", child.name, child.proc.pid)
                child.proc.kill()
                child.proc.wait()
            self._exited(child)
            self._forget_ready(child)


def run_engine(settings: Settings, with_flow: bool = True) -> None:
    """Foreground entry point: run until SIGTERM or Ctrl-C; SIGHUP reloads the ETA models.

    Holds the state folder: a second engine, demo or test session on it is refused at once
    (:class:`fleetstream.state.StateBusy`)."""
    from fleetstream.state import exclusive_use

    with exclusive_use(settings, "fleetstream engine"):
        _run_engine(settings, with_flow)


def _run_engine(settings: Settings, with_flow: bool) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine = Engine(settings, with_flow)
    signal.signal(signal.SIGHUP, lambda *_: engine.reload_models())  # e.g. after `fleetstream train eta`
    engine.start()
    try:
        engine.wait_ready()
        log.info("engine: ready (%d gateway shards subscribed)", settings.gateway_workers)
        engine.watch(stop)
    finally:
        engine.stop()
