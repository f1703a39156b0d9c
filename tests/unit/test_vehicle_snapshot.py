"""The per-vehicle snapshot the dataflow hands Bytewax (``_VehicleLogic.snapshot``): its size
over a simulated fleet of vans with 20-stop plans and full reorder buffers, mid-route and after
hours of driving, and results identical with and without a snapshot and restore in the middle,
including a late reading whose replay reaches behind the restore (its readings reloaded from
the store)."""

from __future__ import annotations

import os
import pickle
import random
import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading
from core.geo import offset
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig, EtaConfig
from pipelines.analytics import Output, PlanUpdate, VehicleEngine
from pipelines.clock import FleetClock
from pipelines.flow import _resumed, _VehicleLogic
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
CONFIG = AnalyticsConfig(temp_range_c=(2.0, 8.0))
# the target of issue 16 is 4 KB; what the snapshot holds today is bounded by this (docs/analytics.md)
MAX_SNAPSHOT_BYTES = 13_000
VANS = int(os.environ.get("FLEETSTREAM_TEST_SNAPSHOT_VANS", "12"))  # knob: a larger fleet
HOURS = (0.5, 1.0, 2.0, 3.0, 4.0)  # snapshot points


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


@dataclass
class Van:
    """One van's day: a 20-stop plan and its readings (fix every 5 s while driving and parked,
    a temperature a minute, the rear door at every stop), each received 1 s after its fix time."""

    name: str
    seed: int
    plan: Plan = field(init=False)
    readings: list[tuple[float, Reading]] = field(default_factory=list)  # (received s, reading)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        lat, lon = 60.0 + self.seed * 0.01, 24.0
        here, t = (0.0, 0.0), 0.0
        stops: list[Stop] = []
        legs: list[tuple[float, float]] = []
        east = 0.0
        for _ in range(20):
            east += rng.uniform(1500.0, 4000.0)
            legs.append((east, rng.uniform(-800.0, 800.0)))
        # the plan: windows from a naive 9 m/s schedule, names like a real address book's
        sched = 0.0
        prev = here
        for i, (e, n) in enumerate(legs):
            sched += ((e - prev[0]) ** 2 + (n - prev[1]) ** 2) ** 0.5 / 9.0 + 300.0
            prev = (e, n)
            stops.append(
                Stop(
                    f"stop-{i:02d}",
                    *offset(lat, lon, n, e),
                    75.0,
                    at(sched - 1800.0),
                    at(sched + 1800.0),
                    300.0,
                    f"Customer {self.seed}-{i:02d}, Teollisuuskatu {10 + i} B, 00510 Helsinki",
                )
            )
        route = tuple(offset(lat, lon, n, e) for e, n in [here, *legs])
        self.plan = Plan("acme", self.name, 1, tuple(stops), route)
        self._lat, self._lon = lat, lon
        for i, stop_at in enumerate(legs):
            speed = rng.uniform(7.0, 12.0)
            dist = ((stop_at[0] - here[0]) ** 2 + (stop_at[1] - here[1]) ** 2) ** 0.5
            steps = max(1, round(dist / (5 * speed)))
            for k in range(1, steps + 1):
                f = k / steps
                t += 5.0
                self.fix(t, here[0] + f * (stop_at[0] - here[0]), here[1] + f * (stop_at[1] - here[1]), speed)
            here = stop_at
            dwell = rng.uniform(180.0, 480.0)
            self.door(t + 20.0, True)
            self.door(t + dwell - 20.0, False)
            end = t + dwell
            while t + 5.0 <= end:
                t += 5.0
                self.fix(t, *here, 0.0)
            if i % 7 == 6:  # a break: parked an hour at the stop
                while t + 5.0 <= end + 3600.0:
                    t += 5.0
                    self.fix(t, *here, 0.0)
        minute = 60.0
        while minute < t:
            self.add(minute, TemperatureReading("acme", self.name, 0, at(minute), "p1", 4.0 + rng.uniform(-0.5, 0.5)))
            minute += 60.0
        self.readings.sort(key=lambda r: r[0])

    def add(self, s: float, reading: Reading) -> None:
        self.readings.append((s + 1.0, reading))

    def fix(self, s: float, east: float, north: float, speed: float) -> None:
        lat, lon = offset(self._lat, self._lon, north, east)
        self.add(s, GpsFix("acme", self.name, 0, at(s), lat, lon, speed_mps=speed, accuracy_m=5.0, heading_deg=90.0))

    def door(self, s: float, is_open: bool) -> None:
        self.add(s, DoorEvent("acme", self.name, 0, at(s), "rear", is_open))


