"""The fault matrix: one fault per test, against the real engine, broker and database, with counts.

Every test sends readings through one fault and records a row (tests/integration/faults.py):
sent, stored, dead letters, lost, duplicated, time to recover. "Lost" must be 0 on every row
but the third-party device's broker ``kill -9`` (a device that deletes on PUBACK cannot get
back what the broker took and had not saved: that row measures how much).

The engine runs under its own supervisor loop (``Engine.watch``), as in production: a killed
process is restarted by it. ``FLEETSTREAM_TEST_FAULT_SCALE`` multiplies the readings per row
(default 1: about ten seconds of traffic each).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.contract import GpsFix, TemperatureReading, encode_batch, encode_single
from core.settings import Settings
from edge.publisher import DevicePublisher
from fleetstream import credentials, services
from fleetstream.engine import Engine
from store.db import connect, migrate
from tests.integration.faults import FaultRow, ThirdPartyDevice, count_rows, record, stored_seqs
from tests.integration.test_edge_agent import AgentProcess, drain, new_outbox, outbox_state, write_config
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

SCALE = float(os.environ.get("FLEETSTREAM_TEST_FAULT_SCALE", "1"))


# ---------------------------------------------------------------- the engine, supervised


@pytest.fixture(scope="module")
def engine(services_settings: Settings) -> Iterator[Engine]:
    migrate(services_settings.dsn())
    eng = Engine(services_settings)
    eng.start()
    eng.wait_ready()
    stop = threading.Event()
    watcher = threading.Thread(target=eng.watch, args=(stop,), daemon=True)
    watcher.start()
    try:
        yield eng
    finally:
        stop.set()
        watcher.join(10)
        eng.stop()


def child(engine: Engine, name: str) -> Any:
    return next(c for c in engine.children if c.name == name)


def pid_of(engine: Engine, name: str) -> int:
    proc = child(engine, name).proc
    assert proc is not None
    return int(proc.pid)


def kill_9(engine: Engine, name: str) -> None:
    """SIGKILL one engine process and wait until the supervisor has started it again."""
    before = child(engine, name)
    restarts = before.restarts
    os.kill(pid_of(engine, name), signal.SIGKILL)
    wait_until(lambda: child(engine, name).restarts > restarts, 30, f"{name} restarted by the supervisor")


def shards(engine: Engine) -> list[str]:
    return [c.name for c in engine.children if c.shard is not None]


def pause_gateway(engine: Engine) -> None:
    """SIGSTOP every gateway shard: a gateway that lags (as under a slow database)."""
    for name in shards(engine):
        os.kill(pid_of(engine, name), signal.SIGSTOP)


def resume_gateway(engine: Engine) -> None:
    for name in shards(engine):
        os.kill(pid_of(engine, name), signal.SIGCONT)


def restart_broker(settings: Settings, hard: bool) -> None:
    services.stop_broker(settings, hard=hard)
    services.start_broker(settings)


# ---------------------------------------------------------------- plain devices


class Fleet:
    """Plain devices (DevicePublisher, QoS 1), one thread each, each sending ``per_device``
    readings at ``rate`` readings/s: singles and batches of 20, one seq per device across streams."""

    def __init__(self, settings: Settings, tenant: str, devices: int, per_device: int, rate: float) -> None:
        self.settings, self.tenant, self.rate = settings, tenant, rate
        self.vehicles = [f"van-{i}" for i in range(devices)]
        self.passwords = credentials.add_devices(settings, tenant, self.vehicles)
        self.per_device = per_device
        self.sent = 0
        self.unrouted = 0
        self.errors: list[BaseException] = []
        self.base = datetime.now(UTC) - timedelta(hours=3)
        self._threads = [threading.Thread(target=self._device, args=(v,), daemon=True) for v in self.vehicles]
        self._lock = threading.Lock()

    def readings(self, vehicle: str, seqs: range) -> list[GpsFix | TemperatureReading]:
        out: list[GpsFix | TemperatureReading] = []
        for seq in seqs:
            t = self.base + timedelta(seconds=seq)
            if seq % 10 == 3:
                out.append(TemperatureReading(self.tenant, vehicle, seq, t, "reefer", 4.0))
            else:
                out.append(GpsFix(self.tenant, vehicle, seq, t, 60.15 + seq * 1e-5, 24.9, speed_mps=7.0))
        return out

    def _device(self, vehicle: str) -> None:
        try:
            host, port = self.settings.mqtt_endpoint()
            pub = DevicePublisher(host, port, f"{self.tenant}.{vehicle}", self.passwords[vehicle], max_pending=2000)
            pub.connect()
            start = time.monotonic()
            seq = 0
            while seq < self.per_device:
                group = 1 if seq % 200 < 100 else 20
                chunk = self.readings(vehicle, range(seq, min(seq + group, self.per_device)))
                pub.publish(*(encode_single(chunk[0]) if group == 1 else encode_batch(self.tenant, vehicle, chunk)))
                seq += len(chunk)
                with self._lock:
                    self.sent += len(chunk)
                pause = start + seq / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            assert pub.flush(180), f"{vehicle}: {pub.pending} messages never acknowledged"
            with self._lock:
                self.unrouted += pub.unrouted
            pub.close()
        except BaseException as exc:  # surfaced by join()
            self.errors.append(exc)

    @property
    def total(self) -> int:
        return self.per_device * len(self.vehicles)

    def start(self) -> Fleet:
        for t in self._threads:
            t.start()
        return self

    def wait_sent(self, share: float) -> None:
        wait_until(lambda: self.sent >= share * self.total, 120, f"{share:.0%} of the readings sent", every_s=0.1)

    def join(self) -> None:
        for t in self._threads:
            t.join(300)
        assert not self.errors, self.errors


def stored_count(db: Any, tenant: str) -> int:
    return count_rows(db, tenant)[1]


def caught_up(db: Any, tenant: str, marks: dict[str, int]) -> bool:
    """Every reading with seq < marks[vehicle] stored (marks: the seqs sent so far)."""
    have: dict[str, int] = {}
    for vehicle, seq in set(stored_seqs(db, tenant)):
        if seq < marks.get(vehicle, 0):
            have[vehicle] = have.get(vehicle, 0) + 1
    return all(have.get(v, 0) >= m for v, m in marks.items())


def time_to_recover(db: Any, fleet: Fleet, since: float) -> float:
    """Seconds from ``since`` (monotonic) until everything sent up to now is stored."""
    marks = {v: min(fleet.per_device, fleet.sent // len(fleet.vehicles)) for v in fleet.vehicles}
    wait_until(lambda: caught_up(db, fleet.tenant, marks), 180, "ingestion to catch up", every_s=0.2)
    return time.monotonic() - since


def dead_letters(db: Any, tenant: str) -> int:
    return int(
        db.execute("SELECT count(*) FROM dead_letters WHERE topic LIKE %s", (f"fleet/{tenant}/%",)).fetchone()[0]
    )


def settle(db: Any, tenant: str, expected: int, quiet_s: float = 5.0) -> tuple[int, int]:
    """Wait until ``expected`` distinct readings are stored, or none more came for ``quiet_s``
    seconds (the row then reports what is missing); (rows, distinct)."""
    seen, changed = -1, time.monotonic()
    while True:
        count = stored_count(db, tenant)
        if count >= expected:
            break
        if count != seen:
            seen, changed = count, time.monotonic()
        elif time.monotonic() - changed > quiet_s:
            break
        time.sleep(0.25)
    time.sleep(1.0)  # anything late or doubled would show now
    return count_rows(db, tenant)


def tenant_name(prefix: str) -> str:
    return f"{prefix}{int(time.time() * 1000) % 10**9}"


# ---------------------------------------------------------------- gateway and dataflow kills


def test_gateway_shard_kill_9(engine: Engine, services_settings: Settings, db: Any) -> None:
    tenant = tenant_name("fgw")
    fleet = Fleet(services_settings, tenant, devices=4, per_device=int(1500 * SCALE), rate=150).start()
    fleet.wait_sent(0.3)
    kill_9(engine, "gateway-0")
    fleet.wait_sent(0.6)
    kill_9(engine, "gateway-1")
    killed_at = time.monotonic()
    recover = time_to_recover(db, fleet, killed_at)
    fleet.join()
    rows, distinct = settle(db, tenant, fleet.total)
    row = FaultRow(
        "gateway shard kill -9",
        fleet.total,
        distinct,
        dead_letters(db, tenant),
        fleet.total - distinct,
        rows - distinct,
        recover,
        "each shard killed once mid-stream; the supervisor restarts it, the broker redelivers what it had not acknowledged",
    )
    record(services_settings.state_dir, row)
    assert (row.lost, row.duplicated, row.dead_letters) == (0, 0, 0)


def flow_counts(db: Any, tenant: str) -> int:
    return int(
        db.execute(
            "SELECT coalesce(sum(gps_count + temp_count + door_count), 0) FROM vehicle_state WHERE tenant = %s",
            (tenant,),
        ).fetchone()[0]
    )


def test_dataflow_kill_9(engine: Engine, services_settings: Settings, db: Any) -> None:
    tenant = tenant_name("ffl")
    fleet = Fleet(services_settings, tenant, devices=4, per_device=int(1500 * SCALE), rate=150).start()
    fleet.wait_sent(0.3)
    kill_9(engine, "flow")
    fleet.wait_sent(0.7)
    kill_9(engine, "flow")
    killed_at = time.monotonic()
    fleet.join()
    rows, distinct = settle(db, tenant, fleet.total)
    # the dataflow resumes from its last snapshot and replays from there: each reading counted once
    wait_until(lambda: flow_counts(db, tenant) >= distinct, 180, "the dataflow to count every reading")
    recover = time.monotonic() - killed_at
    time.sleep(2.0)  # a reading counted twice would show now
    counted = flow_counts(db, tenant)
    row = FaultRow(
        "dataflow kill -9",
        fleet.total,
        distinct,
        dead_letters(db, tenant),
        fleet.total - distinct,
        (rows - distinct) + (counted - distinct),
        recover,
        f"killed twice; the dataflow counted {counted:,} readings (Bytewax recovery: none twice, none skipped)",
    )
    record(services_settings.state_dir, row)
    assert (row.lost, row.duplicated) == (0, 0)
    assert counted == distinct


# ---------------------------------------------------------------- the broker


def agent_seqs_accounted(db: Any, tenant: str, vehicle: str, outbox: Path) -> tuple[int, int, int, int]:
    """(last seq, stored distinct, in the outbox, missing: neither) for the agent's readings."""
    state = outbox_state(outbox)
    import sqlite3

    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=10)
    try:
        waiting = {r[0] for r in conn.execute("SELECT seq FROM readings").fetchall()}
    finally:
        conn.close()
    stored = {seq for _, seq in stored_seqs(db, tenant, vehicle)}
    expected = set(range(1, state["last_seq"] + 1))
    return state["last_seq"], len(stored), len(waiting - stored), len(expected - stored - waiting)


