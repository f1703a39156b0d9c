"""The edge agent end to end: real agent processes, the real broker, engine and TimescaleDB.

(a) power cut: the agent is SIGKILLed mid-burst again and again and restarted; every
    reading it recorded reaches TimescaleDB exactly once, with no gap in seq.
(b) outage: the broker is down for ~25 s while the agent records; everything arrives.
(b') link cut: the agent runs in a network namespace of its own and its link to the broker is
    cut for minutes (3 by default) while it records at full rate, the broker and the engine up;
    after the link returns everything arrives once, sent oldest first, and the dataflow's
    trackers count the backlog as late data.
(c) disk cap: a small outbox cap and an outage: the drop policy drops (and counts) the
    oldest GPS fixes and temperatures, keeps every door event, and the agent keeps running.
(d) footprint: RSS and CPU of the agent at 1 reading/s, measured from /proc over 60 s.

The agent runs as ``python -m edge.agent --config FILE`` with fake sensors at a high rate.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.settings import Settings
from edge.agent.outbox import Outbox
from fleetstream import credentials, services, tls
from fleetstream.engine import Engine
from ingest.gateway import ready_file
from store.db import migrate
from tests.integration.faults import FaultRow, record

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TABLES = ("positions", "temperatures", "door_events")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def engine(services_settings: Settings) -> Iterator[Engine]:
    migrate(services_settings.dsn())
    eng = Engine(services_settings)
    eng.start()
    eng.wait_ready()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def tenant() -> str:
    return f"edge{int(time.time())}"


def write_config(
    path: Path,
    settings: Settings,
    tenant: str,
    vehicle: str,
    password: str,
    *,
    gps_hz: float = 40.0,
    temp_hz: float = 10.0,
    door_toggle_s: float | None = 0.5,
    max_bytes: int = 64_000_000,
    every_reading: bool = True,
    status_s: float = 2.0,
    broker_host: str | None = None,
    receipt_timeout_s: float = 5.0,
    broker_port: int | None = None,
    broker_extra: str = "",
) -> Path:
    """The agent's TOML; ``broker_extra``: more [broker] lines (TLS files)."""
    host, port = settings.mqtt_endpoint()
    host = broker_host or host
    port = broker_port or port
    sampling = (
        (
            "[sampling.gps]\nmin_distance_m = 0\nmoving_period_s = 0\nparked_period_s = 0\n"
            "[sampling.temp]\nperiod_s = 0\n"
        )
        if every_reading
        else ""
    )
    gps = f'source = "fake"\nfake_rate_hz = {gps_hz}' if gps_hz else 'source = "off"'
    temp = f'source = "fake"\nfake_rate_hz = {temp_hz}\nfake_sensors = ["reefer"]' if temp_hz else 'source = "off"'
    doors = (
        (f'[[sensors.doors]]\nname = "rear"\nsource = "fake"\nfake_toggle_s = {door_toggle_s}\ndebounce_ms = 20\n')
        if door_toggle_s
        else ""
    )
    path.write_text(f"""
[device]
tenant = "{tenant}"
vehicle = "{vehicle}"
[broker]
host = "{host}"
port = {port}
password = "{password}"
keepalive_s = 5
{broker_extra}
[outbox]
path = "{path.parent / "outbox.sqlite3"}"
max_bytes = {max_bytes}
[sender]
status_interval_s = {status_s}
refused_retry_s = 1
receipt_timeout_s = {receipt_timeout_s}
{sampling}
[sensors]
door_poll_ms = 10
[sensors.gps]
{gps}
[sensors.temp]
{temp}
{doors}
""")
    return path


class AgentProcess:
    """``python -m edge.agent --config FILE`` as a child process we can kill; ``prefix`` runs it
    inside something (``ip netns exec NS``, which execs it: the pid stays the agent's)."""

    def __init__(self, config: Path, prefix: tuple[str, ...] = ()) -> None:
        self.config = config
        self.prefix = prefix
        self.log = config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "edge.agent", "--config", str(self.config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)  # a power cut, as far as the process can tell
        self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def new_outbox(folder: Path) -> Path:
    """Create the outbox numbering from 1, as a freshly installed device."""
    path = folder / "outbox.sqlite3"
    Outbox(path, first_seq=1).close()
    return path


