"""``fleetstream train eta``: learn the ETA set from one tenant's history in TimescaleDB.

Reads positions, first arrivals and their plans (``store.history``), builds the speed
profiles, the detour factor and the corrective model (``training.eta``), and
publishes the set as a new version under ``<state_dir>/models/eta``
(``models.eta_versions``), where the engine loads it at start and on SIGHUP. Prints
the held-out metrics and the time each phase took. Without history it says so and
returns 1; nothing is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from core.settings import Settings

__all__ = ["eta_models_dir", "run_train_eta"]


def eta_models_dir(settings: Settings) -> Path:
    """Where the current ETA set lives (``registry.load_dir`` of this folder loads it)."""
    return Path(settings.state_dir) / "models" / "eta"


def run_train_eta(
    settings: Settings,
    tenant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    say: Callable[[str], Any] = print,
    models_dir: Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """Train and publish (to ``models_dir``, default ``eta_models_dir(settings)``); returns
    (exit code, summary with metrics, version and seconds per phase)."""
    from models.eta_versions import publish_eta_set
    from models.registry import EtaModels
    from store.db import connect
    from store.history import load_eta_history
    from training.eta import HORIZONS_S, train_eta_from_frames

    tenant = tenant or settings.tenant
    began = time.perf_counter()
    with connect(settings.dsn(), autocommit=True) as conn:
        history = load_eta_history(conn, tenant, since, until, lead_s=max(HORIZONS_S) + 600.0)
    loaded = time.perf_counter()
    counts = {"positions": history.positions.height, "arrivals": history.arrivals.height, "plans": len(history.plans)}
    summary: dict[str, Any] = {"tenant": tenant, **counts, "load_s": round(loaded - began, 2)}
    span = (
        f"tenant {tenant!r}"
        + (f" from {since.isoformat()}" if since else "")
        + (f" until {until.isoformat()}" if until else "")
    )
    if history.is_empty():
        say(
            f"no ETA history for {span}: {counts['positions']} positions, {counts['arrivals']} arrivals, "
            f"{counts['plans']} plans. Arrivals come from vehicles with plans driving through the engine; "
            "nothing was trained."
        )
        return 1, summary
    try:
        training = train_eta_from_frames(history.positions, history.arrivals, history.plans)  # seeded: repeatable
    except ValueError as exc:
        say(f"not enough ETA history for {span} ({counts}): {exc}; nothing was trained.")
        return 1, summary
    trained = time.perf_counter()
    model = training.model
    models_dir = models_dir or eta_models_dir(settings)
    folder = publish_eta_set(
        models_dir,
        EtaModels(
            training.profiles,
            model,
            training.detour_factor,
            mean_speed_mps=training.mean_speed_mps,
            stop_dwell_s=training.stop_dwell_s,
        ),
        model.version,
        keep=settings.eta_models_keep,
    )
    done = time.perf_counter()
    summary.update(
        version=folder.name,
        folder=str(folder),
        rows=training.rows.height,
        trips=training.rows["trip"].n_unique(),
        detour_factor=round(training.detour_factor, 3),
        mean_speed_mps=None if training.mean_speed_mps is None else round(training.mean_speed_mps, 2),
        stop_dwell_s=None if training.stop_dwell_s is None else round(training.stop_dwell_s, 1),
        profile_cells=sum(len(t) for t in training.profiles.cell_hour),
        metrics=model.metrics,
        train_s=round(trained - loaded, 2),
        save_s=round(done - trained, 2),
        total_s=round(done - began, 2),
    )
    say(json.dumps(summary, indent=2, default=str))
    say(
        f"ETA set {folder.name} is current in {models_dir} (engine: loaded at start, or send SIGHUP); "
        f"held-out MAE {model.metrics['mae_s']:.0f} s (profile alone {model.metrics['profile_mae_s']:.0f} s); "
        f"took {done - began:.1f} s (read {loaded - began:.1f} s, train {trained - loaded:.1f} s)"
    )
    return 0, summary