def test_broker_kill_9_edge_agent_with_receipts(
    engine: Engine, services_settings: Settings, db: Any, tmp_path: Path
) -> None:
    """The broker SIGKILLed twice while the agent sends ~220 readings/s, the second time while the
    gateway lags (its shards stopped for 5 s): every seq the agent assigned is stored or still in
    its outbox, none missing, none stored twice."""
    settings, tenant, vehicle = services_settings, tenant_name("frc"), "van-1"
    password = credentials.add_device(settings, tenant, vehicle)
    outbox = new_outbox(tmp_path)
    config = write_config(tmp_path / "edge.toml", settings, tenant, vehicle, password, gps_hz=200, temp_hz=20)
    agent = AgentProcess(config).start()
    try:
        wait_until(lambda: len(stored_seqs(db, tenant, vehicle)) > 500, 60, "the first readings")
        restart_broker(settings, hard=True)  # 1: the gateway keeps up
        wait_until(lambda: len(stored_seqs(db, tenant, vehicle)) > outbox_state(outbox)["last_seq"] * 0.5, 60, "more")
        pause_gateway(engine)  # 2: the gateway lags; the broker queues for it
        try:
            time.sleep(5)
            restart_broker(settings, hard=True)
        finally:
            resume_gateway(engine)
        restarted_at = time.monotonic()
        mark = outbox_state(outbox)["last_seq"]
        wait_until(
            lambda: set(range(1, mark + 1)) <= {s for _, s in stored_seqs(db, tenant, vehicle)},
            180,
            "everything the agent recorded before the second kill",
            every_s=0.25,
        )
        recover = time.monotonic() - restarted_at
        assert agent.alive(), (tmp_path / "agent.log").read_text()[-3000:]
    finally:
        assert agent.terminate() == 0
    last, stored_now, waiting, missing = agent_seqs_accounted(db, tenant, vehicle, outbox)
    assert missing == 0, f"{missing} seqs neither stored nor in the outbox"
    drain(tmp_path, settings, tenant, vehicle, password)
    seqs = [s for _, s in stored_seqs(db, tenant, vehicle)]
    row = FaultRow(
        "broker kill -9, edge agent with receipts",
        last,
        len(set(seqs)),
        dead_letters(db, tenant),
        last - len(set(seqs)),
        len(seqs) - len(set(seqs)),
        recover,
        f"~220 readings/s, killed twice (once with the gateway stopped 5 s); at the end {waiting} were "
        "still in the outbox (stored after), none missing",
    )
    record(settings.state_dir, row)
    assert (row.lost, row.duplicated) == (0, 0)
    assert sorted(set(seqs)) == list(range(1, last + 1))