class Feed:
    """A van's readings as the store commits them: numbered (device seq, shard_seq) in arrival order."""

    def __init__(self, van: Van, late: Sequence[tuple[float, Reading]] = ()) -> None:
        items = sorted([*van.readings, *late], key=lambda r: r[0])
        self.items = [StoredReading(_numbered(r, n + 1), None, at(rx), 0, n + 1) for n, (rx, r) in enumerate(items)]
        self.plan = van.plan

    def store(self, tenant: str, vehicle: str, start: datetime, end: datetime) -> list[StoredReading]:
        """The store: every reading committed, including those not yet handed to the flow."""
        return [i for i in self.items if i.reading.vehicle == vehicle and start <= i.reading.fix_time <= end]


def _numbered(r: Reading, n: int) -> Reading:
    return replace(r, seq=n)


def engine_for(feed: Feed) -> VehicleEngine:
    engine = VehicleEngine("acme", feed.plan.vehicle, CONFIG, EtaConfig())
    engine.on_plan(PlanUpdate(feed.plan, 1, T0), None)
    return engine


def feed_until(engine: VehicleEngine, items: list[StoredReading], out: list[Output]) -> None:
    """As the flow does: one item at a time (the fleet clock: its receive time), due timers after."""
    for item in items:
        out += engine.on_reading(item, item.received_at, run_due=False, summarize=False)
        out += engine.on_timer(item.received_at)


def logic(engine: VehicleEngine | None) -> _VehicleLogic:
    return _VehicleLogic(engine, CONFIG, FleetClock(5.0), timedelta(seconds=1), lambda: T0, EtaConfig())


# ---------------------------------------------------------------- size


def test_snapshot_size_over_a_fleet_with_20_stop_plans_and_full_reorder_buffers() -> None:
    sizes: list[int] = []
    raw: list[int] = []
    dump_s: list[float] = []
    load_s: list[float] = []
    held: list[int] = []
    for v in range(VANS):
        van = Van(f"van-{v:05d}", v + 1)
        feed = Feed(van)
        engine = engine_for(feed)
        out: list[Output] = []
        done = 0
        for hours in HOURS:
            until = at(hours * 3600.0)
            upto = next((k for k, i in enumerate(feed.items) if i.received_at > until), len(feed.items))
            if upto == done:
                continue
            feed_until(engine, feed.items[done:upto], out)
            done = upto
            # a full reorder buffer: the device's last reorder_max_delay_s at 1 Hz, not released yet
            last = engine.analytics.trackers.time or until
            burst = [
                StoredReading(
                    GpsFix(
                        "acme",
                        van.name,
                        10_000_000 + k,
                        last + timedelta(seconds=k),
                        van.plan.stops[0].lat,
                        van.plan.stops[0].lon,
                        speed_mps=0.0,
                        accuracy_m=5.0,
                    ),
                    None,
                    last,
                    0,
                    10_000_000 + k,
                )
                for k in range(1, int(CONFIG.reorder_max_delay_s))
            ]
            copy = pickle.loads(pickle.dumps(engine))  # measure on a copy: the burst is not part of the day
            for item in burst:
                copy.on_reading(item, item.received_at, run_due=False, summarize=False)
            held.append(len(copy.analytics._buffer))
            started = time.perf_counter()
            blob = logic(copy).snapshot()
            dump_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            restored = _resumed(blob)
            load_s.append(time.perf_counter() - started)
            assert restored is not None and restored.analytics.trackers.time == copy.analytics.trackers.time
            sizes.append(len(blob))
            raw.append(len(zlib.decompress(blob)))
    sizes.sort()
    q = statistics.quantiles(sizes, n=20)
    print(
        f"\nsnapshot of {len(sizes)} vehicle states ({VANS} vans with 20-stop plans, at {HOURS} h, reorder buffers "
        f"holding {min(held)}..{max(held)} readings): deflated p50 {statistics.median(sizes):.0f} B, p95 {q[18]:.0f} B, "
        f"max {sizes[-1]} B (pickle p50 {statistics.median(raw):.0f} B, max {max(raw)} B); "
        f"snapshot {statistics.median(dump_s) * 1e3:.2f} ms p50 / {max(dump_s) * 1e3:.2f} ms max a vehicle, "
        f"restore {statistics.median(load_s) * 1e3:.2f} ms p50"
    )
    assert min(held) >= CONFIG.reorder_max_delay_s - 1
    assert sizes[-1] <= MAX_SNAPSHOT_BYTES


