"""A tracker front end's server: asyncio TCP listener, connections, and the session they share.

One process per protocol (``fleetstream listen <protocol>``, started and restarted by the engine),
one writer shard per protocol (``core.settings.FRONT_END_SHARDS``). Per connection: an idle timeout
(``device_idle_timeout_s``) and a frame size cap (``device_max_frame_bytes``); per listener a cap
on concurrent connections (``device_max_connections``; one past it is closed at once). A handler
(``ingest/teltonika.py``, ``gt06.py``, ``osmand.py``) speaks its protocol on one connection and
answers its device only after ``Session.commit`` returned.

On SIGTERM the listener stops accepting, closes its connections (an answer not yet sent is not
sent: the device sends that frame again, and it is stored once), commits what was handed in, and
exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from core.contract import Limits
from core.settings import FRONT_END_SHARDS, Settings
from ingest.frontend import CommitQueue, Frame, Outcome, TrackerDirectory
from ingest.protocols.common import Tracker, check_identity, printable
from ingest.writer import ShardWriter

__all__ = ["Closed", "Connection", "Handler", "Session", "TrackerServer", "ready_file", "run_listener"]

log = logging.getLogger("fleetstream.listener")
_FLUSH_EVERY_S = 5.0  # refusal counts to the store
_LOG_EVERY_S = 10.0


def ready_file(settings: Settings, protocol: str) -> Path:
    """Exists once the listener of ``protocol`` accepts connections (removed when the engine respawns it)."""
    return settings.state_dir / "run" / f"listen-{protocol}.ready"


class Closed(Exception):
    """The device closed the connection, or sent nothing for the idle timeout (``idle``), leaving
    ``partial``: the bytes of a frame it had begun."""

    def __init__(self, partial: bytes, idle: bool) -> None:
        super().__init__(f"{'idle' if idle else 'closed'} with {len(partial)} bytes of a frame")
        self.partial, self.idle = partial, idle


class Connection:
    """One device's TCP connection: reads with the idle timeout, writes that wait for the socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_s: float) -> None:
        self.reader, self.writer, self.idle_s = reader, writer, idle_s
        self.buffer = bytearray()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def _fill(self, partial_from: int) -> None:
        try:
            chunk = await asyncio.wait_for(self.reader.read(65_536), self.idle_s)
        except TimeoutError:
            raise Closed(bytes(self.buffer[partial_from:]), idle=True) from None
        except ConnectionError:
            chunk = b""
        if not chunk:
            raise Closed(bytes(self.buffer[partial_from:]), idle=False)
        self.buffer += chunk

    async def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``Closed`` (with what had come) when the device stops first."""
        while len(self.buffer) < n:
            await self._fill(0)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def take_until(self, marker: bytes, limit: int) -> bytes | None:
        """The bytes up to and including ``marker``, or None when ``limit`` bytes came without it."""
        while True:
            at = self.buffer.find(marker)
            if at >= 0:
                out = bytes(self.buffer[: at + len(marker)])
                del self.buffer[: at + len(marker)]
                return out
            if len(self.buffer) >= limit:
                return None
            await self._fill(0)

    def pending(self) -> bytes:
        """Whatever has been read and not taken."""
        return bytes(self.buffer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class Session:
    """What a protocol handler needs besides its connection."""

    protocol: str
    settings: Settings
    directory: TrackerDirectory
    commits: CommitQueue

    @property
    def max_frame_bytes(self) -> int:
        return self.settings.device_max_frame_bytes

    def source(self, identity: str | None) -> str:
        """A frame's dead-letter topic: ``<protocol>/<identity>`` (``unidentified`` before a login)."""
        return f"{self.protocol}/{printable(identity) if identity else 'unidentified'}"

    async def find(self, identity: str) -> Tracker | None:
        """The tracker ``identity`` belongs to, or None (then counted as refused). A badly formed
        identity is refused the same way. While the database is away it waits (the device gets no
        answer until it can be given)."""
        try:
            check_identity(self.protocol, identity)
        except ValueError:  # ContractError: not an identity of this protocol
            self.directory.refuse(self.protocol, printable(identity))
            return None
        delay = 0.5
        while True:
            try:
                tracker = await asyncio.to_thread(self.directory.find, self.protocol, identity)
                break
            except psycopg.OperationalError as exc:
                log.warning("%s: cannot look %s up (%s); retrying in %.1f s", self.protocol, identity, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if tracker is None:
            self.directory.refuse(self.protocol, identity)
        return tracker

    async def commit(self, frame: Frame) -> Outcome:
        return await self.commits.commit(frame)

    async def reject(self, identity: str | None, raw: bytes, reason: str, detail: str) -> Outcome:
        """Commit ``raw`` as a dead letter of ``identity`` with ``reason``."""
        return await self.commit(Frame.refused(self.source(identity), raw, time.time(), reason, detail))


Handler = Callable[[Connection, Session], Awaitable[None]]


def _raise_file_limit(wanted: int) -> None:
    """Each connection is a file descriptor: raise the soft limit toward ``wanted`` (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class TrackerServer:
    """The listener of one protocol, its commit queue and its writer shard."""

    def __init__(self, settings: Settings, protocol: str, handler: Handler, port: int) -> None:
        self.settings, self.protocol, self.handler, self.port = settings, protocol, handler, port
        self.writer = ShardWriter(settings.dsn(), FRONT_END_SHARDS[protocol], settings.dead_letter_raw_cap)
        limits = Limits(settings.max_payload_bytes, settings.max_batch_readings, settings.max_future_skew_s)
        self.commits = CommitQueue(
            self.writer, limits, settings.h3_resolution, settings.dead_letter_raw_cap, settings.gateway_batch_max
        )
        self.directory = TrackerDirectory(settings.dsn())
        self.session = Session(protocol, settings, self.directory, self.commits)
        self.active: set[asyncio.Task[None]] = set()
        self.over_capacity = 0
        self.connections = 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.settings.device_idle_timeout_s)
        if len(self.active) >= self.settings.device_max_connections:
            self.over_capacity += 1
            if self.over_capacity in (1, 10, 100) or self.over_capacity % 1000 == 0:
                log.warning("%s: %d connections refused over device_max_connections", self.protocol, self.over_capacity)
            conn.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.active.add(task)
        self.connections += 1
        try:
            await self.handler(conn, self.session)
        except Closed:
            pass
        except ConnectionAbortedError:
            pass  # stopping
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: %s: connection failed", self.protocol, conn.peer)
        finally:
            self.active.discard(task)
            conn.close()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        last_log = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _FLUSH_EVERY_S)
            await asyncio.to_thread(self.directory.flush_refusals)
            if time.monotonic() - last_log >= _LOG_EVERY_S:
                last_log = time.monotonic()
                t = self.commits.totals
                log.info(
                    "%s: %d open, %d connections, frames %d, stored %d, duplicates %d, dead letters %d %s, "
                    "refused identities %d, over capacity %d",
                    self.protocol,
                    len(self.active),
                    self.connections,
                    t.frames,
                    t.stored,
                    t.duplicates,
                    t.dead_letters,
                    t.by_reason,
                    self.directory.refusals,
                    self.over_capacity,
                )

    async def run(self, stop: asyncio.Event, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop`` is set; ``ready`` is called once connections are accepted."""
        _raise_file_limit(self.settings.device_max_connections + 256)
        await asyncio.to_thread(self.writer.open)
        server = await asyncio.start_server(
            self._client,
            self.settings.device_listen_host,
            self.port,
            backlog=min(4096, self.settings.device_max_connections),
            reuse_address=True,
        )
        log.info("%s: listening on %s:%d", self.protocol, self.settings.device_listen_host, self.port)
        committing = asyncio.Event()
        commits = asyncio.create_task(self.commits.run(committing))
        housekeeping = asyncio.create_task(self._housekeeping(stop))
        if ready is not None:
            ready()
        try:
            await stop.wait()
        finally:
            server.close()
            for task in list(self.active):
                task.cancel()
            await asyncio.gather(*self.active, return_exceptions=True)
            committing.set()
            await commits
            await housekeeping
            await asyncio.to_thread(self.directory.flush_refusals)
            self.directory.close()
            self.writer.close()


def run_listener(settings: Settings, protocol: str, handler: Handler) -> None:
    """Process entry point: serve ``protocol`` on its port until SIGTERM/SIGINT."""
    port = settings.listener_ports().get(protocol)
    if port is None:
        raise SystemExit(f"the {protocol} listener is off ({protocol}_port = 0)")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        marker = ready_file(settings, protocol)

        def ready() -> None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

        await TrackerServer(settings, protocol, handler, port).run(stop, ready)

    asyncio.run(main())