def third_party_run(
    db: Any, settings: Settings, tenant: str, fault: Any, readings: int, rate: float
) -> tuple[int, int, int, int, int, float]:
    """One third-party device sending ``readings`` singles at ``rate``/s; ``fault()`` runs in its
    own thread from a third of the way while the device goes on sending. (sent, acked, stored
    distinct, rows, unrouted, seconds from the fault's end until the first reading sent after it
    was stored)."""
    vehicle = "van-1"
    password = credentials.add_device(settings, tenant, vehicle)
    device = ThirdPartyDevice(settings, tenant, vehicle, password)
    base = datetime.now(UTC) - timedelta(hours=2)
    wait_until(lambda: device.client.is_connected(), 10, "the device to connect")
    sending = [0]
    back: list[float] = []

    def run_fault() -> None:
        fault()
        since, mark = time.monotonic(), sending[0]
        with connect(settings.dsn(), autocommit=True) as conn:  # the first reading sent after it, stored
            while time.monotonic() - since < 120:
                if any(s >= mark for _, s in stored_seqs(conn, tenant, vehicle)):
                    back.append(time.monotonic() - since)
                    return
                time.sleep(0.1)

    faulty = threading.Thread(target=run_fault, daemon=True)
    start = time.monotonic()
    for seq in range(readings):
        if seq == readings // 3:
            faulty.start()
        sending[0] = seq
        device.publish(seq, *encode_single(GpsFix(tenant, vehicle, seq, base + timedelta(seconds=seq), 60.2, 24.9)))
        pause = start + seq / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    faulty.join(180)
    wait_until(lambda: not device._inflight, 60, "a PUBACK for every message")
    device.close()
    rows, distinct = settle(db, tenant, len(device.acked))
    return readings, len(device.acked), distinct, rows, device.unrouted, back[0] if back else float("nan")


