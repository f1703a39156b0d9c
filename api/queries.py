"""The SQL behind every ``/v1`` endpoint. Each statement is scoped to one tenant.

Every statement here filters by ``tenant = %(tenant)s`` (``tests/unit/test_api_rows.py``
checks each one) and runs on a connection from ``TenantDatabase.session`` (dict rows).
Times are UTC-aware datetimes; H3 cells are integers here and hex in the JSON
(``api/rows.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg

from api.rows import shaped, stop_status, vehicle_payload
from store.events import LOCK_SQL, NOTIFY_SQL, merge_rev_pages

__all__ = [
    "ACTIONS",
    "AlertNotFound",
    "alert",
    "alert_action",
    "alerts",
    "cells",
    "changes_after",
    "kpis",
    "plan",
    "stop_events",
    "track",
    "vehicle",
    "vehicles",
]

Conn = psycopg.AsyncConnection[Any]
Row = dict[str, Any]

# ------------------------------------------------------------------ vehicles

VEHICLES_SQL = """
SELECT * FROM vehicle_current WHERE tenant = %(tenant)s
  AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s) ORDER BY vehicle_id
"""
TRACK_SQL = """
SELECT fix_time, lat, lon, speed_mps, heading_deg, accuracy_m FROM positions
 WHERE tenant = %(tenant)s AND vehicle_id = %(vehicle)s AND fix_time >= %(since)s AND fix_time < %(until)s
 ORDER BY fix_time LIMIT %(limit)s
"""
PLAN_SQL = """
SELECT version, plan, received_at, source FROM plans
 WHERE tenant = %(tenant)s AND vehicle_id = %(vehicle)s
 ORDER BY (version = (SELECT plan_version FROM vehicle_state s
                       WHERE s.tenant = %(tenant)s AND s.vehicle_id = %(vehicle)s)) DESC NULLS LAST, version DESC
 LIMIT 1
"""
PLAN_ETAS_SQL = """
SELECT DISTINCT ON (stop_id) stop_id, eta, at FROM eta_updates
 WHERE tenant = %(tenant)s AND vehicle_id = %(vehicle)s AND plan_version = %(version)s AND NOT retracted
 ORDER BY stop_id, at DESC
"""
PLAN_VISITS_SQL = """
SELECT kind, stop_id, visit, at, on_time, service_s FROM stop_events
 WHERE tenant = %(tenant)s AND vehicle_id = %(vehicle)s AND plan_version = %(version)s AND NOT retracted
 ORDER BY at
"""


async def vehicles(conn: Conn, tenant: str, vehicle: str | None = None) -> list[Row]:
    """Every vehicle of ``tenant`` now (``vehicle_current``), or just ``vehicle``."""
    cur = await conn.execute(VEHICLES_SQL, {"tenant": tenant, "vehicle": vehicle})
    return [vehicle_payload(r) for r in await cur.fetchall()]


async def vehicle(conn: Conn, tenant: str, vehicle_id: str) -> Row | None:
    """One vehicle now, or None."""
    found = await vehicles(conn, tenant, vehicle_id)
    return found[0] if found else None


async def track(conn: Conn, tenant: str, vehicle_id: str, since: datetime, until: datetime, limit: int) -> Row:
    """The vehicle's fixes with ``since <= fix_time < until``, oldest first, at most ``limit``."""
    cur = await conn.execute(
        TRACK_SQL, {"tenant": tenant, "vehicle": vehicle_id, "since": since, "until": until, "limit": limit}
    )
    points = [shaped(r) for r in await cur.fetchall()]
    return {
        "vehicle": vehicle_id,
        "since": shaped({"t": since})["t"],
        "until": shaped({"t": until})["t"],
        "truncated": len(points) >= limit,
        "points": points,
    }


