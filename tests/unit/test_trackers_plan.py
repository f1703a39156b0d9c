"""Plans: JSON round trip and a clear error for every kind of bad field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from core.plan import Plan, PlanError, Stop


def good() -> dict[str, Any]:
    return {
        "tenant": "acme",
        "vehicle": "van-1",
        "version": 3,
        "stops": [
            {
                "id": "s1",
                "lat": 60.17,
                "lon": 24.94,
                "radius_m": 60,
                "service_s": 300,
                "window_start": "2026-11-23T10:00:00+02:00",
                "window_end": "2026-11-23T09:00:00Z",
            },
            {"id": "s2", "lat": 60.18, "lon": 24.95},
        ],
        "route": [[60.17, 24.94], [60.18, 24.95]],
        "temp_range_c": [2, 8],
    }


def test_parse_normalises_to_utc_and_round_trips() -> None:
    plan = Plan.from_dict(good())
    s1, s2 = plan.stops
    assert s1 == Stop(
        "s1",
        60.17,
        24.94,
        60.0,
        datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
        datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        300.0,
    )
    assert s2 == Stop("s2", 60.18, 24.95)  # defaults: 75 m radius, no window, no service time
    assert plan.route == ((60.17, 24.94), (60.18, 24.95))
    assert plan.temp_range_c == (2.0, 8.0)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.to_dict()["stops"][0]["window_start"] == "2026-11-23T08:00:00.000Z"
    assert plan.stop("s2") is s2


def test_lists_given_directly_are_held_as_tuples() -> None:
    plan = Plan("acme", "van-1", 1, [Stop("s1", 60.0, 24.0)], [[60.0, 24.0], [60.1, 24.1]], [2, 8])  # type: ignore[arg-type]
    assert plan == Plan.from_dict(plan.to_dict())
    assert plan.route == ((60.0, 24.0), (60.1, 24.1)) and plan.temp_range_c == (2.0, 8.0)


def test_minimal_plan_has_no_route_and_no_refrigeration() -> None:
    plan = Plan.from_dict({"tenant": "acme", "vehicle": "van-1", "version": 0, "stops": []})
    assert (plan.stops, plan.route, plan.temp_range_c) == ((), None, None)
    assert "route" not in plan.to_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tenant": ""}, "tenant"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"stops": {}}, "stops: must be a list"),
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"route": [[60.1, 24.9]]}, "route: needs at least two points"),
        ({"route": [[60.1, 24.9], [95.0, 24.9]]}, "route[1].lat"),
        ({"route": [[60.1, 24.9], "x"]}, "route[1]: must be a [lat, lon] pair"),
        ({"temp_range_c": [8, 2]}, "temp_range_c"),
        ({"temp_range_c": [2]}, "temp_range_c"),
    ],
)
def test_bad_plan_fields_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as err:
        Plan.from_dict({**good(), **change})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lat": 91}, "stops[0].lat"),
        ({"lon": "east"}, "stops[0].lon"),
        ({"lat": float("nan")}, "stops[0].lat"),
        ({"radius_m": 0}, "stops[0].radius_m"),
        ({"service_s": -5}, "stops[0].service_s"),
        ({"window_start": "2026-11-23T10:00:00"}, "stops[0].window_start"),
        ({"window_end": "tomorrow"}, "stops[0].window_end"),
        ({"window_end": "2026-11-23T07:00:00Z"}, "window_end is before window_start"),
        ({"id": None}, "stops[0].id"),
        ({"eta": 5}, "stops[0]: unknown field(s) eta"),
    ],
)
def test_bad_stop_fields_are_named(change: dict[str, Any], message: str) -> None:
    body = good()
    body["stops"][0] = {**body["stops"][0], **change}
    with pytest.raises(PlanError) as err:
        Plan.from_dict(body)
    assert message in str(err.value)


def test_duplicate_stop_ids_and_non_objects_are_refused() -> None:
    body = good()
    body["stops"][1]["id"] = "s1"
    with pytest.raises(PlanError, match="duplicate id"):
        Plan.from_dict(body)
    with pytest.raises(PlanError, match="plan: must be an object"):
        Plan.from_dict([1, 2])
    with pytest.raises(PlanError, match=r"stops\[0\]: must be an object"):
        Plan.from_dict({**good(), "stops": [7]})


@pytest.mark.parametrize(
    ("field", "value"),
    [("vehicle", "x/#/+\u0007\n"), ("vehicle", "van 1"), ("tenant", "acme/x"), ("tenant", "a" * 65), ("vehicle", "")],
)
def test_a_plan_holds_device_ids_only(field: str, value: str) -> None:
    body = {"tenant": "acme", "vehicle": "van-1", "version": 0, "stops": [{"id": "s1", "lat": 60.1, "lon": 24.9}]}
    body[field] = value
    with pytest.raises(PlanError, match=f"{field}: must be an id"):
        Plan.from_dict(body)


@pytest.mark.parametrize("stop_id", ["s1\u202e", "s\x001", "line\nbreak"])
def test_a_stop_id_is_printable(stop_id: str) -> None:
    body = {"tenant": "acme", "vehicle": "van-1", "version": 0, "stops": [{"id": stop_id, "lat": 60.1, "lon": 24.9}]}
    with pytest.raises(PlanError, match="not printable"):
        Plan.from_dict(body)
