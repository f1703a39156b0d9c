"""The GT06 front end: one device connection (``ingest/protocols/gt06.py``).

The login is answered only for a provisioned IMEI; otherwise the connection is closed (and the
IMEI counted in ``tracker_refusals``). A packet before the login, or a second login with another
IMEI, is a dead letter (``unknown_device``, ``identity_mismatch``) and closes the connection.
Locations, alarms and heartbeats are committed, then answered with their serial number. A frame
with a bad CRC or layout is a dead letter and not answered; other packet types are dead letters
(``unknown_codec``). Bytes that do not start a frame are skipped up to the next ``78 78`` or
``79 79`` (and kept as one dead letter).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from core.contract import ContractError
from ingest.frontend import Frame
from ingest.listener import Closed, Connection, Session
from ingest.protocols import gt06
from ingest.protocols.common import Tracker

__all__ = ["serve"]

_DATA = (gt06.LOCATION, gt06.LOCATION_UTC, gt06.ALARM, gt06.ALARM_UTC, gt06.HEARTBEAT)
_STARTS = (gt06.SHORT_START, gt06.LONG_START)


async def _frame_start(conn: Connection, session: Session, imei: str | None) -> bytes:
    """The two start bytes of the next frame; skipped garbage before them is one dead letter."""
    start = await conn.take(2)
    skipped = bytearray()
    while start not in _STARTS:
        skipped.append(start[0])
        if len(skipped) > session.max_frame_bytes:
            await session.reject(imei, bytes(skipped), "bad_frame", f"{len(skipped)} bytes without a frame start")
            raise Closed(b"", idle=False)
        start = start[1:] + await conn.take(1)
    if skipped:
        await session.reject(imei, bytes(skipped), "bad_frame", f"{len(skipped)} bytes before a frame start skipped")
    return start


async def serve(conn: Connection, session: Session) -> None:
    imei: str | None = None
    tracker: Tracker | None = None
    while True:
        try:
            start = await _frame_start(conn, session, imei)
        except Closed as closed:
            if closed.partial:
                await session.reject(imei, closed.partial, "bad_frame", f"truncated: {len(closed.partial)} bytes")
            return
        try:
            head = start + await conn.take(1 if start == gt06.SHORT_START else 2)
            total = gt06.frame_length(head)
            if total > session.max_frame_bytes:
                detail = f"a frame of {total} bytes > device_max_frame_bytes {session.max_frame_bytes}"
                await session.reject(imei, head + conn.pending(), "oversized", detail)
                return
            raw = head + await conn.take(total - len(head))
        except Closed as closed:
            await session.reject(imei, start + closed.partial, "bad_frame", "truncated frame")
            return
        received = time.time()
        try:
            frame = gt06.decode_frame(raw)
        except ContractError as exc:
            await session.reject(imei, raw, exc.reason, exc.detail)
            continue
        if frame.protocol == gt06.LOGIN:
            try:
                login = gt06.parse_login(frame.content)
            except ContractError as exc:
                await session.reject(imei, raw, exc.reason, exc.detail)
                return
            if imei is not None and login != imei:
                await session.reject(imei, raw, "identity_mismatch", f"a login as {login} on {imei}'s connection")
                return
            tracker = tracker or await session.find(login)
            if tracker is None:
                return
            imei = login
            await conn.send(gt06.reply(gt06.LOGIN, frame.serial))
            continue
        if tracker is None:
            await session.reject(None, raw, "unknown_device", f"packet {frame.protocol:#04x} before a login")
            return
        source = session.source(imei)
        if frame.protocol not in _DATA:
            await session.commit(
                Frame.refused(source, raw, received, "unknown_codec", f"packet type {frame.protocol:#04x}")
            )
            continue
        at = datetime.fromtimestamp(received, UTC)
        try:
            committed = Frame.of(source, raw, received, gt06.parts(frame, tracker, at))
        except ContractError as exc:
            committed = Frame.refused(source, raw, received, exc.reason, exc.detail)
        await session.commit(committed)
        await conn.send(gt06.reply(frame.protocol, frame.serial))
