"""Live updates: one Server-Sent Events stream per tenant, woken by LISTEN/NOTIFY.

What a client gets (``GET /v1/stream``): every alert change (with what people did about
it), stop event and ETA update of its tenant, and each vehicle's state (position,
motion, next stop and its ETA, colour state) at most once a second per vehicle. Each
event's ``event:`` is its kind (``alert``, ``stop_event``, ``eta``, ``vehicle``) and its
``data:`` one JSON document: for the first three the same document the deliverer
publishes on MQTT and webhooks, for ``vehicle`` a ``/v1/vehicles`` row.

**Cursor.** Every change has a ``rev`` (``store/events.py``: commit order). An event's
``id:`` is a rev such that everything of the tenant up to it has been sent to this client
(or superseded by a newer state of the same vehicle): a vehicle state held back by the
once-a-second limit keeps the id below its rev until it is sent. A client that reconnects
with ``Last-Event-ID`` gets everything after it from the database, then the live feed:
nothing is missed, and what it saw after that id may come again (at least once:
dedupe on kind, id and rev, as for the deliverer). The first event, ``hello``, carries
the cursor the stream starts from.

**Wake-ups.** The dataflow's sinks and the API's alert actions NOTIFY at commit; one
LISTEN connection per API process wakes the hub, which reads each subscribed tenant's
new changes once (through the tenant's session, like every other read) and hands them to
that tenant's clients. No polling loop; at most one read every ``PUMP_EVERY_S``, so a
backlog's rapid commits are read together (``vehicle_current`` holds one row per vehicle:
a vehicle changed by several commits is read and sent once).

**Back-pressure.** Each client has a bounded queue (``api_sse_queue`` events). A client
that falls that far behind is dropped (its stream ends; it resumes from its last id);
the hub and the engine never wait for a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from api import queries
from api.rows import vehicle_payload
from api.tenancy import TenantDatabase
from core.metrics import SSE_CLIENTS, SSE_DROPPED
from delivery.deliverer import event_payload
from store.events import EVENTS_CHANNEL

__all__ = ["Change", "ChangeHub", "ClientCursor", "Subscription", "change_of", "sse_frame", "stream_events"]

log = logging.getLogger("fleetstream.api.live")

VEHICLE_INTERVAL_S = 1.0  # at most one vehicle event per vehicle and second
HEARTBEAT_S = 15.0  # a comment line this often keeps proxies and dead-peer detection working
RECHECK_TOKEN_S = 30.0  # an open stream's token is checked again this often (revocation)
PUMP_EVERY_S = 0.25  # the hub reads the change log at most this often (seconds)
_PAGE = 500
_BATCH_FRAMES = 1000  # queued changes written to a client in one go


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the log as the stream sends it; ``data`` is its JSON, encoded once for
    every client."""

    rev: int
    kind: str  # alert, stop_event, eta, vehicle
    key: str  # what a newer change of the same kind and key supersedes (vehicles only)
    payload: dict[str, Any]
    data: bytes = b""

    @classmethod
    def of(cls, rev: int, kind: str, key: str, payload: dict[str, Any]) -> Change:
        return cls(rev, kind, key, payload, _json(payload))

    def frame(self, event_id: int) -> bytes:
        """This change as one SSE frame with ``id: event_id``."""
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, self.kind.encode(), self.data or _json(self.payload))


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def change_of(row: Mapping[str, Any]) -> Change:
    """A change-log row (with ``table``, from ``queries.changes_after``) as a :class:`Change`."""
    if row["table"] == "vehicle_current":
        payload = vehicle_payload({k: v for k, v in row.items() if k != "table"})
        payload["kind"] = "vehicle"
        return Change.of(int(row["rev"]), "vehicle", str(row["vehicle_id"]), payload)
    payload = event_payload(row)
    return Change.of(int(row["rev"]), str(payload["kind"]), str(payload["id"]), payload)


def sse_frame(event: str, data: Mapping[str, Any], event_id: int | None = None) -> bytes:
    """One Server-Sent Events frame: ``id:`` (when given), ``event:``, one ``data:`` line of compact JSON."""
    head = b"id: %d\n" % event_id if event_id is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + _json(data) + b"\n\n"


