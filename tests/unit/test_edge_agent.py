"""The edge agent's pure parts: outbox rows -> contract batch messages (split under the size
limit), samples -> stored readings, status details; and its import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.contract import Limits, decode
from edge.agent.agent import Agent, plan_messages, reading_fields, to_reading
from edge.agent.config import parse_config
from edge.agent.outbox import Outbox, StoredReading
from edge.agent.sampling import DoorSample, GpsSample, TemperatureSample

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def rows(tmp_path: Path, n: int) -> list[StoredReading]:
    with Outbox(tmp_path / "o.sqlite3", first_seq=1) as outbox:
        for i in range(n):
            t = T0 + timedelta(seconds=i)
            if i % 3 == 0:
                outbox.add("temp", t, {"sensor": "reefer", "celsius": 4.25})
            elif i % 7 == 0:
                outbox.add("door", t, {"door": "rear", "open": True})
            else:
                outbox.add("gps", t, {"lat": 60.1 + i * 1e-5, "lon": 24.9, "speed_mps": 7.5, "heading_deg": 90.0})
        return outbox.oldest(n)


def test_one_batch_message_that_the_server_decodes_back(tmp_path: Path) -> None:
    stored = rows(tmp_path, 30)
    messages, undeliverable = plan_messages("acme", "van-7", stored, 64 * 1024, T0)
    assert undeliverable == [] and len(messages) == 1
    payload, seqs = messages[0]
    assert seqs == list(range(1, 31))
    decoded = decode("fleet/acme/van-7/batch", payload, T0 + timedelta(minutes=1))
    assert decoded.rejected == []
    assert [r.seq for r in decoded.readings] == seqs
    assert [r.kind for r in decoded.readings] == [s.kind for s in stored]
    assert decoded.readings[1].fix_time == T0 + timedelta(seconds=1)


def test_an_oversized_batch_is_split_never_sent_whole(tmp_path: Path) -> None:
    stored = rows(tmp_path, 200)
    limit = 2048
    messages, undeliverable = plan_messages("acme", "van-7", stored, limit, T0)
    assert undeliverable == [] and len(messages) > 5
    assert all(len(payload) <= limit for payload, _ in messages)
    assert [s for _, seqs in messages for s in seqs] == [r.seq for r in stored]  # all of them, in order


def test_a_reading_too_big_for_any_message_is_reported(tmp_path: Path) -> None:
    stored = rows(tmp_path, 3)
    messages, undeliverable = plan_messages("acme", "van-7", stored, 100, T0)
    assert messages == [] and undeliverable == [1, 2, 3]


def test_resends_are_byte_identical(tmp_path: Path) -> None:
    stored = rows(tmp_path, 10)
    first = plan_messages("acme", "van-7", stored, 64 * 1024)[0]
    again = plan_messages("acme", "van-7", stored, 64 * 1024)[0]
    assert first == again
    assert to_reading("acme", "van-7", stored[1]).fix_time == T0 + timedelta(seconds=1)


def test_sample_fields_keep_the_contract_ranges() -> None:
    kind, fields = reading_fields(
        GpsSample(T0, 60.0, 24.9, speed_mps=8.0, heading_deg=360.0, accuracy_m=2e5, alt_m=30.0)
    )
    assert kind == "gps" and fields == {
        "lat": 60.0,
        "lon": 24.9,
        "speed_mps": 8.0,
        "heading_deg": 360.0,
        "alt_m": 30.0,
    }  # an absurd accuracy is left out, not refused
    assert reading_fields(TemperatureSample(T0, "reefer", 3.5)) == ("temp", {"sensor": "reefer", "celsius": 3.5})
    assert reading_fields(DoorSample(T0, "rear", True)) == ("door", {"door": "rear", "open": True})


def test_agent_records_through_the_sampler_into_the_outbox(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device": {"tenant": "acme", "vehicle": "van-7"},
            "outbox": {"path": str(tmp_path / "o.sqlite3")},
            "sampling": {"temp": {"period_s": 60}},
        }
    )
    agent = Agent(config, sources={})  # never started: no broker needed
    try:
        assert agent.record(TemperatureSample(T0, "reefer", 4.0)) is not None
        assert agent.record(TemperatureSample(T0 + timedelta(seconds=10), "reefer", 4.1)) is None  # sampled out
        assert agent.record(DoorSample(T0, "rear", True)) is not None
        assert agent.record(DoorSample(datetime(1970, 1, 1, tzinfo=UTC), "rear", False)) is None  # clock not set
        details = agent.status_details()
        assert details["queue_depth"] == 2 and details["recorded"] == {"gps": 0, "temp": 1, "door": 1}
        assert details["dropped"] == {"gps": 0, "temp": 0, "door": 0}
        assert details["sensor_faults"]["agent"] == {"clock_not_set": 1}
        assert details["last_publish_at"] is None and details["oldest_unsent_age_s"] > 0
        json.dumps(details)  # it is sent as JSON
        assert len(json.dumps(details)) < Limits().max_payload_bytes
    finally:
        agent.outbox.close()


def test_agent_modules_import_no_server_dependency() -> None:
    code = (
        "import sys, edge.agent.agent, edge.agent.__main__, edge.agent.config, edge.agent.outbox, "
        "edge.agent.sampling, edge.agent.sensors.gps, edge.agent.sensors.temperature, edge.agent.sensors.door\n"
        "bad = sorted(m for m in ('psycopg', 'bytewax', 'h3', 'numpy', 'polars', 'sklearn', 'fleetstream', "
        "'pipelines', 'store') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_agent_life_cycle_speaks_to_systemd(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket
    import threading

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    config = parse_config(
        {
            "device": {"tenant": "acme", "vehicle": "van-7"},
            "broker": {"port": 1},  # nothing listens: the agent runs on, offline
            "outbox": {"path": str(tmp_path / "o.sqlite3")},
        }
    )
    agent = Agent(config, sources={})
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run(stop)))
    thread.start()
    try:
        assert sock.recv(100) == b"READY=1"
        assert sock.recv(100) == b"WATCHDOG=1"
        assert agent.healthy()
    finally:
        stop.set()
        thread.join(30)
    rest = []
    while b"STOPPING=1" not in rest:
        rest.append(sock.recv(100))
    assert set(rest) <= {b"WATCHDOG=1", b"STOPPING=1"}
    assert result == [0]
    sock.close()


class _Publisher:
    """Stands in for the agent's ``DevicePublisher``: records publishes; the test plays the broker."""

    def __init__(self) -> None:
        self.connected, self.generation, self.unrouted = True, 1, 0
        self.batches: list[list[int]] = []

    def publish(self, topic: str, payload: bytes, key: object = None, timeout: float | None = None) -> object:
        if topic.endswith("/batch"):
            self.batches.append([r["seq"] for r in json.loads(payload)["readings"]])
        return key


