"""What every tracker front end shares: frames, their preparation for the writer, the tracker
directory, and the commit queue that acknowledges only after commit.

A front end turns each frame a device sends (a Teltonika AVL packet, a GT06 packet, an OsmAnd
request, an OwnTracks message) into contract messages (``core.contract``: one ``batch`` message with
the readings of all its records, one ``status`` message per status) and hands them to the gateway's own ``prepare`` and
``ShardWriter.write``: the same validation, dedup keys, conflicts and dead letters as the MQTT
path. A dead letter of a translated message is re-attributed to the frame it came from (its
source, e.g. ``teltonika/<imei>``, and its raw bytes); a frame's own problems (a bad CRC, an
unknown device) are dead letters of that frame.

The commit queue groups the frames of all connections into one transaction per round (at most
``batch_max`` frames; while one commits, the next round gathers), so a thousand trackers cost a
few commits per second, not a thousand. ``commit`` returns once the frame's rows are committed:
only then does the connection answer its device.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from core.contract import Limits, Rejected, encode_batch, encode_status
from ingest.batching import Prepared, Received, dead_letter_row, prepare
from ingest.protocols.common import Part, Profile, Tracker
from ingest.rows import DeadLetterRow
from ingest.writer import ShardWriter, WriteResult
from store.db import connect
from store.trackers import TrackerRow, count_refusals, find_tracker

__all__ = ["CommitQueue", "Frame", "Outcome", "TrackerDirectory", "prepare_frames"]

log = logging.getLogger("fleetstream.frontend")


@dataclass(frozen=True, slots=True)
class Frame:
    """One unit a device sends (and expects one answer to), with the contract messages it became.

    ``source`` names where it came from (``teltonika/<imei>``, ``osmand/<id>``, an MQTT topic) and is
    its dead letters' topic; ``raw`` is what the device sent; ``received_ts`` Unix seconds.
    ``messages``: (topic, payload, record index of each reading, or of the status) of its contract
    messages; ``problems``: the frame's own faults. ``translated`` is False for a contract message
    passed through as it came.
    """

    source: str
    raw: bytes
    received_ts: float
    messages: tuple[tuple[str, bytes, tuple[int | None, ...]], ...] = ()
    problems: tuple[Rejected, ...] = ()
    translated: bool = True

    @classmethod
    def of(cls, source: str, raw: bytes, received_ts: float, parts: list[Part] | None = None) -> Frame:
        """A frame whose records became ``parts``: all their readings in one batch message (one
        envelope per frame, not per record, keeps the translation cheap), a message per status."""
        parts = parts or []
        readings = [r for part in parts for r in part.readings]
        messages = []
        if readings:
            topic, payload = encode_batch(readings[0].tenant, readings[0].vehicle, readings)
            messages.append((topic, payload, tuple(part.index for part in parts for _ in part.readings)))
        for part in parts:
            for s in part.statuses:
                messages.append((*encode_status(s.tenant, s.vehicle, s.state, s.sent_at, s.details), (part.index,)))
        return cls(source, raw, received_ts, tuple(messages))

    @classmethod
    def refused(cls, source: str, raw: bytes, received_ts: float, reason: str, detail: str) -> Frame:
        """A frame that is only a dead letter."""
        return cls(source, raw, received_ts, problems=(Rejected(reason, detail),))

    @classmethod
    def passthrough(cls, message: Received) -> Frame:
        """A contract MQTT message, prepared as it is."""
        return cls(
            message.topic, message.payload, message.received_ts, ((message.topic, message.payload, ()),), (), False
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one frame: the (reason, detail) of each of its dead letters (empty: all stored)."""

    rejected: tuple[tuple[str, str], ...] = ()


