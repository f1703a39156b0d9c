"""The edge agent's sampling policy: which fixes, temperatures and door changes are sent."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from edge.agent.sampling import (
    DoorSample,
    DoorSampler,
    GpsPolicy,
    GpsSample,
    GpsSampler,
    Sampler,
    TemperaturePolicy,
    TemperatureSample,
    TemperatureSampler,
    distance_m,
    turn_deg,
)

T0 = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
M_PER_DEG_LAT = 111_195.0  # on the mean Earth radius


def fix(
    t: float, north_m: float = 0.0, speed: float | None = 10.0, heading: float | None = 0.0, mode: int = 3
) -> GpsSample:
    return GpsSample(
        T0 + timedelta(seconds=t), 60.0 + north_m / M_PER_DEG_LAT, 24.9, mode=mode, speed_mps=speed, heading_deg=heading
    )


def sent(sampler: GpsSampler, fixes: list[GpsSample]) -> list[float]:
    return [(f.time - T0).total_seconds() for f in fixes if sampler.update(f)]


def test_geometry() -> None:
    assert distance_m(60.0, 24.9, 60.0 + 100 / M_PER_DEG_LAT, 24.9) == pytest.approx(100.0, abs=0.01)
    assert distance_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(111_195, rel=1e-4)
    assert turn_deg(350.0, 10.0) == 20.0
    assert turn_deg(10.0, 350.0) == 20.0
    assert turn_deg(90.0, 270.0) == 180.0


def test_first_fix_is_sent_and_no_fix_never() -> None:
    sampler = GpsSampler()
    assert not sampler.update(fix(0, mode=1))
    assert sampler.update(fix(1))
    assert not sampler.update(fix(2))


def test_a_fix_is_sent_every_100_m() -> None:
    # 8 m/s due north for 60 s, one fix a second: a fix at 100 m, 200 m, ... (the period is longer)
    sampler = GpsSampler(GpsPolicy(moving_period_s=1000))
    times = sent(sampler, [fix(t, north_m=8.0 * t, speed=8.0) for t in range(61)])
    assert times == [0, 13, 26, 39, 52]


def test_a_turn_of_30_degrees_while_moving_is_sent() -> None:
    sampler = GpsSampler(GpsPolicy(min_distance_m=1e9, moving_period_s=1e9))
    fixes = [
        fix(0, heading=0.0),
        fix(1, heading=10.0),
        fix(2, heading=29.0),
        fix(3, heading=31.0),
        fix(4, heading=45.0),
        fix(5, heading=62.0),
    ]
    assert sent(sampler, fixes) == [0, 3, 5]  # 31° from the fix sent at 0; 31° from the one at 3


def test_turns_are_ignored_while_parked() -> None:
    sampler = GpsSampler(GpsPolicy(min_distance_m=1e9, parked_period_s=1e9))
    fixes = [fix(0, speed=0.2, heading=0.0), fix(1, speed=0.2, heading=180.0), fix(2, speed=0.0, heading=90.0)]
    assert sent(sampler, fixes) == [0]


def test_period_is_30_s_moving_and_300_s_parked() -> None:
    moving = GpsSampler(GpsPolicy(min_distance_m=1e9))
    assert sent(moving, [fix(t, speed=5.0) for t in range(0, 100)]) == [0, 30, 60, 90]
    parked = GpsSampler()
    assert sent(parked, [fix(t, speed=0.0, heading=None) for t in range(0, 700, 10)]) == [0, 300, 600]


def test_unknown_speed_counts_as_parked() -> None:
    sampler = GpsSampler(GpsPolicy(min_distance_m=1e9))
    assert sent(sampler, [fix(t, speed=None, heading=None) for t in range(0, 400, 10)]) == [0, 300]


def test_zero_thresholds_send_every_fix() -> None:
    sampler = GpsSampler(GpsPolicy(min_distance_m=0, moving_period_s=0, parked_period_s=0))
    assert sent(sampler, [fix(t, speed=0.0) for t in range(5)]) == [0, 1, 2, 3, 4]


def test_a_clock_jump_back_restarts_from_that_fix() -> None:
    sampler = GpsSampler()
    assert sent(sampler, [fix(100), fix(101), fix(50), fix(51)]) == [100, 50]


def test_defaults_are_those_of_commercial_trackers() -> None:
    p = GpsPolicy()
    assert (p.min_distance_m, p.min_turn_deg, p.moving_period_s, p.parked_period_s) == (100, 30, 30, 300)


def temp(t: float, celsius: float, sensor: str = "reefer") -> TemperatureSample:
    return TemperatureSample(T0 + timedelta(seconds=t), sensor, celsius)


def test_temperature_every_period_per_probe() -> None:
    sampler = TemperatureSampler(TemperaturePolicy(period_s=60, thresholds_c=()))
    samples = [temp(t, 4.0, s) for t in range(0, 130, 10) for s in ("front", "rear")]
    out = [((x.time - T0).total_seconds(), x.sensor) for x in samples if sampler.update(x)]
    assert out == [(0, "front"), (0, "rear"), (60, "front"), (60, "rear"), (120, "front"), (120, "rear")]


def test_temperature_threshold_crossing_is_sent_at_once_with_hysteresis() -> None:
    sampler = TemperatureSampler(TemperaturePolicy(period_s=3600, thresholds_c=(8.0,), hysteresis_c=0.5))
    values = [4.0, 7.9, 8.1, 8.3, 7.8, 8.2, 7.4, 7.0, 8.05]
    out = [v for i, v in enumerate(values) if sampler.update(temp(i, v))]
    # 4.0 first; 8.1 rises above 8; 7.8 is within the hysteresis; 7.4 falls below 7.5; 8.05 rises again
    assert out == [4.0, 8.1, 7.4, 8.05]


def test_temperature_period_zero_sends_every_reading() -> None:
    sampler = TemperatureSampler(TemperaturePolicy(period_s=0))
    assert all(sampler.update(temp(i, 4.0)) for i in range(5))


def test_door_first_state_and_every_change() -> None:
    sampler = DoorSampler()
    states = [False, False, True, True, False]
    out = [s for i, s in enumerate(states) if sampler.update(DoorSample(T0 + timedelta(seconds=i), "rear", s))]
    assert out == [False, True, False]
    assert sampler.update(DoorSample(T0, "side", False))  # doors are independent


def test_sampler_routes_by_kind() -> None:
    sampler = Sampler.from_policies(GpsPolicy(), TemperaturePolicy())
    assert sampler.update(fix(0))
    assert sampler.update(temp(0, 4.0))
    assert sampler.update(DoorSample(T0, "rear", True))
    assert not sampler.update(fix(1))
    snap = sampler.snapshot()
    assert snap["door"] == {"rear": True}
    assert math.isclose(snap["gps"]["last"].lat, 60.0)
