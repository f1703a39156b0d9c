"""Bytewax connectors to TimescaleDB: a replayable source and idempotent sinks.

The readings source merges the writer shards' committed rows in receive order (the gateway's
shards 0 .. gateway_workers - 1 and the tracker front ends' ``FRONT_END_SHARDS``, each numbered
by its own single writer);
its snapshot is each shard's last ``shard_seq`` handed downstream, so after a
crash Bytewax resumes each shard right after the last snapshotted row: with the operators' state restored from the same snapshot,
derived results are exactly-once in effect. Sinks write with keys that make a
repeated write harmless, and never raise on a database outage (an exception in
a sink would abort the whole dataflow): they retry until it is back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from psycopg.types.json import Jsonb

from core.contract import DoorEvent, GpsFix, TemperatureReading
from core.metrics import ALERTS_RAISED, FLOW_HEARTBEAT, FLOW_LAG_READINGS, FLOW_LAG_SECONDS
from core.plan import PlanLimits
from pipelines.analytics import EventOut, Output, PlanUpdate, Resynced
from pipelines.cells import CellMinute
from pipelines.meter import COLUMNS as LAG_COLUMNS
from pipelines.meter import METER
from pipelines.trackers.events import Alert, EtaUpdate, StopEvent
from pipelines.vehicle_state import StoredReading, VehicleSummary
from store.db import connect
from store.events import LOCK_SQL, NOTIFY_SQL
from store.plans import plans_after

__all__ = ["AnalyticsStore", "CommittedReadings", "VehicleStateSink", "measure_lag", "read_after"]

log = logging.getLogger("fleetstream.flow")

_COMMON = "shard_seq, tenant, vehicle_id, seq, fix_time, device_time, received_at"
_READ_AFTER = f"""
(SELECT {_COMMON}, 'gps' AS kind, lat, lon, speed_mps, heading_deg, accuracy_m, alt_m, h3_cell,
        NULL::text AS label, NULL::real AS celsius, NULL::boolean AS is_open
   FROM positions WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT %(limit)s)
UNION ALL
(SELECT {_COMMON}, 'temp', NULL, NULL, NULL, NULL, NULL, NULL, NULL, sensor, celsius, NULL
   FROM temperatures WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT %(limit)s)
UNION ALL
(SELECT {_COMMON}, 'door', NULL, NULL, NULL, NULL, NULL, NULL, NULL, door, NULL, is_open
   FROM door_events WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT %(limit)s)
