"""The protocol handlers on real loopback sockets, with an in-memory session (no database): what
each answers, what it commits and when it closes, for good frames and for every kind of bad one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.settings import Settings
from ingest import gt06, osmand, teltonika
from ingest.frontend import Frame, Outcome
from ingest.listener import Closed, Connection, Session
from ingest.protocols import gt06 as gt06_codec
from ingest.protocols import teltonika as teltonika_codec
from ingest.protocols.common import Tracker
from ingest.protocols.teltonika import CODEC_8, AvlRecord

KNOWN = {"356307042441013", "123456789012345", "902064"}
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


@dataclass
class FakeDirectory:
    refused: list[tuple[str, str]] = field(default_factory=list)

    def find(self, protocol: str, identity: str) -> Tracker | None:
        return Tracker(protocol, identity, "acme", f"van-{identity[-2:]}") if identity in KNOWN else None

    def refuse(self, protocol: str, identity: str) -> None:
        self.refused.append((protocol, identity))


@dataclass
class FakeCommits:
    frames: list[Frame] = field(default_factory=list)
    outcome: Outcome = Outcome()

    async def commit(self, frame: Frame) -> Outcome:
        self.frames.append(frame)
        return self.outcome


def reasons(commits: FakeCommits) -> list[str]:
    return [p.reason for f in commits.frames for p in f.problems]


async def talk(
    handler: Callable[[Connection, Session], Awaitable[None]],
    protocol: str,
    exchange: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bytes]],
    settings: Settings | None = None,
    commits: FakeCommits | None = None,
) -> tuple[bytes, FakeCommits, FakeDirectory, bool]:
    """Serve one connection with ``handler``; returns what the device read, the commits, the
    directory, and whether the server closed the connection."""
    settings = settings or Settings(device_idle_timeout_s=2.0, device_max_frame_bytes=1024)
    commits, directory = commits or FakeCommits(), FakeDirectory()
    session = Session(protocol, settings, directory, commits)  # type: ignore[arg-type]
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, settings.device_idle_timeout_s)
        try:
            await handler(conn, session)
        except Closed:
            pass
        finally:
            conn.close()
            done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = await exchange(reader, writer)
    closed = False
    try:
        await asyncio.wait_for(done.wait(), 5)
        closed = True
    except TimeoutError:
        pass
    writer.close()
    server.close()
    return got, commits, directory, closed


def run(
    coro: Awaitable[tuple[bytes, FakeCommits, FakeDirectory, bool]],
) -> tuple[bytes, FakeCommits, FakeDirectory, bool]:
    return asyncio.run(coro)  # type: ignore[arg-type]


def records(n: int) -> list[AvlRecord]:
    ms = int(NOW.timestamp() * 1000)
    return [AvlRecord(ms + i * 1000, 0, 249_000_000, 601_700_000, 10, 90, 8, 36) for i in range(n)]


# ---------------------------------------------------------------- Teltonika


def test_teltonika_session_good_and_bad_packets() -> None:
    good = teltonika_codec.encode_packet(CODEC_8, records(3))
    bad_crc = teltonika_codec.encode_packet(CODEC_8, records(2), crc=7)

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(teltonika_codec.encode_imei("356307042441013"))
        answers = await reader.readexactly(1)
        for raw in (good, bad_crc, good):
            writer.write(raw)
            answers += await reader.readexactly(4)
        writer.write(good[:30])  # and the link drops halfway through a packet
        writer.close()
        return answers

    got, commits, _, closed = run(talk(teltonika.serve, "teltonika", device))
    assert got == b"\x01" + bytes.fromhex("000000030000000000000003") and closed
    assert reasons(commits) == ["bad_crc", "bad_frame"]
    assert commits.frames[-1].raw == good[:30] and commits.frames[-1].source == "teltonika/356307042441013"
    assert len(commits.frames[0].messages) == 1  # the three records' readings in one contract batch


def test_teltonika_refuses_an_unknown_imei_and_a_broken_stream() -> None:
    async def unknown(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(teltonika_codec.encode_imei("111111111111111"))
        return await reader.read(10)

    got, commits, directory, closed = run(talk(teltonika.serve, "teltonika", unknown))
    assert got == b"\x00" and closed and commits.frames == []
    assert directory.refused == [("teltonika", "111111111111111")]

    async def oversized(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(teltonika_codec.encode_imei("356307042441013"))
        await reader.readexactly(1)
        writer.write(b"\x00\x00\x00\x00\x00\x01\x00\x00")  # a 64 KiB packet announced
        return await reader.read(10)

    got, commits, _, closed = run(talk(teltonika.serve, "teltonika", oversized))
    assert got == b"" and closed and reasons(commits) == ["oversized"]

    async def preamble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(teltonika_codec.encode_imei("356307042441013"))
        await reader.readexactly(1)
        writer.write(b"\x00\x00\x00\x01\x00\x00\x00\x10")
        return await reader.read(10)

    _, commits, _, closed = run(talk(teltonika.serve, "teltonika", preamble))
    assert closed and reasons(commits) == ["bad_frame"]


def test_an_idle_connection_is_closed() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(teltonika_codec.encode_imei("356307042441013"))
        answer = await reader.readexactly(1)
        return answer + await reader.read(10)  # waits until the server gives up on us

    settings = Settings(device_idle_timeout_s=1.0)
    got, commits, _, closed = run(talk(teltonika.serve, "teltonika", silent, settings))
    assert got == b"\x01" and closed and commits.frames == []


# ---------------------------------------------------------------- GT06


def test_gt06_login_locations_garbage_and_replies() -> None:
    location = gt06_codec.encode_location(NOW, 60.17, 24.94, 30, 90, serial=2)

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(gt06_codec.encode_login("123456789012345", 1))
        got = await reader.readexactly(10)
        writer.write(b"\x01\x02\x03" + location)  # noise before a frame
        got += await reader.readexactly(10)
        writer.write(location[:-4] + b"\x00\x00\x0d\x0a")  # a bad CRC: dead letter, no reply
        writer.write(gt06_codec.encode_frame(0x8A, b"", 3))  # a packet type not read here
        writer.write(gt06_codec.encode_login("999999999999999", 4))  # another IMEI on this connection
        return got + await reader.read(100)

    got, commits, _, closed = run(talk(gt06.serve, "gt06", device))
    assert got == gt06_codec.reply(gt06_codec.LOGIN, 1) + gt06_codec.reply(gt06_codec.LOCATION_UTC, 2) and closed
    assert reasons(commits) == ["bad_frame", "bad_crc", "unknown_codec", "identity_mismatch"]
    assert commits.frames[0].raw == b"\x01\x02\x03"
    assert [len(f.messages) for f in commits.frames if not f.problems] == [1]


def test_gt06_data_before_a_login_and_an_unknown_login() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(gt06_codec.encode_location(NOW, 60.17, 24.94, 30, 90, serial=1))
        return await reader.read(10)

    got, commits, _, closed = run(talk(gt06.serve, "gt06", early))
    assert got == b"" and closed and reasons(commits) == ["unknown_device"]

    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(gt06_codec.encode_login("353413532150362", 1))
        return await reader.read(10)

    got, commits, directory, closed = run(talk(gt06.serve, "gt06", stranger))
    assert got == b"" and closed and directory.refused == [("gt06", "353413532150362")]


# ---------------------------------------------------------------- OsmAnd


async def http(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, request: bytes) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    return head + await reader.readexactly(length)


def test_osmand_keep_alive_requests_and_refusals() -> None:
    async def phone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        ok = await http(
            writer, reader, b"GET /?id=902064&lat=60.1&lon=24.9&timestamp=1763000000 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        unknown = await http(writer, reader, b"POST /?id=nobody&lat=1&lon=2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        bad = await http(writer, reader, b"POST /?id=902064&lat=x&lon=2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        method = await http(writer, reader, b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        big = await http(writer, reader, b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        return b"|".join(r.split(b"\r\n")[0] for r in (ok, unknown, bad, method, big))

    got, commits, directory, closed = run(talk(osmand.serve, "osmand", phone))
    assert got.split(b"|") == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 405 Method Not Allowed",
        b"HTTP/1.1 413 Content Too Large",
    ]
    assert closed and reasons(commits) == ["unknown_device", "wrong_type", "oversized"]
    assert directory.refused == [("osmand", "nobody")]
    assert commits.frames[1].source == "osmand/nobody"


def test_osmand_answers_400_when_the_store_refused_a_reading() -> None:
    async def phone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        return await http(writer, reader, b"GET /?id=902064&lat=95&lon=2 HTTP/1.1\r\nConnection: close\r\n\r\n")

    refused = FakeCommits(outcome=Outcome((("out_of_range", "lat=95.0 outside [-90.0, 90.0]"),)))
    got, commits, _, closed = run(talk(osmand.serve, "osmand", phone, commits=refused))
    assert got.startswith(b"HTTP/1.1 400") and got.endswith(b"out_of_range: lat=95.0 outside [-90.0, 90.0]\n")
    assert closed and len(commits.frames) == 1


def test_session_sources_escape_control_characters() -> None:
    session = Session("osmand", Settings(), FakeDirectory(), FakeCommits())  # type: ignore[arg-type]
    assert session.source("ph\x00ne") == "osmand/ph\\x00ne" and session.source(None) == "osmand/unidentified"


def test_osmand_answers_100_continue_before_reading_the_body() -> None:
    async def curl(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        body = b"id=902064&lat=60.1&lon=24.9&timestamp=1763000000"
        writer.write(f"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        interim = await reader.readuntil(b"\r\n\r\n")
        return interim + await http(writer, reader, body)

    got, commits, _, _ = run(talk(osmand.serve, "osmand", curl))
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") and len(commits.frames) == 1