def test_broker_kill_9_third_party_device(engine: Engine, services_settings: Settings, db: Any) -> None:
    """What the broker itself guarantees a device that deletes on PUBACK: the broker SIGKILLed while
    the gateway lags, so it holds a queue; what it acknowledged and had not saved is gone."""
    settings, tenant = services_settings, tenant_name("ftk")

    def fault() -> None:
        pause_gateway(engine)
        try:
            time.sleep(3)
            restart_broker(settings, hard=True)
        finally:
            resume_gateway(engine)

    sent, acked, distinct, rows, unrouted, recover = third_party_run(
        db, settings, tenant, fault, int(4000 * SCALE), 300.0
    )
    row = FaultRow(
        "broker kill -9, third-party device",
        sent,
        distinct,
        dead_letters(db, tenant),
        sent - distinct,
        rows - distinct,
        recover,
        f"300 msg/s, the gateway stopped 3 s before the kill: the broker had acknowledged {acked:,} and "
        f"lost the {acked - distinct:,} it had not saved yet (it saves every second); {unrouted} PUBACKs 0x10",
    )
    record(settings.state_dir, row)
    assert row.duplicated == 0
    assert distinct <= acked <= sent


def test_broker_graceful_restart(engine: Engine, services_settings: Settings, db: Any) -> None:
    """A broker restarted with SIGTERM twice while devices publish: Mosquitto 2.1 keeps the gateway's
    shared subscriptions, so no PUBACK 0x10 and nothing lost, for the edge agent and plain devices."""
    settings, tenant = services_settings, tenant_name("fgr")
    fleet = Fleet(settings, tenant, devices=3, per_device=int(1500 * SCALE), rate=150).start()
    third = tenant_name("fgt")
    results: dict[str, tuple[int, int, int, int, int, float]] = {}

    def third_party() -> None:
        results["third"] = third_party_run(db, settings, third, lambda: None, int(1500 * SCALE), 150.0)

    runner = threading.Thread(target=third_party)
    runner.start()
    fleet.wait_sent(0.3)
    restart_broker(settings, hard=False)
    fleet.wait_sent(0.6)
    restart_broker(settings, hard=False)
    restarted_at = time.monotonic()
    recover = time_to_recover(db, fleet, restarted_at)
    fleet.join()
    runner.join(300)
    rows, distinct = settle(db, tenant, fleet.total)
    sent3, acked3, distinct3, rows3, unrouted3, _ = results["third"]
    row = FaultRow(
        "broker graceful restart",
        fleet.total + sent3,
        distinct + distinct3,
        dead_letters(db, tenant) + dead_letters(db, third),
        fleet.total + sent3 - distinct - distinct3,
        rows - distinct + rows3 - distinct3,
        recover,
        f"restarted twice (SIGTERM); PUBACKs 0x10: {fleet.unrouted + unrouted3} (devices that take them as "
        "delivered would have lost that many)",
    )
    record(settings.state_dir, row)
    assert (row.lost, row.duplicated, fleet.unrouted + unrouted3) == (0, 0, 0)


