"""The context of alerts and stop events (pipelines/trackers/context.py): the values and the
threshold of each alert type, its one-line summary, and, through the whole per-vehicle
pipeline, where it happened, which stop (id, name), which plan, kept from open to resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.plan import Plan, Stop
from pipelines.trackers.context import Place, values, with_context
from pipelines.trackers.events import Alert, StopEvent, new_alert
from pipelines.trackers.vehicle import VehicleAnalytics
from tests.unit.test_trackers_vehicle import PLAN, Sim, drain, p, run

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
AT_S114 = Place(60.17, 24.94, "S-114", "Bakery", "at", 3)
HEADING = Place(60.18, 24.95, "S-200", "", "heading_to", 3)


def alert(kind: str, details: dict[str, Any], stop_id: str | None = None, minutes: float | None = None) -> Alert:
    a = new_alert(kind, "acme", "van-007", T0, stop_id=stop_id, h3_cell=None, details=details)
    return a.resolve(T0 + timedelta(minutes=minutes)) if minutes is not None else a


CASES: list[tuple[Alert, Place, tuple[float | None, float | None, str], str]] = [
    (
        alert(
            "temp_excursion",
            {
                "sensor": "reefer",
                "side": "high",
                "celsius": 9.4,
                "peak_c": 9.4,
                "limit_c": 8.0,
                "range_c": [2.0, 8.0],
                "confirmed_after_s": 360.0,
            },
        ),
        AT_S114,
        (9.4, 8.0, "°C"),
        "van-007: reefer at 9.4 °C for 6 min, above 8.0 °C, at stop S-114 (Bakery)",
    ),
    (
        alert("temp_excursion", {"sensor": "reefer", "side": "low", "peak_c": 0.5, "limit_c": 2.0}, minutes=14),
        HEADING,
        (0.5, 2.0, "°C"),
        "van-007: reefer peaked at 0.5 °C for 14 min, below 2.0 °C, on the way to stop S-200; resolved after 14 min",
    ),
    (
        alert("sensor_fault", {"sensor": "reefer", "reason": "power_on_value", "celsius": 85.0}),
        AT_S114,
        (85.0, None, "°C"),
        "van-007: probe reefer fault: power on value (85.0 °C), at stop S-114 (Bakery)",
    ),
    (
        alert("long_dwell", {"threshold_s": 1800.0, "baseline_s": None}, stop_id="S-114"),
        AT_S114,
        (30.0, 30.0, "min"),
        "van-007: stopped 30 min, limit 30 min, at stop S-114 (Bakery)",
    ),
    (
        alert("long_dwell", {"threshold_s": 1800.0}, stop_id="S-114", minutes=42.5),
        AT_S114,
        (42.5, 30.0, "min"),
        "van-007: stopped 42.5 min, limit 30 min, at stop S-114 (Bakery); resolved after 42.5 min",
    ),
    (
        alert("unplanned_dwell", {"threshold_s": 600.0, "lat": 60.2, "lon": 25.0}),
        HEADING,
        (10.0, 10.0, "min"),
        "van-007: stopped 10 min away from any planned stop, limit 10 min, on the way to stop S-200",
    ),
    (
        alert("route_drift", {"lat": 60.2, "lon": 25.0, "offset_m": 212.4, "limit_m": 150.0}, stop_id="S-200"),
        HEADING,
        (212.4, 150.0, "m"),
        "van-007: 212 m off the planned route, limit 150 m, on the way to stop S-200",
    ),
    (
        alert("gps_jump", {"lat": 60.2, "lon": 25.0, "implied_speed_mps": 340.2, "limit_mps": 60.0}),
        HEADING,
        (340.2, 60.0, "m/s"),
        "van-007: position jumped (implied 340.2 m/s, limit 60.0 m/s), on the way to stop S-200",
    ),
    (
        alert("door_open_away", {"door": "rear"}),
        HEADING,
        (None, None, ""),
        "van-007: door rear opened away from any stop, on the way to stop S-200",
    ),
    (
        alert("door_open_too_long", {"door": "rear", "limit_s": 300.0}),
        AT_S114,
        (5.0, 5.0, "min"),
        "van-007: door rear open 5 min, limit 5 min, at stop S-114 (Bakery)",
    ),
    (
        alert("offline", {"threshold_s": 300.0}),
        HEADING,
        (5.0, 5.0, "min"),
        "van-007: silent for 5 min, limit 5 min, on the way to stop S-200",
    ),
    (
        alert(
            "predicted_late",
            {
                "eta": "2026-11-23T10:52:00.000Z",
                "window_end": "2026-11-23T10:45:00.000Z",
                "late_s": 420.0,
                "plan_version": 3,
                "margin_s": 0.0,
            },
            stop_id="S-114",
        ),
        AT_S114._replace(relation="late_for"),
        (7.0, 0.0, "min"),
        "van-007: predicted 7 min late at stop S-114 (Bakery) (window ends 10:45 UTC)",
    ),
]


@pytest.mark.parametrize(("a", "place", "expected", "summary"), CASES, ids=[c[0].type for c in CASES])
def test_each_alert_type_says_its_value_threshold_and_a_summary(
    a: Alert, place: Place, expected: tuple[float | None, float | None, str], summary: str
) -> None:
    assert values(a) == expected
    out = with_context(a, place)
    d = out.details
    assert (d["value"], d["threshold"], d["unit"] or "") == expected
    assert d["summary"] == summary
    assert out.stop_id == (a.stop_id or place.stop_id)
    # the tracker's own position wins over the vehicle's last fix
    assert (d["lat"], d["lon"]) == ((a.details["lat"], a.details["lon"]) if "lat" in a.details else place[:2])
    assert d["plan_version"] == 3 and out.id == a.id


def test_every_alert_type_has_a_case() -> None:
    from pipelines.trackers.events import ALERT_TYPES

    assert {c[0].type for c in CASES} == set(ALERT_TYPES)


def test_no_plan_no_stop_and_a_retraction_says_so() -> None:
    a = alert("offline", {"threshold_s": 300.0})
    out = with_context(a.retract(), Place(None, None, None, "", "", None))
    assert out.stop_id is None and out.details["plan_version"] is None and out.details["lat"] is None
    assert (
        out.details["summary"] == "van-007: silent for 5 min, limit 5 min; retracted (late data showed it never held)"
    )


# ------------------------------------------------------------------ through the whole pipeline

NAMED = Plan(
    "acme",
    "van-1",
    4,
    (Stop("s1", *p(1000, 0), 75.0, name="Bakery"), Stop("s2", *p(2000, 2000), 75.0, name="Harbour")),
    PLAN.route,
    (2.0, 8.0),
)


def test_an_excursion_at_a_named_stop_carries_the_stop_plan_place_and_values_from_open_to_resolved() -> None:
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    t = sim.drive(0, (0, 0), (1000, 0))  # inside s1 from about 92 s
    for s in range(int(t), int(t) + 900, 30):
        sim.temp(s + 1, 4.0 if s < t + 60 else 9.4)  # out from t + 60 s, back inside after 780 s
    sim.temp(t + 781, 5.0)
    sim.park(t, (1000, 0), t + 900)
    sim.drive(t + 900, (1000, 0), (2000, 0))
    va = VehicleAnalytics("acme", "van-1", plan=NAMED)
    events = [e for _, e in run(va, sim.items) + drain(va, t + 2000)]
    excursions = [e for e in events if isinstance(e, Alert) and e.type == "temp_excursion"]
    assert [e.status for e in excursions] == ["open", "resolved"]
    opened, resolved = excursions
    for e in excursions:
        d = e.details
        assert e.stop_id == "s1" and d["stop_name"] == "Bakery" and d["stop_relation"] == "at"
        assert d["plan_version"] == 4 and (d["value"], d["threshold"], d["unit"]) == (9.4, 8.0, "°C")
        assert d["range_c"] == [2.0, 8.0]
        assert abs(d["lat"] - p(1000, 0)[0]) < 1e-4 and abs(d["lon"] - p(1000, 0)[1]) < 1e-4
    assert opened.details["summary"] == "van-1: p1 at 9.4 °C for 5 min, above 8.0 °C, at stop s1 (Bakery)"
    assert resolved.details["summary"].startswith("van-1: p1 peaked at 9.4 °C for ")
    assert resolved.details["summary"].endswith(", above 8.0 °C, at stop s1 (Bakery); resolved after 12 min")
    arrival = next(e for e in events if isinstance(e, StopEvent) and e.kind == "arrival")
    assert arrival.details["stop_name"] == "Bakery" and arrival.details["lat"] is not None
    assert arrival.details["summary"].startswith("van-1: arrived at stop s1 (Bakery) at 08:01 UTC")
    # the departure from s1 while heading on: an alert raised now names s2 as the next stop
    assert va.trackers.place().stop_id == "s2" and va.trackers.place().relation == "heading_to"


def test_stop_names_are_optional_and_round_trip_through_the_plan_json() -> None:
    plan = Plan.from_dict({**NAMED.to_dict(), "version": 4})
    assert [s.name for s in plan.stops] == ["Bakery", "Harbour"]
    assert "name" not in Plan.from_dict({**PLAN.to_dict()}).to_dict()["stops"][0]