async def plan(conn: Conn, tenant: str, vehicle_id: str) -> Row | None:
    """The vehicle's current plan (the revision the dataflow runs, else the latest stored) with,
    per stop, its arrival and departure, latest live ETA and on-time status; None without a plan."""
    args: dict[str, Any] = {"tenant": tenant, "vehicle": vehicle_id}
    cur = await conn.execute(PLAN_SQL, args)
    row = await cur.fetchone()
    if row is None:
        return None
    args["version"] = row["version"]
    etas = {r["stop_id"]: r for r in await (await conn.execute(PLAN_ETAS_SQL, args)).fetchall()}
    arrived: dict[str, datetime] = {}
    departed: dict[str, datetime] = {}
    for visit in await (await conn.execute(PLAN_VISITS_SQL, args)).fetchall():
        into = arrived if visit["kind"] == "arrival" else departed
        into.setdefault(visit["stop_id"], visit["at"])  # the first visit counts
    body = row["plan"]
    stops = []
    for stop in body.get("stops", []):
        window_start = _time(stop.get("window_start"))
        window_end = _time(stop.get("window_end"))
        eta = etas.get(stop["id"])
        eta_at = eta["eta"] if eta is not None and stop["id"] not in arrived else None
        stops.append(
            {
                **stop,
                "arrived_at": shaped({"t": arrived.get(stop["id"])})["t"],
                "departed_at": shaped({"t": departed.get(stop["id"])})["t"],
                "eta": shaped({"t": eta_at})["t"],
                "eta_predicted_at": shaped({"t": eta["at"]})["t"] if eta_at is not None and eta else None,
                "status": stop_status(window_start, window_end, arrived.get(stop["id"]), eta_at),
            }
        )
    return {
        "vehicle": vehicle_id,
        "version": row["version"],
        "received_at": shaped({"t": row["received_at"]})["t"],
        "source": row["source"],
        "route": body.get("route"),
        "temp_range_c": body.get("temp_range_c"),
        "stops": stops,
    }


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


# ------------------------------------------------------------------ alerts

_ALERT_COLUMNS = (
    "id, vehicle_id, type, severity, status, stop_id, h3_cell, start_time, end_time, details, detected_at, "
    "updated_at, rev, acknowledged_at, acknowledged_by, owner, closed_at, closed_by, comments, "
    "summary, lat, lon, stop_name, plan_version"
)
ALERTS_SQL = f"""
SELECT {_ALERT_COLUMNS} FROM alerts
 WHERE tenant = %(tenant)s
   AND (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(type)s::text IS NULL OR type = %(type)s)
   AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s)
   AND (%(since)s::timestamptz IS NULL OR start_second >= date_trunc('second', %(since)s::timestamptz))
   AND (%(until)s::timestamptz IS NULL OR start_second < %(until)s::timestamptz)
   AND (NOT %(exceptions)s OR (status = 'open' AND closed_at IS NULL))
 ORDER BY start_second DESC, id LIMIT %(limit)s
"""
ALERT_SQL = f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE tenant = %(tenant)s AND id = %(id)s"
ALERT_ACTIONS_SQL = """
SELECT seq, at, actor, action, owner, comment FROM alert_actions
 WHERE tenant = %(tenant)s AND alert_id = %(id)s ORDER BY seq
"""
# One statement per action; each bumps rev (the deliverer publishes the change) unless it
# changes nothing (acknowledging twice, closing a closed alert).
_ACTION_SQL = {
    "acknowledge": "acknowledged_at = clock_timestamp(), acknowledged_by = %(actor)s",
    "assign": "owner = %(owner)s",
    "comment": "comments = comments + 1",
    "close": "closed_at = clock_timestamp(), closed_by = %(actor)s",
    "reopen": "closed_at = NULL, closed_by = NULL",
}
_ACTION_GUARD = {
    "acknowledge": "acknowledged_at IS NULL",
    "assign": "owner IS DISTINCT FROM %(owner)s",
    "comment": "true",
    "close": "closed_at IS NULL",
    "reopen": "closed_at IS NOT NULL",
}
ACTIONS = tuple(_ACTION_SQL)
ACTION_UPDATE_SQL = {
    action: f"UPDATE alerts SET {change}, updated_at = clock_timestamp(), rev = nextval('event_rev') "
    f"WHERE tenant = %(tenant)s AND id = %(id)s AND {_ACTION_GUARD[action]} RETURNING id"
    for action, change in _ACTION_SQL.items()
}
ACTION_INSERT_SQL = """
INSERT INTO alert_actions (alert_id, tenant, actor, action, owner, comment)
SELECT %(id)s, %(tenant)s, %(actor)s, %(action)s, %(owner)s, %(comment)s
 WHERE EXISTS (SELECT 1 FROM alerts WHERE tenant = %(tenant)s AND id = %(id)s)
"""


