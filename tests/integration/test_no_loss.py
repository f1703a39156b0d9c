"""No loss, no duplicates: the engine killed twice and the broker restarted mid-stream.

Real Mosquitto, real TimescaleDB, the real engine processes. Several devices
publish 20 000+ QoS 1 readings (single and batch messages, repeats, malformed
messages) while the engine is SIGKILLed and restarted twice and the broker is
restarted once. Afterwards the hypertables hold exactly the distinct readings
sent, every malformed message is a dead letter with its reason, and the
dataflow's per-vehicle counts (Bytewax recovery on) equal the stored counts:
nothing processed twice, nothing skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from core.contract import DoorEvent, GpsFix, TemperatureReading, encode_batch, encode_single, topic_for
from edge.publisher import DevicePublisher
from fleetstream import credentials, services
from fleetstream.engine import Engine
from store.db import migrate

pytestmark = pytest.mark.integration

DEVICES = 5
READINGS_PER_DEVICE = 4200  # 21 000 readings in all


def _device_stream(tenant: str, vehicle: str, base: datetime) -> list[tuple[str, bytes]]:
    """Singles of every type, batch messages of 50, and every 40th message sent twice."""
    readings: list[GpsFix | TemperatureReading | DoorEvent] = []
    for seq in range(READINGS_PER_DEVICE):
        t = base + timedelta(seconds=seq)
        if seq % 10 == 3:
            readings.append(TemperatureReading(tenant, vehicle, seq, t, "reefer", 4.0 + (seq % 7) / 10))
        elif seq % 50 == 7:
            readings.append(DoorEvent(tenant, vehicle, seq, t, "rear", seq % 100 == 7))
        else:
            readings.append(GpsFix(tenant, vehicle, seq, t, 60.15 + seq * 1e-5, 24.9 + seq * 1e-5, speed_mps=7.5))
    messages = [encode_single(r) for r in readings[:2200]]
    messages += [encode_batch(tenant, vehicle, readings[i : i + 50]) for i in range(2200, READINGS_PER_DEVICE, 50)]
    return [m for i, m in enumerate(messages) for _ in range(2 if i % 40 == 0 else 1)]


MALFORMED = [
    (b"{not json", "bad_json"),
    (b'{"v":1,"vehicle":"%s","seq":1,"fix_time":"2026-01-01T00:00:00Z","lat":NaN,"lon":1}', "not_finite"),
    (b'{"v":1,"vehicle":"%s","seq":1,"fix_time":"2026-01-01T00:00:00Z","lat":95,"lon":1}', "out_of_range"),
    (b'{"v":1,"vehicle":"someone-else","seq":1,"fix_time":"2026-01-01T00:00:00Z","lat":1,"lon":1}', "vehicle_mismatch"),
    (b'{"v":1,"vehicle":"%s","seq":1,"lat":1,"lon":1}', "missing_field"),
    (b'{"v":1,"vehicle":"%s","seq":"1","fix_time":"2026-01-01T00:00:00Z","lat":1,"lon":1}', "wrong_type"),
    (b'{"v":1,"vehicle":"%s","seq":1,"fix_time":"1990-01-01T00:00:00Z","lat":1,"lon":1}', "time_too_old"),
    (b'{"v":1,"vehicle":"%s","seq":1,"fix_time":"2099-01-01T00:00:00Z","lat":1,"lon":1}', "time_in_future"),
    (
        b'{"v":1,"vehicle":"%s","seq":1,"fix_time":"2026-01-01T00:00:00Z","lat":1,"lon":1,"pad":"'
        + b"x" * 300_000
        + b'"}',
        "oversized",
    ),
]


def _kill_engine(engine: Engine) -> None:
    for pid in engine.pids().values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for child in engine.children:
        if child.proc is not None:
            child.proc.wait()


def _wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_no_loss_no_duplicates_through_kills_and_broker_restart(services_settings, db) -> None:
    settings = services_settings
    migrate(settings.dsn())
    shutil.rmtree(settings.recovery_dir, ignore_errors=True)
    tenant = f"nl{int(time.time())}"
    vehicles = [f"van-{i}" for i in range(DEVICES)]
    passwords = credentials.add_devices(settings, tenant, vehicles)
    base = datetime.now(UTC) - timedelta(days=1)

    engine = Engine(settings)
    engine.start()
    engine.wait_ready()  # the shards' sessions exist: from now on the broker queues for them
    try:
        _scenario(settings, db, engine, tenant, vehicles, passwords, base)
    finally:
        engine.stop()


def _scenario(settings, db, engine, tenant, vehicles, passwords, base) -> None:  # type: ignore[no-untyped-def]
    streams = {v: _device_stream(tenant, v, base) for v in vehicles}
    malformed = [
        (topic_for(tenant, vehicles[0], "gps"), body.replace(b"%s", vehicles[0].encode()), reason)
        for body, reason in MALFORMED
    ]
    total = sum(len(s) for s in streams.values())
    sent = [0]
    errors: list[BaseException] = []

    def device(vehicle: str) -> None:
        try:
            host, port = settings.mqtt_endpoint()
            pub = DevicePublisher(
                host,
                port,
                f"{tenant}.{vehicle}",
                passwords[vehicle],
                client_id=f"{tenant}.{vehicle}",
                max_payload_bytes=settings.broker_message_size_limit,
            )
            pub.connect()
            extra = malformed if vehicle == vehicles[0] else []
            for i, (topic, payload) in enumerate(streams[vehicle]):
                pub.publish(topic, payload)
                sent[0] += 1
                if i % 100 == 0 and extra:
                    pub.publish(*extra.pop()[:2])
                time.sleep(0.0015)
            assert pub.flush(180), f"{vehicle}: {pub.pending} messages never acknowledged"
            pub.close()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=device, args=(v,)) for v in vehicles]
    for t in threads:
        t.start()
    # the chaos, at fixed fractions of the stream
    _wait_for(lambda: sent[0] > total * 0.25, 120, "a quarter of the stream")
    _kill_engine(engine)
    engine.start()
    _wait_for(lambda: sent[0] > total * 0.5, 120, "half of the stream")
    services.restart_broker(settings)
    _wait_for(lambda: sent[0] > total * 0.75, 120, "three quarters of the stream")
    _kill_engine(engine)
    engine.start()
    for t in threads:
        t.join(300)
    assert not errors, errors

    expected = {"positions": 0, "temperatures": 0, "door_events": 0}
    for seq in range(READINGS_PER_DEVICE):
        table = "temperatures" if seq % 10 == 3 else "door_events" if seq % 50 == 7 else "positions"
        expected[table] += DEVICES

    def stored() -> dict[str, int]:
        return {t: db.execute(f"SELECT count(*) FROM {t} WHERE tenant = %s", (tenant,)).fetchone()[0] for t in expected}

    _wait_for(lambda: stored() == expected, 180, f"{expected} readings stored (have {stored()})")
    time.sleep(2)  # anything late would show now
    assert stored() == expected
    for table in expected:  # exactly once: one row per (vehicle, seq)
        distinct = db.execute(
            f"SELECT count(DISTINCT (vehicle_id, seq)) FROM {table} WHERE tenant = %s", (tenant,)
        ).fetchone()[0]
        assert distinct == expected[table]
    gaps = db.execute(
        "SELECT vehicle_id, count(*) FROM (SELECT vehicle_id, seq FROM positions WHERE tenant = %(t)s "
        "UNION ALL SELECT vehicle_id, seq FROM temperatures WHERE tenant = %(t)s UNION ALL "
        "SELECT vehicle_id, seq FROM door_events WHERE tenant = %(t)s) r GROUP BY vehicle_id",
        {"t": tenant},
    ).fetchall()
    assert dict(gaps) == {v: READINGS_PER_DEVICE for v in vehicles}

    dead = db.execute(
        "SELECT reason, count(*) FROM dead_letters WHERE topic LIKE %s GROUP BY reason", (f"fleet/{tenant}/%",)
    ).fetchall()
    assert dict(dead) == {reason: 1 for _, reason in MALFORMED}, dead

    # the dataflow: counts per vehicle equal the stored counts exactly (no replay counted twice)
    def flow_counts() -> dict[str, tuple[int, int, int]]:
        rows = db.execute(
            "SELECT vehicle_id, gps_count, temp_count, door_count FROM vehicle_state WHERE tenant = %s", (tenant,)
        ).fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}

    per_vehicle = (
        expected["positions"] // DEVICES,
        expected["temperatures"] // DEVICES,
        expected["door_events"] // DEVICES,
    )
    _wait_for(
        lambda: flow_counts() == {v: per_vehicle for v in vehicles},
        120,
        f"dataflow counts {per_vehicle} per vehicle (have {flow_counts()})",
    )
    report = {"tenant": tenant, "messages": total, "stored": stored(), "dead_letters": dict(dead)}
    print(json.dumps(report))
