"""Tracker load: many concurrent Teltonika trackers over TCP loopback, beside the MQTT path.

``tracker_load`` provisions ``trackers`` IMEIs and runs them as concurrent asyncio connections in
this process: each identifies itself, then sends ``packets`` Codec 8E packets of ``records``
records one after another, each only after the previous one's acknowledgement (as a device
does). Bounded: every tracker sends a fixed number of records, and the whole run has a deadline.
Afterwards the store must hold every record exactly once.

``run_tracker_benchmark`` (``fleetstream bench --trackers``) times that against the engine and,
in the same run with the same engine, the MQTT path with the same number of readings in
contract batch messages of the same size (QoS 1, commit before PUBACK): records/s beside
readings/s. Records carry a fix and no IO elements, so each is one ``positions`` row, as each
MQTT reading is.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.settings import Settings
from fleetstream import credentials, services
from fleetstream.bench.ingest import publish
from fleetstream.engine import Engine
from ingest.protocols import teltonika
from ingest.protocols.teltonika import CODEC_8E, AvlRecord
from store.db import connect, migrate, scalar
from store.trackers import store_trackers

__all__ = ["LoadResult", "run_tracker_benchmark", "tracker_load"]

_DEADLINE_S = 900.0


@dataclass(frozen=True)
class LoadResult:
    """What a tracker load did: records sent and acknowledged, seconds from the first connection to
    the last acknowledgement, packet round trips (s), and what the store holds for the tenant."""

    trackers: int
    records: int
    acked: int
    seconds: float
    round_trips: list[float]
    stored: int
    distinct: int

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        q = statistics.quantiles(self.round_trips, n=100) if len(self.round_trips) > 100 else [float("nan")] * 99
        return {
            "trackers": self.trackers,
            "records": self.records,
            "acked": self.acked,
            "stored": self.stored,
            "distinct": self.distinct,
            "seconds": round(self.seconds, 2),
            "records_per_s": round(self.rate),
            "ack_p50_ms": round(q[49] * 1000, 1),
            "ack_p99_ms": round(q[98] * 1000, 1),
        }


def _imeis(run: int, count: int) -> list[str]:
    return [f"{(run % 10_000) * 100_000 + i:015d}" for i in range(count)]


def _packets(index: int, packets: int, records: int, base: datetime) -> list[tuple[bytes, int]]:
    ms = int(base.timestamp() * 1000)
    out = []
    for p in range(packets):
        recs = [
            AvlRecord(
                ms + (p * records + r) * 1000,
                0,
                249_000_000 + index * 1000 + (p * records + r) * 10,
                601_600_000 + index * 100,
                12,
                90,
                9,
                30,
            )
            for r in range(records)
        ]
        out.append((teltonika.encode_packet(CODEC_8E, recs), records))
    return out


async def _tracker(host: str, port: int, imei: str, packets: list[tuple[bytes, int]], round_trips: list[float]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(teltonika.encode_imei(imei))
        if await reader.readexactly(1) != b"\x01":
            raise RuntimeError(f"IMEI {imei} refused")
        acked = 0
        for raw, count in packets:
            sent = time.perf_counter()
            writer.write(raw)
            await writer.drain()
            answer = int.from_bytes(await reader.readexactly(4), "big")
            round_trips.append(time.perf_counter() - sent)
            if answer != count:
                raise RuntimeError(f"IMEI {imei}: {answer} of {count} records acknowledged")
            acked += answer
        return acked
    finally:
        writer.close()


async def _run_trackers(
    host: str, port: int, work: list[tuple[str, list[tuple[bytes, int]]]], round_trips: list[float]
) -> tuple[int, float]:
    start = time.perf_counter()
    acks = await asyncio.wait_for(
        asyncio.gather(*(_tracker(host, port, imei, packets, round_trips) for imei, packets in work)), _DEADLINE_S
    )
    return sum(acks), time.perf_counter() - start


def tracker_load(settings: Settings, tenant: str, trackers: int, packets: int, records: int) -> LoadResult:
    """Run ``trackers`` concurrent Teltonika trackers against the running Teltonika listener of
    ``settings`` (their data stored for ``tenant``), then count what the store holds."""
    run = int(time.time())
    imeis = _imeis(run, trackers)
    with connect(settings.dsn(), autocommit=True) as conn:
        store_trackers(conn, [("teltonika", imei, tenant, f"trk-{i:05d}", {}) for i, imei in enumerate(imeis)])
    base = datetime.now(UTC) - timedelta(hours=2)
    work = [(imei, _packets(i, packets, records, base)) for i, imei in enumerate(imeis)]
    round_trips: list[float] = []
    acked, seconds = asyncio.run(_run_trackers(settings.device_listen_host, settings.teltonika_port, work, round_trips))
    with connect(settings.dsn(), autocommit=True) as conn:
        stored = int(scalar(conn, "SELECT count(*) FROM positions WHERE tenant = %s", (tenant,)))
        distinct = int(
            scalar(
                conn, "SELECT count(DISTINCT (vehicle_id, fix_time, seq)) FROM positions WHERE tenant = %s", (tenant,)
            )
        )
    return LoadResult(trackers, trackers * packets * records, acked, seconds, round_trips, stored, distinct)


def _mqtt_path(settings: Settings, tenant: str, readings: int, per_message: int) -> dict[str, Any]:
    """The same number of readings through MQTT (contract batches of ``per_message``), timed from
    the first publish to the last reading committed by the gateway shards."""
    with connect(settings.dsn(), autocommit=True) as conn:
        before = int(scalar(conn, "SELECT coalesce(sum(stored), 0) FROM gateway_shards WHERE shard < 100"))
        start = time.perf_counter()
        publish_rate = publish(settings, tenant, readings, per_message)
        deadline = time.monotonic() + _DEADLINE_S
        stored = 0
        while time.monotonic() < deadline:
            stored = int(scalar(conn, "SELECT coalesce(sum(stored), 0) FROM gateway_shards WHERE shard < 100")) - before
            if stored >= readings:
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - start
    return {
        "readings": readings,
        "stored": stored,
        "seconds": round(seconds, 2),
        "readings_per_s": round(stored / seconds),
        "publish_msgs_per_s": round(publish_rate),
    }


def run_tracker_benchmark(
    settings: Settings, trackers: int = 1000, packets: int = 10, records: int = 5, quick: bool = False
) -> int:
    """Print the tracker load's figures beside the MQTT path's; 0 when every record was stored once."""
    if quick:
        trackers, packets = min(trackers, 200), min(packets, 3)
    settings = replace(settings, teltonika_port=settings.teltonika_port or 5027, gt06_port=0, osmand_port=0)
    if settings.embedded_mqtt or settings.embedded_pg:
        services.up(settings)
    migrate(settings.dsn())
    credentials.service_account(settings, "bench")
    engine = Engine(settings, with_flow=False, with_dispatch=False, with_delivery=False)
    engine.start()
    try:
        engine.wait_ready()
        run = int(time.time())
        load = tracker_load(settings, f"tl{run}", trackers, packets, records)
        mqtt = _mqtt_path(settings, f"tm{run}", load.records, records)
    finally:
        engine.stop()
    figures = load.summary()
    ratio = load.rate / mqtt["readings_per_s"] if mqtt["readings_per_s"] else float("nan")
    print(f"\nfleetstream tracker load — {os.cpu_count()} cores, TCP loopback, acknowledged after commit")
    print(
        f"{trackers} concurrent Teltonika trackers x {packets} packets x {records} records: "
        f"{figures['records_per_s']:,} records/s ({figures['acked']:,} acknowledged, {figures['stored']:,} stored, "
        f"{figures['distinct']:,} distinct, in {figures['seconds']} s); packet round trip p50 "
        f"{figures['ack_p50_ms']} ms, p99 {figures['ack_p99_ms']} ms"
    )
    print(
        f"MQTT path, same engine, {mqtt['readings']:,} readings in batches of {records}: "
        f"{mqtt['readings_per_s']:,} readings/s (trackers ÷ MQTT {ratio:.2f})"
    )
    print("\n" + json.dumps({"trackers": figures, "mqtt": mqtt, "ratio": round(ratio, 3)}))
    once = load.acked == load.records == load.stored == load.distinct
    return 0 if once else 1