class AlertNotFound(LookupError):
    """No alert with that id in the tenant."""


def _alert_row(row: Mapping[str, Any]) -> Row:
    out = {"vehicle": row["vehicle_id"]}
    out.update(shaped(row, frozenset({"tenant", "vehicle_id"})))
    return out


async def alerts(
    conn: Conn,
    tenant: str,
    *,
    status: str | None = None,
    type: str | None = None,
    vehicle: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    exceptions: bool = False,
    limit: int = 200,
) -> list[Row]:
    """Alerts of ``tenant``, newest start first, filtered; ``exceptions``: open and not closed by a person."""
    cur = await conn.execute(
        ALERTS_SQL,
        {
            "tenant": tenant,
            "status": status,
            "type": type,
            "vehicle": vehicle,
            "since": since,
            "until": until,
            "exceptions": exceptions,
            "limit": limit,
        },
    )
    return [_alert_row(r) for r in await cur.fetchall()]


async def alert(conn: Conn, tenant: str, alert_id: str) -> Row | None:
    """One alert with its actions (oldest first), or None."""
    cur = await conn.execute(ALERT_SQL, {"tenant": tenant, "id": alert_id})
    row = await cur.fetchone()
    if row is None:
        return None
    out = _alert_row(row)
    actions = await (await conn.execute(ALERT_ACTIONS_SQL, {"tenant": tenant, "id": alert_id})).fetchall()
    out["actions"] = [shaped(a) for a in actions]
    return out


async def alert_action(
    conn: Conn,
    tenant: str,
    alert_id: str,
    action: str,
    actor: str,
    owner: str | None = None,
    comment: str | None = None,
) -> Row:
    """Apply ``action`` (one of :data:`ACTIONS`) by ``actor``; returns the alert as it is then.

    Runs on a write session: takes the change log's lock first (``store/events.py``), so
    the new rev is in commit order, and NOTIFYs the live stream. An action that changes
    nothing (acknowledging twice) is not recorded and takes no rev; a comment always is.
    Raises AlertNotFound.
    """
    args = {
        "tenant": tenant,
        "id": alert_id,
        "actor": actor,
        "action": action,
        "owner": owner,
        "comment": comment,
    }
    await conn.execute(LOCK_SQL)
    changed = await (await conn.execute(ACTION_UPDATE_SQL[action], args)).fetchone()
    if changed is not None:
        await conn.execute(ACTION_INSERT_SQL, args)
        await conn.execute(NOTIFY_SQL)
    found = await alert(conn, tenant, alert_id)
    if found is None:
        raise AlertNotFound(alert_id)
    return found


# ------------------------------------------------------------------ stop events, KPIs, cells

STOP_EVENTS_SQL = """
SELECT id, kind, vehicle_id, stop_id, plan_version, visit, at, h3_cell, window_start, window_end, on_time,
       service_s, details, detected_at, rev, summary, lat, lon, stop_name
  FROM stop_events
 WHERE tenant = %(tenant)s AND NOT retracted
   AND (%(kind)s::text IS NULL OR kind = %(kind)s)
   AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s)
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR at < %(until)s::timestamptz)
 ORDER BY at DESC LIMIT %(limit)s
"""