ORDER BY shard_seq LIMIT %(limit)s
"""


def _to_stored(row: tuple[Any, ...], shard: int) -> StoredReading:
    (
        shard_seq,
        tenant,
        vehicle,
        seq,
        fix_time,
        device_time,
        received_at,
        kind,
        lat,
        lon,
        speed,
        heading,
        accuracy,
        alt,
        cell,
        label,
        celsius,
        is_open,
    ) = row
    reading: GpsFix | TemperatureReading | DoorEvent
    if kind == "gps":
        reading = GpsFix(tenant, vehicle, seq, fix_time, lat, lon, speed, heading, accuracy, alt, device_time)
    elif kind == "temp":
        reading = TemperatureReading(tenant, vehicle, seq, fix_time, label, celsius, device_time)
    else:
        reading = DoorEvent(tenant, vehicle, seq, fix_time, label, is_open, device_time)
    return StoredReading(reading, cell, received_at, shard, shard_seq)


def read_after(conn: psycopg.Connection, shard: int, after: int, limit: int) -> list[StoredReading]:
    """Committed readings of ``shard`` with ``shard_seq > after``, in commit order."""
    rows = conn.execute(_READ_AFTER, {"shard": shard, "after": after, "limit": limit}).fetchall()
    return [_to_stored(row, shard) for row in rows]


def _receive_prefixes(reads: dict[int, list[StoredReading]], limit: int) -> dict[int, list[StoredReading]]:
    """What to hand on of each shard's read (rows in shard_seq order): a prefix of each.

    A full read (``limit`` rows) may leave rows of that shard received before its newest
    one unread, so every shard is cut at the earliest of the full reads' newest receive
    times. Receive time is not monotonic in shard_seq: one commit numbers all its positions,
    then its temperatures, then its door events, each in message order, and under a backlog
    a commit holds up to ``gateway_batch_max`` messages (far more rows than one read). So a
    shard's prefix runs while the running maximum of its receive times stays within the
    cutoff, never stopping at the first row past it: the read that sets the cutoff is then
    taken whole, and every poll makes progress (stopping at the first row past the cutoff,
    a read ending in a commit's temperatures could hand on nothing, poll after poll).
    """
    full = [max(r.received_at for r in rows) for rows in reads.values() if len(rows) >= limit]
    if not full:
        return dict(reads)
    cutoff = min(full)
    out: dict[int, list[StoredReading]] = {}
    for shard, rows in reads.items():
        n, newest = 0, None
        while n < len(rows):
            at = rows[n].received_at
            if newest is None or at > newest:
                newest = at
            if newest > cutoff:
                break
            n += 1
        out[shard] = rows[:n]
    return out


PLANS = -1  # the plan revisions' position in the source's snapshot
_LAG_EVERY_S = 1.0  # wall seconds between two lag measurements of the source
_FIRST_UNREAD = """
SELECT min(received_at) FROM (
    (SELECT received_at FROM positions WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT 1)
    UNION ALL
    (SELECT received_at FROM temperatures WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT 1)
    UNION ALL
    (SELECT received_at FROM door_events WHERE shard = %(shard)s AND shard_seq > %(after)s ORDER BY shard_seq LIMIT 1)
) first_unread
"""


def measure_lag(conn: psycopg.Connection, after: dict[int, int]) -> tuple[int, float]:
    """(readings, seconds) the dataflow is behind the gateway: readings committed past
    ``after`` (shard -> last shard_seq read), and the age of the oldest of them (0, 0.0
    when caught up). Readings count from the shards' ``last_seq``, which also numbers
    repeats that were not stored; a shard with no unread row counts 0."""
    behind, oldest = 0, None
    for shard, last_seq in conn.execute("SELECT shard, last_seq FROM gateway_shards").fetchall():
        if shard not in after or int(last_seq) <= after[shard]:
            continue
        row = conn.execute(_FIRST_UNREAD, {"shard": shard, "after": after[shard]}).fetchone()
        first = row[0] if row else None
        if first is None:
            continue
        behind += int(last_seq) - after[shard]
        oldest = first if oldest is None or first < oldest else oldest
    seconds = max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest is not None else 0.0
    return behind, seconds


class _MergedShards(StatefulSourcePartition[StoredReading | PlanUpdate, dict[int, int]]):
    """New plan revisions, then all shards' committed rows merged in receive order; the snapshot
    is the last plan_seq (key ``PLANS``) and each shard's last shard_seq.

    Plans come first in each poll, so a plan stored before its vehicle reports applies from
    its first reading (two separate inputs would race).

    Per poll each shard's next rows are read; a shard that returned a full read may have
    more rows received before its last one, so only rows received up to the earliest such
    read's receive time are handed on (a prefix per shard; the rest are read again next
    time; see ``_receive_prefixes``). So one shard never runs hours ahead of another when a
    backlog drains, which the vehicles' reorder buffers could not absorb.
    """

    def __init__(
        self,
        dsn: str,
        shards: list[int],
        after: dict[int, int],
        limit: int,
        poll_s: float,
        with_plans: bool,
        plan_limits: PlanLimits | None = None,
    ) -> None:
        self.dsn, self.shards, self.limit, self.poll_s, self.with_plans = dsn, shards, limit, poll_s, with_plans
        self.plan_limits = plan_limits
        self.after = {shard: after.get(shard, 0) for shard in shards}
        self.plans_after = after.get(PLANS, 0)
        self.conn: psycopg.Connection | None = None
        self._awake: datetime | None = None
        self._lag_measured = 0.0  # monotonic time of the last lag measurement

    def next_batch(self) -> list[StoredReading | PlanUpdate]:
        with METER.phase("source"):
            return self._next_batch()

    def _next_batch(self) -> list[StoredReading | PlanUpdate]:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn, autocommit=True)
            skipped: list[int] = []
            plans = (
                [
                    PlanUpdate(plan, seq, at)
                    for seq, plan, at in plans_after(self.conn, self.plans_after, self.limit, self.plan_limits, skipped)
                ]
                if self.with_plans
                else []
            )
            reads = {shard: read_after(self.conn, shard, after, self.limit) for shard, after in self.after.items()}
        except psycopg.OperationalError as exc:
            log.warning("source: database unavailable (%s)", str(exc).strip()[:120])
            self.conn = None
            self._awake = datetime.now(UTC) + timedelta(seconds=1)
            return []
        if plans or skipped:
            self.plans_after = max([self.plans_after, *skipped, *(p.plan_seq for p in plans)])
        full = any(len(rows) >= self.limit for rows in reads.values())
        batch: list[StoredReading] = []
        for shard, taken in _receive_prefixes(reads, self.limit).items():
            if taken:
                self.after[shard] = taken[-1].shard_seq
                batch += taken
        batch.sort(key=lambda r: (r.received_at, r.shard, r.shard_seq))
        self._awake = None if full else datetime.now(UTC) + timedelta(seconds=self.poll_s)
        self._report()
        return [*plans, *batch]

    def _report(self) -> None:
        """The metrics: a heartbeat on every read, the lag at most every ``_LAG_EVERY_S``."""
        FLOW_HEARTBEAT.set(time.time())
        if self.conn is None or time.monotonic() - self._lag_measured < _LAG_EVERY_S:
            return
        self._lag_measured = time.monotonic()
        try:
            readings, seconds = measure_lag(self.conn, self.after)
        except psycopg.Error as exc:  # a metric never stops the source
            log.warning("source: could not measure the lag (%s)", str(exc).strip()[:120])
            return
        FLOW_LAG_READINGS.set(readings)
        FLOW_LAG_SECONDS.set(seconds)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> dict[int, int]:
        return {**self.after, PLANS: self.plans_after}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class CommittedReadings(FixedPartitionedSource[StoredReading | PlanUpdate, dict[int, int]]):
    """Readings the writers committed, the ``shards`` merged in receive order, and (``with_plans``)
    plan revisions ahead of them; replayable from each shard's last shard_seq and the last
    plan_seq (one partition: the engine's dataflow runs one worker). ``shards``: the writer shards
    to read (``Settings.replay_shards()``), or a count n for shards 0 .. n - 1. A stored plan
    revision past ``plan_limits`` (stored before they were set) is skipped, never analysed."""

    def __init__(
        self,
        dsn: str,
        shards: int | list[int],
        limit: int = 5000,
        poll_s: float = 0.2,
        with_plans: bool = False,
        plan_limits: PlanLimits | None = None,
    ) -> None:
        self.dsn, self.limit, self.poll_s = dsn, limit, poll_s
        self.shards = list(range(shards)) if isinstance(shards, int) else list(shards)
        self.with_plans = with_plans
        self.plan_limits = plan_limits

    def list_parts(self) -> list[str]:
        return ["committed"]

    def build_part(self, step_id: str, for_part: str, resume_state: dict[int, int] | None) -> _MergedShards:
        return _MergedShards(
            self.dsn, self.shards, resume_state or {}, self.limit, self.poll_s, self.with_plans, self.plan_limits
        )


def _retrying(what: str, action: Callable[[], None]) -> None:
    delay = 0.5
    while True:
        try:
            action()
            return
        except psycopg.OperationalError as exc:
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, str(exc).strip()[:120], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _column(field: str) -> str:
    return "vehicle_id" if field == "vehicle" else field


def _upsert(
    table: str, fields: tuple[str, ...], key: tuple[str, ...], stamp: str | None = None, rev: bool = False
) -> str:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` of a row given positionally in ``fields`` order;
    ``stamp`` names a column set to ``clock_timestamp()``; ``rev``: an update takes a new
    ``rev`` from ``event_rev`` (an insert takes one by the column's default)."""
    columns = [_column(f) for f in fields] + ([stamp] if stamp else [])
    values = ["%s"] * len(fields) + (["clock_timestamp()"] if stamp else [])
    updates = ", ".join(
        [f"{c} = EXCLUDED.{c}" for c in columns if c not in key] + (["rev = EXCLUDED.rev"] if rev else [])
    )
    if rev:
        columns.append("rev")
        values.append("nextval('event_rev')")
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(VehicleSummary))
_STATE_UPSERT = _upsert("vehicle_state", _STATE_FIELDS, ("tenant", "vehicle_id"), stamp="processed_at", rev=True)

