"""Shared fixtures of the integration tests: a real Mosquitto and a real TimescaleDB.

The services run from their own state folder (``<repo>/.fleetstream-test``) on their
own ports (MQTT 18831, its TLS port 18833, PostgreSQL 55433, the API 18839; ``FLEETSTREAM_TEST_STATE_DIR``,
``FLEETSTREAM_TEST_MQTT_PORT``, ``FLEETSTREAM_TEST_MQTT_TLS_PORT``, ``FLEETSTREAM_TEST_PG_PORT`` and
``FLEETSTREAM_TEST_API_PORT`` override them; a second broker of a test takes the MQTT port + 1), so a
developer's running stack (18830 / 55432 / 18880) is never touched. The tracker listeners are off unless a test turns
them on on ports from ``FLEETSTREAM_TEST_LISTEN_PORT`` (18840) up. They start once per test session and stop at its end.

Fixtures
    ``services``           (session) the test :class:`~core.settings.Settings`, services up
    ``services_settings``  (session) the same object, for tests that want a clearer name
    ``db``                 (per test) an autocommit psycopg connection to the test database, as its
                           administrator (the superuser, over the private socket): the engine's
                           processes never connect so, each has its own login
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings, load_settings
from fleetstream import services as fs_services
from fleetstream.state import StateBusy, exclusive_use

REPO_ROOT = Path(__file__).resolve().parents[2]
# overridable so that two test sessions on one machine do not share services
TEST_STATE_DIR = Path(os.environ.get("FLEETSTREAM_TEST_STATE_DIR", REPO_ROOT / ".fleetstream-test"))
TEST_MQTT_PORT = int(os.environ.get("FLEETSTREAM_TEST_MQTT_PORT", "18831"))
# the TLS listener beside it (+1 is the second broker of test_broker_gap.py)
TEST_MQTT_TLS_PORT = int(os.environ.get("FLEETSTREAM_TEST_MQTT_TLS_PORT", str(TEST_MQTT_PORT + 2)))
TEST_PG_PORT = int(os.environ.get("FLEETSTREAM_TEST_PG_PORT", "55433"))
# the API's port in the tests that run it (the others run the engine without it)
TEST_API_PORT = int(os.environ.get("FLEETSTREAM_TEST_API_PORT", "18839"))
# the tracker listeners are off in the test settings; a test that needs one takes ports from here
# (FLEETSTREAM_TEST_LISTEN_PORT, +1, +2, ...: never the defaults 5027 / 5023 / 5055)
TEST_LISTEN_PORT = int(os.environ.get("FLEETSTREAM_TEST_LISTEN_PORT", "18840"))
# the dataflow's cluster ports in the tests that run it as several processes (never the default 18890)
TEST_FLOW_PORT = int(os.environ.get("FLEETSTREAM_TEST_FLOW_PORT", str(TEST_MQTT_PORT + 60)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration carries the ``integration`` marker."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def integration_settings() -> Settings:
    """Settings of the test services (embedded, own state dir and ports)."""
    return load_settings(
        state_dir=TEST_STATE_DIR,
        mqtt_port=TEST_MQTT_PORT,
        mqtt_tls_port=TEST_MQTT_TLS_PORT,
        pg_port=TEST_PG_PORT,
        mqtt_url="",
        pg_dsn="",
        api_port=TEST_API_PORT,
        flow_port=TEST_FLOW_PORT,
        engine_api=0,  # the API's own tests start it
        teltonika_port=0,
        gt06_port=0,
        osmand_port=0,
    )


@pytest.fixture(scope="session")
def services() -> Iterator[Settings]:
    settings = integration_settings()
    # a second test session on this state folder is refused at once (its services would be ours);
    # the demos and engines this session starts nest under it (fleetstream/state.py)
    try:
        hold = exclusive_use(settings, "a test session")
        hold.__enter__()
    except StateBusy as exc:
        pytest.exit(f"refused: {exc} (FLEETSTREAM_TEST_STATE_DIR and the test ports move this session)", 2)
    try:
        fs_services.up(settings)
        try:
            yield settings
        finally:
            fs_services.down(settings)
    finally:
        hold.__exit__(None, None, None)


@pytest.fixture(scope="session")
def services_settings(services: Settings) -> Settings:
    return services


@pytest.fixture
def db(services: Settings) -> Iterator[object]:
    import psycopg

    conn = psycopg.connect(services.dsn(), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


_SESSION_STARTED = [time.time()]  # this conftest is imported as the session starts


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault matrix of the rows this session's fault tests recorded (tests/integration/faults.py)."""
    from tests.integration.faults import matrix_dir, render_matrix

    folder = matrix_dir(TEST_STATE_DIR)
    started = _SESSION_STARTED[0]
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        row = json.loads(path.read_text())
        if row.get("recorded_at", 0) >= started:
            rows.append(row)
    if not rows:
        return
    table = render_matrix(rows)
    (folder / "fault-matrix.md").write_text(table)
    terminalreporter.write_sep("=", "fault matrix (tests/integration/faults.py)")
    terminalreporter.write(table)
