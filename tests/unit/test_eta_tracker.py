"""EtaTracker: the chain (travel + service before), the re-emit rule at its threshold, remaining
service at a stop, monotone progress, off route, parked / traffic, the model correction
and its throttle, straight lines without a route, per-leg hours, and pickling.

The route runs due north along one meridian, where metres are exactly R * delta-latitude;
profiles are a constant 10 m/s unless a test says otherwise."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.geo import EARTH_RADIUS_M, offset
from core.plan import Plan, Stop
from core.thresholds import EtaConfig
from models import registry
from models.profiles import SpeedProfiles
from pipelines.trackers.dwell import hour_of_week
from pipelines.trackers.eta import EtaTracker, hour_of_week_at
from pipelines.trackers.events import EtaUpdate, eta_update_id
from pipelines.trackers.quality import CheckedFix

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, hour of week 8
LON = 24.94
ROUTE = [(60.0 + i * 0.001, LON) for i in range(21)]
S1 = Stop("s1", 60.005, LON, service_s=120.0)
S2 = Stop("s2", 60.010, LON)
S3 = Stop("s3", 60.015, LON)
STOPS = (S1, S2, S3)
PLAN = Plan("acme", "van-1", 3, STOPS, ROUTE)
NAME = "test-eta"


def m(dlat: float) -> float:
    return EARTH_RADIUS_M * math.radians(dlat)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def fix(s: float, lat: float, speed: float | None = 10.0, east_m: float = 0.0) -> CheckedFix:
    la, lo = offset(lat, LON, 0.0, east_m)
    return CheckedFix(at(s), la, lo, speed, 5.0, None)


def eta_at(s: float, seconds: float) -> datetime:
    """The ETA as the tracker rounds it: to the whole second."""
    return datetime.fromtimestamp(round(at(s).timestamp() + seconds), UTC)


@pytest.fixture(autouse=True)
def models() -> Iterator[None]:
    registry.set_models(NAME, profiles=SpeedProfiles.constant(10.0))
    yield
    registry.clear(NAME)


def tracker(plan: Plan | None = PLAN, **config: float) -> EtaTracker:
    # an estimate at every fix unless the test says otherwise (the default is every 15 s)
    t = EtaTracker("acme", "van-1", EtaConfig(models=NAME, **{"estimate_every_s": 0.0, **config}))  # type: ignore[arg-type]
    t.set_plan(plan)
    return t


def by_stop(events: list) -> dict[str, EtaUpdate]:
    return {e.stop_id: e for e in events}


def test_first_fix_emits_every_stop_with_travel_plus_service_before() -> None:
    t = tracker()
    out = by_stop(t.update(fix(0, 60.001), STOPS))
    assert list(out) == ["s1", "s2", "s3"]
    s1 = out["s1"]
    assert s1 == EtaUpdate(
        eta_update_id("acme", "van-1", "s1", 3, at(0)),
        "acme",
        "van-1",
        "s1",
        3,
        at(0),
        eta_at(0, m(0.004) / 10),
        {
            "remaining_m": round(m(0.004), 1),
            "profile_eta_s": round(m(0.004) / 10, 1),
            "model_eta_s": None,
            "naive_eta_s": round(m(0.004) / 10, 1),
            # straight metres x the default detour factor / the default speed (nothing learned)
            "straight_eta_s": round(m(0.004) * 1.3 / 8.0, 1),
            "method": "route",
            "state": "moving",
            "off_route": False,
            "stops_before": 0,
        },
    )
    assert s1.eta == at(44)  # 444.78 m at 10 m/s
    assert out["s2"].eta == eta_at(0, m(0.009) / 10 + 120)  # + s1's 120 s of service
    assert out["s3"].eta == eta_at(0, m(0.014) / 10 + 120)
    assert out["s3"].details["remaining_m"] == round(m(0.014), 1)
    assert out["s3"].details["stops_before"] == 2


def test_reemitted_only_when_moved_by_more_than_the_threshold() -> None:
    t = tracker(speed_smoothing=1.0)
    first = by_stop(t.update(fix(0, 60.001), STOPS))
    # standing still: every ETA slips by exactly the time elapsed
    assert t.update(fix(30, 60.001, speed=0.0), STOPS) == []
    assert t.update(fix(60, 60.001, speed=0.0), STOPS) == []  # moved by 60 s: not more than 60
    again = by_stop(t.update(fix(61, 60.001, speed=0.0), STOPS))  # 61 s: all three again, new ids
    assert {k: v.eta - first[k].eta for k, v in again.items()} == {k: timedelta(seconds=61) for k in first}
    assert again["s1"].id == eta_update_id("acme", "van-1", "s1", 3, at(61)) != first["s1"].id
    assert again["s1"].details["naive_eta_s"] is None  # no current speed to divide by
    # driving on at the profile speed: the ETAs hold
    assert t.update(fix(66, 60.001 + 50 / m(1.0)), STOPS) == []


def test_threshold_is_configurable_and_new_stops_always_go_out() -> None:
    t = tracker(reemit_s=10.0)
    t.update(fix(0, 60.001), STOPS)
    assert [e.stop_id for e in t.update(fix(11, 60.001, speed=0.0), STOPS)] == ["s1", "s2", "s3"]
    t.set_plan(Plan("acme", "van-1", 4, STOPS, ROUTE))  # a new version: every stop is new
    assert [e.plan_version for e in t.update(fix(12, 60.001, speed=0.0), STOPS)] == [4, 4, 4]


def test_service_left_at_the_stop_just_arrived_at() -> None:
    t = tracker()
    first = by_stop(t.update(fix(0, 60.004), STOPS))
    assert first["s2"].eta == eta_at(0, m(0.006) / 10 + 120)  # T0 + 187 s
    rest = (S2, S3)
    # arrived at s1 (it left the remaining stops): its 120 s of service are still ahead, so the ETA holds
    assert t.update(fix(10, 60.005, speed=0.0), rest) == []
    est = by_stop_estimate(t.observe(fix(40, 60.005, speed=0.0), rest))
    assert est["s2"].profile_s == pytest.approx(90 + m(0.005) / 10)  # 30 s later, 30 s less to serve
    assert est["s2"].row[-1] == 90.0  # service_before_s
    assert t.update(fix(130, 60.005, speed=0.0), rest) == []  # service done: from here the clock runs
    late = by_stop(t.update(fix(192, 60.005, speed=0.0), rest))  # T0 + 248 s: 61 s later than emitted
    assert late["s2"].eta == eta_at(192, m(0.005) / 10) == at(248)
    t.update(fix(200, 60.005 + 201 / m(1.0)), rest)  # 201 m on: left the stop
    assert t.at_stop is None


def test_stops_without_planned_service_take_the_learned_time_at_a_stop() -> None:
    registry.set_models(NAME, stop_dwell_s=45.0)
    t = tracker()
    out = by_stop(t.update(fix(0, 60.001), STOPS))
    assert out["s2"].eta == eta_at(0, m(0.009) / 10 + 120)  # s1 plans 120 s: the plan wins
    assert out["s3"].eta == eta_at(0, m(0.014) / 10 + 120 + 45)  # s2 plans none: the 45 s learned
    rest = (S3,)
    t.update(fix(100, 60.010, speed=0.0), (S2, S3))
    est = by_stop_estimate(t.observe(fix(115, 60.010, speed=0.0), rest))  # arrived at s2: it left the list
    assert est["s3"].profile_s == pytest.approx(45 + m(0.005) / 10)  # its 45 s are still ahead
    est = by_stop_estimate(t.observe(fix(130, 60.010, speed=0.0), rest))
    assert est["s3"].profile_s == pytest.approx(30 + m(0.005) / 10)  # 15 s later, 15 s less
    assert registry.current(NAME).service_s(S2) == 45.0 and registry.current(NAME).service_s(S1) == 120.0


def by_stop_estimate(estimates: list) -> dict:
    return {e.stop_id: e for e in estimates}


def test_progress_is_monotone() -> None:
    t = tracker()
    t.update(fix(0, 60.003), STOPS)
    assert t.progress_m == pytest.approx(m(0.003))
    t.update(fix(5, 60.0025, speed=0.0), STOPS)  # GPS noise behind
    assert t.progress_m == pytest.approx(m(0.003))
    est = by_stop_estimate(t.observe(fix(6, 60.0025, speed=0.0), STOPS))
    assert est["s1"].remaining_m == pytest.approx(m(0.002))


def test_off_route_adds_the_way_back_times_the_detour_factor() -> None:
    registry.set_models(NAME, detour_factor=1.5)
    t = tracker()
    out = by_stop(t.update(fix(0, 60.003, east_m=500.0), STOPS))
    assert out["s1"].details["off_route"] is True
    assert out["s1"].details["remaining_m"] == pytest.approx(1.5 * 500 + m(0.002), abs=0.5)
    assert out["s1"].details["profile_eta_s"] == pytest.approx((1.5 * 500 + m(0.002)) / 10, abs=0.1)


def test_parked_and_traffic_states() -> None:
    t = tracker()
    t.update(fix(0, 60.001, speed=0.0), STOPS)
    assert t.observe(fix(59, 60.001, speed=0.0), STOPS)[0].state == "moving"  # standing, not for long yet
    parked = t.observe(fix(60, 60.001, speed=0.0), STOPS)[0]
    assert (parked.state, parked.naive_s, parked.profile_s) == ("parked", None, pytest.approx(m(0.004) / 10))
    assert parked.row[5] == 60.0  # dwell_s feature
    # crawling at 4 m/s where the profile says 10: the next 500 m go at 4 m/s
    slow = tracker()
    est = by_stop_estimate(slow.observe(fix(0, 60.001, speed=4.0), STOPS))
    assert est["s1"].state == "traffic"
    assert est["s1"].profile_s == pytest.approx(m(0.004) / 10 + m(0.004) * (1 / 4 - 1 / 10))
    assert est["s2"].profile_s == pytest.approx(m(0.009) / 10 + 120 + 500 * (1 / 4 - 1 / 10))


class DoubleModel:
    """A stand-in EtaModel: everything takes twice the profile estimate; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0

    def predict_log_ratio(self, rows: list[list[float]]) -> np.ndarray:
        self.calls += 1
        self.rows = len(rows)
        return np.full(len(rows), math.log(2.0))