def outbox_state(path: Path) -> dict[str, int]:
    """last_seq (the last seq ever assigned), depth and the drop counters, read from the file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()[0]
        depth = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()
    return {"last_seq": last, "depth": depth, **counters}


def stored_seqs(db, tenant: str, vehicle: str) -> list[int]:  # type: ignore[no-untyped-def]
    union = " UNION ALL ".join(f"SELECT seq FROM {t} WHERE tenant = %(t)s AND vehicle_id = %(v)s" for t in TABLES)
    return sorted(r[0] for r in db.execute(union, {"t": tenant, "v": vehicle}).fetchall())


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def drain(folder: Path, settings: Settings, tenant: str, vehicle: str, password: str) -> None:
    """Run the agent with its sensors off until its outbox is empty, then stop it cleanly."""
    if outbox_state(folder / "outbox.sqlite3")["depth"] == 0:
        return
    config = write_config(
        folder / "drain.toml", settings, tenant, vehicle, password, gps_hz=0, temp_hz=0, door_toggle_s=None
    )
    agent = AgentProcess(config).start()
    try:
        wait_for(lambda: outbox_state(folder / "outbox.sqlite3")["depth"] == 0, 120, "the outbox to drain")
    finally:
        assert agent.terminate() == 0


def assert_exactly_once(db, tenant: str, vehicle: str, last_seq: int, dropped: int = 0) -> list[int]:  # type: ignore[no-untyped-def]
    """Every seq 1..last_seq stored once, but at most ``dropped`` ones (what the drop policy
    counted: a reading the broker took whose receipt never came may have been stored and
    dropped after, so fewer may be missing)."""
    expected_count = last_seq - dropped
    wait_for(
        lambda: len(stored_seqs(db, tenant, vehicle)) >= expected_count,
        120,
        f"{expected_count} readings of {vehicle} in TimescaleDB",
    )
    time.sleep(1.0)  # anything late or doubled would show now
    seqs = stored_seqs(db, tenant, vehicle)
    assert len(seqs) == len(set(seqs)), "a reading was stored twice"
    assert expected_count <= len(seqs) <= last_seq
    assert dropped or len(seqs) == last_seq
    assert set(seqs) <= set(range(1, last_seq + 1))
    return seqs


def no_dead_letters(db, tenant: str, vehicle: str) -> None:  # type: ignore[no-untyped-def]
    dead = db.execute(
        "SELECT reason, detail FROM dead_letters WHERE topic LIKE %s LIMIT 5", (f"fleet/{tenant}/{vehicle}/%",)
    ).fetchall()
    assert dead == []


# ---------------------------------------------------------------- (a) power cut


def test_power_cuts_mid_burst_lose_nothing(engine, services_settings, db, tenant, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, vehicle = services_settings, "van-cut"
    password = credentials.add_device(settings, tenant, vehicle)
    outbox = new_outbox(tmp_path)
    config = write_config(
        tmp_path / "edge.toml", settings, tenant, vehicle, password, gps_hz=200, temp_hz=20
    )  # ~222 readings/s
    rng = random.Random(5)
    kills = []
    for _ in range(5):
        agent = AgentProcess(config).start()
        time.sleep(rng.uniform(2.0, 4.0))
        assert agent.alive(), (tmp_path / "agent.log").read_text()[-3000:]
        agent.kill()
        kills.append(outbox_state(outbox))
    # (the agent keeps up at this rate: a kill leaves 0-2 readings unacknowledged, plus those in the sensors'
    # queue that were never recorded; what was recorded must all arrive)
    assert kills[-1]["last_seq"] > 2000
    agent = AgentProcess(config).start()  # the device boots once more and runs a little
    time.sleep(3.0)
    assert agent.terminate() == 0
    drain(tmp_path, settings, tenant, vehicle, password)
    last = outbox_state(outbox)["last_seq"]
    seqs = assert_exactly_once(db, tenant, vehicle, last)
    assert seqs == list(range(1, last + 1))  # no gap
    no_dead_letters(db, tenant, vehicle)
    # each SIGKILL made the broker publish the device's last will
    wills = db.execute(
        "SELECT count(*) FROM device_status WHERE tenant = %s AND vehicle_id = %s AND state = 'offline' "
        "AND details->>'reason' = 'connection lost'",
        (tenant, vehicle),
    ).fetchone()[0]
    assert wills >= 3
    print(json.dumps({"power_cut": {"kills": kills, "last_seq": last}}))


# ---------------------------------------------------------------- (b) broker outage


def test_a_broker_outage_delays_but_loses_nothing(engine, services_settings, db, tenant, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, vehicle = services_settings, "van-outage"
    password = credentials.add_device(settings, tenant, vehicle)
    outbox = new_outbox(tmp_path)
    config = write_config(
        tmp_path / "edge.toml", settings, tenant, vehicle, password, gps_hz=10, temp_hz=2, door_toggle_s=1.0
    )
    agent = AgentProcess(config).start()
    try:
        wait_for(lambda: len(stored_seqs(db, tenant, vehicle)) > 20, 60, "the first readings")
        services.stop_broker(settings)
        try:
            before = outbox_state(outbox)
            time.sleep(12)
            assert agent.alive()
            agent.kill()  # and a power cut in the middle of the outage, with a backlog on disk
            at_kill = outbox_state(outbox)
            assert at_kill["depth"] > 100
            agent.start()
            time.sleep(13)
            during = outbox_state(outbox)
            assert agent.alive()
            assert during["last_seq"] - at_kill["last_seq"] > 100  # it kept recording after the reboot
            assert during["depth"] > during["last_seq"] - before["last_seq"] - 50  # and kept it all
        finally:
            services.start_broker(settings)
        mark = outbox_state(outbox)["last_seq"]
        wait_for(
            lambda: set(range(1, mark + 1)) <= set(stored_seqs(db, tenant, vehicle)),
            120,
            "everything recorded during the outage",
        )
        assert agent.alive()
    finally:
        assert agent.terminate() == 0
    drain(tmp_path, settings, tenant, vehicle, password)
    last = outbox_state(outbox)["last_seq"]
    assert assert_exactly_once(db, tenant, vehicle, last) == list(range(1, last + 1))
    no_dead_letters(db, tenant, vehicle)
    states = {
        r[0]
        for r in db.execute(
            "SELECT DISTINCT state FROM device_status WHERE tenant = %s AND vehicle_id = %s", (tenant, vehicle)
        ).fetchall()
    }
    assert {"online", "offline"} <= states  # every connect says online; the clean stop says offline


# ---------------------------------------------------------------- (b') link cut for minutes

# how long the link is cut; shorten it for a quick run (the issue asks for several minutes)
LINK_OUTAGE_S = float(os.environ.get("FLEETSTREAM_TEST_EDGE_OUTAGE_S", "180"))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class AgentLink:
    """A network namespace for the agent, joined to the host by a veth pair.

    The host end has ``host_addr``; the broker must listen there. ``cut()`` takes the host end
    down: the agent's packets go nowhere (no RST, no ICMP), as when a van's modem loses the
    network; ``restore()`` brings it back.
    """

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.netns = f"fsedge{tag}"
        self.host_dev, self.ns_dev = f"fse{tag}h", f"fse{tag}n"
        net = f"10.231.{tag % 250}"  # a /30 of its own per test session
        self.host_addr, self.ns_addr = f"{net}.1", f"{net}.2"

    def up(self) -> AgentLink:
        _ip("netns", "add", self.netns)
        try:
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
            _ip("link", "set", self.ns_dev, "netns", self.netns)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("-n", self.netns, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_dev)
            _ip("-n", self.netns, "link", "set", self.ns_dev, "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise
        return self

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns)

    def cut(self) -> None:
        _ip("link", "set", self.host_dev, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_dev, "up")

    def down(self) -> None:
        # deleting the namespace deletes its veth end, and with it the pair
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True, timeout=30, check=False)


def _restart_broker(settings: Settings, engine: Engine) -> None:
    """Restart the broker with ``settings``' listener and wait until every gateway shard has
    subscribed again: Mosquitto 2.0.11 queues nothing for a restored shared-subscription
    session until its shard is back (docs/operations.md, "Failure behaviour"), so no device may publish before."""
    shards = [c.shard for c in engine.children if c.shard is not None]
    services.stop_broker(settings)
    for shard in shards:
        ready_file(settings, shard).unlink(missing_ok=True)
    services.start_broker(settings)
    wait_for(lambda: all(ready_file(settings, s).exists() for s in shards), 60, "the gateway shards to resubscribe")


@pytest.fixture
def agent_link(engine, services_settings) -> Iterator[AgentLink]:  # type: ignore[no-untyped-def]
    """The namespace, and the broker also listening on the veth's host end (its TLS port only:
    the engine stays on loopback) for the test; put back as it was afterwards."""
    link = AgentLink()
    try:
        link.up()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"no network namespace here: {getattr(exc, 'stderr', exc)}")
    try:
        _restart_broker(replace(services_settings, mqtt_also_listen=link.host_addr), engine)
        try:
            yield link
        finally:
            _restart_broker(services_settings, engine)
    finally:
        link.down()


def _rows(db, tenant: str, vehicle: str, first_seq: int, last_seq: int) -> list[tuple]:  # type: ignore[no-untyped-def]
    """(seq, fix_time, device_time) of the vehicle's readings in a seq range."""
    union = " UNION ALL ".join(
        f"SELECT seq, fix_time, device_time FROM {t} "
        "WHERE tenant = %(t)s AND vehicle_id = %(v)s AND seq BETWEEN %(a)s AND %(b)s"
        for t in TABLES
    )
    return db.execute(union, {"t": tenant, "v": vehicle, "a": first_seq, "b": last_seq}).fetchall()


