"""Operations endpoints: liveness, readiness and the Prometheus metrics of every engine process.

``/readyz`` is ready when all hold: the database answers; every gateway shard has its
subscription in place (the shard's ready file in ``<state_dir>/run``, as the engine
itself waits for); the dataflow reports (its source read the database within
``FLOW_SILENT_S``) and is at most ``api_ready_max_lag_s`` behind the gateway. The
dataflow's figures come from the same metrics ``/metrics`` serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from core.settings import Settings

__all__ = ["FLOW_SILENT_S", "Readiness", "metric_values", "metrics_text", "readiness"]

FLOW_SILENT_S = 15.0  # a dataflow whose source has not read the database for this long is not running


def _registry(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def metrics_text(directory: Path) -> bytes:
    """Every process's metrics in ``directory``, merged, in Prometheus' text format."""
    if not directory.is_dir():
        return b""
    return generate_latest(_registry(directory))


def metric_values(directory: Path, name: str) -> list[tuple[dict[str, str], float]]:
    """The merged samples (labels, value) of metric family ``name`` in ``directory``."""
    if not directory.is_dir():
        return []
    for family in _registry(directory).collect():
        if family.name == name:
            return [(dict(s.labels), float(s.value)) for s in family.samples if s.name == name]
    return []


@dataclass
class Readiness:
    """The outcome of the readiness checks: ``reasons`` is empty when ready."""

    checks: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.reasons


def readiness(settings: Settings, database_error: str | None, now: float | None = None) -> Readiness:
    """The checks after the database round trip (``database_error``: None when it answered)."""
    now = time.time() if now is None else now
    out = Readiness()
    out.checks["database"] = database_error or "ok"
    if database_error:
        out.reasons.append(f"database unreachable: {database_error}")
    missing = [
        shard
        for shard in range(settings.gateway_workers)
        if not (settings.state_dir / "run" / f"gateway-{shard}.ready").exists()
    ]
    out.checks["gateway_shards_subscribed"] = settings.gateway_workers - len(missing)
    if missing:
        out.reasons.append(f"gateway shard(s) {', '.join(map(str, missing))} not subscribed")
    heartbeat = max(
        (v for _, v in metric_values(settings.metrics_dir, "fleetstream_flow_last_poll_timestamp_seconds")),
        default=None,
    )
    lag = max((v for _, v in metric_values(settings.metrics_dir, "fleetstream_flow_lag_seconds")), default=None)
    out.checks["dataflow_lag_s"] = lag
    if heartbeat is None or now - heartbeat > FLOW_SILENT_S:
        out.reasons.append("dataflow not reporting (is the engine running?)")
    elif lag is not None and lag > settings.api_ready_max_lag_s:
        out.reasons.append(f"dataflow {lag:.0f} s behind the gateway (bound {settings.api_ready_max_lag_s:g} s)")
    return out
