"""The fault matrix: each fault test records one row of counts, and the session prints the table.

A row says what one fault did to the readings sent through it: how many were sent, stored,
dead-lettered, lost (sent, and neither stored, dead-lettered, still waiting in a device's
outbox nor dropped by its counted drop policy) and duplicated (stored, or counted by the
dataflow, more than once), and how long ingestion took to recover: from the end of the fault
until everything sent before it was stored (for the row that loses readings, until the first
reading sent after the fault was stored). Rows are written to ``<test state dir>/fault-matrix/<name>.json``; at the end
of the session ``fault-matrix.md`` beside them holds the table (docs/operations.md quotes it).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.settings import Settings

__all__ = [
    "FaultRow",
    "MATRIX_ORDER",
    "ThirdPartyDevice",
    "count_rows",
    "matrix_dir",
    "record",
    "render_matrix",
    "stored_seqs",
]

TABLES = ("positions", "temperatures", "door_events")
# the order of the rows in the table (each test names its row)
MATRIX_ORDER = (
    "gateway shard kill -9",
    "dataflow kill -9",
    "broker kill -9, edge agent with receipts",
    "broker kill -9, third-party device",
    "broker graceful restart",
    "broker restart gap (Mosquitto 2.0), edge agent",
    "broker restart gap (Mosquitto 2.0), third-party device",
    "PostgreSQL immediate shutdown",
    "network link cut",
    "disk-full outbox",
    "poison messages",
)


@dataclass(frozen=True)
class FaultRow:
    """One fault and what it did; ``recover_s`` None when it did not stop ingestion."""

    fault: str
    sent: int
    stored: int
    dead_letters: int
    lost: int
    duplicated: int
    recover_s: float | None
    note: str = ""


def matrix_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "fault-matrix"


def record(state_dir: Path, row: FaultRow) -> None:
    """Write ``row`` for this session's table (and print it with the test's output)."""
    folder = matrix_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", row.fault.lower()).strip("-")
    body = {**asdict(row), "recorded_at": time.time()}
    (folder / f"{slug}.json").write_text(json.dumps(body, indent=1) + "\n")
    print(json.dumps({"fault_matrix": body}))


def render_matrix(rows: Iterable[dict[str, Any]]) -> str:
    """The Markdown table of ``rows`` in MATRIX_ORDER (unknown faults last)."""
    order = {name: i for i, name in enumerate(MATRIX_ORDER)}
    lines = [
        "| fault | readings sent | stored | dead letters | lost | duplicated | time to recover | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: order.get(r["fault"], len(order))):
        recover = "—" if r["recover_s"] is None else f"{r['recover_s']:.1f} s"
        lines.append(
            f"| {r['fault']} | {r['sent']:,} | {r['stored']:,} | {r['dead_letters']:,} | {r['lost']:,} "
            f"| {r['duplicated']:,} | {recover} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def stored_seqs(db: Any, tenant: str, vehicle: str | None = None) -> list[tuple[str, int]]:
    """(vehicle, seq) of every stored reading of ``tenant`` (or of one vehicle), repeats included."""
    where = "tenant = %(t)s" + (" AND vehicle_id = %(v)s" if vehicle else "")
    union = " UNION ALL ".join(f"SELECT vehicle_id, seq FROM {t} WHERE {where}" for t in TABLES)
    return [(r[0], int(r[1])) for r in db.execute(union, {"t": tenant, "v": vehicle}).fetchall()]


def count_rows(db: Any, tenant: str) -> tuple[int, int]:
    """(rows, distinct (vehicle, seq)) stored for ``tenant``: their difference is the duplicates."""
    seqs = stored_seqs(db, tenant)
    return len(seqs), len(set(seqs))


class ThirdPartyDevice:
    """A plain MQTT v5 device that deletes a message on any PUBACK below 0x80 (0x10 included) and
    resends only what had no PUBACK when its connection drops: what the broker guarantees."""

    def __init__(self, settings: Settings, tenant: str, vehicle: str, password: str) -> None:
        self.tenant, self.vehicle = tenant, vehicle
        self.acked: set[int] = set()
        self.unrouted = 0
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._early: dict[int, Any] = {}  # mid -> reason code of a PUBACK that came first
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{tenant}.{vehicle}", protocol=mqtt.MQTTv5)
        client.username_pw_set(f"{tenant}.{vehicle}", password)
        client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        host, port = settings.mqtt_endpoint()
        client.connect(host, port, keepalive=10, clean_start=False, properties=props)
        client.loop_start()
        self.client = client

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:  # it beat publish() to its bookkeeping
                self._early[mid] = reason
                return
            self._settle(seq, reason)

    def _settle(self, seq: int, reason: Any) -> None:
        if reason.is_failure:
            return
        self.acked.add(seq)
        if reason.value == 0x10:
            self.unrouted += 1

    def publish(self, seq: int, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)  # paho resends it on reconnect until PUBACKed
        with self._lock:  # (never held while calling paho: its thread calls us holding its own lock)
            reason = self._early.pop(info.mid, None)
            if reason is None:
                self._inflight[info.mid] = seq
            else:
                self._settle(seq, reason)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
