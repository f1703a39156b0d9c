"""The ETA models in force, held at module level and looked up by name.

Tracker state is pickled into every checkpoint, so trackers never hold models: an
``EtaTracker`` names its set (``EtaConfig.models``, ``"default"``) and calls
``current(name)`` on each fix. Nothing is required: with nothing registered the ETA
uses one constant speed, straight lines times ``DEFAULT_DETOUR_FACTOR`` (or the
plan's route), and no model correction.

Files (``save_dir`` / ``load_dir``, all optional)::

    <dir>/speed_profiles.json   SpeedProfiles.to_dict()
    <dir>/detour.json           {"detour_factor": 1.31, "mean_speed_mps": 6.2, "stop_dwell_s": 95.0}
    <dir>/eta_model.joblib      EtaModel.save() (+ eta_model.joblib.json sidecar)

Replacing a set while trackers run is safe (each fix reads the current one), but a
late-data replay after a swap may compute different ETAs than were emitted live; the
vehicle's ledger then re-emits them under the same ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.plan import Stop
from models.paths import DEFAULT_DETOUR_FACTOR, NetworkPaths
from models.profiles import SpeedProfiles

if TYPE_CHECKING:
    from models.eta import EtaModel

__all__ = ["EtaModels", "clear", "current", "load_dir", "save_dir", "set_models"]

PROFILES_FILE = "speed_profiles.json"
DETOUR_FILE = "detour.json"
MODEL_FILE = "eta_model.joblib"


@dataclass(frozen=True)
class EtaModels:
    """One set of ETA models; every part optional."""

    profiles: SpeedProfiles | None = None
    model: EtaModel | None = None
    detour_factor: float = DEFAULT_DETOUR_FACTOR
    network: NetworkPaths | None = None
    mean_speed_mps: float | None = None  # travelled metres / seconds over the trips, stops and waits included
    stop_dwell_s: float | None = None  # the learned time at a stop, for the stops whose plan gives no service_s

    def service_s(self, stop: Stop) -> float:
        """Seconds a visit to ``stop`` takes: its planned ``service_s``, or where the plan gives
        none (0), the learned ``stop_dwell_s`` (0 when nothing was learned)."""
        return stop.service_s or self.stop_dwell_s or 0.0


_NOTHING = EtaModels()
_sets: dict[str, EtaModels] = {}


def current(name: str = "default") -> EtaModels:
    """The set registered under ``name`` (an empty ``EtaModels`` when none is)."""
    return _sets.get(name, _NOTHING)


def set_models(name: str = "default", **parts: Any) -> EtaModels:
    """Register a set under ``name``, replacing the given parts (``profiles``, ``model``,
    ``detour_factor``, ``network``) of what was there and keeping the others."""
    models = replace(current(name), **parts)
    _sets[name] = models
    return models


def clear(name: str | None = None) -> None:
    """Forget one set (or all of them)."""
    if name is None:
        _sets.clear()
    else:
        _sets.pop(name, None)


def save_dir(directory: Path | str, models: EtaModels) -> None:
    """Write the set's profiles, detour factor and model (those present) under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if models.profiles is not None:
        (directory / PROFILES_FILE).write_text(json.dumps(models.profiles.to_dict()))
    detour: dict[str, float] = {"detour_factor": models.detour_factor}
    if models.mean_speed_mps is not None:
        detour["mean_speed_mps"] = models.mean_speed_mps
    if models.stop_dwell_s is not None:
        detour["stop_dwell_s"] = models.stop_dwell_s
    (directory / DETOUR_FILE).write_text(json.dumps(detour) + "\n")
    if models.model is not None:
        models.model.save(directory / MODEL_FILE)


def load_dir(directory: Path | str, name: str = "default", network: NetworkPaths | None = None) -> EtaModels:
    """Register what ``directory`` holds under ``name`` (missing files are simply absent parts).

    The model needs scikit-learn, imported only when a model file is there.
    """
    directory = Path(directory)
    profiles = None
    if (directory / PROFILES_FILE).is_file():
        profiles = SpeedProfiles.from_dict(json.loads((directory / PROFILES_FILE).read_text()))
    detour, mean_speed, dwell = DEFAULT_DETOUR_FACTOR, None, None
    if (directory / DETOUR_FILE).is_file():
        fitted = json.loads((directory / DETOUR_FILE).read_text())
        detour = float(fitted["detour_factor"])
        mean_speed = float(fitted["mean_speed_mps"]) if fitted.get("mean_speed_mps") else None
        dwell = float(fitted["stop_dwell_s"]) if fitted.get("stop_dwell_s") is not None else None
    model = None
    if (directory / MODEL_FILE).is_file():
        from models.eta import EtaModel

        model = EtaModel.load(directory / MODEL_FILE)
    models = EtaModels(profiles, model, detour, network, mean_speed, dwell)
    _sets[name] = models
    return models