def test_model_correction_and_its_throttle() -> None:
    model = DoubleModel()
    registry.set_models(NAME, model=model)
    t = tracker()
    out = by_stop(t.update(fix(0, 60.001), STOPS))
    assert out["s1"].details["model_eta_s"] == round(2 * m(0.004) / 10, 1)
    assert out["s1"].eta == eta_at(0, 2 * m(0.004) / 10)
    assert model.calls == 1
    t.update(fix(10, 60.001, speed=0.0), STOPS)
    assert model.calls == 1  # within model_every_s: the last factors apply
    t.update(fix(120, 60.001, speed=0.0), STOPS)
    assert model.calls == 2
    t.update(fix(121, 60.005, speed=0.0), (S2, S3))  # the remaining stops changed: run now
    assert model.calls == 3
    # asked only about the stops within model_max_ahead_s; those beyond keep the last one's factor
    t = tracker(model_max_ahead_s=100.0)
    out = by_stop(t.update(fix(0, 60.001), STOPS))
    assert model.rows == 1
    assert out["s3"].details["model_eta_s"] == pytest.approx(2 * out["s3"].details["profile_eta_s"], abs=0.2)


def test_without_a_route_straight_lines_times_the_detour() -> None:
    registry.set_models(NAME, detour_factor=1.5)
    t = tracker(Plan("acme", "van-1", 1, STOPS))
    out = by_stop(t.update(fix(0, 60.001), STOPS))
    assert out["s1"].details["method"] == "straight"
    assert out["s1"].details["remaining_m"] == round(1.5 * m(0.004), 1)
    assert out["s2"].eta == eta_at(0, 1.5 * m(0.009) / 10 + 120)
    assert out["s3"].details["remaining_m"] == round(1.5 * m(0.014), 1)


