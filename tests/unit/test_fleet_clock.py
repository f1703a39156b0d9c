"""FleetClock: event-time now from the data, lowest fresh shard, wall clock when idle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.clock import FleetClock

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # event time of the data
W0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # wall time: the data is replayed days later


def ev(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def wall(s: float) -> datetime:
    return W0 + timedelta(seconds=s)


def test_unknown_tenant_has_no_clock() -> None:
    assert FleetClock().now("acme", wall(0)) is None


def test_replayed_data_drives_the_clock_not_the_wall() -> None:
    clock = FleetClock(idle_grace_s=5)
    clock.observe("acme", 0, ev(100), ev(101), wall(0))
    clock.observe("acme", 1, ev(90), ev(91), wall(0.1))
    assert clock.now("acme", wall(0.2)) == ev(90)  # the lowest shard
    clock.observe("acme", 1, ev(120), ev(121), wall(0.3))
    assert clock.now("acme", wall(0.4)) == ev(100)


def test_fix_time_ahead_of_its_receive_time_is_capped() -> None:
    clock = FleetClock()
    clock.observe("acme", 0, ev(500), ev(101), wall(0))  # device clock 400 s fast
    assert clock.now("acme", wall(0)) == ev(101)


def test_a_quiet_shard_does_not_hold_the_fleet_back() -> None:
    clock = FleetClock(idle_grace_s=5)
    clock.observe("acme", 0, ev(10), ev(11), wall(0))
    clock.observe("acme", 1, ev(12), ev(13), wall(0))
    for i in range(1, 10):
        clock.observe("acme", 1, ev(12 + 10 * i), ev(13 + 10 * i), wall(i))
    assert clock.now("acme", wall(9)) == ev(102)  # shard 0 last delivered 9 s ago


def test_a_silent_fleet_follows_the_wall_clock_after_the_grace_and_never_goes_back() -> None:
    clock = FleetClock(idle_grace_s=5)
    clock.observe("acme", 0, ev(100), ev(100.5), wall(0))
    assert clock.now("acme", wall(5)) == ev(100)
    assert clock.now("acme", wall(65)) == ev(160)  # 60 s past the grace
    clock.observe("acme", 0, ev(130), ev(130.5), wall(66))  # a reading older than the clock
    assert clock.now("acme", wall(66)) == ev(160)


def test_tenants_are_independent() -> None:
    clock = FleetClock()
    clock.observe("acme", 0, ev(100), ev(100), wall(0))
    clock.observe("zeta", 0, ev(5000), ev(5000), wall(0))
    assert (clock.now("acme", wall(1)), clock.now("zeta", wall(1))) == (ev(100), ev(5000))
