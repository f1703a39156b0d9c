"""The evaluation scorer on small hand-made inputs, with exact expected numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fleetstream.evaluation import format_report, report_passes, score, worst

T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
END = T0 + timedelta(hours=2)
END_S = 7200.0
THRESHOLDS = {"unplanned_dwell": 600, "route_drift": 60, "temp_excursion": 300, "door_open_away": 0, "offline": 300}


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def label(vehicle: str, type: str, start: float, end: float, **details: Any) -> dict[str, Any]:
    return {
        "kind": "anomaly",
        "vehicle": vehicle,
        "type": type,
        "start": at(start).isoformat(),
        "end": at(end).isoformat(),
        "stop_id": None,
        "details": details,
    }


def alert(
    vehicle: str, type: str, start: float, end: float | None, detected: float, status: str = "resolved"
) -> dict[str, Any]:
    return {
        "id": f"{vehicle}-{type}-{start}",
        "type": type,
        "vehicle_id": vehicle,
        "status": status,
        "start_time": at(start),
        "end_time": at(end) if end is not None else None,
        "detected_at": at(detected),
    }


def test_precision_recall_and_delays_per_type() -> None:
    labels = [
        label("v1", "long_dwell", 100, 1100),
        label("v2", "long_dwell", 200, 1300),
        label("v3", "long_dwell", 300, 1300),
    ]
    alerts = [
        alert("v1", "unplanned_dwell", 110, 1100, 720),  # delay 620 s
        alert("v2", "unplanned_dwell", 200, 1300, 830),  # delay 630 s
        alert("v9", "unplanned_dwell", 500, 900, 1110),
    ]  # nobody's label: a false positive
    row = score(labels, alerts, [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["long_dwell"]
    assert (row["labels"], row["detectable"], row["alerts"], row["matched"]) == (3, 3, 3, 2)
    assert (row["precision"], row["recall"]) == (2 / 3, 2 / 3)
    assert (row["false_positives"], row["missed"]) == (1, 1)
    assert (row["delay_median_s"], row["delay_minus_threshold_s"]) == (625.0, 25.0)


def test_retracted_alerts_and_alerts_after_the_end_do_not_count() -> None:
    labels = [label("v1", "offline", 100, 700)]
    alerts = [
        alert("v1", "offline", 100, 700, 400, status="retracted"),
        alert("v1", "offline", 7000, None, 7300),
    ]  # detected after END (7200 s)
    row = score(labels, alerts, [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["offline"]
    assert (row["alerts"], row["matched"], row["precision"], row["recall"]) == (0, 0, None, 0.0)


def test_labels_too_close_to_the_end_are_censored() -> None:
    # 7200 - 600 - 60 = 6540: a dwell starting later could not be reported in time
    labels = [label("v1", "long_dwell", 6540, 7200), label("v1", "long_dwell", 6541, 7200)]
    row = score(labels, [], [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["long_dwell"]
    assert (row["detectable"], row["censored"], row["recall"]) == (1, 1, 0.0)
    early = [alert("v1", "unplanned_dwell", 6541, None, 7190)]  # raised in time for the censored label
    row = score(labels[1:], early, [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["long_dwell"]
    assert (row["matched"], row["matched_censored"], row["false_positives"], row["precision"]) == (0, 1, 0, 1.0)


def test_tolerance_edges_and_one_to_one_matching() -> None:
    labels = [label("v1", "door_away", 1000, 1100)]
    near = alert("v1", "door_open_away", 1220, 1300, 1230)  # starts 120 s after the label's end: overlaps
    far = alert("v1", "door_open_away", 1341, 1400, 1350)  # 241 s after: both widened by 120 s, no overlap
    row = score(labels, [near, far], [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["door_away"]
    assert (row["matched"], row["false_positives"]) == (1, 1)
    twice = [alert("v1", "door_open_away", 1000, 1050, 1010), alert("v1", "door_open_away", 1060, 1100, 1070)]
    row = score(labels, twice, [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["door_away"]
    assert (row["matched"], row["false_positives"], row["delay_median_s"]) == (1, 1, 10.0)  # the larger overlap wins


def test_ambiguous_labels_count_neither_way() -> None:
    labels = [label("v1", "route_deviation", 100, 160, ambiguous=True), label("v2", "route_deviation", 100, 300)]
    alerts = [alert("v1", "route_drift", 100, 170, 160), alert("v2", "route_drift", 100, 300, 170)]
    row = score(labels, alerts, [], sim_end=END, thresholds=THRESHOLDS)["anomalies"]["route_deviation"]
    assert (row["ambiguous"], row["detectable"], row["alerts"], row["matched"]) == (1, 1, 1, 1)
    assert (row["precision"], row["recall"], row["delay_median_s"]) == (1.0, 1.0, 70.0)


def test_arrival_and_departure_timing_errors() -> None:
    labels = [
        {
            "kind": "stop_visit",
            "vehicle": "v1",
            "stop_id": f"s{i}",
            "arrival": at(100 * i).isoformat(),
            "departure": at(100 * i + 50).isoformat(),
        }
        for i in range(1, 5)
    ]
    events = [
        {"kind": "arrival", "vehicle_id": "v1", "stop_id": "s1", "visit": 1, "at": at(95), "retracted": False},
        {"kind": "arrival", "vehicle_id": "v1", "stop_id": "s2", "visit": 1, "at": at(210), "retracted": False},
        {"kind": "arrival", "vehicle_id": "v1", "stop_id": "s3", "visit": 1, "at": at(330), "retracted": True},
        {"kind": "arrival", "vehicle_id": "v1", "stop_id": "s3", "visit": 2, "at": at(400), "retracted": False},
        {"kind": "arrival", "vehicle_id": "v1", "stop_id": "s4", "visit": 1, "at": at(402), "retracted": False},
        {"kind": "departure", "vehicle_id": "v1", "stop_id": "s1", "visit": 1, "at": at(170), "retracted": False},
    ]
    stops = score(labels, [], events, sim_end=END, thresholds=THRESHOLDS)["stops"]
    assert {k: v for k, v in stops["arrival"].items() if k in ARRIVAL_KEYS} == {
        "expected": 4,
        "matched": 3,
        "missing": 1,
        "extra": 1,
        "median_error_s": 2.0,
        "median_abs_error_s": 5.0,
        "p95_abs_error_s": 10.0,
        "recall": 0.75,
        "arrivals": 4,
        "precision": 0.75,
        "false": {"repeated": 1},
    }  # s3's visit 2 is extra, and a false arrival
    assert (stops["departure"]["matched"], stops["departure"]["median_error_s"]) == (1, 20.0)


ARRIVAL_KEYS = (
    "expected",
    "matched",
    "missing",
    "extra",
    "median_error_s",
    "median_abs_error_s",
    "p95_abs_error_s",
    "recall",
    "arrivals",
    "precision",
    "false",
)


def visit(stop: str, entry: float, stood: float, *, pass_through: bool = False, observable: bool = True) -> dict:
    return {
        "kind": "stop_visit",
        "vehicle": "v1",
        "stop_id": stop,
        "arrival": at(entry + 10).isoformat(),
        "departure": at(entry + 10 + stood).isoformat(),
        "fence_entry": at(entry).isoformat(),
        "fence_exit": at(entry + 20 + stood).isoformat(),
        "stood_s": stood,
        "pass_through": pass_through,
        "observable": observable,
    }


def arrival(stop: str, s: float) -> dict:
    return {"kind": "arrival", "vehicle_id": "v1", "stop_id": stop, "visit": 1, "at": at(s), "retracted": False}


def test_must_detect_pass_through_and_ambiguous_visits() -> None:
    labels = [
        visit("long", 100, 90),  # must be detected
        visit("short", 300, 20),  # stood 20 s: real but ambiguous at sparse sampling
        visit("pass", 500, 0, pass_through=True),  # driven through: an arrival there is false
        visit("light", 700, 25, pass_through=True),  # held at a light inside: real, ambiguous
        visit("unseen", 900, 120, observable=False),  # readings lost across it: ambiguous
        visit("missed", 1100, 200),  # must be detected, and is not
        visit("late", END_S - 100, 300),  # censored: the run ends before it could be told
    ]
    events = [arrival("long", 104), arrival("short", 310), arrival("pass", 505), arrival("light", 702)]
    stops = score(labels, [], events, sim_end=END, thresholds=THRESHOLDS)["stops"]["arrival"]
    assert (stops["expected"], stops["matched"], stops["recall"]) == (2, 1, 0.5)
    assert (stops["arrivals"], stops["precision"], stops["false"]) == (4, 0.75, {"pass_through": 1})
    assert (stops["real_visits"], stops["real_detected"], stops["pass_throughs"]) == (6, 3, 1)
    assert stops["median_error_s"] == 4.0  # against the fence entries: +4, +10, +2


def test_false_alerts_per_vehicle_day_at_shift_ends_and_in_silences() -> None:
    labels = [
        {"kind": "trip", "vehicle": "v1", "start": at(0).isoformat(), "end": at(5000).isoformat(), "last_stop": "d"},
        {"kind": "trip", "vehicle": "v2", "start": at(0).isoformat(), "end": at(5000).isoformat(), "last_stop": "d"},
        visit("d", 4000, 1000) | {"door_open": None, "door_close": None},
        {"kind": "silence", "vehicle": "v1", "start": at(1000).isoformat(), "end": at(1400).isoformat()},
        label("v2", "offline", 2000, 2600),
    ]
    alerts = [
        alert("v1", "offline", 4100, None, 4400, status="open"),  # at the shift's end
        alert("v1", "long_dwell", 4000, None, 5800, status="open"),  # at the shift's end
        alert("v1", "unplanned_dwell", 900, 1500, 1500),  # in a silence, no label
        alert("v1", "door_open_too_long", 650, 950, 1050),  # raised in a silence, resolved before it
        alert("v2", "offline", 2000, 2600, 2300),  # true
        alert("v2", "gps_jump", 300, 310, 300),  # false
        alert("v2", "predicted_late", 300, 310, 300),  # a forecast: apart
        alert("v2", "door_open_too_long", 700, None, 1000, status="retracted"),  # withdrawn: counted apart
    ]
    false = score(labels, alerts, [], sim_end=END, thresholds=THRESHOLDS)["false_alerts"]
    assert false["retracted_by_type"] == {"door_open_too_long": 1}
    assert false["vehicle_days"] == 2 and false["false_alerts"] == 5 and false["per_vehicle_day"] == 2.5
    assert false["by_type"] == {
        "door_open_too_long": 1,
        "gps_jump": 1,
        "long_dwell": 1,
        "offline": 1,
        "unplanned_dwell": 1,
    }
    assert (false["end_of_shift"], false["silence_induced"]) == (2, 2)
    assert false["predicted_late"] == {"alerts": 1, "came_true": 0}
    # the false ones are listed to be looked up in the store
    assert sorted((e["vehicle_id"], e["type"]) for e in false["examples"]) == [
        ("v1", "door_open_too_long"),
        ("v1", "long_dwell"),
        ("v1", "offline"),
        ("v1", "unplanned_dwell"),
        ("v2", "gps_jump"),
    ]


def test_a_door_still_open_when_the_simulation_ends_was_open_until_then() -> None:
    labels = [
        {"kind": "trip", "vehicle": "v1", "start": at(0).isoformat(), "end": at(6800).isoformat(), "last_stop": "d"},
        visit("d", 6700, 400) | {"door_open": at(6750).isoformat(), "door_close": None},
    ]
    # open 5 min before the end and still open then (its close came after the simulation): true
    true = alert("v1", "door_open_too_long", 6750, None, 7060, status="open")
    false = score(labels, [true], [], sim_end=END, thresholds=THRESHOLDS)["false_alerts"]
    assert (false["false_alerts"], false["end_of_shift"]) == (0, 0)
    # an alert for a door the labels say was not open that long is still false
    wrong = alert("v1", "door_open_too_long", 6000, 6400, 6300)
    false = score(labels, [wrong], [], sim_end=END, thresholds=THRESHOLDS)["false_alerts"]
    assert false["false_alerts"] == 1


def test_targets_and_the_printed_table() -> None:
    labels = [
        label("v1", t, 100, 1500) for t in ("long_dwell", "route_deviation", "temp_excursion", "door_away", "offline")
    ]
    delays = {"unplanned_dwell": 610, "route_drift": 95, "temp_excursion": 310, "door_open_away": 12, "offline": 305}
    alerts = [alert("v1", t, 100, 1500, 100 + d) for t, d in delays.items()]
    report = score(labels, alerts, [], sim_end=END, thresholds=THRESHOLDS)
    assert report_passes(report) == ["route_deviation: median delay +35 s over the threshold > 30.0"]
    text = format_report(report)
    assert "long_dwell      unplanned_dwell      1.000   1.000" in text


def test_the_worst_of_several_runs_says_which_run() -> None:
    labels = [label("v1", "offline", 100, 700)]
    good = score(labels, [alert("v1", "offline", 100, 700, 400)], [], sim_end=END, thresholds=THRESHOLDS)
    late = score(labels, [alert("v1", "offline", 100, 700, 460)], [], sim_end=END, thresholds=THRESHOLDS)
    good["seed"], late["seed"] = 7, 11
    good["flow_lag"], late["flow_lag"] = {"max_s": 0.4}, {"max_s": 12.0}
    summary = worst([good, late])
    assert summary["anomalies"]["offline"]["delay_minus_threshold_s"] == {"value": 60.0, "run": "seed 11 #2"}
    assert summary["anomalies"]["offline"]["recall"]["value"] == 1.0
    assert summary["flow_lag"]["max_s"] == {"value": 12.0, "run": "seed 11 #2"}
    assert report_passes(late, max_flow_lag_s=15.0) == ["offline: median delay +60 s over the threshold > 30.0"]
