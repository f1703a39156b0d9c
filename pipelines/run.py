"""Run the engine's dataflow against TimescaleDB with Bytewax recovery on."""

from __future__ import annotations

import logging
import signal
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


def run_flow(settings: Settings) -> None:
    """Blocks; resumes from the last snapshot in ``settings.recovery_dir`` if there is one."""
    recovery = settings.recovery_dir
    # the snapshots hold every vehicle's state and pending results: for this process's user only
    recovery.mkdir(mode=0o700, parents=True, exist_ok=True)
    recovery.chmod(0o700)
    # an existing store means an earlier execution ran on it, and it may have crashed before
    # it snapshotted anything: a vehicle with no snapshot then still has results stored
    resumed = any(recovery.glob("*.sqlite3"))
    if not resumed:
        init_db_dir(recovery, 1)
        log.info("flow: initialised recovery store in %s", recovery)
    if settings.flow_analytics:
        log.info("flow: %d dwell baseline cell-hours loaded", load_baselines(settings))
        METER.watch_gc()
    if settings.flow_analytics and settings.flow_eta:
        models, network = eta_models_dir(settings), eta_network(settings)
        load_eta_models(models, network=network)
        # SIGHUP (the engine forwards its own): reload the ETA set, e.g. after `fleetstream train eta`
        signal.signal(signal.SIGHUP, lambda *_: load_eta_models(models, keep_current=True, network=network))
    cli_main(
        build_engine_flow(settings, resumed),
        workers_per_process=1,
        epoch_interval=timedelta(seconds=settings.flow_epoch_s),
        recovery_config=RecoveryConfig(str(recovery)),
    )
