"""Commit prepared batches of one gateway shard into TimescaleDB.

Per batch, one transaction: binary COPY into session-local staging tables,
``INSERT … SELECT … ON CONFLICT DO NOTHING`` into the hypertables (so a
redelivered or retried reading is stored once), conflicts (same key, other
content) turned into dead letters, the shard's counters advanced, and a NOTIFY
that wakes the dataflow. The caller acknowledges the MQTT messages only after
``write`` returns.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ingest.batching import Prepared, dead_letter_row
from ingest.rows import DeadLetterRow, DoorRow, PositionRow, ReadingRow, StatusRow, TemperatureRow
from store.db import connect

__all__ = ["ShardWriter", "WriteResult", "COMMIT_CHANNEL", "store_dead_letters"]

log = logging.getLogger("fleetstream.writer")
COMMIT_CHANNEL = "fleetstream_commit"
_SHARD_LOCK = 0x67770000  # + shard: one writer per shard, so shard_seq follows commit order


# PostgreSQL types of the reading rows' columns (binary COPY needs them)
_TYPES = {
    "fix_time": "timestamptz",
    "tenant": "text",
    "vehicle_id": "text",
    "seq": "int8",
    "lat": "float8",
    "lon": "float8",
    "speed_mps": "float4",
    "heading_deg": "float4",
    "accuracy_m": "float4",
    "alt_m": "float4",
    "h3_cell": "int8",
    "sensor": "text",
    "celsius": "float4",
    "door": "text",
    "is_open": "bool",
    "device_time": "timestamptz",
    "received_at": "timestamptz",
    "shard": "int2",
    "shard_seq": "int8",
}
_TAIL = ("shard", "shard_seq")  # the writer's own columns, after each row's


@dataclass(frozen=True)
class _Table:
    name: str
    row: type[ReadingRow]  # its fields are the columns, as prepared
    content: tuple[str, ...]  # columns that must match for a repeat to be a duplicate
    stream: str  # topic stream, for conflict dead letters

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.row._fields, *_TAIL)

    @property
    def types(self) -> list[str]:
        return [_TYPES[c] for c in self.columns]


TABLES = (
    _Table("positions", PositionRow, ("lat", "lon", "speed_mps", "heading_deg", "accuracy_m", "alt_m"), "gps"),
    _Table("temperatures", TemperatureRow, ("sensor", "celsius"), "temp"),
    _Table("door_events", DoorRow, ("door", "is_open"), "door"),
)
_DEAD_LETTER_COLUMNS = ", ".join((*DeadLetterRow._fields, "shard"))
_STATUS_INSERT = (
    f"INSERT INTO device_status ({', '.join(StatusRow._fields)}) "
    "VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING"
)


def store_dead_letters(cur: psycopg.Cursor[Any], rows: list[DeadLetterRow], shard: int) -> Counter[str]:
    """Insert ``rows`` (written by ``shard``) inside the caller's transaction; a row whose
    digest is stored already (a redelivered bad message) is skipped. Returns how many were
    new, by reason code."""
    stored: Counter[str] = Counter()
    for row in rows:
        cur.execute(
            f"INSERT INTO dead_letters ({_DEAD_LETTER_COLUMNS}) SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s "
            "WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE digest = %s)",
            (*row, shard, row.digest),
        )
        if cur.rowcount > 0:
            stored[row.reason] += cur.rowcount
    return stored


@dataclass(frozen=True)
class WriteResult:
    """What one committed batch did."""

    stored: int
    duplicates: int
    conflicts: int
    dead_letters: int
    last_seq: int
    stored_by_stream: dict[str, int] = field(default_factory=dict)  # gps, temp, door
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)


def _receive_orders(batch: Prepared) -> tuple[list[int], list[int], list[int]]:
    """Each table's rows' places among the batch's readings; table by table when not recorded."""
    given = (batch.position_order, batch.temperature_order, batch.door_order)
    if (len(batch.position_order), len(batch.temperature_order), len(batch.door_order)) == (
        len(batch.positions),
        len(batch.temperatures),
        len(batch.doors),
    ):
        return given
    n_pos, n_temp = len(batch.positions), len(batch.temperatures)
    return (
        list(range(n_pos)),
        list(range(n_pos, n_pos + n_temp)),
        list(range(n_pos + n_temp, n_pos + n_temp + len(batch.doors))),
    )