def test_a_link_cut_for_minutes_delays_but_loses_nothing_and_the_backlog_is_late_data(  # type: ignore[no-untyped-def]
    engine, services_settings, db, tenant, tmp_path, agent_link
) -> None:
    settings, vehicle = services_settings, "van-linkcut"
    password = credentials.add_device(settings, tenant, vehicle)
    outbox = new_outbox(tmp_path)
    # full rate: every fix and every probe reading is sent (~13 readings/s)
    config = write_config(
        tmp_path / "edge.toml",
        settings,
        tenant,
        vehicle,
        password,
        gps_hz=10,
        temp_hz=2,
        door_toggle_s=1.0,
        # over the "network": the broker's TLS port, verified against the services' CA
        broker_host=agent_link.host_addr,
        broker_port=settings.mqtt_tls_port,
        broker_extra=f'ca_file = "{tls.ca_file(settings)}"',
        # the shipped timeout: the order asserted below is the order of first sendings, and a copy
        # sent again after a short timeout can overtake its first sending through another shard
        receipt_timeout_s=30.0,
    )
    agent = AgentProcess(config, agent_link.prefix).start()
    try:
        wait_for(lambda: len(stored_seqs(db, tenant, vehicle)) > 50, 60, "the first readings")
        agent_link.cut()
        try:
            before = outbox_state(outbox)
            deadline = time.monotonic() + LINK_OUTAGE_S
            while time.monotonic() < deadline:  # the agent records all along, and keeps it all
                time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
                assert agent.alive(), (tmp_path / "agent.log").read_text()[-3000:]
            during = outbox_state(outbox)
            assert max(stored_seqs(db, tenant, vehicle)) <= before["last_seq"]  # the cut is real: nothing got through
        finally:
            agent_link.restore()
            t_restored = time.monotonic()
        recorded = during["last_seq"] - before["last_seq"]
        assert recorded > 10 * LINK_OUTAGE_S  # it recorded at full rate with no link
        assert during["depth"] >= recorded - 50  # and kept it all (a few were in flight at the cut)
        mark = during["last_seq"]
        wait_for(
            lambda: set(range(1, mark + 1)) <= set(stored_seqs(db, tenant, vehicle)),
            300,
            "everything recorded during the cut",
        )
        t_caught_up = time.monotonic()
        assert agent.alive()
    finally:
        assert agent.terminate() == 0
    drain(tmp_path, settings, tenant, vehicle, password)
    last = outbox_state(outbox)["last_seq"]
    assert assert_exactly_once(db, tenant, vehicle, last) == list(range(1, last + 1))
    no_dead_letters(db, tenant, vehicle)
    rows = stored_seqs(db, tenant, vehicle)
    record(
        settings.state_dir,
        FaultRow(
            "network link cut",
            last,
            len(set(rows)),
            0,
            last - len(set(rows)),
            len(rows) - len(set(rows)),
            t_caught_up - t_restored,
            f"the van's link cut for {LINK_OUTAGE_S:.0f} s (its packets dropped) while it recorded ~13 readings/s; "
            "the backlog went oldest first",
        ),
    )
    # the broker noticed the silent link (keepalive) and published the device's last will
    assert (
        db.execute(
            "SELECT count(*) FROM device_status WHERE tenant = %s AND vehicle_id = %s AND state = 'offline' "
            "AND details->>'reason' = 'connection lost'",
            (tenant, vehicle),
        ).fetchone()[0]
        >= 1
    )

    # sent oldest first: the backlog's batch messages, in the order the device sent them (their
    # device_time), carry ascending seqs, and ascending seqs carry ascending fix times. (A message in
    # flight at the cut is sent again first, with its first device_time; a reading is sent in a new
    # message only when no receipt came, and the first copy committed is the one stored. A gateway
    # shard's shard_seq numbers a commit's rows table by table, so it does not show the order of
    # messages.)
    first_backlog = before["last_seq"] + 1
    backlog = _rows(db, tenant, vehicle, first_backlog, mark)
    assert len(backlog) == mark - first_backlog + 1
    by_sending = [r[0] for r in sorted(backlog, key=lambda r: (r[2], r[0]))]
    assert by_sending == sorted(by_sending)
    by_seq = sorted(backlog)
    inversions = [(a[0], b[0]) for a, b in zip(by_seq, by_seq[1:], strict=False) if b[1] < a[1]]
    # (readings of different sensors are numbered as they reach the outbox; their clocks are the
    # same, so a reading can be at most a moment older than the one numbered before it)
    assert all((a[1] - b[1]).total_seconds() < 0.5 for a, b in zip(by_seq, by_seq[1:], strict=False) if b[1] < a[1])
    span_s = (by_seq[-1][1] - by_seq[0][1]).total_seconds()
    assert span_s > 0.9 * LINK_OUTAGE_S

    # the dataflow (analytics on) processed it all and counted the backlog as late data
    def state() -> tuple | None:  # type: ignore[type-arg]
        return db.execute(
            "SELECT gps_count + temp_count + door_count, late_readings, corrected_readings, "
            "max_lateness_s, corrections FROM vehicle_state WHERE tenant = %s AND vehicle_id = %s",
            (tenant, vehicle),
        ).fetchone()

    wait_for(lambda: (row := state()) is not None and row[0] >= last, 180, "the dataflow to process every reading")
    counted, late, corrected, max_lateness_s, corrections = state()  # type: ignore[misc]
    assert late > 0, state()
    assert max_lateness_s > 0.5 * LINK_OUTAGE_S, state()
    print(
        json.dumps(
            {
                "link_cut": {
                    "outage_s": LINK_OUTAGE_S,
                    "recorded_during": recorded,
                    "last_seq": last,
                    "caught_up_s": round(t_caught_up - t_restored, 1),
                    "fix_time_inversions": len(inversions),
                    "dataflow": {
                        "readings": counted,
                        "late_readings": late,
                        "corrected_readings": corrected,
                        "corrections": corrections,
                        "max_lateness_s": max_lateness_s,
                    },
                }
            }
        )
    )