class ClientCursor:
    """What one client has been sent, and the id its frames carry. Pure: time is passed in.

    Changes are offered in rev order. A vehicle's state goes out at most every
    ``interval_s`` seconds: a newer one waits (replacing any waiting one of the same
    vehicle) until :meth:`due`. The id of a frame is the highest rev with everything up to
    it sent or superseded: below the oldest waiting vehicle state, if any.
    """

    def __init__(self, after: int, interval_s: float = VEHICLE_INTERVAL_S) -> None:
        self.seen = after  # highest rev offered
        self.interval_s = interval_s
        self._waiting: dict[str, Change] = {}
        self._sent_at: dict[str, float] = {}

    def safe_id(self) -> int:
        """Everything up to this rev has been sent or superseded."""
        if self._waiting:
            return min(c.rev for c in self._waiting.values()) - 1
        return self.seen

    def offer(self, change: Change, now: float) -> list[tuple[Change, int]]:
        """The frames (change, id) to send now for ``change``; nothing for a rev already seen."""
        if change.rev <= self.seen:
            return []
        self.seen = change.rev
        if change.kind == "vehicle":
            last = self._sent_at.get(change.key)
            if last is not None and now - last < self.interval_s:
                self._waiting[change.key] = change  # a newer state supersedes a waiting one
                return []
            self._waiting.pop(change.key, None)
            self._sent_at[change.key] = now
        return [(change, self.safe_id())]

    def due(self, now: float) -> list[tuple[Change, int]]:
        """Waiting vehicle states whose interval has passed, in rev order."""
        ready = sorted(
            (c for key, c in self._waiting.items() if now - self._sent_at.get(key, -1e18) >= self.interval_s),
            key=lambda c: c.rev,
        )
        out = []
        for change in ready:
            del self._waiting[change.key]
            self._sent_at[change.key] = now
            out.append((change, self.safe_id()))
        return out

    def next_due(self) -> float | None:
        """When (same clock as ``now``) the next waiting state may go, or None."""
        if not self._waiting:
            return None
        return min(self._sent_at.get(k, 0.0) for k in self._waiting) + self.interval_s


@dataclass(eq=False)
class Subscription:
    """One client's place in the hub: the changes after ``start_after`` arrive in ``queue``."""

    tenant: str
    start_after: int
    queue: asyncio.Queue[Change]
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _TenantFeed:
    cursor: int
    subscribers: set[Subscription] = field(default_factory=set)


