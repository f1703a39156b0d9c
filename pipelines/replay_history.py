"""The store's readings of one vehicle in a fix-time range: what a vehicle resumed from a
snapshot reloads for its first late-data replay (``VehicleAnalytics.attach_history``).

A snapshot leaves the correction window's readings out (``trackers/correction.py``,
Snapshot); the positions, temperatures and door_events tables hold every reading, read
here through their ``(tenant, vehicle_id, fix_time, seq)`` keys and decoded exactly as
the flow's source decodes them (``connectors._to_stored``), so a replay sees the same rows.
One connection, opened at the first load (most resumed vehicles never need one).
"""

from __future__ import annotations

import threading
from datetime import datetime

import psycopg

from pipelines.connectors import _to_stored
from pipelines.vehicle_state import StoredReading
from store.db import connect

__all__ = ["StoreHistory"]

_COMMON = "shard, shard_seq, tenant, vehicle_id, seq, fix_time, device_time, received_at"
_RANGE = "tenant = %(tenant)s AND vehicle_id = %(vehicle)s AND fix_time BETWEEN %(start)s AND %(end)s"
_READINGS = f"""
SELECT {_COMMON}, 'gps' AS kind, lat, lon, speed_mps, heading_deg, accuracy_m, alt_m, h3_cell,
       NULL::text AS label, NULL::real AS celsius, NULL::boolean AS is_open
  FROM positions WHERE {_RANGE}
UNION ALL
SELECT {_COMMON}, 'temp', NULL, NULL, NULL, NULL, NULL, NULL, NULL, sensor, celsius, NULL
  FROM temperatures WHERE {_RANGE}
UNION ALL
SELECT {_COMMON}, 'door', NULL, NULL, NULL, NULL, NULL, NULL, NULL, door, NULL, is_open
  FROM door_events WHERE {_RANGE}
"""


class StoreHistory:
    """``StoreReadings`` over TimescaleDB (``dsn``); callable from the flow's worker thread."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def __call__(self, tenant: str, vehicle: str, start: datetime, end: datetime) -> list[StoredReading]:
        """Every stored reading of ``tenant``/``vehicle`` with a fix time in [start, end]."""
        args = {"tenant": tenant, "vehicle": vehicle, "start": start, "end": end}
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.dsn, autocommit=True, attempts=30)
            rows = self._conn.execute(_READINGS, args).fetchall()
        return [_to_stored(row[1:], row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
