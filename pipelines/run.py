"""Run the engine's dataflow against TimescaleDB with Bytewax recovery on."""

from __future__ import annotations

import logging
from dataclasses import fields
from datetime import timedelta

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from fleetstream.settings import Settings
from pipelines.baselines import set_dwell_baselines
from pipelines.connectors import AnalyticsStore, CommittedReadings, VehicleStateSink
from pipelines.flow import build_analytics_flow, build_flow
from pipelines.trackers.config import AnalyticsConfig
from store.db import connect

__all__ = ["analytics_config", "build_engine_flow", "load_baselines", "run_flow"]

log = logging.getLogger("fleetstream.flow")


def analytics_config(settings: Settings) -> AnalyticsConfig:
    """The trackers' thresholds: every AnalyticsConfig field that Settings also has comes from Settings."""
    own = {f.name for f in fields(Settings)}
    values = {f.name: getattr(settings, f.name) for f in fields(AnalyticsConfig) if f.name in own}
    return AnalyticsConfig(cell_resolution=settings.h3_resolution, **values)


def load_baselines(settings: Settings) -> int:
    """Load the learned dwell baselines from TimescaleDB into the trackers' lookup."""
    with connect(settings.dsn(), autocommit=True, attempts=30) as conn:
        rows = conn.execute("SELECT h3_cell, hour_of_week, samples, median_s FROM dwell_baselines").fetchall()
    return set_dwell_baselines(rows, settings.baseline_min_samples)


def build_engine_flow(settings: Settings) -> Dataflow:
    """The dataflow the engine runs: analytics (default) or basic per-vehicle state."""
    dsn, poll_s = settings.dsn(), settings.flow_poll_ms / 1000
    source = CommittedReadings(dsn, settings.gateway_workers, settings.flow_batch_rows, poll_s,
                               with_plans=bool(settings.flow_analytics))
    if not settings.flow_analytics:
        return build_flow(source, VehicleStateSink(dsn))
    return build_analytics_flow(source, AnalyticsStore(dsn),
                                analytics_config(settings), tick_s=settings.flow_tick_ms / 1000,
                                idle_grace_s=settings.fleet_idle_grace_s)


def run_flow(settings: Settings) -> None:
    """Blocks; resumes from the last snapshot in ``settings.recovery_dir`` if there is one."""
    recovery = settings.recovery_dir
    if not any(recovery.glob("*.sqlite3")):
        recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery, 1)
        log.info("flow: initialised recovery store in %s", recovery)
    if settings.flow_analytics:
        log.info("flow: %d dwell baseline cell-hours loaded", load_baselines(settings))
    cli_main(build_engine_flow(settings), workers_per_process=1,
             epoch_interval=timedelta(seconds=settings.flow_epoch_s), recovery_config=RecoveryConfig(str(recovery)))
