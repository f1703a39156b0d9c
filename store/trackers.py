"""Tracker identities (table ``trackers``) and the count of refused unknown ones (``tracker_refusals``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "TrackerRow",
    "count_refusals",
    "find_tracker",
    "list_trackers",
    "remove_tracker",
    "store_tracker",
    "store_trackers",
]

TrackerRow = tuple[str, str, str, str, dict[str, Any]]  # protocol, identity, tenant, vehicle_id, profile


def store_tracker(
    conn: psycopg.Connection[Any], protocol: str, identity: str, tenant: str, vehicle: str, profile: Mapping[str, Any]
) -> tuple[str, str] | None:
    """Register (or move) ``identity`` to ``tenant``/``vehicle``; returns the (tenant, vehicle) it
    reported for before, if it was registered."""
    with conn.transaction():
        before = conn.execute(
            "SELECT tenant, vehicle_id FROM trackers WHERE protocol = %s AND identity = %s FOR UPDATE",
            (protocol, identity),
        ).fetchone()
        conn.execute(
            "INSERT INTO trackers (protocol, identity, tenant, vehicle_id, profile) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (protocol, identity) DO UPDATE SET tenant = EXCLUDED.tenant, vehicle_id = EXCLUDED.vehicle_id, "
            "profile = EXCLUDED.profile, updated_at = now()",
            (protocol, identity, tenant, vehicle, Jsonb(dict(profile))),
        )
    return None if before is None else (before[0], before[1])


def store_trackers(conn: psycopg.Connection[Any], rows: list[TrackerRow]) -> None:
    """Register (or move) many identities in one transaction (a fleet, a benchmark)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO trackers (protocol, identity, tenant, vehicle_id, profile) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (protocol, identity) DO UPDATE SET tenant = EXCLUDED.tenant, vehicle_id = EXCLUDED.vehicle_id, "
            "profile = EXCLUDED.profile, updated_at = now()",
            [(p, i, t, v, Jsonb(prof)) for p, i, t, v, prof in rows],
        )


def find_tracker(conn: psycopg.Connection[Any], protocol: str, identity: str) -> TrackerRow | None:
    """The registration of ``identity``, or None."""
    row = conn.execute(
        "SELECT protocol, identity, tenant, vehicle_id, profile FROM trackers WHERE protocol = %s AND identity = %s",
        (protocol, identity),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3], dict(row[4]))


def list_trackers(conn: psycopg.Connection[Any], tenant: str | None = None) -> list[TrackerRow]:
    """Every registration (of ``tenant``), ordered by tenant, vehicle, protocol."""
    rows = conn.execute(
        "SELECT protocol, identity, tenant, vehicle_id, profile FROM trackers "
        "WHERE %(t)s::text IS NULL OR tenant = %(t)s ORDER BY tenant, vehicle_id, protocol, identity",
        {"t": tenant},
    ).fetchall()
    return [(r[0], r[1], r[2], r[3], dict(r[4])) for r in rows]


def remove_tracker(conn: psycopg.Connection[Any], protocol: str, identity: str) -> bool:
    """Forget ``identity``; True when it was registered."""
    cur = conn.execute("DELETE FROM trackers WHERE protocol = %s AND identity = %s", (protocol, identity))
    return cur.rowcount > 0


def count_refusals(
    conn: psycopg.Connection[Any], refusals: Mapping[tuple[str, str], tuple[int, datetime, datetime]]
) -> None:
    """Add ``{(protocol, identity): (attempts, first, last)}`` to ``tracker_refusals``."""
    with conn.transaction():
        for (protocol, identity), (attempts, first, last) in sorted(refusals.items()):
            conn.execute(
                "INSERT INTO tracker_refusals (protocol, identity, attempts, first_at, last_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (protocol, identity) DO UPDATE SET "
                "attempts = tracker_refusals.attempts + EXCLUDED.attempts, last_at = EXCLUDED.last_at",
                (protocol, identity[:64], attempts, first, last),
            )
