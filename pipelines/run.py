"""Run the engine's dataflow against TimescaleDB with Bytewax recovery on."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from core.settings import Settings
from core.thresholds import AnalyticsConfig, EtaConfig
from models import registry
from models.eta import features
from models.paths import NetworkPaths
from pipelines.baselines import set_dwell_baselines
from pipelines.connectors import AnalyticsStore, CommittedReadings, VehicleStateSink
from pipelines.flow import build_analytics_flow, build_flow
from pipelines.meter import METER
from pipelines.replay_history import StoreHistory
from store.db import connect

__all__ = [
    "analytics_config",
    "build_engine_flow",
    "eta_config",
    "eta_models_dir",
    "load_baselines",
    "load_eta_models",
    "prepare_recovery",
    "run_flow",
]

log = logging.getLogger("fleetstream.flow")
_ETA_SET = EtaConfig.models  # the name the engine's ETA trackers look their models up by


def analytics_config(settings: Settings) -> AnalyticsConfig:
    """The trackers' thresholds: every AnalyticsConfig field that Settings also has comes from Settings."""
    own = {f.name for f in fields(Settings)}
    values = {f.name: getattr(settings, f.name) for f in fields(AnalyticsConfig) if f.name in own}
    return AnalyticsConfig(cell_resolution=settings.h3_resolution, **values)


def eta_config(settings: Settings) -> EtaConfig | None:
    """The live ETA tracker's config, or None when ``flow_eta`` is off."""
    if not settings.flow_eta:
        return None
    return EtaConfig(
        reemit_s=settings.eta_reemit_s,
        estimate_every_s=settings.eta_every_s,
        cell_resolution=settings.h3_resolution,
        max_stops=settings.eta_max_stops,
    )


def eta_models_dir(settings: Settings) -> Path:
    """Where ``fleetstream train eta`` publishes the current ETA set: ``<state_dir>/models/eta``."""
    return settings.state_dir / "models" / "eta"


def eta_network(settings: Settings) -> NetworkPaths | None:
    """The road network ETAs follow to stops when a plan has no route (``eta_road_network``;
    empty: none, straight lines times the learned detour factor)."""
    if not settings.eta_road_network:
        return None
    from models.roads import RoadNetwork

    network = RoadNetwork.load(settings.eta_road_network, settings.state_dir / "cache")
    log.info(
        "flow: ETAs without a planned route follow the %s road network (%d nodes)",
        settings.eta_road_network,
        len(network),
    )
    return NetworkPaths(network, resolution=settings.h3_resolution)


def load_eta_models(directory: Path, keep_current: bool = False, network: NetworkPaths | None = None) -> bool:
    """Register the ETA set in ``directory`` (and ``network``) for the flow's trackers; never raises.

    Nothing there: the profile / constant-speed estimate serves. A set that cannot be
    read is logged as an error; then the flow serves without it (at start) or keeps the
    set it had (``keep_current``, on a reload). Returns whether a set was loaded.
    """
    if not directory.is_dir():
        registry.clear(_ETA_SET)
        registry.set_models(_ETA_SET, network=network)
        log.info("flow: no ETA models in %s; ETAs from the constant-speed estimate", directory)
        return False
    try:
        models = registry.load_dir(directory, _ETA_SET, network=network)
    except Exception as exc:  # a corrupt or half-written set must never stop the flow
        if not keep_current:
            registry.clear(_ETA_SET)
            registry.set_models(_ETA_SET, network=network)
        log.error(
            "flow: could not load the ETA models in %s (%s: %s); %s",
            directory,
            type(exc).__name__,
            exc,
            "keeping the models loaded before" if keep_current else "serving ETAs without a model",
        )
        return False
    if models.model is not None:
        try:  # a model that loads but cannot predict would fail inside the flow: probe it here
            models.model.predict_log_ratio([features(1000.0, 120.0, 8.0, 0, 10, 0.0, 0.0, 0.0)])
        except Exception as exc:
            models = registry.set_models(_ETA_SET, model=None)
            log.error(
                "flow: the ETA model in %s cannot predict (%s: %s); serving the speed-profile estimate",
                directory,
                type(exc).__name__,
                exc,
            )
    log.info(
        "flow: ETA models loaded from %s (speed profiles: %s, model: %s, detour factor %.2f)",
        directory,
        "yes" if models.profiles is not None else "no",
        "yes" if models.model is not None else "no",
        models.detour_factor,
    )
    return True


def load_baselines(settings: Settings) -> int:
    """Load the learned dwell baselines from TimescaleDB into the trackers' lookup."""
    with connect(settings.dsn("flow"), autocommit=True, attempts=30) as conn:
        rows = conn.execute("SELECT h3_cell, hour_of_week, samples, median_s FROM dwell_baselines").fetchall()
    return set_dwell_baselines(rows, settings.baseline_min_samples)


def build_engine_flow(settings: Settings, resumed: bool = False) -> Dataflow:
    """The dataflow the engine runs: analytics (default) or basic per-vehicle state; ``resumed``:
    it restarts an execution on the same recovery store (see ``build_analytics_flow``)."""
    dsn, poll_s = settings.dsn("flow"), settings.flow_poll_ms / 1000
    source = CommittedReadings(
        dsn,
        settings.replay_shards(),
        settings.flow_batch_rows,
        poll_s,
        with_plans=bool(settings.flow_analytics),
        plan_limits=settings.plan_limits(),
    )
    if not settings.flow_analytics:
        return build_flow(source, VehicleStateSink(dsn))
    return build_analytics_flow(
        source,
        AnalyticsStore(dsn),
        analytics_config(settings),
        tick_s=settings.flow_tick_ms / 1000,
        idle_grace_s=settings.fleet_idle_grace_s,
        eta=eta_config(settings),
        resumed=resumed,
        history=StoreHistory(dsn) if resumed else None,
    )


def prepare_recovery(settings: Settings) -> bool:
    """Create the recovery store if there is none (private to this user); whether there was one,
    i.e. whether the dataflow resumes an earlier execution (which may have crashed before it
    snapshotted anything: a vehicle with no snapshot then still has results stored).

    A new store gets one recovery partition per process of the cluster. Bytewax resumes a store
    with another number of processes (stop-start rescaling): the partitions are not the workers."""
    recovery = settings.recovery_dir
    recovery.mkdir(mode=0o700, parents=True, exist_ok=True)
    recovery.chmod(0o700)
    if any(recovery.glob("*.sqlite3")):
        return True
    init_db_dir(recovery, max(1, len(settings.flow_cluster())))
    log.info("flow: initialised recovery store in %s", recovery)
    return False


def _wait_for_store(settings: Settings, timeout_s: float = 60.0) -> None:
    """A process other than the first of a cluster: the first (or the engine) creates the store."""
    deadline = time.monotonic() + timeout_s
    while not any(settings.recovery_dir.glob("*.sqlite3")):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no recovery store in {settings.recovery_dir} after {timeout_s:.0f} s: "
                "start process 0 of the cluster (or the engine) first"
            )
        time.sleep(0.1)


def run_flow(settings: Settings, process_id: int = 0, resumed: bool | None = None) -> None:
    """Blocks; resumes from the last snapshot in ``settings.recovery_dir`` if there is one.

    ``process_id``: this process's place in the cluster (``Settings.flow_cluster()``; 0 alone).
    ``resumed``: whether this execution resumes an earlier one on the same store, as decided by
    whoever prepared the store for the whole cluster (the engine); None: decide here.
    """
    addresses = settings.flow_cluster()
    if addresses and not 0 <= process_id < len(addresses):
        raise ValueError(f"process {process_id} is not in the cluster of {len(addresses)}: {', '.join(addresses)}")
    if not addresses and process_id != 0:
        raise ValueError(f"process {process_id} given, but the dataflow runs as one process (flow_processes 1)")
    if resumed is None:
        if process_id == 0:
            resumed = prepare_recovery(settings)
        else:
            _wait_for_store(settings)
            resumed = True
    if settings.flow_analytics:
        log.info("flow: %d dwell baseline cell-hours loaded", load_baselines(settings))
        METER.watch_gc()
    if settings.flow_analytics and settings.flow_eta:
        models, network = eta_models_dir(settings), eta_network(settings)
        load_eta_models(models, network=network)
        # SIGHUP (the engine forwards its own): reload the ETA set, e.g. after `fleetstream train eta`
        signal.signal(signal.SIGHUP, lambda *_: load_eta_models(models, keep_current=True, network=network))
    log.info("flow: %s the recovery store in %s", "resuming from" if resumed else "starting on", settings.recovery_dir)
    if addresses:
        log.info("flow: process %d of a cluster of %d (%s)", process_id, len(addresses), ", ".join(addresses))
    cli_main(
        build_engine_flow(settings, resumed),
        workers_per_process=1,
        process_id=process_id if addresses else None,
        addresses=addresses or None,
        epoch_interval=timedelta(seconds=settings.flow_epoch_s),
        recovery_config=RecoveryConfig(str(settings.recovery_dir)),
    )