def prepare_frames(
    frames: list[Frame], limits: Limits, h3_resolution: int, raw_cap: int
) -> tuple[Prepared, list[Outcome]]:
    """``prepare`` the frames' contract messages, re-attribute their dead letters to the frames, add
    the frames' own problems; and each frame's outcome."""
    received: list[Received] = []
    origin: dict[tuple[str, bytes], tuple[int, tuple[int | None, ...]]] = {}
    for n, frame in enumerate(frames):
        for topic, payload, records in frame.messages:
            received.append(Received(topic, payload, frame.received_ts))
            origin.setdefault((topic, payload[:raw_cap]), (n, records))
    prepared = prepare(received, limits, h3_resolution, raw_cap)
    rejected: list[list[tuple[str, str]]] = [[] for _ in frames]
    dead: list[DeadLetterRow] = []
    for d in prepared.dead_letters:
        n, records = origin.get((d.topic, d.payload), (-1, ()))
        if n >= 0 and frames[n].translated:
            frame = frames[n]
            if d.batch_index is not None and d.batch_index < len(records):
                index = records[d.batch_index]  # the reading's record
            else:
                index = records[0] if len(set(records)) == 1 else None
            detail = d.detail if index is None else f"record {index}: {d.detail}"
            d = dead_letter_row(frame.source, frame.raw, d.received_at, d.reason, detail, index, raw_cap)
        if n >= 0:
            rejected[n].append((d.reason, d.detail))
        dead.append(d)
    for n, frame in enumerate(frames):
        at = datetime.fromtimestamp(frame.received_ts, UTC)
        for p in frame.problems:
            dead.append(dead_letter_row(frame.source, frame.raw, at, p.reason, p.detail, p.index, raw_cap))
            rejected[n].append((p.reason, p.detail))
    prepared.dead_letters = dead
    return prepared, [Outcome(tuple(r)) for r in rejected]


class TrackerDirectory:
    """Tracker identities looked up in the store (table ``trackers``), cached for ``ttl_s`` seconds
    (found or not), and the refused unknown ones counted (``tracker_refusals``, written by
    ``flush_refusals``). Thread-safe; a database outage raises ``psycopg.OperationalError``."""

    def __init__(self, dsn: str, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn, self.ttl_s, self.clock = dsn, ttl_s, clock
        self._cache: dict[tuple[str, str], tuple[float, Tracker | None]] = {}
        self._refused: dict[tuple[str, str], tuple[int, datetime, datetime]] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()  # identities whose first refusal was logged
        self.refusals = 0  # since start

    def find(self, protocol: str, identity: str) -> Tracker | None:
        key = (protocol, identity)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.ttl_s:
                return cached[1]
            row = self._find(protocol, identity)
            tracker = None if row is None else Tracker(row[0], row[1], row[2], row[3], Profile.from_json(row[4]))
            if len(self._cache) > 100_000:  # bounded: unknown identities must not grow it forever
                self._cache.clear()
            self._cache[key] = (now, tracker)
            return tracker

    def _find(self, protocol: str, identity: str) -> TrackerRow | None:
        """Look up on the kept connection; one that went stale (a database restart) is replaced
        once at once, before the caller backs off."""
        for attempt in (1, 2):
            fresh = self._conn is None or self._conn.closed
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn, autocommit=True)
                return find_tracker(self._conn, protocol, identity)
            except psycopg.OperationalError:
                self._conn = None
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def refuse(self, protocol: str, identity: str) -> None:
        """Count one refused connection or message of an unknown ``identity``."""
        now = datetime.now(UTC)
        with self._lock:
            attempts, first, _ = self._refused.get((protocol, identity), (0, now, now))
            if (protocol, identity) not in self._logged and len(self._logged) < 10_000:
                log.warning(
                    "%s: refused unknown identity %r (fleetstream device add --protocol %s)",
                    protocol,
                    identity,
                    protocol,
                )
                self._logged.add((protocol, identity))
            self._refused[(protocol, identity)] = (attempts + 1, first, now)
            self.refusals += 1

    def flush_refusals(self) -> None:
        """Add the counted refusals to ``tracker_refusals``; kept for the next flush if the database is away."""
        with self._lock:
            pending, self._refused = self._refused, {}
        if not pending:
            return
        try:
            with connect(self.dsn, autocommit=True) as conn:
                count_refusals(conn, pending)
        except psycopg.OperationalError:
            with self._lock:
                for key, (attempts, first, last) in pending.items():
                    more, _, newer = self._refused.get(key, (0, first, last))
                    self._refused[key] = (attempts + more, first, max(last, newer))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@dataclass