class ChangeHub:
    """Reads each subscribed tenant's new changes once per wake-up and fans them out."""

    def __init__(self, db: TenantDatabase, dsn: str, queue_max: int) -> None:
        self.db = db
        self.dsn = dsn
        self.queue_max = queue_max
        self._feeds: dict[str, _TenantFeed] = {}
        self._init_lock = asyncio.Lock()
        self.listening = asyncio.Event()  # set while the LISTEN connection is up

    # ------------------------------------------------------------ clients

    async def subscribe(self, tenant: str) -> Subscription:
        """Join ``tenant``'s feed; changes after the returned ``start_after`` will arrive."""
        async with self._init_lock:
            if tenant not in self._feeds:
                async with self.db.session(tenant) as conn:
                    cursor = await queries.max_rev(conn, tenant)
                self._feeds.setdefault(tenant, _TenantFeed(cursor))
        feed = self._feeds[tenant]
        sub = Subscription(tenant, feed.cursor, asyncio.Queue(self.queue_max))
        feed.subscribers.add(sub)  # no await since reading feed.cursor: nothing can slip between
        SSE_CLIENTS.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        feed = self._feeds.get(sub.tenant)
        if feed is not None and sub in feed.subscribers:
            feed.subscribers.discard(sub)
            SSE_CLIENTS.dec()
            if not feed.subscribers:
                del self._feeds[sub.tenant]  # nobody listens: stop reading the tenant

    def clients(self) -> int:
        return sum(len(f.subscribers) for f in self._feeds.values())

    # ------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """LISTEN and pump until ``stop``; reconnects (and catches up) after a database outage."""
        delay = 0.5
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
                async with conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    await self.pump()  # whatever committed while nobody listened
                    pumped = time.monotonic()
                    while not stop.is_set():
                        woken = False
                        async for _ in conn.notifies(timeout=1.0, stop_after=1):
                            woken = True
                        if woken:
                            # at most every PUMP_EVERY_S: the commits meanwhile are read together, and a
                            # vehicle changed by several of them is read (and sent) once
                            await asyncio.sleep(max(0.0, pumped + PUMP_EVERY_S - time.monotonic()))
                            pumped = time.monotonic()
                            await self.pump()
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("live: database unavailable (%s); retrying in %.1f s", str(exc).strip()[:120], delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)
        self.listening.clear()

    async def pump(self) -> None:
        """Read every subscribed tenant's changes past its cursor and queue them for its clients."""
        for tenant, feed in list(self._feeds.items()):
            while True:
                async with self.db.session(tenant) as conn:
                    rows = await queries.changes_after(conn, tenant, feed.cursor, limit=_PAGE)
                if self._feeds.get(tenant) is not feed:
                    break  # everyone left meanwhile
                for row in rows:  # no await in here: a subscriber joining sees a consistent cursor
                    change = change_of(row)
                    feed.cursor = change.rev
                    for sub in list(feed.subscribers):
                        try:
                            sub.queue.put_nowait(change)
                        except asyncio.QueueFull:
                            log.warning("live: a %s client fell %d events behind; dropped", tenant, self.queue_max)
                            SSE_DROPPED.labels("slow").inc()
                            sub.dropped.set()
                            self.unsubscribe(sub)
                if len(rows) < _PAGE:
                    break


async def stream_events(
    hub: ChangeHub,
    tenant: str,
    last_event_id: int | None,
    still_allowed: Callable[[], Awaitable[bool]],
    closing: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """The frames of one client's stream (see the module docstring), until it disconnects,
    falls behind, its token is revoked (``still_allowed`` turns False) or the server stops."""
    sub = await hub.subscribe(tenant)
    try:
        start = last_event_id if last_event_id is not None else sub.start_after
        cursor = ClientCursor(start)
        yield sse_frame("hello", {"tenant": tenant, "after": start, "resumed": last_event_id is not None}, start)
        if last_event_id is not None and last_event_id < sub.start_after:
            after = last_event_id
            while True:  # what the client missed, from the database, then the live queue
                async with hub.db.session(tenant) as conn:
                    rows = await queries.changes_after(conn, tenant, after, sub.start_after, _PAGE)
                for row in rows:
                    for change, event_id in cursor.offer(change_of(row), clock()):
                        yield change.frame(event_id)
                if len(rows) < _PAGE:
                    break
                after = int(rows[-1]["rev"])
        beat = recheck = clock()
        while not closing.is_set() and not sub.dropped.is_set():
            now = clock()
            out = [change.frame(event_id) for change, event_id in cursor.due(now)]
            if now - recheck >= RECHECK_TOKEN_S:
                recheck = now
                if not await still_allowed():
                    SSE_DROPPED.labels("revoked").inc()
                    return
            if now - beat >= HEARTBEAT_S:
                beat = now
                out.append(b": keep-alive\n\n")
            if out:
                yield b"".join(out)
            wait = HEARTBEAT_S - (now - beat)
            if (due := cursor.next_due()) is not None:
                wait = min(wait, max(0.0, due - now))
            try:
                first = await asyncio.wait_for(sub.queue.get(), timeout=max(0.01, min(wait, 1.0)))
            except TimeoutError:
                continue
            # whatever else is queued goes out in the same write: one send per wake-up, not per event
            changes = [first]
            while len(changes) < _BATCH_FRAMES:
                try:
                    changes.append(sub.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            now = clock()
            frames = [c.frame(i) for change in changes for c, i in cursor.offer(change, now)]
            if frames:
                yield b"".join(frames)
    finally:
        hub.unsubscribe(sub)
