"""The docs say what the code does where they restate it: the settings table and the reason codes."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from core.contract import REASONS
from core.settings import PROJECT_ROOT, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def rendered_default(value: object) -> str:
    """How docs/settings.md writes a default."""
    if isinstance(value, Path):
        return f"`<repo>/{value.relative_to(PROJECT_ROOT)}`" if value.is_relative_to(PROJECT_ROOT) else f"`{value}`"
    if value == "":
        return "empty"
    if isinstance(value, str):
        return f"`{value}`"
    return repr(value)


def table_rows(path: Path, header: str) -> dict[str, list[str]]:
    """First-column code name -> the other cells, for each row of the table under ``header``."""
    rows: dict[str, list[str]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(header)
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        m = re.match(r"^\| `([a-z0-9_]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [cell.strip() for cell in m.group(2).split("|")]
    return rows


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    rows = table_rows(DOCS / "settings.md", "| setting | default | what it does |")
    assert list(rows) == [f.name for f in fields(Settings)]
    wrong = {
        f.name: (rows[f.name][0], rendered_default(f.default))
        for f in fields(Settings)
        if rows[f.name][0] != rendered_default(f.default)
    }
    assert wrong == {}
    assert all(cells[1] and cells[1] != "?" for cells in rows.values())


def test_the_reason_code_table_is_the_contracts() -> None:
    rows = table_rows(DOCS / "contract.md", "| reason | meaning |")
    assert {name: cells[0] for name, cells in rows.items()} == REASONS


def test_every_reason_the_code_gives_is_a_documented_one() -> None:
    given: set[str] = set()
    for package in ("core", "ingest", "delivery", "pipelines"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("ContractError", "Rejected"):
                    first = node.args[0] if node.args else None
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        given.add(first.value)
    assert given, "no reason codes found: the scan is broken"
    assert given - set(REASONS) == set()


def test_every_doc_the_readme_points_to_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", readme))
    assert linked and all((ROOT / name).is_file() for name in linked), linked
    assert len(readme.splitlines()) <= 150