class ShardWriter:
    """The only writer of one shard (held by a session advisory lock)."""

    def __init__(self, dsn: str, shard: int, raw_cap: int = 4096) -> None:
        self.dsn = dsn
        self.shard = shard
        self.raw_cap = raw_cap
        self.conn: psycopg.Connection | None = None
        self.last_seq = 0
        self._known_vehicles: set[tuple[str, str]] = set()

    def open(self) -> None:
        """Connect, take the shard lock (waits for a previous writer to die), load the sequence."""
        conn = connect(self.dsn, autocommit=True, attempts=30)
        conn.execute("SELECT pg_advisory_lock(%s)", (_SHARD_LOCK + self.shard,))
        conn.execute("INSERT INTO gateway_shards (shard) VALUES (%s) ON CONFLICT DO NOTHING", (self.shard,))
        row = conn.execute("SELECT last_seq FROM gateway_shards WHERE shard = %s", (self.shard,)).fetchone()
        assert row is not None
        self.last_seq = int(row[0])
        for t in TABLES:
            conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{t.name} (LIKE {t.name}) ON COMMIT DELETE ROWS")
        conn.autocommit = False
        self.conn = conn
        log.info("shard %d: writer ready at shard_seq %d", self.shard, self.last_seq)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def write(self, batch: Prepared, messages: int) -> WriteResult:
        """Commit ``batch`` (from ``messages`` MQTT messages) in one transaction."""
        if self.conn is None or self.conn.closed:
            self.open()
        conn = self.conn
        assert conn is not None
        stored = 0
        by_stream: dict[str, int] = {}
        duplicates = batch.duplicates
        dead = list(batch.dead_letters)
        try:
            with conn.cursor() as cur:
                # shard_seq in receive order across the tables (see Prepared), so the dataflow's
                # replay of this shard, in shard_seq order, sees each message's readings together
                orders = _receive_orders(batch)
                tables: tuple[Sequence[ReadingRow], ...] = (batch.positions, batch.temperatures, batch.doors)
                for table, rows, order in zip(TABLES, tables, orders, strict=True):
                    if not rows:
                        continue
                    staged = len(rows)
                    columns = ", ".join(table.columns)
                    with cur.copy(f"COPY stage_{table.name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(table.types)
                        for row, place in zip(rows, order, strict=True):
                            copy.write_row((*row, self.shard, self.last_seq + 1 + place))
                    cur.execute(
                        f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM stage_{table.name} "
                        "ON CONFLICT DO NOTHING"
                    )
                    inserted = cur.rowcount
                    stored += inserted
                    by_stream[table.stream] = inserted
                    if inserted < staged:
                        conflicting = self._conflicts(cur, table)
                        dead.extend(conflicting)
                        duplicates += staged - inserted - len(conflicting)
                seq = self.last_seq + batch.reading_count
                new_vehicles = self._new_vehicles(cur, batch)
                if batch.statuses:
                    cur.executemany(_STATUS_INSERT, batch.statuses)
                dead_by_reason = store_dead_letters(cur, dead, self.shard)
                dead_stored = sum(dead_by_reason.values())
                conflicts = sum(1 for d in dead if d.reason == "conflict")
                cur.execute(
                    "UPDATE gateway_shards SET last_seq = %s, stored = stored + %s, duplicates = duplicates + %s, "
                    "conflicts = conflicts + %s, dead_letters = dead_letters + %s, messages = messages + %s, "
                    "updated_at = now() WHERE shard = %s",
                    (seq, stored, duplicates, conflicts, dead_stored, messages, self.shard),
                )
                if stored:
                    cur.execute("SELECT pg_notify(%s, %s)", (COMMIT_CHANNEL, f"{self.shard}:{seq}"))
            conn.commit()
        except BaseException:
            self._rollback()
            raise
        self.last_seq = seq
        self._known_vehicles |= new_vehicles
        return WriteResult(stored, duplicates, conflicts, dead_stored, seq, by_stream, dict(dead_by_reason))

    def _rollback(self) -> None:
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.rollback()
        except psycopg.Error:
            self.close()

    def _conflicts(self, cur: psycopg.Cursor[Any], table: _Table) -> list[DeadLetterRow]:
        """Staged rows not inserted whose stored twin has other content: dead letters."""
        staged_content = ", ".join(f"s.{c}" for c in table.content)
        stored_content = ", ".join(f"p.{c}" for c in table.content)
        cur.execute(
            f"SELECT s.tenant, s.vehicle_id, s.seq, s.fix_time, s.received_at, json_build_array({staged_content})::text "
            f"FROM stage_{table.name} s JOIN {table.name} p USING (tenant, vehicle_id, fix_time, seq) "
            f"WHERE (p.shard, p.shard_seq) <> (s.shard, s.shard_seq) "
            f"AND ({stored_content}) IS DISTINCT FROM ({staged_content})"
        )
        rows = []
        for tenant, vehicle, seq, fix_time, received_at, values in cur.fetchall():
            topic = f"fleet/{tenant}/{vehicle}/{table.stream}"
            payload = json.dumps({"seq": seq, "fix_time": fix_time.isoformat(), "values": json.loads(values)}).encode()
            detail = f"{table.stream} seq {seq} at {fix_time.isoformat()} already stored with different content"
            rows.append(dead_letter_row(topic, payload, received_at, "conflict", detail, None, self.raw_cap))
        return rows

    def _new_vehicles(self, cur: psycopg.Cursor[Any], batch: Prepared) -> set[tuple[str, str]]:
        new = {(r.tenant, r.vehicle_id) for rows in (batch.positions, batch.temperatures, batch.doors) for r in rows}
        new -= self._known_vehicles
        if new:
            cur.executemany(
                "INSERT INTO vehicles (tenant, vehicle_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", sorted(new)
            )
        return new
