"""Device-side helpers of the tracker integration tests: a blocking Teltonika client and the
engine's settings with the listeners on (ports from FLEETSTREAM_TEST_LISTEN_PORT)."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from datetime import datetime

from core.settings import Settings
from ingest.protocols import teltonika
from ingest.protocols.teltonika import CODEC_8E, AvlRecord, IoElement
from tests.integration.conftest import TEST_LISTEN_PORT

__all__ = ["TeltonikaClient", "gps_records", "with_listeners"]


def with_listeners(settings: Settings) -> Settings:
    """``settings`` with the three tracker listeners on their test ports."""
    return replace(
        settings, teltonika_port=TEST_LISTEN_PORT, gt06_port=TEST_LISTEN_PORT + 1, osmand_port=TEST_LISTEN_PORT + 2
    )


def gps_records(start: datetime, first: int, count: int, step_s: float = 1.0) -> list[AvlRecord]:
    """``count`` records with a fix each (and a Dallas probe), numbered from ``first``."""
    ms = int(start.timestamp() * 1000)
    return [
        AvlRecord(
            ms + int((first + i) * step_s * 1000),
            0,
            249_384_000 + (first + i) * 100,
            601_699_000 + (first + i) * 100,
            15,
            90,
            9,
            36,
            0,
            (IoElement(72, 2, 40 + (first + i) % 5), IoElement(66, 2, 12_600)),
        )
        for i in range(count)
    ]


class TeltonikaClient:
    """A Teltonika device's side of the protocol, one blocking socket; reconnects on demand."""

    def __init__(self, port: int, imei: str, timeout_s: float = 60.0) -> None:
        self.port, self.imei, self.timeout_s = port, imei, timeout_s
        self.sock: socket.socket | None = None

    def connect(self, attempts: int = 200) -> bytes:
        """Connect and identify; the server's answer (``01`` accepted, ``00`` refused). Retries
        while the listener is down (0.1 s apart, ``attempts`` times)."""
        for attempt in range(attempts):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout_s)
                sock.sendall(teltonika.encode_imei(self.imei))
                answer = sock.recv(1)
                if answer:
                    self.sock = sock
                    return answer
                sock.close()
            except OSError:
                if attempt == attempts - 1:
                    raise
            time.sleep(0.1)
        raise ConnectionError("no answer to the IMEI")

    def send(self, packet: bytes) -> int:
        """Send ``packet`` and return the record count the server acknowledged (ConnectionError if
        the connection broke first)."""
        assert self.sock is not None
        self.sock.sendall(packet)
        answer = b""
        while len(answer) < 4:
            chunk = self.sock.recv(4 - len(answer))
            if not chunk:
                raise ConnectionError("closed before the acknowledgement")
            answer += chunk
        return int.from_bytes(answer, "big")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def packet(records: list[AvlRecord]) -> bytes:
    return teltonika.encode_packet(CODEC_8E, records)