# ---------------------------------------------------------------- poison


POISON = [
    # (stream, payload fields that the database cannot hold), each becomes a dead letter
    ("temp", {"seq": 1, "sensor": "ree\u0000fer", "celsius": 4.0}, "bad_text"),
    ("door", {"seq": 2, "door": "re\ud800ar", "open": True}, "bad_text"),
    (
        "temp",
        {"seq": 3, "sensor": "probe", "celsius": 4.0, "device_time": "9999-12-31T23:59:59-23:59"},
        "time_out_of_range",
    ),
    ("gps", {"seq": 4, "fix_time": "0001-01-01T00:00:00+01:00", "lat": 60.0, "lon": 24.0}, "time_out_of_range"),
    ("status", {"state": "heart\u0000beat", "details": {}}, "bad_text"),
    ("status", {"state": "heartbeat", "details": {"note": "a\u0000b"}}, "bad_text"),
    ("status", {"state": "heartbeat", "details": {"x": "\udfff"}}, "bad_text"),
    ("status", {"state": "heartbeat", "sent_at": "9999-12-31T23:59:59-23:59"}, "time_out_of_range"),
]


def test_poison_messages(engine: Engine, services_settings: Settings, db: Any) -> None:
    """The poison variants that once crash-looped the gateway, a poison plan and a plan past the
    limits, then good readings and a good plan: all good ones stored, the bad ones dead letters, and
    no process of the engine restarted."""
    from ingest.dispatch import publish_plan

    settings, tenant, vehicle = services_settings, tenant_name("fpo"), "van-1"
    password = credentials.add_device(settings, tenant, vehicle)
    pids = engine.pids()
    restarts = {c.name: c.restarts for c in engine.children}
    now = datetime.now(UTC)
    started = time.monotonic()
    pub = DevicePublisher(*settings.mqtt_endpoint(), f"{tenant}.{vehicle}", password)
    pub.connect()
    for stream, fields, _ in POISON:
        body: dict[str, Any] = {"v": 1, "vehicle": vehicle, "fix_time": now.isoformat(), "sent_at": now.isoformat()}
        body.update(fields)
        pub.publish(f"fleet/{tenant}/{vehicle}/{stream}", json.dumps(body).encode())
    dispatch = credentials.mqtt_account(settings, "dispatch")
    stop = {"id": "s1", "lat": 60.17, "lon": 24.94}
    poison_plan = {
        "tenant": tenant,
        "vehicle": vehicle,
        "version": 1,
        "stops": [{**stop, "window_start": "9999-12-31T23:59:59-23:59"}],
    }
    poles = {
        "tenant": tenant,
        "vehicle": vehicle,
        "version": 1,
        "stops": [stop],
        "route": [[-89.9, 0.0], [-45.0, 0.0], [0.0, 0.0], [45.0, 0.0], [89.9, 0.0]],
    }
    publish_plan(settings, json.dumps(poison_plan).encode(), credentials=dispatch)
    publish_plan(settings, json.dumps(poles).encode(), credentials=dispatch)
    good = [GpsFix(tenant, vehicle, seq, now - timedelta(seconds=100 - seq), 60.17, 24.94) for seq in range(10, 30)]
    for fix in good:
        pub.publish(*encode_single(fix))
    assert pub.flush(60)
    pub.close()
    publish_plan(settings, {"tenant": tenant, "vehicle": vehicle, "version": 1, "stops": [stop]}, credentials=dispatch)
    wait_until(lambda: len(stored_seqs(db, tenant, vehicle)) == len(good), 60, "the good readings")
    wait_until(
        lambda: db.execute("SELECT count(*) FROM plans WHERE tenant = %s", (tenant,)).fetchone()[0] == 1,
        60,
        "the good plan",
    )
    expected = len(POISON) + 2
    wait_until(lambda: dead_letters(db, tenant) + plan_dead_letters(db, tenant) >= expected, 60, "the dead letters")
    reasons = sorted(
        r[0]
        for r in db.execute(
            "SELECT reason FROM dead_letters WHERE topic LIKE %s OR topic = %s",
            (f"fleet/{tenant}/%", f"dispatch/{tenant}/plan"),
        ).fetchall()
    )
    assert reasons == sorted([r for _, _, r in POISON] + ["bad_plan", "bad_plan"])
    assert engine.pids() == pids, "a process of the engine restarted"
    assert {c.name: c.restarts for c in engine.children} == restarts
    rows, distinct = count_rows(db, tenant)
    poison_readings = sum(1 for stream, _, _ in POISON if stream != "status")
    row = FaultRow(
        "poison messages",
        poison_readings + len(good),
        distinct,
        len(reasons),
        len(good) - distinct,
        rows - distinct,
        None,
        f"the {len(POISON)} poison variants (NUL, lone surrogates, times out of range; {len(POISON) - poison_readings} "
        "of them status messages), a plan with a time out of range and a pole-to-pole plan, then 20 good readings and a good "
        f"plan: all stored {time.monotonic() - started:.1f} s after the first poison was sent, no process restarted",
    )
    record(settings.state_dir, row)
    assert (row.lost, row.duplicated) == (0, 0)


