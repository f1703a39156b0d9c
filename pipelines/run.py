"""Run the engine's dataflow against TimescaleDB with Bytewax recovery on."""

from __future__ import annotations

import logging
from datetime import timedelta

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from fleetstream.settings import Settings
from pipelines.connectors import CommittedReadings, VehicleStateSink
from pipelines.flow import build_flow

__all__ = ["run_flow"]

log = logging.getLogger("fleetstream.flow")


def run_flow(settings: Settings) -> None:
    """Blocks; resumes from the last snapshot in ``settings.recovery_dir`` if there is one."""
    recovery = settings.recovery_dir
    if not any(recovery.glob("*.sqlite3")):
        recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery, 1)
        log.info("flow: initialised recovery store in %s", recovery)
    source = CommittedReadings(settings.dsn(), settings.gateway_workers, settings.flow_batch_rows,
                               settings.flow_poll_ms / 1000)
    flow = build_flow(source, VehicleStateSink(settings.dsn()))
    cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=settings.flow_epoch_s),
             recovery_config=RecoveryConfig(str(recovery)))