# ---------------------------------------------------------------- (c) disk cap


def test_the_disk_cap_drops_as_the_policy_says_and_keeps_every_door_event(
    engine,
    services_settings,
    db,
    tenant,  # type: ignore[no-untyped-def]
    tmp_path,
) -> None:
    settings, vehicle = services_settings, "van-cap"
    password = credentials.add_device(settings, tenant, vehicle)
    outbox = new_outbox(tmp_path)
    config = write_config(
        tmp_path / "edge.toml",
        settings,
        tenant,
        vehicle,
        password,
        gps_hz=20,
        temp_hz=5,
        door_toggle_s=0.5,
        max_bytes=16 * 1024,
        status_s=1.0,
    )
    agent = AgentProcess(config).start()
    try:
        wait_for(lambda: len(stored_seqs(db, tenant, vehicle)) > 20, 60, "the first readings")
        services.stop_broker(settings)
        try:
            time.sleep(20)
            during = outbox_state(outbox)
            assert agent.alive(), (tmp_path / "agent.log").read_text()[-3000:]
        finally:
            services.start_broker(settings)
        assert during.get("dropped_gps", 0) > 100
        assert during.get("dropped_door", 0) == 0
        wait_for(lambda: outbox_state(outbox)["depth"] < 50, 60, "the backlog to go")
        recorded_after = outbox_state(outbox)["last_seq"]
        time.sleep(2)
        assert outbox_state(outbox)["last_seq"] > recorded_after  # still recording: the agent kept running
        assert agent.alive()
        # a heartbeat after the outage reports the drops
        wait_for(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM device_status WHERE tenant = %s AND vehicle_id = %s AND state = 'heartbeat' "
                    "AND (details->'dropped'->>'gps')::int > 0",
                    (tenant, vehicle),
                ).fetchone()[0]
                > 0
            ),
            30,
            "a heartbeat reporting drops",
        )
    finally:
        assert agent.terminate() == 0
    drain(tmp_path, settings, tenant, vehicle, password)
    state = outbox_state(outbox)
    dropped = state.get("dropped_gps", 0) + state.get("dropped_temp", 0)
    assert state.get("dropped_door", 0) == 0
    seqs = assert_exactly_once(db, tenant, vehicle, state["last_seq"], dropped=dropped)
    # nothing is missing but what the policy dropped (counted as GPS or temperature drops)
    missing = set(range(1, state["last_seq"] + 1)) - set(seqs)
    assert len(missing) <= dropped
    # the door toggled all along: stored door events alternate open/closed with none missing
    doors = [
        r[0]
        for r in db.execute(
            "SELECT is_open FROM door_events WHERE tenant = %s AND vehicle_id = %s ORDER BY seq", (tenant, vehicle)
        ).fetchall()
    ]
    assert len(doors) > 40
    assert all(a != b for a, b in zip(doors, doors[1:], strict=False)), doors
    no_dead_letters(db, tenant, vehicle)
    print(json.dumps({"disk_cap": state}))
    rows = stored_seqs(db, tenant, vehicle)
    record(
        settings.state_dir,
        FaultRow(
            "disk-full outbox",
            state["last_seq"],
            len(set(rows)),
            0,
            max(0, len(missing) - dropped),
            len(rows) - len(set(rows)),
            None,
            f"a 16 KiB outbox through a 20 s broker outage: the drop policy dropped {dropped:,} (counted: "
            f"{state.get('dropped_gps', 0):,} GPS fixes, {state.get('dropped_temp', 0):,} temperatures, 0 door "
            f"events); {len(missing):,} are missing, every one of them counted as dropped",
        ),
    )


