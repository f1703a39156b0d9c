"""The control-tower page in a real headless Chromium (Debian's ``chromium``, driven by Playwright;
no browser download), against the engine, its API and a small simulated fleet.

Screenshots land in ``test-artifacts/`` (not committed): look at them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from fleetstream.demo import simulate
from store.db import connect, scalar
from tests.integration.api_support import api_engine, token_for
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# as root, without the background services this closed network refuses
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # generous: a loaded 2-core machine renders WebGL in software
ALERT_SHOWN_WITHIN_S = 10.0  # from the alert's row being committed to its line in the exceptions feed

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: scripts/bootstrap.sh installs Debian's chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def fleet(services_settings: Settings) -> Iterator[tuple[Settings, str]]:
    """The engine with its API, and 4 simulated vans with every anomaly, for a few minutes."""
    settings = replace(
        services_settings,
        tenant=f"page{uuid.uuid4().hex[:6]}",
        sim_vehicles=4,
        sim_minutes=4.0,
        sim_speedup=20.0,
        sim_anomaly_probability=1.0,
        sim_seed=11,
    )
    with api_engine(settings) as running:
        token = token_for(running, settings.tenant, "dispatcher", "browser")
        stop = threading.Event()
        sim = threading.Thread(target=lambda: simulate(running, stop=stop), daemon=True)
        sim.start()
        with connect(running.dsn(), autocommit=True) as conn:
            wait_until(
                lambda: scalar(conn, "SELECT count(*) FROM vehicle_state WHERE tenant = %s", (settings.tenant,)) >= 4,
                120,
                "the simulated vans in vehicle_state",
                every_s=0.5,
            )
        try:
            yield running, token
        finally:
            stop.set()
            sim.join(60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, settings: Settings, token: str, width: int, height: int) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{settings.api_url()}/?token={token}")
    page.wait_for_selector("#live.on")  # the live stream is open
    return page


def vehicle_ids(settings: Settings) -> list[str]:
    with connect(settings.dsn(), autocommit=True) as conn:
        rows = conn.execute("SELECT vehicle_id FROM vehicle_state WHERE tenant = %s ORDER BY 1", (settings.tenant,))
        return [r[0] for r in rows]


def test_vehicles_appear_on_the_map_and_in_the_list(fleet: tuple[Settings, str], browser: Any) -> None:
    settings, token = fleet
    page = open_page(browser, settings, token, 1280, 800)
    try:
        expected = set(vehicle_ids(settings))
        # rendered map features, not just DOM: what the WebGL canvas drew
        page.wait_for_function("(n) => new Set(window.fleet.renderedVehicles()).size >= n", arg=len(expected))
        assert set(page.evaluate("window.fleet.renderedVehicles()")) == expected
        listed = page.eval_on_selector_all("#vehicles li.veh", "rows => rows.map(r => r.dataset.vehicle)")
        assert set(listed) == expected
        assert "token=" not in page.url  # read once, kept in the session
        page.wait_for_function("document.querySelector('#kpi-fleet').textContent.includes('/')")
        page.wait_for_timeout(1500)  # let the road layer finish fading in for the picture
        page.screenshot(path=str(ARTIFACTS / "page-1280x800.png"))
        assert page.errors == []
    finally:
        page.close()


def test_an_engine_alert_shows_up_live_and_acknowledging_it_is_stored(
    fleet: tuple[Settings, str], browser: Any
) -> None:
    settings, token = fleet
    page = open_page(browser, settings, token, 1280, 800)
    with connect(settings.dsn(), autocommit=True) as conn:
        since = scalar(conn, "SELECT coalesce(max(rev), 0) FROM alerts WHERE tenant = %s", (settings.tenant,))
        seen: set[str] = set()
        shown = None
        deadline = time.monotonic() + 180
        while shown is None and time.monotonic() < deadline:
            # the next alert the engine raises from now on, while it is open
            row = wait_until(
                lambda: conn.execute(
                    "SELECT id::text FROM alerts WHERE tenant = %s AND rev > %s AND status = 'open' AND closed_at IS NULL"
                    " AND NOT (id::text = ANY(%s)) ORDER BY rev LIMIT 1",
                    (settings.tenant, since, list(seen)),
                ).fetchone(),
                150,
                "the engine to raise an alert",
                every_s=0.1,
            )
            alert_id = row[0]
            seen.add(alert_id)
            committed = time.monotonic()
            try:
                page.wait_for_selector(f"li.exc[data-alert='{alert_id}']", timeout=ALERT_SHOWN_WITHIN_S * 1000)
                shown = (alert_id, time.monotonic() - committed)
            except sync_api.TimeoutError:
                still_open = scalar(
                    conn, "SELECT status = 'open' AND closed_at IS NULL FROM alerts WHERE id = %s", (alert_id,)
                )
                assert not still_open, (
                    f"open alert {alert_id} not in the exceptions feed after {ALERT_SHOWN_WITHIN_S} s"
                )
        assert shown is not None, "no alert stayed open long enough to be seen"
        alert_id, latency = shown
        print(f"alert {alert_id} in the exceptions feed {latency:.2f} s after its commit was seen")
        page.screenshot(path=str(ARTIFACTS / "page-exception.png"))

        # acknowledge an open alert in the page and give it an owner: stored, with the token's name as
        # the actor. A live alert may resolve meanwhile (its row then leaves the feed): then the
        # next open one in the feed is taken, and only an alert still open must have worked.
        def still_open(alert: str) -> bool:
            return bool(
                scalar(conn, "SELECT status = 'open' AND closed_at IS NULL FROM alerts WHERE id = %s", (alert,))
            )

        def act(alert: str) -> bool:
            row = f"li.exc[data-alert='{alert}']"
            try:
                page.click(f"{row} button[data-act='acknowledge']", timeout=10_000)
                acked = wait_until(
                    lambda: conn.execute(
                        "SELECT acknowledged_by FROM alerts WHERE id = %s AND acknowledged_at IS NOT NULL", (alert,)
                    ).fetchone(),
                    20,
                    "the acknowledgement to be stored",
                )
                assert acked[0].startswith("browser (")
                page.wait_for_selector(f"{row} .acked", timeout=20_000)
                page.click(f"{row} button[data-act='assign']", timeout=10_000)
                page.fill(f"{row} input", "dana", timeout=10_000)
                page.press(f"{row} input", "Enter", timeout=10_000)
            except sync_api.TimeoutError:
                if still_open(alert):
                    raise
                return False
            wait_until(
                lambda: scalar(conn, "SELECT owner FROM alerts WHERE id = %s", (alert,)) == "dana",
                20,
                "the owner to be stored",
            )
            return True

        acted = alert_id if act(alert_id) else None
        while acted is None and time.monotonic() < deadline + 120:
            listed = page.eval_on_selector_all("li.exc", "els => els.map((el) => el.dataset.alert)")
            candidates = [a for a in listed if a not in seen and still_open(a)]
            if not candidates:
                time.sleep(0.5)
                continue
            seen.add(candidates[0])
            acted = candidates[0] if act(candidates[0]) else None
        assert acted is not None, "no open alert stayed open long enough to be acknowledged and assigned"
        actions = [
            r[0] for r in conn.execute("SELECT action FROM alert_actions WHERE alert_id = %s ORDER BY seq", (acted,))
        ]
        assert actions == ["acknowledge", "assign"]
    assert page.errors == []
    page.close()


def test_a_tablet_sees_a_vehicles_stops_and_track(fleet: tuple[Settings, str], browser: Any) -> None:
    settings, token = fleet
    page = open_page(browser, settings, token, 820, 1180)
    try:
        first = vehicle_ids(settings)[0]
        page.wait_for_selector(f"#vehicles li.veh[data-vehicle='{first}']")
        page.click(f"#vehicles li.veh[data-vehicle='{first}']")
        page.wait_for_selector("#detail-stops li .sid")
        stops = page.eval_on_selector_all("#detail-stops li .sid", "els => els.map(e => e.textContent)")
        assert stops and all(s.startswith(first) for s in stops)
        page.wait_for_function("window.fleet.state.track && window.fleet.state.track.points.length > 1")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "page-tablet-820x1180.png"))
        # nothing overflows the tablet's width
        assert page.evaluate("document.documentElement.scrollWidth") <= 820
        assert page.errors == []
    finally:
        page.close()


def test_the_vehicle_list_is_in_the_dumped_dom(fleet: tuple[Settings, str]) -> None:
    """``chromium --headless --dump-dom`` after a few seconds of virtual time: a <canvas> and the vans' ids."""
    settings, token = fleet
    profile = tempfile.mkdtemp(prefix="fleetstream-chromium-")
    try:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                *CHROMIUM_ARGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=8000",
                "--dump-dom",
                f"{settings.api_url()}/?token={token}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<canvas" in done.stdout
    assert all(f'data-vehicle="{v}"' in done.stdout for v in vehicle_ids(settings))
