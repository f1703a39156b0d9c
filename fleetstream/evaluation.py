"""Scoring the analytics against the simulator's ground truth. Pure: values in, report out.

Anomalies
    Each labelled anomaly type maps to the alert type that should report it. An alert
    (not retracted) of that type for the same vehicle *matches* a label when their spans
    overlap, each widened by ``tolerance_s`` (an open alert runs to ``sim_end``); matching
    is one-to-one, greedy by overlap. A label is *detectable* when its start plus the
    type's threshold plus ``censor_margin_s`` is before ``sim_end``; the rest are censored
    (the run ended before anyone could have known): missing one is no miss, and an alert
    matching one is a true alert, not a false positive. Labels marked ``ambiguous`` (an
    anomaly at the edge of the definition) count neither way: an alert matching one is
    no false positive, and missing one is no miss.

    precision = alerts matching a label / alerts raised by ``sim_end`` (those matching an
                ambiguous label left out)
    recall    = matched detectable labels / detectable labels
    delay     = alert.detected_at - label.start (event time, seconds), per matched
                detectable label

Stop events
    Each stop_visit label has the true fence crossings (``fence_entry`` / ``fence_exit``:
    the noise-free track entering and leaving the stop's circle, the engine's definition;
    the stop point's arrival / departure for labels without them) and the seconds the
    vehicle stood inside (``stood_s``). A visit is *real* when the vehicle stood there
    (not a pass-through, or held inside at least ``stood_min_s``), and *must be detected*
    when it is real, observable (no readings lost across it) and stood at least
    ``detect_min_stood_s`` (a fix every 30 s sees two standing fixes only in a stop of a
    minute or more), not censored by the run's end. The engine's first arrival at the
    stop (not retracted) is compared: error = engine time - true time (seconds). A departure
    is expected from every real visit the engine arrived at.

    arrival recall    = must-detect visits with an arrival / must-detect visits
    arrival precision = arrivals at real visits / arrivals (an arrival at a pass-through, at
                        a stop with no visit, or a repeated one is false)

False alerts per vehicle-day
    Every alert that is not true: a labelled type's false positives, ``long_dwell``,
    ``gps_jump`` and ``sensor_fault`` (the simulator makes none of them), and
    ``door_open_too_long`` not overlapping a door opening longer than its threshold, over
    the vehicles (each simulated vehicle works one shift, one vehicle-day). Of them,
    *end of shift*: starting after the vehicle reached its plan's last stop or went quiet;
    *silence-induced*: overlapping a silence (readings lost) and no truth. ``predicted_late``
    is a forecast, reported apart: how many came true.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

__all__ = ["ALERT_FOR_LABEL", "format_report", "lag_report", "report_passes", "score", "worst"]

ALERT_FOR_LABEL = {
    "long_dwell": "unplanned_dwell",
    "route_deviation": "route_drift",
    "temp_excursion": "temp_excursion",
    "door_away": "door_open_away",
    "offline": "offline",
}


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _quantile(values: list[float], q: float) -> float | None:
    """The median (interpolated) for q = 0.5, else the nearest-rank quantile."""
    if not values:
        return None
    if q == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _overlap_s(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> float:
    return (min(a1, b1) - max(a0, b0)).total_seconds()


def _score_type(
    labels: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    threshold_s: float,
    sim_end: datetime,
    tolerance: timedelta,
    censor_margin: timedelta,
) -> dict[str, Any]:
    raised = [a for a in alerts if _time(a["detected_at"]) <= sim_end]
    detectable, censored, ambiguous = [], [], []
    for label in labels:
        if label.get("details", {}).get("ambiguous"):
            ambiguous.append(label)
        elif _time(label["start"]) + timedelta(seconds=threshold_s) + censor_margin <= sim_end:
            detectable.append(label)
        else:
            censored.append(label)
    candidates = [*detectable, *censored, *ambiguous]  # in this order: an index tells the group
    pairs = []
    for li, label in enumerate(candidates):
        l0, l1 = _time(label["start"]) - tolerance, _time(label["end"]) + tolerance
        for ai, alert in enumerate(raised):
            if alert["vehicle_id"] != label["vehicle"]:
                continue
            a0 = _time(alert["start_time"]) - tolerance
            a1 = (_time(alert["end_time"]) if alert.get("end_time") else sim_end) + tolerance
            overlap = _overlap_s(l0, l1, a0, a1)
            if overlap >= 0:
                pairs.append((overlap, li, ai))
    used_labels: set[int] = set()
    used_alerts: set[int] = set()
    matched_ids: list[str] = []
    delays: list[float] = []
    censored_hits = ambiguous_hits = 0
    for _, li, ai in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if li in used_labels or ai in used_alerts:
            continue
        used_labels.add(li)
        used_alerts.add(ai)
        matched_ids.append(raised[ai].get("id", ""))
        if li >= len(detectable) + len(censored):
            ambiguous_hits += 1
        elif li >= len(detectable):
            censored_hits += 1
        else:
            delays.append((_time(raised[ai]["detected_at"]) - _time(detectable[li]["start"])).total_seconds())
    matched = len(delays)
    counted_alerts = len(raised) - ambiguous_hits
    true_alerts = matched + censored_hits
    median = _quantile(delays, 0.5)
    return {
        "labels": len(labels),
        "detectable": len(detectable),
        "censored": len(censored),
        "ambiguous": len(ambiguous),
        "alerts": counted_alerts,
        "matched": matched,
        "matched_censored": censored_hits,
        "false_positives": counted_alerts - true_alerts,
        "missed": len(detectable) - matched,
        "precision": true_alerts / counted_alerts if counted_alerts else None,
        "recall": matched / len(detectable) if detectable else None,
        "delay_median_s": median,
        "delay_p95_s": _quantile(delays, 0.95),
        "threshold_s": threshold_s,
        "delay_minus_threshold_s": None if median is None else median - threshold_s,
        "matched_ids": matched_ids,
    }


def _timing(
    labels: list[dict[str, Any]],
    stop_events: list[dict[str, Any]],
    sim_end: datetime | None = None,
    detect_min_stood_s: float = 60.0,
    stood_min_s: float = 10.0,
) -> dict[str, Any]:
    visits = {(v["vehicle"], v["stop_id"]): v for v in labels if v["kind"] == "stop_visit"}

    def real(v: dict[str, Any]) -> bool:
        return not v.get("pass_through") or (v.get("stood_s") or 0.0) >= stood_min_s

    def must(v: dict[str, Any]) -> bool:
        entry = v.get("fence_entry") or v.get("arrival")
        if not real(v) or not v.get("observable", True) or entry is None:
            return False
        stood = v.get("stood_s")
        if stood is not None and stood < detect_min_stood_s:
            return False
        return sim_end is None or _time(entry) + timedelta(seconds=detect_min_stood_s + 60.0) <= sim_end

    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    extra: Counter[str] = Counter()
    false_arrivals: Counter[str] = Counter()
    for event in stop_events:
        if event.get("retracted"):
            continue
        key = (event["vehicle_id"], event["stop_id"], event["kind"])
        truth = visits.get((event["vehicle_id"], event["stop_id"]))
        if event.get("visit", 1) != 1 or truth is None:
            extra[event["kind"]] += 1
            if event["kind"] == "arrival":
                false_arrivals["repeated" if truth is not None else "no_visit"] += 1
        elif event["kind"] == "arrival" and not real(truth):
            extra["arrival"] += 1
            false_arrivals["pass_through"] += 1
        else:
            first[key] = event
    out: dict[str, Any] = {}
    for kind, truth_key, fallback in (("arrival", "fence_entry", "arrival"), ("departure", "fence_exit", "departure")):
        errors: list[float] = []
        expected = missing = 0
        for (vehicle, stop), v in visits.items():
            at = v.get(truth_key) or v.get(fallback)
            found = first.get((vehicle, stop, kind))
            if kind == "arrival":
                if not must(v):
                    if found is not None and at is not None:
                        errors.append((_time(found["at"]) - _time(at)).total_seconds())
                    continue
            elif at is None or not real(v) or (vehicle, stop, "arrival") not in first:
                continue  # a departure is expected from the visits the engine arrived at
            elif sim_end is not None and _time(at) + timedelta(seconds=120.0) > sim_end:
                continue  # left too close to the run's end: its departure could not be confirmed yet
            expected += 1
            if found is None:
                missing += 1
                continue
            if at is not None:
                errors.append((_time(found["at"]) - _time(at)).total_seconds())
        absolute = [abs(e) for e in errors]
        out[kind] = {
            "expected": expected,
            "matched": expected - missing,
            "missing": missing,
            "extra": extra[kind],
            "median_error_s": _quantile(errors, 0.5),
            "median_abs_error_s": _quantile(absolute, 0.5),
            "p95_abs_error_s": _quantile(absolute, 0.95),
        }
    arrivals = len([k for k in first if k[2] == "arrival"]) + sum(false_arrivals.values())
    out["arrival"].update(
        recall=(out["arrival"]["matched"] / out["arrival"]["expected"]) if out["arrival"]["expected"] else None,
        arrivals=arrivals,
        precision=(1.0 - sum(false_arrivals.values()) / arrivals) if arrivals else None,
        false=dict(false_arrivals),
        pass_throughs=sum(1 for v in visits.values() if not real(v) and (v.get("fence_entry") or v.get("arrival"))),
        real_visits=sum(1 for v in visits.values() if real(v) and (v.get("fence_entry") or v.get("arrival"))),
        real_detected=sum(1 for (veh, stop), v in visits.items() if real(v) and (veh, stop, "arrival") in first),
    )
    out["extra_events"] = sum(extra.values())
    return out


def _spans(rows: list[dict[str, Any]], start: str, end: str, sim_end: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    for row in rows:
        if row.get(start):
            out.append((_time(row[start]), _time(row[end]) if row.get(end) else sim_end))
    return out


def _overlaps(a0: datetime, a1: datetime, spans: list[tuple[datetime, datetime]]) -> bool:
    return any(a0 <= s1 and s0 <= a1 for s0, s1 in spans)


def _false_alerts(
    labels: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    matched_ids: set[str],
    sim_end: datetime,
    door_open_max_s: float,
) -> dict[str, Any]:
    """Alerts that are not true, per type, and those at a shift's end or in a silence."""
    by_vehicle: dict[str, dict[str, Any]] = {}
    for row in labels:
        if row["kind"] == "trip":
            by_vehicle[row["vehicle"]] = row
    # the shift ends at the plan's last stop (its true fence entry) or when the device goes quiet
    shift_end: dict[str, datetime] = {}
    for row in labels:
        if row["kind"] == "trip" and row.get("end"):
            shift_end[row["vehicle"]] = _time(row["end"])
    for row in labels:
        if row["kind"] == "stop_visit" and by_vehicle.get(row["vehicle"], {}).get("last_stop") == row["stop_id"]:
            entry = row.get("fence_entry") or row.get("arrival")
            if entry:
                shift_end[row["vehicle"]] = min(shift_end.get(row["vehicle"], sim_end), _time(entry))
    silences: dict[str, list[tuple[datetime, datetime]]] = {}
    for row in labels:
        if row["kind"] == "silence":
            silences.setdefault(row["vehicle"], []).append((_time(row["start"]), _time(row["end"])))
    doors: dict[str, list[tuple[datetime, datetime]]] = {}
    for row in labels:
        spans = []
        # a door still open when the simulation ended was open at least until then
        if row["kind"] == "stop_visit" and row.get("door_open"):
            close = row.get("door_close")
            spans = [(_time(row["door_open"]), _time(close) if close else sim_end)]
        elif row["kind"] == "anomaly" and row["type"] == "door_away":
            spans = [(_time(row["start"]), _time(row["end"]) if row.get("end") else sim_end)]
        doors.setdefault(row["vehicle"], []).extend(
            (a, b) for a, b in spans if (b - a).total_seconds() >= door_open_max_s
        )
    labelled = set(ALERT_FOR_LABEL.values())
    false: Counter[str] = Counter()
    end_of_shift: Counter[str] = Counter()
    in_silence: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    retracted: Counter[str] = Counter()  # raised, then withdrawn on later data: not false, but seen
    for a in alerts:
        if a["status"] == "retracted" and _time(a["detected_at"]) <= sim_end and a["type"] != "predicted_late":
            retracted[a["type"]] += 1
        if a["status"] == "retracted" or _time(a["detected_at"]) > sim_end or a["type"] == "predicted_late":
            continue
        start = _time(a["start_time"])
        end = _time(a["end_time"]) if a.get("end_time") else sim_end
        vehicle = a["vehicle_id"]
        if a["type"] in labelled:
            true = a["id"] in matched_ids
        elif a["type"] == "door_open_too_long":
            true = _overlaps(start, end, doors.get(vehicle, []))
        else:  # long_dwell, gps_jump, sensor_fault: the simulator makes none
            true = False
        if true:
            continue
        false[a["type"]] += 1
        if len(examples) < 10:  # enough to look one up in the store
            examples.append({k: a.get(k) for k in ("id", "type", "vehicle_id", "start_time", "end_time")})
        if vehicle in shift_end and start >= shift_end[vehicle]:
            end_of_shift[a["type"]] += 1
        elif _overlaps(start, max(end, _time(a["detected_at"])), silences.get(vehicle, [])):  # raised in one too
            in_silence[a["type"]] += 1
    vehicles = max(1, len(by_vehicle))
    late = [a for a in alerts if a["type"] == "predicted_late" and a["status"] != "retracted"]
    came_true = sum(1 for a in late if (a.get("details") or {}).get("arrived_late") is True)
    return {
        "vehicle_days": len(by_vehicle),
        "false_alerts": sum(false.values()),
        "per_vehicle_day": round(sum(false.values()) / vehicles, 3),
        "by_type": dict(sorted(false.items())),
        "end_of_shift": sum(end_of_shift.values()),
        "end_of_shift_by_type": dict(sorted(end_of_shift.items())),
        "silence_induced": sum(in_silence.values()),
        "silence_induced_by_type": dict(sorted(in_silence.items())),
        "retracted_by_type": dict(sorted(retracted.items())),
        "predicted_late": {"alerts": len(late), "came_true": came_true},
        "examples": examples,
    }


