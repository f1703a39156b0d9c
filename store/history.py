"""The ETA's training history read from TimescaleDB into polars frames (``EtaHistory``).

Positions and arrivals leave the database as one ``COPY (SELECT ...) TO STDOUT (FORMAT
csv)`` each and are parsed by polars' CSV reader in bulk: no Python object per row
(times travel as integer microseconds since 1970, floats as PostgreSQL's exact
shortest text). Plans are few (one per vehicle and revision) and parsed one by one.

What is read, for one tenant and an optional ``[since, until)`` range of arrival times:

- arrivals: ``stop_events`` with ``kind = 'arrival' AND NOT retracted``, the first
  visit of each (vehicle, plan version, stop);
- plans: the revisions those arrivals belong to;
- positions: the tenant's fixes from ``lead_s`` seconds before ``since`` to ``until``
  (the replay needs the fixes before the first arrival it learns from).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl
import psycopg
from psycopg import sql

from core.plan import Plan

__all__ = ["EtaHistory", "load_eta_history"]


@dataclass(frozen=True)
class EtaHistory:
    """What the ETA is trained on (``training.eta`` describes the frames): positions, arrivals
    (with a ``plan_version`` column) and the plans they belong to, from the database or a simulation."""

    positions: pl.DataFrame
    arrivals: pl.DataFrame
    plans: list[Plan]

    def is_empty(self) -> bool:
        """No fix or no arrival (or no plan): nothing to learn from."""
        return self.positions.height == 0 or self.arrivals.height == 0 or not self.plans


_POSITIONS = {
    "tenant": pl.String,
    "vehicle_id": pl.String,
    "fix_us": pl.Int64,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "speed_mps": pl.Float64,
    "h3_cell": pl.Int64,
}
_ARRIVALS = {
    "tenant": pl.String,
    "vehicle_id": pl.String,
    "stop_id": pl.String,
    "plan_version": pl.Int64,
    "at_us": pl.Int64,
}
_US = "(extract(epoch FROM {col}) * 1000000)::bigint"


def _copy_csv(conn: psycopg.Connection, query: sql.Composable, schema: dict[str, type[pl.DataType]]) -> pl.DataFrame:
    buf = io.BytesIO()
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)) as copy:
        for block in copy:
            buf.write(block)
    if buf.tell() == 0:
        return pl.DataFrame(schema=schema)
    buf.seek(0)
    return pl.read_csv(buf, has_header=False, new_columns=list(schema), schema_overrides=schema)


def _to_time(column: str, name: str) -> pl.Expr:
    return pl.from_epoch(pl.col(column), time_unit="us").dt.replace_time_zone("UTC").alias(name)


def load_eta_history(
    conn: psycopg.Connection,
    tenant: str,
    since: datetime | None = None,
    until: datetime | None = None,
    lead_s: float = 6000.0,
) -> EtaHistory:
    """Positions, arrivals and plans of ``tenant`` for arrivals in ``[since, until)`` (UTC-aware
    datetimes; None = unbounded); see the module docstring. Empty frames when there is nothing."""
    bounds_at: sql.Composable = sql.SQL("")
    bounds_fix: sql.Composable = sql.SQL("")
    if since is not None:
        bounds_at += sql.SQL(" AND at >= {}").format(sql.Literal(since))
        bounds_fix += sql.SQL(" AND fix_time >= {}").format(sql.Literal(since - timedelta(seconds=lead_s)))
    if until is not None:
        bounds_at += sql.SQL(" AND at < {}").format(sql.Literal(until))
        bounds_fix += sql.SQL(" AND fix_time < {}").format(sql.Literal(until))
    first_arrivals = sql.SQL(
        "SELECT DISTINCT ON (vehicle_id, plan_version, stop_id) tenant, vehicle_id, stop_id, plan_version, at "
        "FROM stop_events WHERE tenant = {} AND kind = 'arrival' AND NOT retracted{} "
        "ORDER BY vehicle_id, plan_version, stop_id, at"
    ).format(sql.Literal(tenant), bounds_at)
    arrivals = _copy_csv(
        conn,
        sql.SQL("SELECT tenant, vehicle_id, stop_id, plan_version, {} FROM ({}) a").format(
            sql.SQL(_US.format(col="at")), first_arrivals
        ),
        _ARRIVALS,
    )
    arrivals = arrivals.with_columns(_to_time("at_us", "at")).drop("at_us")
    positions = _copy_csv(
        conn,
        sql.SQL(
            "SELECT tenant, vehicle_id, {}, lat, lon, speed_mps, h3_cell FROM positions WHERE tenant = {}{}"
        ).format(sql.SQL(_US.format(col="fix_time")), sql.Literal(tenant), bounds_fix),
        _POSITIONS,
    )
    positions = (
        positions.with_columns(_to_time("fix_us", "fix_time"))
        .drop("fix_us")
        .select("tenant", "vehicle_id", "fix_time", "lat", "lon", "speed_mps", "h3_cell")
    )
    plans: list[Plan] = []
    if arrivals.height:
        rows = conn.execute(
            sql.SQL(
                "SELECT p.plan FROM plans p WHERE p.tenant = {} AND EXISTS (SELECT 1 FROM ({}) a "
                "WHERE a.vehicle_id = p.vehicle_id AND a.plan_version = p.version) "
                "ORDER BY p.vehicle_id, p.version"
            ).format(sql.Literal(tenant), first_arrivals)
        ).fetchall()
        plans = [Plan.from_dict(body) for (body,) in rows]
    return EtaHistory(positions, arrivals, plans)
