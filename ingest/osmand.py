"""The OsmAnd front end: HTTP/1.1 requests of the Traccar Client (``ingest/protocols/osmand.py``).

Each request is committed before it is answered: ``200`` once its rows are stored, ``400`` with
the reason when something in it was refused (a missing or badly formed field, a value out of
range, an unknown device id; the request is then a dead letter, or the refused report is), so a
phone never deletes a report the server did not keep. While the database is away nothing is
answered (the phone times out and sends the report again; it is stored once). Keep-alive
connections are served request after request; a request over ``device_max_frame_bytes``, a
chunked body or a broken request line is refused and the connection closed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from core.contract import ContractError
from ingest.frontend import Frame
from ingest.listener import Connection, Session
from ingest.protocols import osmand

__all__ = ["serve"]

_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large"}


async def _answer(conn: Connection, status: int, text: str = "", close: bool = False) -> None:
    body = (text + "\n").encode() if text else b""
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: {len(body)}\r\n"
    head += "Content-Type: text/plain; charset=utf-8\r\n" if body else ""
    head += "Connection: close\r\n" if close else ""
    await conn.send(head.encode() + b"\r\n" + body)


async def serve(conn: Connection, session: Session) -> None:
    limit = session.max_frame_bytes
    while True:
        head = await conn.take_until(b"\r\n\r\n", limit)
        if head is None:
            await session.reject(None, conn.pending(), "oversized", f"a request head over {limit} bytes")
            await _answer(conn, 413, "request too large", close=True)
            return
        try:
            request = osmand.parse_head(head[:-4])
            length = request.content_length
        except ContractError as exc:
            await session.reject(None, head, exc.reason, exc.detail)
            await _answer(conn, 400, f"{exc.reason}: {exc.detail}", close=True)
            return
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            await _answer(conn, 411, "send a Content-Length", close=True)
            return
        if len(head) + length > limit:
            await session.reject(None, head, "oversized", f"a request of {len(head) + length} bytes > {limit}")
            await _answer(conn, 413, "request too large", close=True)
            return
        if length and request.headers.get("expect", "").lower() == "100-continue":
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl, for example, waits for it
        body = await conn.take(length)
        received = time.time()
        if request.method not in ("GET", "POST"):
            await _answer(conn, 405, "GET or POST", close=not request.keep_alive)
        else:
            status, text = await _report(session, head + body, request, body, received)
            await _answer(conn, status, text, close=not request.keep_alive)
        if not request.keep_alive:
            return


async def _report(
    session: Session, raw: bytes, request: osmand.Request, body: bytes, received: float
) -> tuple[int, str]:
    try:
        reports = osmand.parse_request(request, body)
    except ContractError as exc:
        await session.reject(None, raw, exc.reason, exc.detail)
        return 400, f"{exc.reason}: {exc.detail}"
    device = reports[0].device_id
    tracker = await session.find(device)
    if tracker is None:
        await session.reject(device[:64], raw, "unknown_device", f"device id {device[:64]!r} is not provisioned")
        return 400, "unknown_device: this device id is not provisioned"
    at = datetime.fromtimestamp(received, UTC)
    outcome = await session.commit(Frame.of(session.source(device), raw, received, osmand.parts(reports, tracker, at)))
    if outcome.rejected:
        reason, detail = outcome.rejected[0]
        return 400, f"{reason}: {detail}"
    return 200, ""
