"""The edge agent's wheel: the agent and the contract only, paho-mqtt its one dependency."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

from fleetstream.edge_bundle import edge_wheel, installed_wheel


def test_the_agent_wheel_holds_the_agent_and_the_contract_only(tmp_path: Path) -> None:
    wheel = edge_wheel(tmp_path)
    assert wheel.name.startswith("fleetstream_edge-") and wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{info}/METADATA").decode()
        entry = z.read(f"{info}/entry_points.txt").decode()
        record = z.read(f"{info}/RECORD").decode()
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert {"edge/agent/__main__.py", "edge/agent/check.py", "edge/publisher.py", "core/contract.py"} <= names
    assert "edge/agent/example.toml" in names
    assert {n.split("/")[0] for n in names} == {"edge", "core", info}
    assert [line for line in metadata.splitlines() if line.startswith("Requires-Dist")] == [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist: paho-mqtt")
    ] and "Requires-Dist: paho-mqtt" in metadata
    assert "fleetstream-edge = edge.agent.__main__:main" in entry
    assert all(name in record for name in names if not name.endswith("RECORD"))
    # nothing it holds imports the server side (psycopg, bytewax, aiomqtt) or another project room
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                assert top not in ("psycopg", "bytewax", "aiomqtt", "h3", "fleetstream", "store", "ingest"), name
                if top == "core":
                    assert node.module == "core.contract", (name, node.module)


def test_paho_is_carried_as_a_wheel(tmp_path: Path) -> None:
    wheel = installed_wheel("paho-mqtt", tmp_path)
    with zipfile.ZipFile(wheel) as z:
        assert "paho/mqtt/client.py" in z.namelist()