def plan_dead_letters(db: Any, tenant: str) -> int:
    return int(
        db.execute("SELECT count(*) FROM dead_letters WHERE topic = %s", (f"dispatch/{tenant}/plan",)).fetchone()[0]
    )


# ---------------------------------------------------------------- a plan at the limits


def plan_at_the_limits(tenant: str, vehicle: str, settings: Settings) -> dict[str, Any]:
    """The costliest plan the limits let through and a message can hold: the most stops, the
    route as long as allowed, in as many points as fit ``max_payload_bytes``."""
    import math

    limits = settings.plan_limits()
    stop_count, points = limits.max_stops, limits.max_route_points
    while True:
        step_km = limits.max_route_km * 0.999 / (points - 1)
        route, lat, lon = [], 60.0, 24.0
        for i in range(points):  # winding north-east from Helsinki
            route.append([round(lat, 6), round(lon, 6)])
            heading = math.radians(45 + 60 * math.sin(i / 50))
            lat += step_km * math.cos(heading) / 111.32
            lon += step_km * math.sin(heading) / (111.32 * math.cos(math.radians(lat)))
        every = max(1, points // stop_count)
        stops = [{"id": f"s{i}", "lat": route[i * every][0], "lon": route[i * every][1]} for i in range(stop_count)]
        body = {"tenant": tenant, "vehicle": vehicle, "version": 1, "stops": stops, "route": route}
        if len(json.dumps(body, separators=(",", ":"))) <= settings.max_payload_bytes:
            return body
        points = int(points * 0.9)


def analysis_lag_s(db: Any, tenant: str) -> float:
    """How far the analytics are behind the store for ``tenant``: the newest stored reading's
    receive time less that of the newest reading the dataflow has analysed (seconds)."""
    row = db.execute(
        "SELECT extract(epoch FROM (SELECT max(received_at) FROM positions WHERE tenant = %(t)s) "
        "- (SELECT max(last_received_at) FROM vehicle_state WHERE tenant = %(t)s))",
        {"t": tenant},
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def test_a_plan_at_the_limits_delays_another_tenant_by_a_bounded_time(
    engine: Engine, services_settings: Settings, db: Any
) -> None:
    from ingest.dispatch import publish_plan

    settings = services_settings
    heavy, other = tenant_name("fph"), tenant_name("fpo")
    body = plan_at_the_limits(heavy, "van-1", settings)
    fleet = Fleet(settings, other, devices=2, per_device=int(400 * SCALE), rate=20).start()
    wait_until(lambda: stored_count(db, other) > 40, 60, "the other tenant's first readings")
    baseline = max(analysis_lag_s(db, other) for _ in range(20) if time.sleep(0.1) is None)
    publish_plan(settings, json.dumps(body).encode(), credentials=credentials.mqtt_account(settings, "dispatch"))
    published = time.monotonic()
    worst = 0.0
    while time.monotonic() - published < 10:
        worst = max(worst, analysis_lag_s(db, other))
        time.sleep(0.1)
    fleet.join()
    assert db.execute("SELECT count(*) FROM plans WHERE tenant = %s", (heavy,)).fetchone()[0] == 1
    print(
        json.dumps(
            {
                "plan_at_the_limits": {
                    "stops": len(body["stops"]),
                    "route_points": len(body["route"]),
                    "bytes": len(json.dumps(body)),
                    "other_tenant_lag_s": round(worst, 2),
                    "lag_without_it_s": round(baseline, 2),
                }
            }
        )
    )
    # the corridor and stop index of the largest plan cost about 2 s of the dataflow's one worker
    assert worst < baseline + 15, (worst, baseline)
