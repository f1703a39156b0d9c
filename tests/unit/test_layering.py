"""The import picture holds: every package imports only the rooms below it (CONTRIBUTING.md).

Read from the source with ``ast`` (imports inside functions count too), so a lazy import
cannot hide an arrow that points up.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "edge": {"core"},
    "store": {"core"},
    "models": {"core"},
    "ingest": {"core", "store"},
    "delivery": {"core", "store"},
    "pipelines": {"core", "store", "models"},
    "training": {"core", "store", "models", "pipelines"},
    "sim": {"core", "edge", "models"},
    "api": {"core", "store", "models", "delivery"},
    "fleetstream": {"core", "edge", "store", "models", "ingest", "delivery", "pipelines", "training", "sim", "api"},
}
PROJECT = set(ALLOWED)
# what the van runs may use besides the standard library: MQTT, and GPIO where there is one
EDGE_THIRD_PARTY = {"paho", "gpiod"}


def imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_rooms_below_it(package: str) -> None:
    assert sources(package), f"no sources under {package}/"
    upward = {
        str(path.relative_to(ROOT)): sorted(imports(path) & PROJECT - ALLOWED[package] - {package})
        for path in sources(package)
    }
    assert {file: names for file, names in upward.items() if names} == {}


def test_the_device_contract_needs_only_the_standard_library() -> None:
    outside = imports(ROOT / "core" / "contract.py") - set(sys.stdlib_module_names)
    assert outside == set()


def test_the_edge_agent_needs_only_the_standard_library_paho_and_the_contract() -> None:
    for path in sources("edge"):
        names = imports(path) - set(sys.stdlib_module_names) - EDGE_THIRD_PARTY - {"edge"}
        assert names <= {"core"}, (path, names)
        if "core" in names:
            text = path.read_text(encoding="utf-8")
            core_modules = {
                node.module
                for node in ast.walk(ast.parse(text))
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core")
            }
            assert core_modules == {"core.contract"}, (path, core_modules)


def test_every_top_level_package_is_in_the_picture() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == PROJECT