# ---------------------------------------------------------------- identical across a restore


def test_results_identical_across_a_restore_with_a_late_reading_replayed_behind_it() -> None:
    van = Van("van-00042", 42)
    cut = 2.0 * 3600.0  # the snapshot: after two hours
    # a late door opening at a stop 20 min before the snapshot, received 30 s after it: the replay
    # starts at a checkpoint before the snapshot, from readings the snapshot left in the store
    parked = [(rx, r) for rx, r in van.readings if isinstance(r, GpsFix) and r.speed_mps == 0.0 and rx < cut - 1200]
    late_at = parked[-40][1].fix_time
    late = [(cut + 30.0, DoorEvent("acme", van.name, 0, late_at, "side", True))]
    feed = Feed(van, late)
    before = [i for i in feed.items if i.received_at <= at(cut)]
    after = [i for i in feed.items if i.received_at > at(cut)]

    straight = engine_for(feed)
    a: list[Output] = []
    feed_until(straight, before, a)
    blob = logic(straight).snapshot()
    a_after: list[Output] = []
    feed_until(straight, after, a_after)

    restored = _resumed(blob)
    assert restored is not None
    restored.analytics.attach_history(feed.store)
    b_after: list[Output] = []
    feed_until(restored, after, b_after)

    assert a_after == b_after
    stats = restored.analytics.lateness
    assert stats.corrections >= 1 and stats.too_late_readings == 0
    assert stats.replayed_entries > 240  # the replay went through the readings reloaded from the store
    assert restored.analytics.emitted() == straight.analytics.emitted()
    side = [o for o in b_after if getattr(getattr(o, "event", None), "type", None) == "door_open_too_long"]
    assert side, "the late side door's alert comes out of the replay"
    print(
        f"\nrestored at 2 h: {len(b_after)} outputs after it, identical; the late reading's replay went over "
        f"{stats.replayed_entries} rows"
    )


def test_without_the_store_a_reading_behind_the_restore_is_counted_too_late() -> None:
    van = Van("van-00043", 43)
    cut = 2.0 * 3600.0
    late_at = next(r.fix_time for rx, r in reversed(van.readings) if rx < cut - 600)
    feed = Feed(van, [(cut + 30.0, TemperatureReading("acme", van.name, 0, late_at, "p2", 4.0))])
    straight = engine_for(feed)
    feed_until(straight, [i for i in feed.items if i.received_at <= at(cut)], [])
    restored = _resumed(logic(straight).snapshot())
    assert restored is not None
    feed_until(restored, [i for i in feed.items if i.received_at > at(cut)], [])
    assert restored.analytics.lateness.too_late_readings == 1
    assert restored.analytics.lateness.corrections == 0


def test_two_restores_before_the_late_reading_still_replay_identically() -> None:
    """Resumed, snapshotted again before any replay needed the store, resumed again: the second
    snapshot's gap spans readings from before and after the first restore."""
    van = Van("van-00042", 42)
    first, second = 1.5 * 3600.0, 2.0 * 3600.0
    parked = [(rx, r) for rx, r in van.readings if isinstance(r, GpsFix) and r.speed_mps == 0.0 and rx < second - 1200]
    late = [(second + 30.0, DoorEvent("acme", van.name, 0, parked[-40][1].fix_time, "side", True))]
    feed = Feed(van, late)
    upto_first = [i for i in feed.items if i.received_at <= at(first)]
    between = [i for i in feed.items if at(first) < i.received_at <= at(second)]
    after = [i for i in feed.items if i.received_at > at(second)]

    straight = engine_for(feed)
    feed_until(straight, upto_first + between, [])
    a_after: list[Output] = []
    feed_until(straight, after, a_after)

    resumed = engine_for(feed)
    feed_until(resumed, upto_first, [])
    once = _resumed(logic(resumed).snapshot())
    assert once is not None
    once.analytics.attach_history(feed.store)
    feed_until(once, between, [])
    twice = _resumed(logic(once).snapshot())
    assert twice is not None
    twice.analytics.attach_history(feed.store)
    b_after: list[Output] = []
    feed_until(twice, after, b_after)
    assert a_after == b_after
    assert twice.analytics.lateness.corrections >= 1 and twice.analytics.lateness.too_late_readings == 0
