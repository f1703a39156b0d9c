"""Trained ETA sets on disk, every version kept, the current one where the engine loads it.

Layout under ``root`` (``<state_dir>/models/eta``)::

    <root>/versions/<version>/      each trained set (``registry.save_dir`` files)
    <root>/speed_profiles.json      the current set: copies of one version's files, so
    <root>/detour.json              ``registry.load_dir(root)`` (engine start, SIGHUP)
    <root>/eta_model.joblib[.json]  finds it without knowing about versions
    <root>/CURRENT                  the current version's name

Publishing copies each file to a temporary name and renames it over the old one (each
file atomic); ``CURRENT`` is written last. A reload in the middle of a publish may see
parts of two versions, which the loader accepts (each part is valid on its own); the
next reload sees the new set whole. Versions beyond the newest ``keep`` are deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from models import registry

__all__ = ["CURRENT_FILE", "current_version", "publish_eta_set", "versions"]

CURRENT_FILE = "CURRENT"
_SET_FILES = (registry.PROFILES_FILE, registry.DETOUR_FILE, registry.MODEL_FILE, registry.MODEL_FILE + ".json")


def versions(root: Path | str) -> list[str]:
    """Stored version names, oldest first (names sort by training time)."""
    folder = Path(root) / "versions"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def current_version(root: Path | str) -> str | None:
    """The version the engine loads from ``root``, or None."""
    path = Path(root) / CURRENT_FILE
    return path.read_text().strip() or None if path.is_file() else None


def publish_eta_set(root: Path | str, models: registry.EtaModels, version: str, keep: int = 10) -> Path:
    """Save ``models`` as ``<root>/versions/<version>`` (with a suffix ``-002``... when the name is
    taken or would not sort last), make it the current set and prune old versions; returns the
    version folder."""
    root = Path(root)
    taken = versions(root)
    name, n = version, 1
    while name in taken or (taken and name <= taken[-1]):  # unique, and the newest by name (pruning keeps order)
        n += 1
        name = f"{version}-{n:03d}"
    folder = root / "versions" / name
    registry.save_dir(folder, models)
    for file in _SET_FILES:
        source, target = folder / file, root / file
        if source.is_file():
            tmp = root / f".{file}.{os.getpid()}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        elif target.exists():
            target.unlink()  # a part the new set does not have must not linger from the old one
    tmp = root / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / CURRENT_FILE)
    for old in versions(root)[:-keep] if keep > 0 else []:
        if old != name:
            shutil.rmtree(root / "versions" / old, ignore_errors=True)
    return folder