class _Waiting:
    frame: Frame
    done: asyncio.Future[Outcome]


@dataclass
class CommitTotals:
    """Counts since start (frames committed; readings stored; in-store duplicates; dead letters)."""

    frames: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    commits: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class CommitQueue:
    """Group commit for one front end's connections, through one ``ShardWriter`` (one shard).

    ``commit(frame)`` waits until the frame is committed and returns its ``Outcome``; it raises
    when the queue stops before that (the connection then closes without answering, and the
    device sends again). While the database is away the batch is kept and retried (backoff up to
    5 s), nothing is answered. A batch the database refuses for its content (not an outage) is
    committed frame by frame, so only the offending frame fails.
    """

    def __init__(
        self, writer: ShardWriter, limits: Limits, h3_resolution: int, raw_cap: int, batch_max: int = 2000
    ) -> None:
        self.writer, self.limits, self.h3_resolution, self.raw_cap = writer, limits, h3_resolution, raw_cap
        self.batch_max = batch_max
        self.totals = CommitTotals()
        self._waiting: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._stopping = False

    async def commit(self, frame: Frame) -> Outcome:
        if self._stopping:
            raise ConnectionAbortedError("the front end is stopping")
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(frame, done))
        self._wake.set()
        return await asyncio.shield(done)  # a connection that drops still has its frame committed

    async def run(self, stop: asyncio.Event) -> None:
        """Commit rounds until ``stop`` is set and everything waiting is committed (or, with the
        database away at stop, failed)."""
        while not (stop.is_set() and not self._waiting):
            if not self._waiting:
                wake = asyncio.ensure_future(self._wake.wait())
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({wake, stopped}, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                stopped.cancel()
                self._wake.clear()
                continue
            batch, self._waiting = self._waiting[: self.batch_max], self._waiting[self.batch_max :]
            await self._commit_batch(batch, stop)
        self._stopping = True

    async def _commit_batch(self, batch: list[_Waiting], stop: asyncio.Event) -> None:
        delay = 0.5
        while True:
            try:
                outcomes = await asyncio.to_thread(self._write, [w.frame for w in batch])
                break
            except psycopg.OperationalError as exc:  # database away: keep the batch, retry, answer nothing
                log.warning("commit: database unavailable (%s); retrying in %.1f s", str(exc).strip()[:120], delay)
                self.writer.close()
                if stop.is_set():
                    self._fail(batch, ConnectionAbortedError("stopped while the database was away"))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except psycopg.Error as exc:
                if len(batch) == 1:
                    log.error("commit: the database refused a frame from %s: %s", batch[0].frame.source, exc)
                    self._fail(batch, exc)
                    return
                for one in batch:  # find the frame it refuses; the others are committed
                    await self._commit_batch([one], stop)
                return
        for w, outcome in zip(batch, outcomes, strict=True):
            if not w.done.done():
                w.done.set_result(outcome)

    @staticmethod
    def _fail(batch: list[_Waiting], exc: BaseException) -> None:
        for w in batch:
            if not w.done.done():
                w.done.set_exception(exc)

    def _write(self, frames: list[Frame]) -> list[Outcome]:
        prepared, outcomes = prepare_frames(frames, self.limits, self.h3_resolution, self.raw_cap)
        result: WriteResult = self.writer.write(prepared, len(frames))
        t = self.totals
        t.frames += len(frames)
        t.stored += result.stored
        t.duplicates += result.duplicates
        t.dead_letters += result.dead_letters
        t.commits += 1
        for outcome in outcomes:
            for reason, _ in outcome.rejected:
                t.by_reason[reason] = t.by_reason.get(reason, 0) + 1
        return outcomes
