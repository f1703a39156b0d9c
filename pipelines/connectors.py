"""Bytewax connectors to TimescaleDB: a replayable source and idempotent sinks.

The source has one partition per gateway shard. It reads committed readings in
``shard_seq`` order; its snapshot is the last ``shard_seq`` handed downstream,
so after a crash Bytewax resumes each partition right after the last
snapshotted row: with the operators' state restored from the same snapshot,
derived results are exactly-once in effect. Sinks write with keys that make a
repeated write harmless, and never raise on a database outage (an exception in
a sink would abort the whole dataflow): they retry until it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from ingest.contract import DoorEvent, GpsFix, TemperatureReading
from pipelines.vehicle_state import StoredReading, VehicleSummary
from store.db import connect

__all__ = ["CommittedReadings", "VehicleStateSink", "read_after"]

log = logging.getLogger("fleetstream.flow")

_COMMON = "shard_seq, tenant, vehicle_id, seq, fix_time, device_time, received_at"
_READ_AFTER = f"""
(SELECT {_COMMON}, 'gps' AS kind, lat, lon, speed_mps, heading_deg, accuracy_m, alt_m, h3_cell,
        NULL::text AS label, NULL::real AS celsius, NULL::boolean AS is_open
   FROM positions WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT %(limit)s)
UNION ALL
(SELECT {_COMMON}, 'temp', NULL, NULL, NULL, NULL, NULL, NULL, NULL, sensor, celsius, NULL
   FROM temperatures WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT %(limit)s)
UNION ALL
(SELECT {_COMMON}, 'door', NULL, NULL, NULL, NULL, NULL, NULL, NULL, door, NULL, is_open
   FROM door_events WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT %(limit)s)
ORDER BY shard_seq LIMIT %(limit)s
"""


def _to_stored(row: tuple[Any, ...], shard: int) -> StoredReading:
    (shard_seq, tenant, vehicle, seq, fix_time, device_time, received_at, kind,
     lat, lon, speed, heading, accuracy, alt, cell, label, celsius, is_open) = row
    reading: GpsFix | TemperatureReading | DoorEvent
    if kind == "gps":
        reading = GpsFix(tenant, vehicle, seq, fix_time, lat, lon, speed, heading, accuracy, alt, device_time)
    elif kind == "temp":
        reading = TemperatureReading(tenant, vehicle, seq, fix_time, label, celsius, device_time)
    else:
        reading = DoorEvent(tenant, vehicle, seq, fix_time, label, is_open, device_time)
    return StoredReading(reading, cell, received_at, shard, shard_seq)


def read_after(conn: psycopg.Connection, shard: int, after: int, limit: int) -> list[StoredReading]:
    """Committed readings of ``shard`` with ``shard_seq > after``, in commit order."""
    rows = conn.execute(_READ_AFTER, {"shard": shard, "after": after, "limit": limit}).fetchall()  # type: ignore[arg-type]
    return [_to_stored(row, shard) for row in rows]


class _ShardPartition(StatefulSourcePartition[StoredReading, int]):
    def __init__(self, dsn: str, shard: int, after: int, limit: int, poll_s: float) -> None:
        self.dsn, self.shard, self.after, self.limit, self.poll_s = dsn, shard, after, limit, poll_s
        self.conn: psycopg.Connection | None = None
        self._awake: datetime | None = None

    def next_batch(self) -> list[StoredReading]:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn, autocommit=True)
            batch = read_after(self.conn, self.shard, self.after, self.limit)
        except psycopg.OperationalError as exc:
            log.warning("source shard %d: database unavailable (%s)", self.shard, str(exc).strip()[:120])
            self.conn = None
            self._awake = datetime.now(UTC) + timedelta(seconds=1)
            return []
        if batch:
            self.after = batch[-1].shard_seq
        full = len(batch) >= self.limit
        self._awake = None if full else datetime.now(UTC) + timedelta(seconds=self.poll_s)
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self.after

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class CommittedReadings(FixedPartitionedSource[StoredReading, int]):
    """Readings the gateway committed, one partition per shard, replayable from a shard_seq."""

    def __init__(self, dsn: str, shards: int, limit: int = 5000, poll_s: float = 0.2) -> None:
        self.dsn, self.shards, self.limit, self.poll_s = dsn, shards, limit, poll_s

    def list_parts(self) -> list[str]:
        return [f"shard-{i}" for i in range(self.shards)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ShardPartition:
        shard = int(for_part.split("-", 1)[1])
        return _ShardPartition(self.dsn, shard, resume_state or 0, self.limit, self.poll_s)


def _retrying(what: str, action: Callable[[], None]) -> None:
    delay = 0.5
    while True:
        try:
            action()
            return
        except psycopg.OperationalError as exc:
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, str(exc).strip()[:120], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class _VehicleStatePartition(StatelessSinkPartition[VehicleSummary]):
    _UPSERT = """
        INSERT INTO vehicle_state (tenant, vehicle_id, last_fix_time, lat, lon, speed_mps, h3_cell, gps_count,
            temp_count, door_count, last_celsius, open_doors, last_received_at, processed_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())
        ON CONFLICT (tenant, vehicle_id) DO UPDATE SET
            last_fix_time = EXCLUDED.last_fix_time, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
            speed_mps = EXCLUDED.speed_mps, h3_cell = EXCLUDED.h3_cell, gps_count = EXCLUDED.gps_count,
            temp_count = EXCLUDED.temp_count, door_count = EXCLUDED.door_count,
            last_celsius = EXCLUDED.last_celsius, open_doors = EXCLUDED.open_doors,
            last_received_at = EXCLUDED.last_received_at, processed_at = EXCLUDED.processed_at
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection | None = None

    def write_batch(self, items: list[VehicleSummary]) -> None:
        latest = {(s.tenant, s.vehicle): s for s in items}  # one row per key: last state wins
        rows = [(s.tenant, s.vehicle, s.last_fix_time, s.lat, s.lon, s.speed_mps, s.h3_cell, s.gps_count,
                 s.temp_count, s.door_count, s.last_celsius, list(s.open_doors), s.last_received_at)
                for s in latest.values()]

        def write() -> None:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn)
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.executemany(self._UPSERT, rows)
            except psycopg.OperationalError:
                self.conn.close()
                raise

        _retrying("vehicle_state sink", write)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class VehicleStateSink(DynamicSink[VehicleSummary]):
    """Upserts each vehicle's latest summary into ``vehicle_state``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _VehicleStatePartition:
        return _VehicleStatePartition(self.dsn)