def _threshold(thresholds: dict[str, float], alert_type: str, label_type: str) -> float:
    if alert_type in thresholds:
        return float(thresholds[alert_type])
    return float(thresholds[label_type])


def score(
    labels: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    stop_events: list[dict[str, Any]],
    *,
    sim_end: datetime,
    thresholds: dict[str, float],
    tolerance_s: float = 120.0,
    censor_margin_s: float = 60.0,
    detect_min_stood_s: float = 60.0,
) -> dict[str, Any]:
    """The evaluation report (see the module docstring).

    ``labels``: the simulator's label rows; ``alerts``: rows with id, type, vehicle_id,
    status, start_time, end_time, detected_at; ``stop_events``: rows with kind,
    vehicle_id, stop_id, visit, at, retracted; ``thresholds``: seconds per alert type
    (``unplanned_dwell``, ...), or per label type (``long_dwell``, ...). Times are
    timezone-aware datetimes or RFC 3339 strings.
    """
    live = [a for a in alerts if a["status"] != "retracted"]
    tolerance, margin = timedelta(seconds=tolerance_s), timedelta(seconds=censor_margin_s)
    anomalies = {}
    for label_type, alert_type in ALERT_FOR_LABEL.items():
        mine = [row for row in labels if row["kind"] == "anomaly" and row["type"] == label_type]
        theirs = [a for a in live if a["type"] == alert_type]
        anomalies[label_type] = {
            "alert_type": alert_type,
            **_score_type(mine, theirs, _threshold(thresholds, alert_type, label_type), sim_end, tolerance, margin),
        }
    mapped = set(ALERT_FOR_LABEL.values())
    unlabelled = dict(sorted(Counter(a["type"] for a in live if a["type"] not in mapped).items()))
    matched = {i for row in anomalies.values() for i in row.pop("matched_ids")}
    return {
        "sim_end": sim_end.isoformat(),
        "anomalies": anomalies,
        "unlabelled_alerts": unlabelled,
        "stops": _timing(labels, stop_events, sim_end, detect_min_stood_s),
        "false_alerts": _false_alerts(labels, alerts, matched, sim_end, thresholds.get("door_open_too_long", 300.0)),
    }


