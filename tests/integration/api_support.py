"""What the API and page tests share: an engine with the API, readings published over MQTT,
a live-stream reader, and alert rows written as a change-log writer would."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import h3
import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.types.json import Jsonb

from api.tokens import add_token
from core.contract import GpsFix, Reading, encode_batch
from core.settings import Settings
from fleetstream import credentials
from fleetstream.engine import Engine
from store.db import connect, migrate
from store.events import LOCK_SQL, NOTIFY_SQL
from tests.integration.waiting import wait_until

__all__ = ["LiveStream", "api_engine", "insert_alert", "publish", "stop_visit", "token_for"]


@contextmanager
def api_engine(settings: Settings, **engine_args: Any) -> Iterator[Settings]:
    """The engine (gateway shards, dataflow, API; more with ``engine_args``), ready and answering."""
    settings = replace(settings, engine_api=1)
    migrate(settings.dsn())
    engine = Engine(settings, **{"with_dispatch": False, "with_delivery": False, **engine_args})
    engine.start()
    try:
        engine.wait_ready(90)

        def healthy() -> bool:
            try:
                return httpx.get(f"{settings.api_url()}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the API to answer /healthz", every_s=0.2)
        yield settings
    finally:
        engine.stop()


def token_for(settings: Settings, tenant: str, role: str = "viewer", name: str = "") -> str:
    with connect(settings.dsn(), autocommit=True) as conn:
        return add_token(conn, tenant, role, name)[0]


def publish(settings: Settings, readings: list[Reading], batch: int = 50) -> None:
    """Publish ``readings`` (any vehicles) as batch messages, QoS 1, waiting for every PUBACK."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"api-test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(*credentials.mqtt_account(settings, "bench"))
    client.connect(*settings.mqtt_endpoint())
    client.loop_start()
    try:
        by_vehicle: dict[tuple[str, str], list[Reading]] = {}
        for r in readings:
            by_vehicle.setdefault((r.tenant, r.vehicle), []).append(r)
        infos = []
        for (tenant, vehicle), group in by_vehicle.items():
            for i in range(0, len(group), batch):
                infos.append(client.publish(*encode_batch(tenant, vehicle, group[i : i + batch]), qos=1))
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / 111_320.0, lon + east_m / (111_320.0 * math.cos(math.radians(lat)))


def stop_visit(tenant: str, vehicle: str, stop: tuple[float, float], end: datetime, first_seq: int = 1) -> list[GpsFix]:
    """Fixes every 5 s ending at ``end``: 60 s driving in from 600 m north, 70 s standing at
    ``stop``, 100 s driving away south (an arrival, then a departure, at a 75 m stop)."""
    path: list[tuple[tuple[float, float], float]] = []
    path += [(_offset(*stop, 600 - 50 * i, 0), 10.0) for i in range(12)]
    path += [(_offset(*stop, (i % 2) * 2.0, 0), 0.0) for i in range(14)]
    path += [(_offset(*stop, -50 * (i + 1), 0), 10.0) for i in range(20)]
    start = end - timedelta(seconds=5 * (len(path) - 1))
    return [
        GpsFix(tenant, vehicle, first_seq + i, start + timedelta(seconds=5 * i), lat, lon, speed, 180.0, 5.0)
        for i, ((lat, lon), speed) in enumerate(path)
    ]


def insert_alert(settings: Settings, tenant: str, vehicle: str, kind: str = "temp_excursion") -> str:
    """An open alert written as the dataflow writes one: under the change log's lock, with a NOTIFY."""
    start = datetime.now(UTC) - timedelta(minutes=7)
    alert_id = str(uuid.uuid4())
    with connect(settings.dsn()) as conn, conn.transaction():
        conn.execute(LOCK_SQL)
        conn.execute(
            "INSERT INTO alerts (start_second, id, tenant, vehicle_id, type, severity, status, h3_cell, start_time,"
            " details, detected_at) VALUES (date_trunc('second', %(start)s::timestamptz), %(id)s, %(tenant)s,"
            " %(vehicle)s, %(type)s, 'critical', 'open', %(cell)s, %(start)s, %(details)s, %(detected)s)",
            {
                "start": start,
                "id": alert_id,
                "tenant": tenant,
                "vehicle": vehicle,
                "type": kind,
                "cell": h3.str_to_int(h3.latlng_to_cell(60.17, 24.94, 9)),
                "details": Jsonb({"celsius": 9.4, "range_c": [2.0, 8.0]}),
                "detected": start + timedelta(minutes=6),
            },
        )
        conn.execute(NOTIFY_SQL)
    return alert_id


@dataclass
class LiveStream:
    """Reads ``/v1/stream`` in a thread: every event as (id, event, data)."""

    url: str
    token: str
    last_event_id: int | None = None
    events: list[tuple[int | None, str, dict[str, Any]]] = field(default_factory=list)
    status: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=60.0))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        try:
            with self._client.stream("GET", f"{self.url}/v1/stream", headers=headers) as response:
                self.status = response.status_code
                frame: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if "data" in frame:
                            event_id = int(frame["id"]) if "id" in frame else None
                            self.events.append((event_id, frame.get("event", "message"), json.loads(frame["data"])))
                        frame = {}
                    elif not line.startswith(":") and ": " in line:
                        key, value = line.split(": ", 1)
                        frame[key] = value
        except (httpx.HTTPError, RuntimeError, OSError):
            pass
        finally:
            self.ended.set()

    def last_id(self) -> int | None:
        ids = [i for i, _, _ in self.events if i is not None]
        return ids[-1] if ids else None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, event, data in self.events if event == kind]

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)