# ---------------------------------------------------------------- refusals


def test_readings_the_broker_refuses_are_kept_and_sent_once_allowed(
    engine,
    services_settings,
    db,
    tenant,  # type: ignore[no-untyped-def]
    tmp_path,
) -> None:
    """A device misconfigured with another device's account gets PUBACK 0x87 for every batch:
    nothing is deleted or dropped, nothing wedges; fixed, everything arrives."""
    settings, vehicle = services_settings, "van-refused"
    password = credentials.add_device(settings, tenant, vehicle)
    other = credentials.add_device(settings, tenant, "van-other")
    outbox = new_outbox(tmp_path)
    config = write_config(
        tmp_path / "edge.toml", settings, tenant, vehicle, other, gps_hz=10, temp_hz=0, door_toggle_s=None
    )
    config.write_text(config.read_text().replace("[broker]\n", f'[broker]\nusername = "{tenant}.van-other"\n'))
    agent = AgentProcess(config).start()
    try:
        time.sleep(6)
        state = outbox_state(outbox)
        assert agent.alive() and state["depth"] == state["last_seq"] > 40  # all kept, none sent, none dropped
        assert "refused a batch" in (tmp_path / "agent.log").read_text()
    finally:
        assert agent.terminate() == 0
    assert stored_seqs(db, tenant, vehicle) == []
    drain(tmp_path, settings, tenant, vehicle, password)  # the right account: the backlog goes through
    last = outbox_state(outbox)["last_seq"]
    assert assert_exactly_once(db, tenant, vehicle, last) == list(range(1, last + 1))


