"""Plan files for ``fleetstream plan load``: every accepted form, and errors that say where."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from core.contract import Rejected
from core.plan import Plan, PlanError, PlanLimits
from ingest.dispatch import check_plan_message, plan_topic
from store.plans import load_plans_file, plan_digest


def plan(vehicle: str = "van-1", version: int = 0, lat: float = 60.17) -> dict[str, Any]:
    return {
        "tenant": "acme",
        "vehicle": vehicle,
        "version": version,
        "stops": [{"id": "s1", "lat": lat, "lon": 24.94, "window_start": "2026-11-23T10:00:00+02:00"}],
    }


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plans.json"
    path.write_text(text, encoding="utf-8")
    return path


def vehicles(plans: list[Plan]) -> list[str]:
    return [p.vehicle for p in plans]


# ---------------------------------------------------------------- accepted forms


def test_one_plan_object(tmp_path: Path) -> None:
    plans = load_plans_file(write(tmp_path, json.dumps(plan(), indent=2)))
    assert plans == [Plan.from_dict(plan())]


def test_a_list_of_plans_keeps_file_order(tmp_path: Path) -> None:
    plans = load_plans_file(write(tmp_path, json.dumps([plan("van-2"), plan("van-1"), plan("van-3")])))
    assert vehicles(plans) == ["van-2", "van-1", "van-3"]


def test_an_object_holding_plans(tmp_path: Path) -> None:
    plans = load_plans_file(write(tmp_path, json.dumps({"plans": [plan("van-1"), plan("van-2")]}, indent=1)))
    assert vehicles(plans) == ["van-1", "van-2"]


def test_json_lines_skip_blank_lines(tmp_path: Path) -> None:
    text = "\n".join([json.dumps(plan("van-1")), "", json.dumps(plan("van-2")), "   ", json.dumps(plan("van-3"))])
    assert vehicles(load_plans_file(write(tmp_path, text + "\n"))) == ["van-1", "van-2", "van-3"]


def test_path_may_be_a_string(tmp_path: Path) -> None:
    assert len(load_plans_file(str(write(tmp_path, json.dumps(plan()))))) == 1


# ---------------------------------------------------------------- errors


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as info:
        load_plans_file(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # always names the file
    return message[len(str(path)) :]


def test_bad_field_in_a_single_plan_names_the_field(tmp_path: Path) -> None:
    assert error(tmp_path, json.dumps(plan(lat=95.0))) == ": stops[0].lat: 95.0 is outside [-90, 90]"


def test_bad_field_in_a_list_names_the_index(tmp_path: Path) -> None:
    bad = plan("van-2")
    del bad["stops"]
    assert error(tmp_path, json.dumps([plan(), bad])) == ": plans[1]: stops: must be a list"
    assert error(tmp_path, json.dumps({"plans": [bad]})) == ": plans[0]: stops: must be a list"


def test_bad_field_in_json_lines_names_the_line(tmp_path: Path) -> None:
    text = "\n".join([json.dumps(plan("van-1")), "", json.dumps(plan("van-3", lat=-91))])
    assert error(tmp_path, text) == ":3: stops[0].lat: -91 is outside [-90, 90]"


def test_broken_json_line_names_line_and_column(tmp_path: Path) -> None:
    text = "\n".join([json.dumps(plan("van-1")), json.dumps(plan("van-2")), '{"tenant": "acme",'])
    assert error(tmp_path, text).startswith(":3:19: not JSON: ")


def test_broken_json_document_names_line_and_column(tmp_path: Path) -> None:
    text = json.dumps(plan(), indent=2).replace('"vehicle"', "vehicle")
    assert error(tmp_path, text).startswith(":3:3: not JSON: Expecting property name")


@pytest.mark.parametrize("text", ["", "  \n\n", "[]", '{"plans": []}'])
def test_a_file_without_plans_is_an_error(tmp_path: Path, text: str) -> None:
    assert error(tmp_path, text) == ": holds no plans"


def test_wrapper_must_hold_a_list_and_nothing_else(tmp_path: Path) -> None:
    assert error(tmp_path, json.dumps({"plans": plan()})) == ": plans: must be a list of plan objects"
    assert error(tmp_path, json.dumps({"plans": [plan()], "when": 1})) == ": unknown field(s) next to plans: when"


def test_not_an_object(tmp_path: Path) -> None:
    assert error(tmp_path, "42") == ": plan: must be an object"
    assert error(tmp_path, json.dumps([plan(), "van-2"])) == ": plans[1]: plan: must be an object"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plans.json"
    path.write_bytes(b'{"tenant": "\xff"}')
    with pytest.raises(PlanError, match=r"not UTF-8 \(byte 12\)"):
        load_plans_file(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_plans_file(tmp_path / "absent.json")


# ---------------------------------------------------------------- digest and MQTT checks (pure)


def test_digest_ignores_the_version_only() -> None:
    assert plan_digest(Plan.from_dict(plan(version=1))) == plan_digest(Plan.from_dict(plan(version=7)))
    assert plan_digest(Plan.from_dict(plan())) != plan_digest(Plan.from_dict(plan(lat=60.18)))


def test_plan_topic() -> None:
    assert plan_topic("acme") == "dispatch/acme/plan"
    with pytest.raises(ValueError):
        plan_topic("acme/x")


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        ("dispatch/acme/plan", b"x" * 101, "oversized", "101 bytes is over max_payload_bytes 100"),
        ("dispatch/acme/plan", b"{nope", "bad_json", "Expecting property name"),
        ("dispatch/acme/plan", b'"\xff"', "bad_json", "utf-8"),
        ("dispatch/acme/plan", b"[" * 90 + b"]" * 90, "bad_plan", "plan: must be an object"),
        ("dispatch/acme/plan", json.dumps(plan(lat=91)).encode(), "bad_plan", "stops[0].lat"),
        ("dispatch/other/plan", json.dumps(plan()).encode(), "bad_plan", "does not match the topic's tenant 'other'"),
    ],
)
def test_check_plan_message_rejects(topic: str, payload: bytes, reason: str, detail: str) -> None:
    rejected = check_plan_message(topic, payload, 100 if reason == "oversized" else 10_000)
    assert not isinstance(rejected, Plan)
    assert rejected.reason == reason
    assert detail in rejected.detail


def test_check_plan_message_accepts() -> None:
    assert check_plan_message("dispatch/acme/plan", json.dumps(plan()).encode(), 10_000) == Plan.from_dict(plan())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stops": [{"id": f"s{i}", "lat": 60.0, "lon": 24.0} for i in range(11)]}, "stops: 11 stops, more than"),
        ({"route": [[60.0, 24.0 + i * 1e-4] for i in range(21)]}, "route: 21 points, more than"),
        ({"route": [[60.0, 24.0], [60.5, 24.0]]}, "route[0]-route[1]: 55.6 km, longer than"),
        ({"route": [[60.0 + i * 0.1, 24.0] for i in range(20)]}, "route: longer than the limit of 100.0 km"),
    ],
)
def test_plan_limits_name_what_is_too_much(changes: dict[str, object], message: str) -> None:
    limits = PlanLimits(max_stops=10, max_route_points=20, max_route_km=100.0, max_segment_km=50.0)
    with pytest.raises(PlanError, match=re.escape(message)):
        limits.check(Plan.from_dict({**plan(), **changes}))
    limits.check(Plan.from_dict(plan()))


def test_a_pole_to_pole_plan_is_refused_by_the_default_limits() -> None:
    poles = {**plan(), "route": [[-89.9, 0.0], [-45.0, 0.0], [0.0, 0.0], [45.0, 0.0], [89.9, 0.0]]}
    rejected = check_plan_message("dispatch/acme/plan", json.dumps(poles).encode(), 10_000, PlanLimits())
    assert isinstance(rejected, Rejected) and rejected.reason == "bad_plan"
    assert "longer than the limit of 50.0 km" in rejected.detail


@pytest.mark.parametrize(
    "stop_changes",
    [
        {"window_start": "9999-12-31T23:59:59-23:59"},
        {"window_end": "0001-01-01T00:00:00+01:00"},
        {"id": "s\u0000"},
        {"id": "s\ud800"},
        {"lat": 10**400},
    ],
)
def test_a_poison_plan_is_a_bad_plan_not_a_crash(stop_changes: dict[str, object]) -> None:
    body = plan()
    body["stops"][0].update(stop_changes)
    rejected = check_plan_message("dispatch/acme/plan", json.dumps(body).encode(), 10_000, PlanLimits())
    assert isinstance(rejected, Rejected) and rejected.reason == "bad_plan", rejected


def test_a_trailing_newline_is_not_part_of_a_tenant_id() -> None:
    with pytest.raises(ValueError):
        plan_topic("acme\n")
    assert isinstance(check_plan_message("dispatch/acme\n/plan", json.dumps(plan()).encode(), 10_000), Rejected)
