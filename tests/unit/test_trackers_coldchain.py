"""Cold chain: a sustained excursion is an excursion; a failed sensor is a sensor fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.contract import TemperatureReading
from core.thresholds import AnalyticsConfig
from pipelines.trackers.coldchain import ColdChainTracker
from pipelines.trackers.events import alert_id

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
RANGE = (2.0, 8.0)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def temp(s: float, celsius: float, sensor: str = "p1") -> TemperatureReading:
    return TemperatureReading("acme", "van-1", int(s), at(s), sensor, celsius)


def feed(c: ColdChainTracker, readings: list[TemperatureReading]) -> list[tuple[datetime, str, str, str, datetime]]:
    """(reading time, type, status, subject-ish, start) of every alert change."""
    out = []
    for r in readings:
        for a in c.update(r, RANGE, 612345):
            out.append((r.fix_time, a.type, a.status, a.details.get("reason") or a.details["side"], a.start))
    return out


def test_a_sustained_excursion_is_raised_after_five_minutes_and_resolved_back_in_range() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    readings = [temp(s, 4.0) for s in range(0, 300, 30)]
    readings += [temp(300 + s, 9.0 + s / 300) for s in range(0, 420, 30)]  # 9.0 .. 10.3 °C, 300..690 s
    readings += [temp(720, 7.5), temp(750, 7.0)]
    assert feed(c, readings) == [
        (at(600), "temp_excursion", "open", "high", at(300)),
        (at(720), "temp_excursion", "resolved", "high", at(300)),
    ]


def test_excursion_details_and_id() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    events = [a for r in [temp(0, 1.0), temp(150, 0.5), temp(300, -0.5), temp(330, 3.0)] for a in c.update(r, RANGE, 7)]
    opened, resolved = events
    assert opened.id == alert_id("acme", "van-1", "temp_excursion", at(0), subject="p1")
    # the values that triggered it: the reading that confirmed it, the worst, the limit crossed
    assert (opened.severity, opened.h3_cell, opened.details) == (
        "critical",
        7,
        {
            "sensor": "p1",
            "side": "low",
            "celsius": -0.5,
            "peak_c": -0.5,
            "limit_c": 2.0,
            "range_c": [2.0, 8.0],
            "confirmed_after_s": 300.0,
        },
    )
    assert (resolved.end, resolved.details["peak_c"]) == (at(330), -0.5)


def test_the_85_degree_power_on_value_is_a_sensor_fault_not_an_excursion() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    readings = [temp(0, 4.0), temp(30, 85.0)] + [temp(60 + 30 * i, 85.0) for i in range(15)] + [temp(600, 4.1)]
    assert feed(c, readings) == [
        (at(30), "sensor_fault", "open", "power_on_value", at(30)),
        (at(600), "sensor_fault", "resolved", "power_on_value", at(30)),
    ]


def test_an_impossible_jump_is_a_sensor_fault_not_an_excursion() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    # 4 -> 40 °C in 10 s and back: a loose connector, not a warm load
    readings = [temp(0, 4.0), temp(10, 40.0), temp(20, 41.0), temp(30, 4.2)]
    assert feed(c, readings) == [
        (at(10), "sensor_fault", "open", "impossible_jump", at(10)),
        (at(30), "sensor_fault", "resolved", "impossible_jump", at(10)),
    ]


def test_a_fast_but_possible_rise_is_an_excursion_not_a_fault() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    # +12 °C over 60 s (allowed: 10 °C per 10 s, scaled to 60 °C over 60 s)
    readings = [temp(0, 4.0), temp(60, 16.0)] + [temp(60 + 30 * i, 16.0 + 0.1 * i) for i in range(1, 12)]
    assert [(e[1], e[2], e[4]) for e in feed(c, readings)] == [("temp_excursion", "open", at(60))]


def test_a_stuck_value_for_an_hour_is_a_sensor_fault_and_suspends_excursions() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    readings = [temp(s, 4.0) for s in range(0, 3660, 60)] + [temp(3660, 4.2)]
    assert feed(c, readings) == [
        (at(3600), "sensor_fault", "open", "stuck", at(0)),
        (at(3660), "sensor_fault", "resolved", "stuck", at(0)),
    ]


def test_a_missing_probe_is_flagged_only_while_the_vehicle_still_reports() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    c.update(temp(0, 4.0), RANGE, None)
    assert c.observe(at(599), None) == []
    (missing,) = c.observe(at(600), 99)
    assert (missing.type, missing.start, missing.details) == (
        "sensor_fault",
        at(0),
        {"sensor": "p1", "reason": "missing"},
    )
    assert c.observe(at(900), None) == []
    (back,) = c.update(temp(950, 4.1), RANGE, None)
    assert (back.id, back.status, back.end) == (missing.id, "resolved", at(950))


def test_an_excursion_is_confirmed_by_the_timer_when_readings_stop() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    c.update(temp(0, 4.0), RANGE, None)
    c.update(temp(30, 9.5), RANGE, None)
    assert c.next_timer() == at(330)
    (opened,) = c.on_timer(at(330))
    assert (opened.type, opened.start) == ("temp_excursion", at(30))
    assert c.next_timer() is None


def test_no_range_means_not_refrigerated_but_faults_still_count() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    assert [a for r in [temp(0, 20.0), temp(30, 25.0)] for a in c.update(r, None, None)] == []
    assert [a.details["reason"] for a in c.update(temp(40, 85.0), None, None)] == ["power_on_value"]


def test_hovering_at_the_limit_is_one_excursion_not_one_per_crossing() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    readings = [temp(s, 9.0) for s in range(0, 330, 30)]  # open at 300 s
    readings += [temp(330, 7.9), temp(360, 8.6), temp(390, 7.7), temp(420, 8.4)]  # inside, but within 0.5 °C
    readings += [temp(450, 7.4), temp(480, 8.2)]  # 7.4 <= 8.0 - 0.5: resolved; 8.2: a new spell starts
    assert feed(c, readings) == [
        (at(300), "temp_excursion", "open", "high", at(0)),
        (at(450), "temp_excursion", "resolved", "high", at(0)),
    ]


def test_a_silence_of_the_whole_vehicle_is_no_missing_probe_and_confirms_no_excursion() -> None:
    c = ColdChainTracker("acme", "van-1", AnalyticsConfig())
    for s in range(0, 300, 30):
        c.hear(at(s), 60.0)
        c.update(temp(s, 4.0), RANGE, 1)
    c.hear(at(300), 60.0)
    c.update(temp(300, 9.5), RANGE, 1)  # out of range, then nothing at all for 15 minutes (a dead zone)
    assert c.next_timer() is None and c.on_timer(at(700)) == []  # the silence confirms no excursion
    c.hear(at(1200), 60.0)  # back: only 60 s of the silence counts towards the probe's silence
    assert c.observe(at(1200), 1) == []
    # the probe then stays quiet while the vehicle reports: missing after 10 minutes of that
    for s in range(1230, 1740, 30):
        c.hear(at(s), 60.0)
        assert c.observe(at(s), 1) == []
    c.hear(at(1740), 60.0)  # 600 s counted: 300..360 s (the cadence's share of the silence) and 1140..1740 s
    (missing,) = c.observe(at(1740), 1)
    assert (missing.details["reason"], missing.start) == ("missing", at(300))  # from its last reading
