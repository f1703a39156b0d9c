"""The API's pure parts: row shaping, vehicle state, stop status, the live stream's cursor and
frames, tokens, readiness, and the rule that every /v1 statement is scoped to one tenant."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h3
import pytest

from api import queries
from api.health import readiness
from api.live import Change, ClientCursor, change_of, sse_frame
from api.rows import shaped, stop_status, vehicle_payload, vehicle_state
from api.tokens import Principal, new_token, token_hash, token_id
from core.settings import load_settings
from store.events import merge_rev_pages

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
CELL = h3.str_to_int(h3.latlng_to_cell(60.17, 24.94, 9))


# ------------------------------------------------------------------ tenant scope


def statements() -> dict[str, str]:
    found = {
        name: value
        for name, value in vars(queries).items()
        if isinstance(value, str)
        and re.match(r"\s*(SELECT|INSERT|UPDATE|WITH|DELETE)\b", value)
        and name not in ("LOCK_SQL", "NOTIFY_SQL")  # the change log's lock and wake-up: no data
    }
    for group in ("ACTION_UPDATE_SQL", "CHANGES_SQL"):
        found.update({f"{group}[{k}]": v for k, v in getattr(queries, group).items()})
    return found


def test_every_v1_statement_filters_by_the_sessions_tenant() -> None:
    found = statements()
    assert len(found) >= 20, sorted(found)  # the scan sees them all
    unscoped = {name for name, sql in found.items() if "tenant = %(tenant)s" not in sql}
    assert unscoped == set()


def test_statements_that_join_or_nest_scope_every_table_they_read() -> None:
    # a nested SELECT on another table must carry its own tenant filter (a join could leak)
    for name, sql in statements().items():
        tables = re.findall(
            r"\bFROM\s+(alerts|stop_events|eta_updates|vehicle_state|plans|positions|cell_minutes)\b", sql
        )
        scopes = len(re.findall(r"tenant = %\(tenant\)s", sql))
        assert scopes >= len(tables), (name, tables, scopes)


# ------------------------------------------------------------------ rows


def test_shaped_rows_use_rfc3339_utc_hex_cells_and_drop_the_tenant() -> None:
    alert_id = uuid.uuid4()
    row = {"tenant": "acme", "id": alert_id, "h3_cell": CELL, "at": T0, "n": 3}
    assert shaped(row) == {
        "id": str(alert_id),
        "h3_cell": h3.int_to_str(CELL),
        "at": "2026-11-23T08:00:00.000Z",
        "n": 3,
    }


@pytest.mark.parametrize(
    ("row", "state"),
    [
        ({"open_exceptions": 1, "motion": "moving", "predicted_late": True}, "alert"),
        ({"open_exceptions": 0, "predicted_late": True, "motion": "moving"}, "late"),
        (
            {
                "open_exceptions": 0,
                "next_stop_eta": T0 + timedelta(minutes=5),
                "next_stop_window_end": T0,
                "motion": "stopped",
            },
            "late",
        ),
        ({"open_exceptions": 0, "next_stop_eta": T0, "next_stop_window_end": T0, "motion": "stopped"}, "stopped"),
        ({"motion": "moving"}, "moving"),
        ({"motion": None}, "unknown"),
    ],
)
def test_vehicle_state_takes_the_first_that_holds(row: dict[str, object], state: str) -> None:
    assert vehicle_state(row) == state


def test_vehicle_payload_names_the_vehicle_and_drops_the_tenant() -> None:
    row = {"tenant": "acme", "vehicle_id": "van-1", "processed_at": T0, "motion": "moving", "rev": 7, "lat": 60.1}
    assert vehicle_payload(row) == {
        "vehicle": "van-1",
        "state": "moving",
        "processed_at": "2026-11-23T08:00:00.000Z",
        "motion": "moving",
        "rev": 7,
        "lat": 60.1,
    }


@pytest.mark.parametrize(
    ("arrived", "eta", "expected"),
    [
        (T0 + timedelta(minutes=10), None, "on_time"),
        (T0 + timedelta(minutes=61), None, "late"),
        (T0 - timedelta(minutes=1), None, "early"),
        (None, T0 + timedelta(minutes=30), "on_track"),
        (None, T0 + timedelta(minutes=90), "predicted_late"),
        (None, None, "pending"),
    ],
)
def test_stop_status_against_the_window(arrived: datetime | None, eta: datetime | None, expected: str) -> None:
    assert stop_status(T0, T0 + timedelta(hours=1), arrived, eta) == expected


def test_stop_status_without_a_window() -> None:
    assert stop_status(None, None, T0, None) == "done"
    assert stop_status(None, None, None, T0) == "pending"


# ------------------------------------------------------------------ the live stream's cursor


def vehicle(rev: int, name: str = "van-1") -> Change:
    return Change(rev, "vehicle", name, {"vehicle": name, "rev": rev})


def alert(rev: int) -> Change:
    return Change(rev, "alert", f"a{rev}", {"id": f"a{rev}", "rev": rev})


def test_a_vehicle_goes_out_at_most_once_a_second_and_the_newest_state_wins() -> None:
    cursor = ClientCursor(after=10, interval_s=1.0)
    assert cursor.offer(vehicle(11), now=0.0) == [(vehicle(11), 11)]
    assert cursor.offer(vehicle(12), now=0.3) == []  # held back
    assert cursor.offer(vehicle(13), now=0.6) == []  # supersedes 12
    assert cursor.next_due() == pytest.approx(1.0)
    assert cursor.due(now=0.9) == []
    assert cursor.due(now=1.0) == [(vehicle(13), 13)]
    assert cursor.due(now=5.0) == []


def test_the_id_never_claims_past_a_held_back_vehicle_state() -> None:
    cursor = ClientCursor(after=10)
    cursor.offer(vehicle(11), now=0.0)
    assert cursor.offer(vehicle(12), now=0.2) == []
    # an alert after the held-back state: sent now, but its id stays below rev 12
    assert cursor.offer(alert(13), now=0.3) == [(alert(13), 11)]
    assert cursor.offer(vehicle(14, "van-2"), now=0.4) == [(vehicle(14, "van-2"), 11)]
    assert cursor.due(now=1.2) == [(vehicle(12), 14)]
    assert cursor.safe_id() == 14


def test_revs_already_seen_are_not_sent_again() -> None:
    cursor = ClientCursor(after=20)
    assert cursor.offer(alert(20), now=0.0) == []
    assert cursor.offer(alert(19), now=0.0) == []
    assert cursor.offer(alert(21), now=0.0) == [(alert(21), 21)]


def test_sse_frames() -> None:
    assert sse_frame("alert", {"id": "x", "n": 1}, 42) == b'id: 42\nevent: alert\ndata: {"id":"x","n":1}\n\n'
    assert sse_frame("hello", {"a": "é"}) == 'event: hello\ndata: {"a":"é"}\n\n'.encode()
    change = Change.of(7, "alert", "x", {"id": "x", "n": 1})
    assert change.frame(6) == sse_frame("alert", {"id": "x", "n": 1}, 6)


def test_change_of_a_vehicle_row_and_an_alert_row() -> None:
    v = change_of({"table": "vehicle_current", "tenant": "t", "vehicle_id": "van-1", "rev": 5, "motion": "moving"})
    assert (v.rev, v.kind, v.key, v.payload["kind"], v.payload["vehicle"]) == (
        5,
        "vehicle",
        "van-1",
        "vehicle",
        "van-1",
    )
    row = {
        "table": "alerts",
        "id": uuid.uuid4(),
        "rev": 6,
        "tenant": "t",
        "vehicle_id": "van-1",
        "type": "offline",
        "severity": "warning",
        "status": "open",
        "stop_id": None,
        "h3_cell": CELL,
        "start_time": T0,
        "end_time": None,
        "details": {},
        "detected_at": T0,
        "updated_at": T0,
        "acknowledged_at": T0,
        "acknowledged_by": "desk (abc)",
        "owner": "kim",
        "closed_at": None,
        "closed_by": None,
        "comments": 2,
        "summary": "van-1: silent for 5 min, limit 5 min",
        "lat": 60.17,
        "lon": 24.94,
        "stop_name": None,
        "plan_version": None,
    }
    a = change_of(row)
    assert (a.kind, a.rev) == ("alert", 6)
    assert a.payload["owner"] == "kim" and a.payload["acknowledged_at"] == "2026-11-23T08:00:00.000Z"
    assert a.payload["comments"] == 2 and a.payload["h3_cell"] == h3.int_to_str(CELL)


def test_merge_rev_pages_never_skips_past_a_full_page() -> None:
    def page(*revs: int) -> list[dict[str, int]]:
        return [{"rev": r} for r in revs]

    merged = merge_rev_pages([page(1, 4), page(2, 3), page(5), page(6, 7)], 2)
    assert [r["rev"] for r in merged] == [1, 2, 3]


# ------------------------------------------------------------------ tokens, readiness


def test_tokens_are_random_and_only_their_hash_names_them() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("fs_") and len(a) >= 40
    assert token_hash(a) != token_hash(b) and len(token_hash(a)) == 32
    assert token_id(token_hash(a)) == token_hash(a).hex()[:12]


def test_principal_roles() -> None:
    assert Principal("id1", "acme", "dispatcher", "desk").can_write
    assert not Principal("id1", "acme", "viewer", "").can_write
    assert Principal("id1", "acme", "viewer", "").actor == "id1"
    assert Principal("id1", "acme", "viewer", "desk").actor == "desk (id1)"


def test_readiness_names_every_reason(tmp_path: Path) -> None:
    settings = load_settings({}, state_dir=tmp_path, gateway_workers=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "gateway-0.ready").touch()
    result = readiness(settings, "connection refused")
    assert not result.ready
    assert result.reasons == [
        "database unreachable: connection refused",
        "gateway shard(s) 1 not subscribed",
        "dataflow not reporting (is the engine running?)",
    ]
    assert result.checks["gateway_shards_subscribed"] == 1