class HourlyProfiles:
    """10 m/s at hour of week 8 (Monday 08 UTC), 5 m/s after."""

    def speed(self, cell: int, hour: int) -> float:
        return 10.0 if hour == 8 else 5.0

    def speeds(self, cells: list[int], hour: int) -> list[float]:
        return [self.speed(c, hour) for c in cells]


def test_each_leg_uses_the_hour_it_starts_in() -> None:
    registry.set_models(NAME, profiles=HourlyProfiles())
    t = tracker()
    start = 59 * 60  # 08:59:00
    est = by_stop_estimate(t.observe(fix(start, 60.001), STOPS))
    assert est["s1"].profile_s == pytest.approx(m(0.004) / 10)  # leaves in hour 8
    # arrives 08:59:44, serves 120 s, leaves s1 at 09:01:44: hour 9, 5 m/s
    assert est["s2"].profile_s == pytest.approx(m(0.004) / 10 + 120 + m(0.005) / 5)


def test_no_plan_or_nothing_left_emits_nothing() -> None:
    t = tracker(None)
    assert t.update(fix(0, 60.001), STOPS) == []
    t = tracker()
    t.update(fix(0, 60.001), STOPS)
    assert t.update(fix(5, 60.0015), ()) == [] and t.emitted == {}
    assert t.on_timer(at(100)) == [] and t.next_timer() is None