async def stop_events(
    conn: Conn,
    tenant: str,
    *,
    kind: str | None = None,
    vehicle: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
) -> list[Row]:
    """Arrivals and departures (not retracted), newest first."""
    cur = await conn.execute(
        STOP_EVENTS_SQL,
        {"tenant": tenant, "kind": kind, "vehicle": vehicle, "since": since, "until": until, "limit": limit},
    )
    return [_alert_row(r) for r in await cur.fetchall()]


KPI_ON_TIME_SQL = """
SELECT count(*) FILTER (WHERE on_time IS NOT NULL) AS arrivals_with_window, count(*) FILTER (WHERE on_time) AS on_time,
       count(*) AS arrivals
  FROM stop_events
 WHERE tenant = %(tenant)s AND kind = 'arrival' AND NOT retracted AND at >= %(since)s AND at < %(until)s
"""
KPI_EXCEPTIONS_SQL = (
    "SELECT count(*) AS n FROM alerts WHERE tenant = %(tenant)s AND status = 'open' AND closed_at IS NULL"
)
KPI_ALERTS_SQL = """
SELECT type, count(*) AS raised, count(*) FILTER (WHERE status = 'open') AS open FROM alerts
 WHERE tenant = %(tenant)s AND status <> 'retracted'
   AND start_second >= date_trunc('second', %(since)s::timestamptz) AND start_second < %(until)s
 GROUP BY type ORDER BY raised DESC, type
"""
KPI_ETA_SQL = """
SELECT horizon_min, count(*) AS arrivals, avg(abs(error_s)) AS mae_s, avg(error_s) AS bias_s FROM eta_errors
 WHERE tenant = %(tenant)s AND arrived_at >= %(since)s AND arrived_at < %(until)s
 GROUP BY horizon_min ORDER BY horizon_min
"""
KPI_DWELL_SQL = """
SELECT h3_cell, count(*) AS departures, avg(service_s) AS mean_service_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY service_s) AS p90_service_s
  FROM stop_events
 WHERE tenant = %(tenant)s AND kind = 'departure' AND NOT retracted AND h3_cell IS NOT NULL
   AND at >= %(since)s AND at < %(until)s
 GROUP BY h3_cell ORDER BY departures DESC, h3_cell LIMIT 20
"""
KPI_FLEET_SQL = """
SELECT count(*) AS vehicles, count(*) FILTER (WHERE motion = 'moving') AS moving FROM vehicle_state
 WHERE tenant = %(tenant)s
"""


async def _all(conn: Conn, sql: str, args: Mapping[str, Any]) -> list[Row]:
    return [shaped(r) for r in await (await conn.execute(sql, args)).fetchall()]


async def kpis(conn: Conn, tenant: str, day_start: datetime) -> Row:
    """The day's KPIs (``day_start``: 00:00 UTC of the day): on-time rate, open exceptions (now),
    ETA accuracy by horizon, dwell by zone, alerts by type, vehicles."""
    args = {"tenant": tenant, "since": day_start, "until": day_start + timedelta(days=1)}
    on_time = (await _all(conn, KPI_ON_TIME_SQL, args))[0]
    with_window = on_time["arrivals_with_window"]
    return {
        "day": day_start.date().isoformat(),
        "on_time_rate": on_time["on_time"] / with_window if with_window else None,
        "arrivals": on_time["arrivals"],
        "arrivals_with_window": with_window,
        "on_time": on_time["on_time"],
        "open_exceptions": (await _all(conn, KPI_EXCEPTIONS_SQL, args))[0]["n"],
        "eta_accuracy": await _all(conn, KPI_ETA_SQL, args),
        "dwell_by_zone": await _all(conn, KPI_DWELL_SQL, args),
        "alerts_by_type": await _all(conn, KPI_ALERTS_SQL, args),
        **(await _all(conn, KPI_FLEET_SQL, args))[0],
    }