# A change bumps rev (the delivery order); an identical re-write (a replay) changes nothing.
_ALERT_UPSERT = """
    INSERT INTO alerts (start_second, id, tenant, vehicle_id, type, severity, status, stop_id, h3_cell,
        start_time, end_time, details, detected_at, lat, lon, stop_name, plan_version, summary)
    VALUES (date_trunc('second', %(start)s::timestamptz), %(id)s, %(tenant)s, %(vehicle)s, %(type)s, %(severity)s,
        %(status)s, %(stop_id)s, %(h3_cell)s, %(start)s, %(end)s, %(details)s, %(detected_at)s, %(lat)s, %(lon)s,
        %(stop_name)s, %(plan_version)s, %(summary)s)
    ON CONFLICT (id, start_second) DO UPDATE SET
        status = EXCLUDED.status, severity = EXCLUDED.severity, stop_id = EXCLUDED.stop_id,
        h3_cell = EXCLUDED.h3_cell, start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
        details = EXCLUDED.details, lat = EXCLUDED.lat, lon = EXCLUDED.lon, stop_name = EXCLUDED.stop_name,
        plan_version = EXCLUDED.plan_version, summary = EXCLUDED.summary,
        updated_at = clock_timestamp(), rev = nextval('event_rev')
    WHERE (alerts.status, alerts.end_time, alerts.details, alerts.start_time, alerts.h3_cell)
          IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.end_time, EXCLUDED.details, EXCLUDED.start_time,
                            EXCLUDED.h3_cell)
    RETURNING type, (xmax = 0) AS inserted
"""
_STOP_UPSERT = """
    INSERT INTO stop_events (id, kind, tenant, vehicle_id, stop_id, plan_version, visit, at, h3_cell,
        window_start, window_end, on_time, service_s, details, retracted, detected_at, lat, lon, stop_name, summary)
    VALUES (%(id)s, %(kind)s, %(tenant)s, %(vehicle)s, %(stop_id)s, %(plan_version)s, %(visit)s, %(at)s,
        %(h3_cell)s, %(window_start)s, %(window_end)s, %(on_time)s, %(service_s)s, %(details)s, %(retracted)s,
        %(detected_at)s, %(lat)s, %(lon)s, %(stop_name)s, %(summary)s)
    ON CONFLICT (id) DO UPDATE SET
        at = EXCLUDED.at, on_time = EXCLUDED.on_time, service_s = EXCLUDED.service_s, details = EXCLUDED.details,
        lat = EXCLUDED.lat, lon = EXCLUDED.lon, stop_name = EXCLUDED.stop_name, summary = EXCLUDED.summary,
        retracted = EXCLUDED.retracted, h3_cell = EXCLUDED.h3_cell, window_start = EXCLUDED.window_start,
        window_end = EXCLUDED.window_end, updated_at = clock_timestamp(), rev = nextval('event_rev')
    WHERE (stop_events.at, stop_events.details, stop_events.retracted)
          IS DISTINCT FROM (EXCLUDED.at, EXCLUDED.details, EXCLUDED.retracted)
"""
# A resumed vehicle disowns what a crashed run wrote after its snapshot (see Resynced).
_ALERT_DISOWN = """
    UPDATE alerts SET status = 'retracted', updated_at = clock_timestamp(), rev = nextval('event_rev')
    WHERE tenant = %(tenant)s AND vehicle_id = %(vehicle)s AND status <> 'retracted' AND type <> 'offline'
      AND NOT (id = ANY(%(ids)s::uuid[]))
      AND (status = 'open' OR %(horizon)s::timestamptz IS NULL OR coalesce(end_time, start_time) >= %(horizon)s)
"""
_STOP_DISOWN = """
    UPDATE stop_events SET retracted = true, updated_at = clock_timestamp(), rev = nextval('event_rev')
    WHERE tenant = %(tenant)s AND vehicle_id = %(vehicle)s AND NOT retracted AND NOT (id = ANY(%(ids)s::uuid[]))
      AND (%(horizon)s::timestamptz IS NULL OR at >= %(horizon)s)
"""
# Each prediction is its own row; only a correction changes one (retracted), bumping rev.
_ETA_UPSERT = """
    INSERT INTO eta_updates (at, id, tenant, vehicle_id, stop_id, plan_version, eta, h3_cell, window_end, method,
        state, details, retracted, detected_at)
    VALUES (%(at)s, %(id)s, %(tenant)s, %(vehicle)s, %(stop_id)s, %(plan_version)s, %(eta)s, %(h3_cell)s,
        %(window_end)s, %(method)s, %(state)s, %(details)s, %(retracted)s, %(detected_at)s)
    ON CONFLICT (id, at) DO UPDATE SET
        eta = EXCLUDED.eta, details = EXCLUDED.details, retracted = EXCLUDED.retracted, method = EXCLUDED.method,
        state = EXCLUDED.state, h3_cell = EXCLUDED.h3_cell, window_end = EXCLUDED.window_end,
        updated_at = clock_timestamp(), rev = nextval('event_rev')
    WHERE (eta_updates.eta, eta_updates.details, eta_updates.retracted)
          IS DISTINCT FROM (EXCLUDED.eta, EXCLUDED.details, EXCLUDED.retracted)
"""
_CELL_UPSERT = _upsert("cell_minutes", CellMinute._fields, ("tenant", "h3_cell", "vehicle_id", "minute"))