def lag_report(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The flow's lag over a run from its ``flow_lag`` rows (``pipelines/meter.py``): quantiles
    of ``lag_s`` (wall seconds behind the commits) and the stalled intervals with what took
    their time."""
    lags = [float(r["lag_s"]) for r in samples if r.get("lag_s") is not None]
    stalls = []
    for r in samples:
        lag = r.get("lag_s")
        if float(r["max_gap_s"]) < 2.0 and (lag is None or float(lag) < 10.0):
            continue
        parts = {
            "snapshot": r["snapshot_s"],
            "bytewax": r["other_s"],
            "gc": r["gc_s"],
            "step": r["step_s"],
            "notify": r["notify_s"],
            "source": r["source_s"],
            "sink": r["sink_s"],
        }
        cause = max(parts, key=lambda k: float(parts[k]))
        breakdown = ", ".join(f"{k} {float(v):.1f} s" for k, v in parts.items() if float(v) >= 0.1)
        if r["corrections"]:
            breakdown += f"; {r['corrections']} corrections replaying {r['replayed']} entries"
        stalls.append(
            {
                "at": str(r["at"]),
                "interval_s": float(r["interval_s"]),
                "lag_s": None if lag is None else float(lag),
                "max_gap_s": float(r["max_gap_s"]),
                "max_gap_after": r["max_gap_after"],
                "cause": cause,
                "breakdown": breakdown,
            }
        )
    return {
        "samples": len(samples),
        "p50_s": _quantile(lags, 0.5),
        "p95_s": _quantile(lags, 0.95),
        "max_s": max(lags) if lags else None,
        "stalls": stalls,
    }


def worst(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst of several runs' reports, per figure (lowest precision and recall, highest
    delays, errors, false alerts and lag), with the run each came from."""
    out: dict[str, Any] = {"runs": len(reports), "anomalies": {}, "stops": {}, "false_alerts": {}, "flow_lag": {}}

    def pick(values: list[tuple[Any, str]], low: bool) -> dict[str, Any] | None:
        known = [(v, run) for v, run in values if v is not None]
        if not known:
            return None
        v, run = min(known) if low else max(known)
        return {"value": v, "run": run}

    names = [f"seed {r.get('seed')} #{i + 1}" for i, r in enumerate(reports)]
    for kind in reports[0]["anomalies"]:
        rows = [(r["anomalies"][kind], n) for r, n in zip(reports, names, strict=True)]
        out["anomalies"][kind] = {
            "precision": pick([(row["precision"], n) for row, n in rows], low=True),
            "recall": pick([(row["recall"], n) for row, n in rows], low=True),
            "delay_minus_threshold_s": pick([(row["delay_minus_threshold_s"], n) for row, n in rows], low=False),
            "delay_p95_s": pick([(row["delay_p95_s"], n) for row, n in rows], low=False),
        }
    arrivals = [(r["stops"]["arrival"], n) for r, n in zip(reports, names, strict=True)]
    out["stops"] = {
        "arrival_recall": pick([(a.get("recall"), n) for a, n in arrivals], low=True),
        "arrival_precision": pick([(a.get("precision"), n) for a, n in arrivals], low=True),
        "arrival_p95_abs_error_s": pick([(a["p95_abs_error_s"], n) for a, n in arrivals], low=False),
        "departure_p95_abs_error_s": pick(
            [(r["stops"]["departure"]["p95_abs_error_s"], n) for r, n in zip(reports, names, strict=True)], low=False
        ),
    }
    for key in ("per_vehicle_day", "end_of_shift", "silence_induced"):
        out["false_alerts"][key] = pick(
            [(r.get("false_alerts", {}).get(key), n) for r, n in zip(reports, names, strict=True)], low=False
        )
    out["flow_lag"]["max_s"] = pick(
        [(r.get("flow_lag", {}).get("max_s"), n) for r, n in zip(reports, names, strict=True)], low=False
    )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """Plain-text tables: one row per anomaly type, then arrival/departure timing."""
    lines = [
        f"{'anomaly':<16}{'alert type':<16}{'precision':>10}{'recall':>8}{'detect./labels':>16}"
        f"{'delay p50':>11}{'p95':>8}{'p50 - threshold':>17}"
    ]
    for name, row in report["anomalies"].items():
        lines.append(
            f"{name:<16}{row['alert_type']:<16}{_fmt(row['precision'], '.3f'):>10}"
            f"{_fmt(row['recall'], '.3f'):>8}{row['detectable']:>9}/{row['labels']:<6}"
            f"{_fmt(row['delay_median_s'], '.0f'):>10}s{_fmt(row['delay_p95_s'], '.0f'):>7}s"
            f"{_fmt(row['delay_minus_threshold_s'], '+.0f'):>16}s"
        )
    if report["unlabelled_alerts"]:
        lines.append(
            "alerts of types the simulator does not label: "
            + ", ".join(f"{k} {v}" for k, v in report["unlabelled_alerts"].items())
        )
    lines.append("")
    lines.append(
        f"{'stop events':<12}{'matched':>14}{'median error':>14}{'median |error|':>16}{'p95 |error|':>13}"
        f"{'missing':>9}{'extra':>7}"
    )
    for kind in ("arrival", "departure"):
        row = report["stops"][kind]
        lines.append(
            f"{kind:<12}{row['matched']:>7}/{row['expected']:<6}{_fmt(row['median_error_s'], '+.1f'):>13}s"
            f"{_fmt(row['median_abs_error_s'], '.1f'):>15}s{_fmt(row['p95_abs_error_s'], '.1f'):>12}s"
            f"{row['missing']:>9}{row['extra']:>7}"
        )
    arr = report["stops"]["arrival"]
    lines.append(
        f"arrivals: recall {_fmt(arr.get('recall'), '.3f')} (stops of a minute or more), precision "
        f"{_fmt(arr.get('precision'), '.3f')} ({arr.get('arrivals', 0)} arrivals, false: {arr.get('false', {})}); "
        f"{arr.get('real_detected', 0)} of {arr.get('real_visits', 0)} real visits, "
        f"{arr.get('pass_throughs', 0)} pass-throughs"
    )
    false = report.get("false_alerts")
    if false:
        lines.append(
            f"false alerts: {false['false_alerts']} over {false['vehicle_days']} vehicle-days "
            f"({false['per_vehicle_day']:.2f} per vehicle-day) {false['by_type']}; at a shift's end "
            f"{false['end_of_shift']} {false['end_of_shift_by_type']}, in a silence {false['silence_induced']} "
            f"{false['silence_induced_by_type']}; retracted after raised {false.get('retracted_by_type', {})}; "
            f"predicted_late {false['predicted_late']['alerts']}, {false['predicted_late']['came_true']} came true"
        )
    lag = report.get("flow_lag")
    if lag:
        lines.append(
            f"flow lag: p50 {_fmt(lag['p50_s'], '.1f')} s, p95 {_fmt(lag['p95_s'], '.1f')} s, max "
            f"{_fmt(lag['max_s'], '.1f')} s over {lag['samples']} samples; {len(lag['stalls'])} stalls"
        )
        for stall in lag["stalls"][:10]:
            lines.append(
                f"  stall at {stall['at']}: gap {stall['max_gap_s']:.1f} s after {stall['max_gap_after'] or '-'}, "
                f"lag {_fmt(stall['lag_s'], '.1f')} s, mostly {stall['cause']} ({stall['breakdown']})"
            )
    return "\n".join(lines)


def report_passes(
    report: dict[str, Any],
    min_precision: float = 0.95,
    min_recall: float = 0.95,
    max_delay_over_threshold_s: float = 30.0,
    max_flow_lag_s: float = 15.0,
) -> list[str]:
    """The targets a report misses (empty: all met)."""
    failed = []
    for name, row in report["anomalies"].items():
        if row["labels"] == 0 and row["alerts"] == 0:
            continue  # nothing of this type in the scenario (a bus carries no reefer)
        if row["precision"] is None or row["precision"] < min_precision:
            failed.append(f"{name}: precision {_fmt(row['precision'], '.3f')} < {min_precision}")
        if row["recall"] is None or row["recall"] < min_recall:
            failed.append(f"{name}: recall {_fmt(row['recall'], '.3f')} < {min_recall}")
        over = row["delay_minus_threshold_s"]
        if over is None or over > max_delay_over_threshold_s:
            failed.append(
                f"{name}: median delay {_fmt(over, '+.0f')} s over the threshold > {max_delay_over_threshold_s}"
            )
    arrivals = report["stops"]["arrival"]
    for what, value, least in (
        ("arrival recall", arrivals.get("recall"), min_recall),
        ("arrival precision", arrivals.get("precision"), min_precision),
    ):
        if value is not None and value < least:
            failed.append(f"{what} {value:.3f} < {least}")
    false = report.get("false_alerts") or {}
    for what in ("end_of_shift", "silence_induced"):
        if false.get(what):
            failed.append(f"{false[what]} false alerts {what.replace('_', ' ')}: {false[what + '_by_type']}")
    lag = report.get("flow_lag") or {}
    if lag.get("max_s") is not None and lag["max_s"] > max_flow_lag_s:
        failed.append(f"the analytics stalled: flow lag up to {lag['max_s']:.0f} s > {max_flow_lag_s:.0f} s")
    return failed
