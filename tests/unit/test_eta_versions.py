"""Trained ETA sets on disk: every version kept (up to a limit), the current one where
``registry.load_dir`` finds it, a name taken twice made unique."""

from __future__ import annotations

import json
from pathlib import Path

from models import registry
from models.eta_versions import current_version, publish_eta_set, versions
from models.profiles import SpeedProfiles


def eta_set(speed: float, detour: float) -> registry.EtaModels:
    return registry.EtaModels(profiles=SpeedProfiles.constant(speed), detour_factor=detour)


def test_publish_makes_the_set_current_and_keeps_the_old_ones(tmp_path: Path) -> None:
    root = tmp_path / "models" / "eta"
    first = publish_eta_set(root, eta_set(7.0, 1.2), "eta-20261201T000000Z")
    second = publish_eta_set(root, eta_set(9.0, 1.4), "eta-20261202T000000Z")
    assert (first.name, second.name) == ("eta-20261201T000000Z", "eta-20261202T000000Z")
    assert versions(root) == ["eta-20261201T000000Z", "eta-20261202T000000Z"]
    assert current_version(root) == "eta-20261202T000000Z"
    loaded = registry.load_dir(root, name="test-versions")
    try:
        assert loaded.detour_factor == 1.4 and loaded.profiles is not None
        assert loaded.profiles.fleet_mean_mps == 9.0 and loaded.model is None
    finally:
        registry.clear("test-versions")
    assert json.loads((first / registry.DETOUR_FILE).read_text()) == {"detour_factor": 1.2}


def test_a_taken_name_gets_a_suffix_and_old_versions_are_pruned(tmp_path: Path) -> None:
    for i in range(4):
        publish_eta_set(tmp_path, eta_set(5.0 + i, 1.3), "eta-x", keep=2)
    assert versions(tmp_path) == ["eta-x-003", "eta-x-004"]
    assert current_version(tmp_path) == "eta-x-004"


def test_a_part_the_new_set_lacks_does_not_linger(tmp_path: Path) -> None:
    publish_eta_set(tmp_path, eta_set(5.0, 1.3), "eta-a")
    publish_eta_set(tmp_path, registry.EtaModels(detour_factor=1.6), "eta-b")
    assert not (tmp_path / registry.PROFILES_FILE).exists()
    assert current_version(tmp_path / "nowhere") is None