def _state_row(s: VehicleSummary) -> list[Any]:
    row = [getattr(s, f) for f in _STATE_FIELDS]
    return [list(v) if isinstance(v, tuple) else v for v in row]  # open_doors: a text[]


def _alert_row(a: Alert, detected_at: datetime) -> dict[str, Any]:
    return {
        "id": a.id,
        "tenant": a.tenant,
        "vehicle": a.vehicle,
        "type": a.type,
        "severity": a.severity,
        "status": a.status,
        "stop_id": a.stop_id,
        "h3_cell": a.h3_cell,
        "start": a.start,
        "end": a.end,
        "details": Jsonb(a.details),
        "detected_at": detected_at,
        # the context (pipelines/trackers/context.py) as columns too: what people filter on
        "lat": a.details.get("lat"),
        "lon": a.details.get("lon"),
        "stop_name": a.details.get("stop_name"),
        "plan_version": a.details.get("plan_version"),
        "summary": a.details.get("summary"),
    }


def _stop_row(e: StopEvent, detected_at: datetime, stop: dict[str, Any] | None) -> dict[str, Any]:
    d = e.details
    window = d.get("window")
    stop = stop or {}
    return {
        "id": e.id,
        "kind": e.kind,
        "tenant": e.tenant,
        "vehicle": e.vehicle,
        "stop_id": e.stop_id,
        "plan_version": d.get("plan_version", 0),
        "visit": d.get("visit", 1),
        "at": e.at,
        "h3_cell": stop.get("h3_cell"),
        "window_start": stop.get("window_start"),
        "window_end": stop.get("window_end"),
        "on_time": None if e.kind != "arrival" or window is None else window == "on_time",
        "service_s": d.get("service_s"),
        "details": Jsonb(d),
        "retracted": e.retracted,
        "detected_at": detected_at,
        "lat": d.get("lat"),
        "lon": d.get("lon"),
        "stop_name": d.get("stop_name"),
        "summary": d.get("summary"),
    }