def test_a_reconnect_sends_again_only_what_the_broker_took_on_an_earlier_connection(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device": {"tenant": "acme", "vehicle": "van-7"},
            "outbox": {"path": str(tmp_path / "o.sqlite3")},
            "sender": {"batch_max_readings": 2},
        }
    )
    agent = Agent(config, sources={})  # never started: the test plays the broker
    publisher = _Publisher()
    agent.publisher = publisher  # type: ignore[assignment]
    try:
        seqs = [agent.record(DoorSample(T0 + timedelta(seconds=i), "rear", i % 2 == 0)) for i in range(4)]
        assert agent._send_batch() and agent._send_batch()
        assert publisher.batches == [seqs[:2], seqs[2:]]
        agent._on_settled(0, True)  # the broker took the first on connection 1; its receipt is lost in a link cut
        agent._drain_settled()
        # connection 2: the publisher sends the second again, and its PUBACK is drained before the
        # sender notices the new connection
        publisher.generation = 2
        agent._on_settled(1, True)
        agent._drain_settled()
        agent._connected(2)
        assert agent._send_batch()
        # only the first goes again: the second's receipt is on its way, and a copy sent now,
        # after newer readings, could be the one a faster gateway shard stores first
        assert publisher.batches[2:] == [seqs[:2]]
        assert not agent._send_batch()
        assert agent.counters.receipt_timeouts == 1
    finally:
        agent.outbox.close()
