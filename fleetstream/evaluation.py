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
    Each stop_visit label has a true arrival and departure; the engine's first visit of
    that stop (not retracted) is compared: error = engine time - true time (seconds).
    The simulator visits each stop once, so any other event (a second visit, a stop or
    a kind with no truth) is extra.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

__all__ = ["ALERT_FOR_LABEL", "format_report", "report_passes", "score"]

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
    delays: list[float] = []
    censored_hits = ambiguous_hits = 0
    for _, li, ai in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if li in used_labels or ai in used_alerts:
            continue
        used_labels.add(li)
        used_alerts.add(ai)
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
    }


def _timing(labels: list[dict[str, Any]], stop_events: list[dict[str, Any]]) -> dict[str, Any]:
    visits = [row for row in labels if row["kind"] == "stop_visit"]
    truth = {
        (v["vehicle"], v["stop_id"], kind): v[kind] for v in visits for kind in ("arrival", "departure") if v.get(kind)
    }
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    extra: Counter[str] = Counter()
    for event in stop_events:
        if event.get("retracted"):
            continue
        key = (event["vehicle_id"], event["stop_id"], event["kind"])
        if event.get("visit", 1) != 1 or key not in truth:
            extra[event["kind"]] += 1
        else:
            first[key] = event
    out: dict[str, Any] = {}
    for kind in ("arrival", "departure"):
        errors: list[float] = []
        expected = missing = 0
        for (vehicle, stop, k), at in truth.items():
            if k != kind:
                continue
            expected += 1
            found = first.get((vehicle, stop, kind))
            if found is None:
                missing += 1
                continue
            errors.append((_time(found["at"]) - _time(at)).total_seconds())
        absolute = [abs(e) for e in errors]
        out[kind] = {
            "expected": expected,
            "matched": len(errors),
            "missing": missing,
            "extra": extra[kind],
            "median_error_s": _quantile(errors, 0.5),
            "median_abs_error_s": _quantile(absolute, 0.5),
            "p95_abs_error_s": _quantile(absolute, 0.95),
        }
    out["extra_events"] = sum(extra.values())
    return out


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
    return {
        "sim_end": sim_end.isoformat(),
        "anomalies": anomalies,
        "unlabelled_alerts": unlabelled,
        "stops": _timing(labels, stop_events),
    }


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
    return "\n".join(lines)


def report_passes(
    report: dict[str, Any],
    min_precision: float = 0.95,
    min_recall: float = 0.95,
    max_delay_over_threshold_s: float = 30.0,
) -> list[str]:
    """The targets a report misses (empty: all met)."""
    failed = []
    for name, row in report["anomalies"].items():
        if row["precision"] is None or row["precision"] < min_precision:
            failed.append(f"{name}: precision {_fmt(row['precision'], '.3f')} < {min_precision}")
        if row["recall"] is None or row["recall"] < min_recall:
            failed.append(f"{name}: recall {_fmt(row['recall'], '.3f')} < {min_recall}")
        over = row["delay_minus_threshold_s"]
        if over is None or over > max_delay_over_threshold_s:
            failed.append(
                f"{name}: median delay {_fmt(over, '+.0f')} s over the threshold > {max_delay_over_threshold_s}"
            )
    return failed