def _eta_row(e: EtaUpdate, detected_at: datetime, stop: dict[str, Any] | None) -> dict[str, Any]:
    d = e.details
    stop = stop or {}
    return {
        "at": e.at,
        "id": e.id,
        "tenant": e.tenant,
        "vehicle": e.vehicle,
        "stop_id": e.stop_id,
        "plan_version": e.plan_version,
        "eta": e.eta,
        "h3_cell": stop.get("h3_cell"),
        "window_end": stop.get("window_end"),
        "method": d.get("method"),
        "state": d.get("state"),
        "details": Jsonb(d),
        "retracted": e.retracted,
        "detected_at": detected_at,
    }


class _Writer:
    """One connection, one transaction per batch, retried through database outages.

    Every transaction holds the change log's lock from its first ``nextval('event_rev')``
    to its commit (rev order = commit order, see ``store/events.py``) and ends with a
    NOTIFY that wakes the API's live stream.
    """

    def __init__(self, dsn: str, what: str) -> None:
        self.dsn, self.what = dsn, what
        self.conn: psycopg.Connection | None = None

    def run(self, statements: list[tuple[str, list[Any]]]) -> dict[str, list[tuple[Any, ...]]]:
        """Run each (sql, rows) in one transaction; returns what each statement with a
        ``RETURNING`` clause returned, by its sql."""
        statements = [(sql, rows) for sql, rows in statements if rows]
        returned: dict[str, list[tuple[Any, ...]]] = {}
        if not statements:
            return returned

        def write() -> None:
            returned.clear()
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn)
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute(LOCK_SQL)
                    for sql, rows in statements:
                        if " RETURNING " in sql:
                            cur.executemany(sql, rows, returning=True)
                            got = returned.setdefault(sql, [])
                            while True:
                                got += cur.fetchall()
                                if not cur.nextset():
                                    break
                        else:
                            cur.executemany(sql, rows)
                    cur.execute(NOTIFY_SQL)
            except psycopg.OperationalError:
                self.conn.close()
                raise

        _retrying(self.what, write)
        return returned

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class _VehicleStatePartition(StatelessSinkPartition[VehicleSummary]):
    def __init__(self, dsn: str) -> None:
        self.writer = _Writer(dsn, "vehicle_state sink")

    def write_batch(self, items: list[VehicleSummary]) -> None:
        latest = {(s.tenant, s.vehicle): s for s in items}  # one row per key: last state wins
        self.writer.run([(_STATE_UPSERT, [_state_row(s) for s in latest.values()])])

    def close(self) -> None:
        self.writer.close()