CELLS_SQL = """
SELECT h3_cell, sum(fixes) AS fixes, count(DISTINCT vehicle_id) AS vehicles,
       sum(speed_sum) / nullif(sum(speed_n), 0) AS mean_speed_mps, sum(stopped_s) / 60.0 AS dwell_minutes
  FROM cell_minutes
 WHERE tenant = %(tenant)s AND minute >= %(since)s AND minute < %(until)s
 GROUP BY h3_cell
"""
CELL_ALERTS_SQL = """
SELECT h3_cell, count(*) AS alerts FROM alerts
 WHERE tenant = %(tenant)s AND status <> 'retracted' AND h3_cell IS NOT NULL
   AND start_second >= date_trunc('second', %(since)s::timestamptz) AND start_second < %(until)s
 GROUP BY h3_cell
"""


async def cells(conn: Conn, tenant: str, since: datetime, until: datetime) -> list[Row]:
    """Per H3 cell over ``[since, until)``: fixes, vehicles, mean speed (m/s), dwell (standing
    minutes) and alerts raised there."""
    args = {"tenant": tenant, "since": since, "until": until}
    by_cell: dict[int, Row] = {}
    for r in await (await conn.execute(CELLS_SQL, args)).fetchall():
        by_cell[r["h3_cell"]] = {**r, "alerts": 0}
    for r in await (await conn.execute(CELL_ALERTS_SQL, args)).fetchall():
        by_cell.setdefault(
            r["h3_cell"],
            {"h3_cell": r["h3_cell"], "fixes": 0, "vehicles": 0, "mean_speed_mps": None, "dwell_minutes": 0.0},
        )["alerts"] = r["alerts"]
    return [shaped(r) for _, r in sorted(by_cell.items())]


# ------------------------------------------------------------------ the change log (live stream)

CHANGES_SQL = {
    "alerts": "SELECT 'alerts' AS \"table\", x.* FROM alerts x WHERE tenant = %(tenant)s AND rev > %(after)s"
    " AND rev <= %(upto)s ORDER BY rev LIMIT %(limit)s",
    "stop_events": "SELECT 'stop_events' AS \"table\", x.* FROM stop_events x WHERE tenant = %(tenant)s"
    " AND rev > %(after)s AND rev <= %(upto)s ORDER BY rev LIMIT %(limit)s",
    "eta_updates": "SELECT 'eta_updates' AS \"table\", x.* FROM eta_updates x WHERE tenant = %(tenant)s"
    " AND rev > %(after)s AND rev <= %(upto)s ORDER BY rev LIMIT %(limit)s",
    "vehicle_current": "SELECT 'vehicle_current' AS \"table\", x.* FROM vehicle_current x WHERE tenant = %(tenant)s"
    " AND rev > %(after)s AND rev <= %(upto)s ORDER BY rev LIMIT %(limit)s",
}
MAX_REV_SQL = """
SELECT GREATEST((SELECT max(rev) FROM alerts WHERE tenant = %(tenant)s),
                (SELECT max(rev) FROM stop_events WHERE tenant = %(tenant)s),
                (SELECT max(rev) FROM eta_updates WHERE tenant = %(tenant)s),
                (SELECT max(rev) FROM vehicle_state WHERE tenant = %(tenant)s), 0) AS rev
"""


async def changes_after(conn: Conn, tenant: str, after: int, upto: int | None = None, limit: int = 500) -> list[Row]:
    """The tenant's changes with ``after < rev <= upto``, in rev order, about ``limit`` at most
    (ask again after the last one returned for more). Each row carries ``table``."""
    args = {"tenant": tenant, "after": after, "upto": upto if upto is not None else 2**62, "limit": limit}
    pages = [await (await conn.execute(sql, args)).fetchall() for sql in CHANGES_SQL.values()]
    return [dict(r) for r in merge_rev_pages(pages, limit)]


async def max_rev(conn: Conn, tenant: str) -> int:
    """The tenant's highest committed rev: a cursor with nothing missed behind it. Writers hold
    the change log's lock from nextval to commit, so every uncommitted rev is above it."""
    row = await (await conn.execute(MAX_REV_SQL, {"tenant": tenant})).fetchone()
    return int(row["rev"]) if row is not None else 0
