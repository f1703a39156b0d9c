"""Commit prepared batches of one gateway shard into TimescaleDB.

Per batch, one transaction: binary COPY into session-local staging tables; each
reading's device seq claimed in ``device_seqs`` (one row per tenant, vehicle and
seq, whatever the stream); ``INSERT … SELECT … ON CONFLICT DO NOTHING`` into the
hypertables of the readings whose claim is theirs (so a redelivered or retried
reading is stored once); conflicts (a seq stored with another fix time, stream or
content) turned into dead letters; the shard's counters advanced; and a NOTIFY
that wakes the dataflow. The caller acknowledges the MQTT messages only after
``write`` returns.

``write`` raises what the database raised. :func:`is_outage` tells the two kinds
apart: the database away or busy (keep the batch and retry it), or refusing this
batch's data (the gateway then isolates the messages it refuses).
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

__all__ = ["ShardWriter", "WriteResult", "COMMIT_CHANNEL", "is_outage", "store_dead_letters"]

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
    code: str  # device_seqs.stream

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.row._fields, *_TAIL)

    @property
    def types(self) -> list[str]:
        return [_TYPES[c] for c in self.columns]


TABLES = (
    _Table("positions", PositionRow, ("lat", "lon", "speed_mps", "heading_deg", "accuracy_m", "alt_m"), "gps", "g"),
    _Table("temperatures", TemperatureRow, ("sensor", "celsius"), "temp", "t"),
    _Table("door_events", DoorRow, ("door", "is_open"), "door", "d"),
)
_STREAM_OF_CODE = {t.code: t.stream for t in TABLES}
_DEAD_LETTER_COLUMNS = ", ".join((*DeadLetterRow._fields, "shard"))
_STATUS_INSERT = (
    f"INSERT INTO device_status ({', '.join(StatusRow._fields)}) "
    "VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING"
)


def store_dead_letters(cur: psycopg.Cursor[Any], rows: list[DeadLetterRow], shard: int) -> Counter[str]:
    """Insert ``rows`` (written by ``shard``) inside the caller's transaction; a row whose
    digest is stored already (a redelivered bad message) is skipped. Returns how many were
    new, by reason code.

    The digest is claimed in ``dead_letter_digests`` (its primary key): of two shards writing
    the same redelivered message at once, the second waits for the first's commit and skips.
    """
    stored: Counter[str] = Counter()
    values = ", ".join(["%s"] * len(DeadLetterRow._fields))
    for row in rows:
        cur.execute(
            "WITH claimed AS (INSERT INTO dead_letter_digests (digest) VALUES (%s) ON CONFLICT DO NOTHING "
            f"RETURNING digest) INSERT INTO dead_letters ({_DEAD_LETTER_COLUMNS}) SELECT {values}, %s FROM claimed",
            (row.digest, *row, shard),
        )
        if cur.rowcount > 0:
            stored[row.reason] += cur.rowcount
    return stored


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database is away or busy (connection lost, shutting down,
    disk full, deadlock): keep the batch and retry it. False when the database refused the
    batch's data (a data error, a limit of the program, anything else): retrying cannot help."""
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):  # an OperationalError, but about the data
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


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
    conflicted: frozenset[tuple[str, str, int]] = frozenset()  # (tenant, vehicle, seq) not stored: conflicts


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
        conflicted: set[tuple[str, str, int]] = set()
        try:
            with conn.cursor() as cur:
                # shard_seq in receive order across the tables (see Prepared), so the dataflow's
                # replay of this shard, in shard_seq order, sees each message's readings together
                orders = _receive_orders(batch)
                tables: tuple[Sequence[ReadingRow], ...] = (batch.positions, batch.temperatures, batch.doors)
                present = [(t, rows, o) for t, rows, o in zip(TABLES, tables, orders, strict=True) if rows]
                for table, rows, order in present:
                    columns = ", ".join(table.columns)
                    with cur.copy(f"COPY stage_{table.name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(table.types)
                        for row, place in zip(rows, order, strict=True):
                            copy.write_row((*row, self.shard, self.last_seq + 1 + place))
                # claim each reading's seq for its device; when every claim is new (the usual
                # case) no reading can conflict on its seq and the hypertables need no join
                fresh = True
                if present:
                    cur.execute(
                        "INSERT INTO device_seqs (tenant, vehicle_id, seq, fix_time, stream) "
                        + " UNION ALL ".join(
                            f"SELECT tenant, vehicle_id, seq, fix_time, '{t.code}' FROM stage_{t.name}"
                            for t, _, _ in present
                        )
                        + " ON CONFLICT DO NOTHING"
                    )
                    fresh = cur.rowcount == batch.reading_count
                for table, rows, _ in present:
                    staged = len(rows)
                    columns = ", ".join(table.columns)
                    if fresh:
                        source = f"SELECT {columns} FROM stage_{table.name}"
                    else:  # only readings whose seq is claimed with their own fix time and stream
                        source = (
                            f"SELECT {', '.join(f's.{c}' for c in table.columns)} FROM stage_{table.name} s "
                            "JOIN device_seqs d USING (tenant, vehicle_id, seq) "
                            f"WHERE d.fix_time = s.fix_time AND d.stream = '{table.code}'"
                        )
                    cur.execute(f"INSERT INTO {table.name} ({columns}) {source} ON CONFLICT DO NOTHING")
                    inserted = cur.rowcount
                    stored += inserted
                    by_stream[table.stream] = inserted
                    if inserted < staged:
                        conflicting = self._conflicts(cur, table)
                        dead.extend(row for row, _ in conflicting)
                        conflicted.update(key for _, key in conflicting)
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
        return WriteResult(
            stored, duplicates, conflicts, dead_stored, seq, by_stream, dict(dead_by_reason), frozenset(conflicted)
        )

    def _rollback(self) -> None:
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.rollback()
        except psycopg.Error:
            self.close()

    def _conflicts(self, cur: psycopg.Cursor[Any], table: _Table) -> list[tuple[DeadLetterRow, tuple[str, str, int]]]:
        """Staged rows not inserted because their device seq is stored with another fix time or
        stream, or their stored twin has other content: dead letters, with their keys."""
        staged_content = ", ".join(f"s.{c}" for c in table.content)
        stored_content = ", ".join(f"p.{c}" for c in table.content)
        cur.execute(
            f"SELECT s.tenant, s.vehicle_id, s.seq, s.fix_time, s.received_at, json_build_array({staged_content})::text, "
            f"d.stream::text, d.fix_time FROM stage_{table.name} s JOIN device_seqs d USING (tenant, vehicle_id, seq) "
            f"WHERE (d.fix_time, d.stream) <> (s.fix_time, '{table.code}') "
            f"UNION ALL SELECT s.tenant, s.vehicle_id, s.seq, s.fix_time, s.received_at, "
            f"json_build_array({staged_content})::text, NULL, NULL "
            f"FROM stage_{table.name} s JOIN {table.name} p USING (tenant, vehicle_id, fix_time, seq) "
            f"WHERE (p.shard, p.shard_seq) <> (s.shard, s.shard_seq) "
            f"AND ({stored_content}) IS DISTINCT FROM ({staged_content})"
        )
        out = []
        for tenant, vehicle, seq, fix_time, received_at, values, other_code, other_time in cur.fetchall():
            topic = f"fleet/{tenant}/{vehicle}/{table.stream}"
            payload = json.dumps({"seq": seq, "fix_time": fix_time.isoformat(), "values": json.loads(values)}).encode()
            if other_code is None:
                detail = f"{table.stream} seq {seq} at {fix_time.isoformat()} already stored with different content"
            else:
                detail = (
                    f"{table.stream} seq {seq} at {fix_time.isoformat()}: the device's seq {seq} is stored as "
                    f"{_STREAM_OF_CODE.get(other_code, other_code)} at {other_time.isoformat()}"
                )
            row = dead_letter_row(topic, payload, received_at, "conflict", detail, None, self.raw_cap)
            out.append((row, (tenant, vehicle, seq)))
        return out

    def _new_vehicles(self, cur: psycopg.Cursor[Any], batch: Prepared) -> set[tuple[str, str]]:
        new = {(r.tenant, r.vehicle_id) for rows in (batch.positions, batch.temperatures, batch.doors) for r in rows}
        new -= self._known_vehicles
        if new:
            cur.executemany(
                "INSERT INTO vehicles (tenant, vehicle_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", sorted(new)
            )
        return new