class VehicleStateSink(DynamicSink[VehicleSummary]):
    """Upserts each vehicle's latest summary into ``vehicle_state``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _VehicleStatePartition:
        return _VehicleStatePartition(self.dsn)


_LAG_INSERT = f"INSERT INTO flow_lag ({', '.join(LAG_COLUMNS)}) VALUES ({', '.join(['%s'] * len(LAG_COLUMNS))})"
LAG_EVERY_S = 1.0  # wall seconds between two flow_lag rows


class _AnalyticsPartition(StatelessSinkPartition[Output]):
    def __init__(self, dsn: str) -> None:
        self.writer = _Writer(dsn, "analytics sink")
        self._lag_at = time.monotonic()

    def write_batch(self, items: list[Output]) -> None:
        with METER.phase("sink"):
            self._write(items)
        if time.monotonic() - self._lag_at >= LAG_EVERY_S:
            self._lag_at = time.monotonic()
            sample = METER.take(datetime.now(UTC))
            if METER.stalled(sample):
                log.warning(
                    "flow: stalled %.1f s after %s, %.1f s behind the commits (in %.1f s: snapshot %.1f, bytewax %.1f, "
                    "gc %.1f, step %.1f with %d corrections replaying %d entries, source %.1f, sink %.1f)",
                    sample.max_gap_s,
                    sample.max_gap_after or "start",
                    sample.lag_s or 0.0,
                    sample.interval_s,
                    sample.snapshot_s,
                    sample.other_s,
                    sample.gc_s,
                    sample.step_s,
                    sample.corrections,
                    sample.replayed,
                    sample.source_s,
                    sample.sink_s,
                )
            self.writer.run([(_LAG_INSERT, [sample.row()])])

    def _write(self, items: list[Output]) -> None:
        # the last version of each key in the batch wins (also avoids ON CONFLICT hitting a row twice)
        states: dict[tuple[str, str], VehicleSummary] = {}
        alerts: dict[str, dict[str, Any]] = {}
        stops: dict[str, dict[str, Any]] = {}
        etas: dict[str, dict[str, Any]] = {}
        cells: dict[tuple[str, int, str, datetime], CellMinute] = {}
        disowned: list[dict[str, Any]] = []  # applied before this batch's upserts, which come after
        for item in items:
            if isinstance(item, Resynced):
                disowned.append(
                    {"tenant": item.tenant, "vehicle": item.vehicle, "ids": list(item.ids), "horizon": item.horizon}
                )
            elif isinstance(item, VehicleSummary):
                states[(item.tenant, item.vehicle)] = item
            elif isinstance(item, CellMinute):
                cells[(item.tenant, item.h3_cell, item.vehicle, item.minute)] = item
            elif isinstance(item, EventOut):
                event = item.event
                if isinstance(event, Alert):
                    row = _alert_row(event, item.detected_at)
                    if event.id in alerts:  # first raised earlier in this batch
                        row["detected_at"] = alerts[event.id]["detected_at"]
                    alerts[event.id] = row
                elif isinstance(event, StopEvent):
                    row = _stop_row(event, item.detected_at, item.stop)
                    if event.id in stops:
                        row["detected_at"] = stops[event.id]["detected_at"]
                    stops[event.id] = row
                elif isinstance(event, EtaUpdate):
                    row = _eta_row(event, item.detected_at, item.stop)
                    if event.id in etas:
                        row["detected_at"] = etas[event.id]["detected_at"]
                    etas[event.id] = row
        returned = self.writer.run(
            [
                (_ALERT_DISOWN, disowned),
                (_STOP_DISOWN, disowned),
                (_ALERT_UPSERT, list(alerts.values())),
                (_STOP_UPSERT, list(stops.values())),
                (_ETA_UPSERT, list(etas.values())),
                (_CELL_UPSERT, [tuple(c) for c in cells.values()]),
                (_STATE_UPSERT, [_state_row(s) for s in states.values()]),
            ]
        )
        for alert_type, inserted in returned.get(_ALERT_UPSERT, []):
            if inserted:  # a new row: first raised (an update of a stored alert is not)
                ALERTS_RAISED.labels(alert_type).inc()

    def close(self) -> None:
        self.writer.close()


class AnalyticsStore(DynamicSink[Output]):
    """Writes the analytics' outputs: alerts, stop events, ETA updates, H3 minute rows, vehicle state.

    Every write is an upsert on a deterministic key, so a replay after a crash or a
    late-data correction overwrites instead of adding; a changed alert or stop event
    gets a new ``rev`` (the delivery order). Meant for one worker (a single writer
    keeps ``rev`` in commit order).
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AnalyticsPartition:
        return _AnalyticsPartition(self.dsn)
