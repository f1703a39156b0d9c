"""run_simulation with device accounts: every simulated van is a real edge agent (pure: a fake broker)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import edge.agent.agent as agent_module
from core.contract import decode as decode_message
from core.contract import encode_reading, encode_receipt, parse_topic, receipt_topic
from core.settings import Settings
from models.roads import RoadNetwork
from sim.fleet import run_simulation
from sim.simulator import vehicle_ids


class FakePublisher:
    """Stands in for DevicePublisher inside the agent: connected at once, every message acknowledged
    and, when it asks for one, covered by a stored receipt at once (as the gateway would send)."""

    instances: list[FakePublisher] = []

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        self.username, self.password = username, password
        self.on_settled = kwargs.get("on_settled")
        self.messages: list[tuple[str, bytes, Hashable]] = []
        self.acked = self.resent = self.refused = self.pending = self.unrouted = 0
        self.refusals: list[Any] = []
        self.connected = False
        self.generation = 0  # connections made
        self.receipts: dict[str, Any] = {}
        FakePublisher.instances.append(self)

    def subscribe(self, topic: str, on_message: Any) -> None:
        self.receipts[topic] = on_message

    def connect(self, timeout: float | None = 10.0) -> None:
        self.connected = True
        self.generation += 1

    def publish(
        self, topic: str, payload: bytes | str, key: Hashable | None = None, timeout: float | None = None
    ) -> Hashable:
        data = payload.encode() if isinstance(payload, str) else payload
        self.messages.append((topic, data, key))
        self.acked += 1
        if self.on_settled is not None:
            self.on_settled(key, True)
        tenant, vehicle, stream = parse_topic(topic)
        handler = self.receipts.get(receipt_topic(tenant, vehicle))
        if stream == "batch" and handler is not None and json.loads(data).get("receipt"):
            seqs = [r.seq for r in decode_message(topic, data, datetime.now(UTC)).readings]
            handler(encode_receipt(vehicle, seqs))
        return key

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self.connected = False


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> RoadNetwork:
    return RoadNetwork.load("helsinki", tmp_path_factory.getbasetemp() / "roads-cache")


def _without_device_time(reading: Any) -> dict[str, Any]:
    body = encode_reading(reading)
    body.pop("device_time", None)
    return body


def test_each_simulated_van_is_an_agent_with_its_own_outbox(
    network: RoadNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakePublisher.instances = []
    monkeypatch.setattr(agent_module, "DevicePublisher", FakePublisher)
    settings = Settings(
        state_dir=tmp_path,
        tenant="simtest",
        sim_anomaly_probability=1.0,
        sim_malformed_rate=0.05,
        sim_duplicate_rate=0.1,
    )
    stale = tmp_path / "sim" / "outbox" / "veh-999.sqlite"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    vehicles = vehicle_ids(3)
    passwords = {v: f"pw-{v}" for v in vehicles}
    progress: list[dict[str, int]] = []

    summary = run_simulation(
        settings,
        vehicles=3,
        minutes=0.05,
        speedup=600.0,
        seed=5,
        network=network,
        device_passwords=passwords,
        on_progress=progress.append,
    )

    assert summary["flushed"] and summary["pending"] == 0 and summary["refused"] == 0
    assert summary["outbox_dropped"] == 0 and summary["not_recorded"] == 0 and summary["raw_failed"] == 0
    assert not stale.exists()
    assert sorted(p.name for p in stale.parent.glob("*.sqlite")) == [f"{v}.sqlite" for v in vehicles]
    assert sorted(p.username or "" for p in FakePublisher.instances) == [f"simtest.{v}" for v in vehicles]
    assert progress and progress[-1]["published"] == summary["published"]

    now = datetime.now(UTC) + timedelta(seconds=5)
    batched: Counter[str] = Counter()
    stored: dict[tuple[str, int], dict[str, Any]] = {}
    singles: list[Any] = []
    malformed = batches = 0
    for pub in FakePublisher.instances:
        own = (pub.username or "").split(".", 1)[1]
        for topic, payload, key in pub.messages:
            tenant, vehicle, stream = parse_topic(topic)
            assert (tenant, vehicle) == ("simtest", own)  # every message on the van's own connection
            if stream == "status":
                continue
            decoded = decode_message(topic, payload, now)
            if stream == "batch":
                assert isinstance(key, int) and not decoded.rejected
                batches += 1
                for reading in decoded.readings:
                    assert (vehicle, reading.seq) not in stored  # the outbox numbers every reading once
                    stored[(vehicle, reading.seq)] = _without_device_time(reading)
                    batched[reading.kind] += 1
            else:
                assert isinstance(key, str)  # raw messages never take an agent batch's key
                if decoded.rejected:
                    malformed += 1
                else:
                    singles.extend(decoded.readings)

    assert dict(batched) == {k: v for k, v in summary["readings"].items() if v}
    assert sum(batched.values()) == summary["published"] > 100
    assert summary["readings"]["gps"] and summary["readings"]["temp"] and summary["readings"]["door"]
    assert malformed == summary["malformed"] > 0
    assert len(singles) == summary["duplicates"] > 0
    for dup in singles:  # a duplicate repeats a stored reading: the outbox's seq, the same content
        assert stored[(dup.vehicle, dup.seq)] == _without_device_time(dup)
    assert summary["late"] > 0
    assert summary["messages"] == batches + malformed + len(singles)
    per_vehicle: dict[str, list[int]] = defaultdict(list)
    for vehicle, seq in stored:
        per_vehicle[vehicle].append(seq)
    assert sorted(per_vehicle) == vehicles


def test_every_vehicle_needs_a_password(network: RoadNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "DevicePublisher", FakePublisher)
    with pytest.raises(KeyError, match="no device password"):
        run_simulation(
            Settings(state_dir=tmp_path),
            vehicles=2,
            minutes=0.01,
            speedup=100.0,
            network=network,
            device_passwords={"veh-000": "x"},
        )
