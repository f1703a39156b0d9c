"""Delivery plans in TimescaleDB: every revision kept, numbered by the store.

The store, not the sender, assigns revisions: a vehicle's first plan is version 1,
each changed plan the next number, and the ``version`` inside a submitted plan is
ignored. Re-sending the plan that is already the vehicle's latest (same content,
whatever its version) writes nothing and returns the version it has, so a dispatch
system may retry a send whose outcome it did not see. ``plan_seq`` numbers the
revisions of all vehicles in commit order, so the dataflow can replay them with
:func:`plans_after` from the last one it has seen.

Table ``plans`` is created by ``store/migrations/003_analytics.sql``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from core.plan import Plan, PlanError, PlanLimits

__all__ = ["latest_plan", "load_plans_file", "plan_digest", "plans_after", "store_plan"]

log = logging.getLogger("fleetstream.plans")
_PLAN_LOCK = 0x706C616E  # advisory lock id ("plan"): one plan writer at a time, so plan_seq follows commit order


def plan_digest(plan: Plan) -> bytes:
    """sha256 of the plan's canonical JSON (sorted keys, compact, ASCII) without ``version``."""
    body = plan.to_dict()
    body.pop("version", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).digest()


def store_plan(conn: psycopg.Connection, plan: Plan, source: str, limits: PlanLimits | None = None) -> tuple[int, bool]:
    """Store ``plan`` as the vehicle's next revision; returns (version, stored).

    ``limits``: PlanError (nothing stored) when the plan is past one of them.

    ``stored`` is False when the plan equals the vehicle's latest revision: nothing is
    written and that revision's version is returned. ``plan.version`` is ignored; the
    stored JSON carries the assigned version. ``source`` says where it came from
    (``cli``, ``mqtt``, ``api``).

    One transaction of its own, committed before this returns (so a caller may then
    acknowledge the plan). The connection must therefore be idle, not inside a
    transaction (ValueError otherwise: the write would silently become part of the
    caller's uncommitted one), and at READ COMMITTED, the default: each statement must
    see the previous writer's commit.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError(
            "store_plan commits its own transaction: call it outside one "
            "(an autocommit connection, or after commit/rollback)"
        )
    if limits is not None:
        limits.check(plan)
    digest = plan_digest(plan)
    with conn.transaction():
        # held to the end of the transaction: the next writer reads max(plan_seq) after our commit
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PLAN_LOCK,))
        latest = conn.execute(
            "SELECT version, digest FROM plans WHERE tenant = %s AND vehicle_id = %s ORDER BY version DESC LIMIT 1",
            (plan.tenant, plan.vehicle),
        ).fetchone()
        if latest is not None and bytes(latest[1]) == digest:
            return int(latest[0]), False
        version = 1 if latest is None else int(latest[0]) + 1
        row = conn.execute("SELECT coalesce(max(plan_seq), 0) + 1 FROM plans").fetchone()
        assert row is not None
        body = plan.to_dict()
        body["version"] = version
        conn.execute(
            "INSERT INTO plans (tenant, vehicle_id, version, plan, digest, source, plan_seq) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (plan.tenant, plan.vehicle, version, Jsonb(body), digest, source, int(row[0])),
        )
    return version, True


def latest_plan(conn: psycopg.Connection, tenant: str, vehicle: str) -> Plan | None:
    """The vehicle's latest stored revision, or None when it has no plan."""
    row = conn.execute(
        "SELECT plan FROM plans WHERE tenant = %s AND vehicle_id = %s ORDER BY version DESC LIMIT 1", (tenant, vehicle)
    ).fetchone()
    return None if row is None else Plan.from_dict(row[0])


def plans_after(
    conn: psycopg.Connection,
    after_seq: int,
    limit: int,
    limits: PlanLimits | None = None,
    skipped: list[int] | None = None,
) -> list[tuple[int, Plan, datetime]]:
    """Up to ``limit`` revisions with ``plan_seq > after_seq``, in plan_seq (commit) order:
    (plan_seq, plan, received_at as a timezone-aware datetime).

    A stored revision that is not a valid plan now, or is past ``limits`` (stored before
    they were set), is left out and logged, and its plan_seq appended to ``skipped``: it
    must never stop or swamp the reader.
    """
    rows = conn.execute(
        "SELECT plan_seq, plan, received_at FROM plans WHERE plan_seq > %s ORDER BY plan_seq LIMIT %s",
        (after_seq, limit),
    ).fetchall()
    out = []
    for seq, body, received_at in rows:
        try:
            plan = Plan.from_dict(body)
            if limits is not None:
                limits.check(plan)
        except PlanError as exc:
            log.error("plans: revision plan_seq %d skipped: %s", seq, exc)
            if skipped is not None:
                skipped.append(int(seq))
            continue
        out.append((int(seq), plan, received_at))
    return out


# ---------------------------------------------------------------- files


def _parse(obj: Any, where: str) -> Plan:
    try:
        return Plan.from_dict(obj)
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None


def _unwrap(doc: Any, path: Path) -> list[Plan]:
    if isinstance(doc, dict) and "plans" in doc:
        extra = sorted(set(doc) - {"plans"})
        if extra:
            raise PlanError(f"{path}: unknown field(s) next to plans: {', '.join(extra)}")
        doc = doc["plans"]
        if not isinstance(doc, list):
            raise PlanError(f"{path}: plans: must be a list of plan objects")
    if isinstance(doc, list):
        return [_parse(obj, f"{path}: plans[{i}]") for i, obj in enumerate(doc)]
    return [_parse(doc, str(path))]


def load_plans_file(path: str | Path) -> list[Plan]:
    """Read the plans in a UTF-8 JSON file, in file order.

    Accepted forms: one plan object; a list of plan objects; ``{"plans": [...]}``; or
    JSON lines (one plan object per line; blank lines skipped). Bad input raises
    PlanError naming the file and the line (JSON errors, JSON lines) or the list
    index, then the field; a file with no plans is an error too. A missing file raises
    OSError. Versions in the file are ignored by :func:`store_plan`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise PlanError(f"{path}: holds no plans")
    try:
        plans = _unwrap(json.loads(text), path)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # a second value after the first one: JSON lines
            raise PlanError(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
        plans = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as line_exc:
                raise PlanError(f"{path}:{lineno}:{line_exc.colno}: not JSON: {line_exc.msg}") from None
            plans.append(_parse(obj, f"{path}:{lineno}"))
    if not plans:
        raise PlanError(f"{path}: holds no plans")
    return plans
