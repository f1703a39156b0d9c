"""The store-and-forward outbox: every reading is on disk before anything else happens.

One SQLite file in WAL mode with ``synchronous=FULL``: a reading that :meth:`Outbox.add`
returned for survives a power cut. Each reading gets the device's ``seq`` in the
same transaction (``INTEGER PRIMARY KEY AUTOINCREMENT``: persisted, strictly
increasing, never reused, even after every row was acknowledged and deleted). A
new outbox starts its numbering at ``unix_seconds * 1000`` so a van whose storage
was replaced does not reuse the numbers of its old outbox (given a sane clock).

Readings leave the outbox only through :meth:`Outbox.ack` (after the broker's
PUBACK) or through the drop policy: when the stored bytes exceed ``max_bytes``,
the oldest readings of the kinds in ``drop_order`` go first (default: GPS fixes,
then temperatures); kinds not listed (default: door events) are never dropped,
even if that means exceeding the cap (``cap_exceeded`` counts those times).
Readings leased to the sender (in flight) are never dropped. What was dropped is
counted per kind, persistently.

``max_bytes`` bounds the readings' own size (their batch-message JSON plus a fixed
per-row overhead of ``ROW_OVERHEAD_BYTES``); the file is larger by SQLite's page
slack and at most ``journal_size_limit`` of write-ahead log.

Thread-safe: one connection, one lock. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.contract import READING_TYPES, format_time

__all__ = ["Outbox", "StoredReading", "OutboxStats", "OutboxError", "ROW_OVERHEAD_BYTES", "DEFAULT_DROP_ORDER"]

log = logging.getLogger("fleetstream.edge.outbox")

ROW_OVERHEAD_BYTES = 64  # per stored reading: the other columns, the row header and the kind index
DEFAULT_DROP_ORDER = ("gps", "temp")
_WAL_LIMIT_BYTES = 4 * 1024 * 1024
_DROP_SLACK = 0.01  # free 1 % of the cap more than needed, so a full outbox drops in chunks
_MAX_SEQ_DIGITS = 19  # seq < 2**63

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- the device's seq: never reused
    kind     TEXT    NOT NULL,                   -- gps | temp | door
    fix_time TEXT    NOT NULL,                   -- RFC 3339 UTC, exactly as it is sent
    taken_at REAL    NOT NULL,                   -- the same instant, Unix seconds
    body     TEXT    NOT NULL,                   -- JSON object: the reading's own fields
    nbytes   INTEGER NOT NULL                    -- its size in a batch message (upper bound)
);
CREATE INDEX IF NOT EXISTS readings_kind ON readings (kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(RuntimeError):
    """The outbox could not store or read readings."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading waiting in the outbox. ``fix_time`` is the RFC 3339 string sent."""

    seq: int
    kind: str
    fix_time: str
    fields: dict[str, Any]
    nbytes: int


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot of the outbox. Bytes as accounted against ``max_bytes``; ages in seconds."""

    depth: int
    bytes: int
    max_bytes: int
    oldest_age_s: float | None
    next_seq: int
    dropped: dict[str, int] = field(default_factory=dict)
    cap_exceeded: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 3),
            "next_seq": self.next_seq,
            "dropped": dict(self.dropped),
            "cap_exceeded": self.cap_exceeded,
        }


def _entry_bytes(kind: str, fix_time: str, body: str) -> int:
    """Upper bound of the reading's JSON in a batch (``{"type":..,"seq":..,"fix_time":..,<body>}``)
    plus the separating comma."""
    return len('{"type":"","seq":,"fix_time":"",') + len(kind) + _MAX_SEQ_DIGITS + len(fix_time) + len(body) + 1


class Outbox:
    """A durable FIFO of readings with a byte cap and an explicit drop policy.

    ``path``: the SQLite file (its folder is created). ``max_bytes``: the cap (bytes).
    ``drop_order``: kinds whose oldest readings are dropped, in this order, over the cap.
    ``first_seq``: the first seq of a new outbox, >= 1 (default: ``unix_seconds * 1000``).
    ``clock``: Unix time in seconds (for ages). A corrupt file is moved aside to
    ``<path>.corrupt-<unix>`` and a new outbox started (logged), unless
    ``quarantine_corrupt`` is false.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = 64_000_000,
        drop_order: Iterable[str] = DEFAULT_DROP_ORDER,
        *,
        first_seq: int | None = None,
        clock: Callable[[], float] = time.time,
        quarantine_corrupt: bool = True,
    ) -> None:
        self.path = Path(path)
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        order = tuple(drop_order)
        for kind in order:
            if kind not in READING_TYPES:
                raise ValueError(f"drop_order: unknown reading kind {kind!r} (use {', '.join(READING_TYPES)})")
        if len(set(order)) != len(order):
            raise ValueError(f"drop_order lists a kind twice: {order}")
        self.max_bytes = max_bytes
        self.drop_order = order
        self._clock = clock
        self._lock = threading.Lock()
        self._leased: set[int] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open(first_seq)
        except sqlite3.DatabaseError as exc:
            if not quarantine_corrupt or isinstance(exc, sqlite3.OperationalError):
                raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s): moved aside to %s, starting a new outbox", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
            self._conn = self._open(first_seq)

    # ------------------------------------------------------------ set-up

    def _open(self, first_seq: int | None) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            has_seq = conn.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'readings'").fetchone()
            if not has_seq:
                start = int(self._clock()) * 1000 if first_seq is None else int(first_seq)
                if start < 1:  # SQLite's AUTOINCREMENT never hands out rowid 0
                    raise ValueError(f"first_seq must be >= 1, got {start}")
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?)", (start - 1,))
            conn.execute("COMMIT")
            depth, stored = conn.execute("SELECT count(*), coalesce(sum(nbytes), 0) FROM readings").fetchone()
        except BaseException:
            conn.close()
            raise
        self._depth = int(depth)
        self._bytes = int(stored) + ROW_OVERHEAD_BYTES * self._depth
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def add(self, kind: str, fix_time: datetime, fields: dict[str, Any]) -> int:
        """Store one reading durably and return its seq.

        ``kind``: ``gps``, ``temp`` or ``door``; ``fix_time``: timezone-aware;
        ``fields``: the reading's own contract fields (e.g. ``lat``, ``lon``), JSON
        values, no NaN. Applies the drop policy when the cap is exceeded (the new
        reading itself may be dropped when it is of a droppable kind and nothing
        older of a droppable kind is left).
        """
        if kind not in READING_TYPES:
            raise ValueError(f"unknown reading kind {kind!r}")
        stamp = format_time(fix_time)
        body = json.dumps(fields, separators=(",", ":"), allow_nan=False)
        nbytes = _entry_bytes(kind, stamp, body)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                seq = conn.execute(
                    "INSERT INTO readings (kind, fix_time, taken_at, body, nbytes) VALUES (?, ?, ?, ?, ?)",
                    (kind, stamp, fix_time.timestamp(), body, nbytes),
                ).lastrowid
                depth, stored = self._depth + 1, self._bytes + nbytes + ROW_OVERHEAD_BYTES
                if stored > self.max_bytes:
                    depth, stored = self._enforce_cap(depth, stored)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._depth, self._bytes = depth, stored
        assert seq is not None
        return int(seq)

    def _enforce_cap(self, depth: int, stored: int) -> tuple[int, int]:
        """Drop oldest droppable readings until under the cap; inside the caller's transaction."""
        conn = self._conn
        target = self.max_bytes - int(self.max_bytes * _DROP_SLACK)
        leased = json.dumps(sorted(self._leased))
        for kind in self.drop_order:
            while stored > target:
                need = stored - target
                victims: list[int] = []
                freed = 0
                for seq, nbytes in conn.execute(
                    "SELECT seq, nbytes FROM readings WHERE kind = ? AND seq NOT IN (SELECT value FROM json_each(?)) "
                    "ORDER BY seq LIMIT 256",
                    (kind, leased),
                ):
                    victims.append(seq)
                    freed += nbytes + ROW_OVERHEAD_BYTES
                    if freed >= need:
                        break
                if not victims:
                    break
                conn.execute(
                    "DELETE FROM readings WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(victims),)
                )
                self._bump(f"dropped_{kind}", len(victims))
                depth -= len(victims)
                stored -= freed
        if stored > self.max_bytes:
            self._bump("cap_exceeded", 1)
        return depth, stored

    def _bump(self, name: str, by: int) -> None:
        self._conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    # ------------------------------------------------------------ reading

    def oldest(self, n: int, max_bytes: int | None = None, *, skip_leased: bool = False) -> list[StoredReading]:
        """Up to ``n`` readings, oldest first, whose sizes add up to at most ``max_bytes``
        (at least one when any is stored). ``skip_leased``: leave out readings in flight."""
        with self._lock:
            return self._oldest(n, max_bytes, skip_leased)

    def _oldest(self, n: int, max_bytes: int | None, skip_leased: bool) -> list[StoredReading]:
        if skip_leased and self._leased:
            rows = self._conn.execute(
                "SELECT seq, kind, fix_time, body, nbytes FROM readings "
                "WHERE seq NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
                (json.dumps(sorted(self._leased)), n),
            )
        else:
            rows = self._conn.execute(
                "SELECT seq, kind, fix_time, body, nbytes FROM readings ORDER BY seq LIMIT ?", (n,)
            )
        out: list[StoredReading] = []
        total = 0
        for seq, kind, stamp, body, nbytes in rows:
            if out and max_bytes is not None and total + nbytes > max_bytes:
                break
            total += nbytes
            out.append(StoredReading(seq, kind, stamp, json.loads(body), nbytes))
        return out

    def lease(self, n: int, max_bytes: int | None = None) -> list[StoredReading]:
        """Like :meth:`oldest` over readings not in flight, and marks them in flight until
        :meth:`ack` or :meth:`release`. Leases live in memory: a restart sends them again."""
        with self._lock:
            rows = self._oldest(n, max_bytes, skip_leased=True)
            self._leased.update(r.seq for r in rows)
            return rows

    def release(self, seqs: Iterable[int]) -> None:
        """Readings no longer in flight (not acknowledged): they will be leased again."""
        with self._lock:
            self._leased.difference_update(seqs)

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete readings the broker acknowledged; returns how many were still stored."""
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                gone = conn.execute(
                    "DELETE FROM readings WHERE seq IN (SELECT value FROM json_each(?)) RETURNING nbytes",
                    (json.dumps(wanted),),
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._leased.difference_update(wanted)
            self._depth -= len(gone)
            self._bytes -= sum(g[0] for g in gone) + ROW_OVERHEAD_BYTES * len(gone)
            return len(gone)

    @property
    def leased(self) -> int:
        """Readings in flight."""
        with self._lock:
            return len(self._leased)

    def depth(self) -> int:
        """Readings stored (not yet acknowledged), in flight included."""
        with self._lock:
            return self._depth

    def stored_bytes(self) -> int:
        """Bytes accounted against ``max_bytes``."""
        with self._lock:
            return self._bytes

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest stored reading was taken (None when empty)."""
        with self._lock:
            row = self._conn.execute("SELECT taken_at FROM readings ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        return max(0.0, (self._clock() if now is None else now) - float(row[0]))

    def next_seq(self) -> int:
        """The seq the next reading will get."""
        with self._lock:
            return self._next_seq()

    def _next_seq(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        return int(row[0]) + 1

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT name, value FROM counters").fetchall())

    def stats(self, now: float | None = None) -> OutboxStats:
        """Depth, bytes, oldest age, next seq and the persisted drop counters."""
        counters = self.counters()
        with self._lock:
            depth, stored, next_seq = self._depth, self._bytes, self._next_seq()
        return OutboxStats(
            depth=depth,
            bytes=stored,
            max_bytes=self.max_bytes,
            oldest_age_s=self.oldest_age(now),
            next_seq=next_seq,
            dropped={kind: counters.get(f"dropped_{kind}", 0) for kind in READING_TYPES},
            cap_exceeded=counters.get("cap_exceeded", 0),
        )

    # ------------------------------------------------------------ upkeep

    def maintain(self, max_pages: int = 2000) -> None:
        """Give free pages back to the file system and trim the WAL (call now and then)."""
        with self._lock:
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free:
                self._conn.execute(f"PRAGMA incremental_vacuum({int(max_pages)})").fetchall()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
