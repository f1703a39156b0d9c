"""The Teltonika front end: one device connection, Codec 8 / 8E / 16 (``ingest/protocols/teltonika.py``).

The IMEI handshake is accepted (``01``) only for a provisioned IMEI; any other gets ``00`` and the
connection is closed (and the IMEI counted in ``tracker_refusals``). Each AVL packet is committed,
then acknowledged with its record count; records are stored once however often the device sends
the packet again, because each reading's seq is derived from its record. A packet with a bad CRC
or a broken layout is a dead letter and answered with ``0`` (nothing accepted: the device sends it
again); a packet of another codec (e.g. a Codec 12 command response) is a dead letter and not
answered. A broken preamble, an oversized or a truncated packet is a dead letter, and the
connection is closed: the stream cannot be resynchronised.
"""

from __future__ import annotations

import time

from core.contract import ContractError
from ingest.frontend import Frame
from ingest.listener import Closed, Connection, Session
from ingest.protocols import teltonika
from ingest.protocols.teltonika import HEADER_BYTES

__all__ = ["serve"]

_MAX_IMEI_BYTES = 32


async def serve(conn: Connection, session: Session) -> None:
    head = await conn.take(2)
    length = int.from_bytes(head, "big")
    if not 0 < length <= _MAX_IMEI_BYTES:
        session.directory.refuse("teltonika", f"handshake {head.hex()}")
        return
    try:
        imei = teltonika.decode_imei(await conn.take(length))
    except ContractError:
        session.directory.refuse("teltonika", "handshake not digits")
        return
    tracker = await session.find(imei)
    if tracker is None:
        await conn.send(b"\x00")
        return
    await conn.send(b"\x01")
    source = session.source(imei)
    while True:
        try:
            header = await conn.take(HEADER_BYTES)
        except Closed as closed:
            if closed.partial:
                await session.reject(imei, closed.partial, "bad_frame", f"truncated: {len(closed.partial)} bytes")
            return
        try:
            total = teltonika.packet_length(header)
        except ContractError as exc:
            await session.reject(imei, header + conn.pending(), exc.reason, exc.detail)
            return
        if total > session.max_frame_bytes:
            detail = f"a packet of {total} bytes > device_max_frame_bytes {session.max_frame_bytes}"
            await session.reject(imei, header + conn.pending(), "oversized", detail)
            return
        try:
            raw = header + await conn.take(total - HEADER_BYTES)
        except Closed as closed:
            detail = f"truncated: {HEADER_BYTES + len(closed.partial)} of {total} bytes"
            await session.reject(imei, header + closed.partial, "bad_frame", detail)
            return
        received = time.time()
        try:
            packet = teltonika.decode_packet(raw)
        except ContractError as exc:
            await session.commit(Frame.refused(source, raw, received, exc.reason, exc.detail))
            if exc.reason != "unknown_codec":
                await conn.send(teltonika.ack(0))
            continue
        await session.commit(Frame.of(source, raw, received, teltonika.parts(packet, tracker)))
        await conn.send(teltonika.ack(len(packet.records)))