def test_state_pickles_small_without_caches_and_resumes_identically() -> None:
    t = tracker()
    t.update(fix(0, 60.001), STOPS)
    blob = pickle.dumps(t)
    assert b"RouteGeometry" not in blob and len(blob) < 2000
    copy = pickle.loads(blob)
    assert copy.update(fix(61, 60.001, speed=0.0), STOPS) == t.update(fix(61, 60.001, speed=0.0), STOPS)


def test_hour_of_week_from_epoch_seconds_matches_the_trackers() -> None:
    for hours in range(0, 24 * 9, 5):
        moment = T0 + timedelta(hours=hours, minutes=17)
        assert hour_of_week_at(moment.timestamp()) == hour_of_week(moment)


def test_a_fix_estimates_at_most_max_stops_stops() -> None:
    """A plan of hundreds of stops costs a fix no more than its next ``max_stops``."""
    stops = tuple(Stop(f"s{i}", 60.001 + i * 0.00005, LON) for i in range(300))
    plan = Plan("acme", "van-1", 1, stops, ROUTE)
    tracker = EtaTracker("acme", "van-1", EtaConfig(models=NAME, estimate_every_s=0, max_stops=25))
    tracker.set_plan(plan)
    updates = tracker.update(fix(0, 60.0), stops)
    assert [u.stop_id for u in updates] == [f"s{i}" for i in range(25)]


def test_event_ids_are_uuid5_of_their_names() -> None:
    """The ids are built without ``uuid.UUID`` (cost per ETA update): still exactly uuid5."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from pipelines.trackers.events import _NAMESPACE, alert_id, eta_update_id, stop_event_id

    at = datetime(2026, 11, 30, 8, 0, 0, 123000, tzinfo=UTC)
    for k in range(200):
        t = at + timedelta(milliseconds=137 * k)
        vehicle, stop = f"van-{k}", f"stöp-{k % 7}"
        ms = round(t.timestamp() * 1000)
        expected = uuid.uuid5(_NAMESPACE, f"eta|acme|{vehicle}|{stop}|{k}|{ms}")
        assert eta_update_id("acme", vehicle, stop, k, t) == str(expected)
        assert stop_event_id("acme", vehicle, "arrival", stop, k, 2) == str(
            uuid.uuid5(_NAMESPACE, f"stop|acme|{vehicle}|arrival|{stop}|{k}|2")
        )
        assert alert_id("acme", vehicle, "late", t, stop, "x") == str(
            uuid.uuid5(_NAMESPACE, f"alert|acme|{vehicle}|late|{stop}|x|{int(t.timestamp() // 1)}")
        )