# ---------------------------------------------------------------- (d) footprint


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_footprint_at_one_reading_per_second(
    engine,
    services_settings,
    db,
    tenant,
    tmp_path,  # type: ignore[no-untyped-def]
    record_property,
) -> None:
    settings, vehicle = services_settings, "van-footprint"
    password = credentials.add_device(settings, tenant, vehicle)
    outbox = new_outbox(tmp_path)
    # one GPS fix a second (all sent), a probe read every 10 s (sent every 300 s), a door polled at 20 Hz
    config = write_config(
        tmp_path / "edge.toml",
        settings,
        tenant,
        vehicle,
        password,
        gps_hz=1.0,
        temp_hz=0.1,
        door_toggle_s=3600,
        status_s=60,
    )
    text = (
        config.read_text()
        .replace("[sampling.temp]\nperiod_s = 0\n", "")
        .replace("door_poll_ms = 10", "door_poll_ms = 100")
    )
    config.write_text(text)
    agent = AgentProcess(config).start()
    try:
        time.sleep(5)  # start-up (imports, connect) is not the steady state
        cpu0, seq0, t0 = _proc_cpu_s(agent.pid), outbox_state(outbox)["last_seq"], time.monotonic()
        rss_peak = 0.0
        while time.monotonic() - t0 < 60:
            rss_peak = max(rss_peak, _proc_rss_mb(agent.pid))
            time.sleep(1)
        cpu1, seq1, t1 = _proc_cpu_s(agent.pid), outbox_state(outbox)["last_seq"], time.monotonic()
        assert agent.alive()
    finally:
        agent.terminate()
    readings = seq1 - seq0
    cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    figures = {
        "rss_peak_mb": round(rss_peak, 1),
        "cpu_pct_of_one_core": round(cpu_pct, 3),
        "readings": readings,
        "seconds": round(t1 - t0, 1),
        "cpu_ms_per_reading": round(1000 * (cpu1 - cpu0) / max(1, readings), 2),
    }
    print(json.dumps({"footprint": figures}))
    for key, value in figures.items():
        record_property(key, value)
    assert 55 <= readings <= 65
    assert rss_peak < 60.0, figures
    assert cpu_pct < 2.0, figures
