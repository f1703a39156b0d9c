"""The two CRC-16 variants the tracker protocols use (table-driven: a packet is checked per frame)."""

from __future__ import annotations

__all__ = ["crc16_ibm", "crc16_x25"]


def _reflected_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_IBM = _reflected_table(0xA001)  # 0x8005 reflected
_X25 = _reflected_table(0x8408)  # 0x1021 reflected


def crc16_ibm(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/IBM, also called CRC-16/ARC (Teltonika): poly 0x8005 reflected, init 0, no final xor.
    Check value over ``b"123456789"``: 0xBB3D."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _IBM[(crc ^ byte) & 0xFF]
    return crc


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25, the GT06 documents' "CRC-ITU": poly 0x1021 reflected, init 0xFFFF, final xor
    0xFFFF. Check value over ``b"123456789"``: 0x906E."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _X25[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF
