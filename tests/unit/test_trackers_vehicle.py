"""VehicleAnalytics: the whole per-vehicle pipeline, late-data correction, plan
changes, suppression, pickling, and a throughput print."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading
from core.geo import offset
from core.plan import Plan, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, Event, StopEvent, alert_id, stop_event_id
from pipelines.trackers.vehicle import StoreReadings, VehicleAnalytics
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LAT, LON = 60.17, 24.94


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def p(east: float, north: float) -> tuple[float, float]:
    return offset(LAT, LON, north, east)


S1 = Stop("s1", *p(1000, 0), 75.0)
S2 = Stop("s2", *p(2000, 2000), 75.0)
S3 = Stop("s3", *p(1500, 1500), 75.0)
PLAN = Plan("acme", "van-1", 1, (S1, S2), (p(0, 0), p(2000, 0), p(2000, 2000)))


@dataclass
class Sim:
    """Builds one vehicle's readings; each is received ``latency`` s after its fix time."""

    items: list[StoredReading] = field(default_factory=list)
    latency: float = 1.0

    def add(self, reading: Reading, received: float | None = None) -> None:
        s = (reading.fix_time - T0).total_seconds()
        rx = at(received if received is not None else s + self.latency)
        self.items.append(StoredReading(reading, None, rx, 0, len(self.items) + 1))

    def fix(self, s: float, east: float, north: float, speed: float) -> None:
        self.add(GpsFix("acme", "van-1", len(self.items) + 1, at(s), *p(east, north), speed_mps=speed, accuracy_m=5.0))

    def drive(self, s0: float, frm: tuple[float, float], to: tuple[float, float], speed: float = 10.0) -> float:
        """Fixes every 5 s from ``frm`` (excluded) to ``to``; returns the arrival time."""
        dist = ((to[0] - frm[0]) ** 2 + (to[1] - frm[1]) ** 2) ** 0.5
        steps = max(1, round(dist / (5 * speed)))
        for i in range(1, steps + 1):
            f = i / steps
            self.fix(s0 + 5 * i, frm[0] + f * (to[0] - frm[0]), frm[1] + f * (to[1] - frm[1]), speed)
        return s0 + 5 * steps

    def park(self, s0: float, where: tuple[float, float], until: float) -> float:
        s = s0 + 5
        while s <= until:
            self.fix(s, where[0], where[1], 0.0)
            s += 5
        return until

    def temp(self, s: float, celsius: float) -> None:
        self.add(TemperatureReading("acme", "van-1", len(self.items) + 1, at(s), "p1", celsius))

    def door(self, s: float, is_open: bool) -> None:
        self.add(DoorEvent("acme", "van-1", len(self.items) + 1, at(s), "rear", is_open))


def store_of(items: list[StoredReading]) -> StoreReadings:
    """The store: every reading of ``items`` (including those not yet fed to a vehicle)."""

    def readings(tenant: str, vehicle: str, start: datetime, end: datetime) -> list[StoredReading]:
        return [
            i
            for i in items
            if (i.reading.tenant, i.reading.vehicle) == (tenant, vehicle) and start <= i.reading.fix_time <= end
        ]

    return readings


def run(
    va: VehicleAnalytics, items: list[StoredReading], timer_every: float | None = None
) -> list[tuple[float, Event]]:
    """Feed items like a runtime: in arrival order, those received together as one batch,
    then on_timer if next_timer() is due (and, if given, every ``timer_every`` s of
    server time). Returns (server s, event)."""
    out: list[tuple[float, Event]] = []
    batches: dict[datetime, list[StoredReading]] = {}
    for item in sorted(items, key=lambda i: i.received_at):
        batches.setdefault(item.received_at, []).append(item)
    last_tick = min(batches) if batches else T0
    for now, batch in batches.items():
        while timer_every is not None and last_tick + timedelta(seconds=timer_every) < now:
            last_tick += timedelta(seconds=timer_every)
            out += [((last_tick - T0).total_seconds(), e) for e in va.on_timer(last_tick)]
        for item in batch:
            out += [((now - T0).total_seconds(), e) for e in va.update(item, now)]
        due = va.next_timer()
        if due is not None and due <= now:
            out += [((now - T0).total_seconds(), e) for e in va.on_timer(now)]
    return out


def drain(va: VehicleAnalytics, until: float) -> list[tuple[float, Event]]:
    """Follow next_timer() up to server time ``until``."""
    out = []
    while (due := va.next_timer()) is not None and due <= at(until):
        out += [((due - T0).total_seconds(), e) for e in va.on_timer(due)]
    return out


def brief(events: list[tuple[float, Event]]) -> list[tuple[object, ...]]:
    """(server s, what, status, stop, start/at s, end s) for compact exact comparisons (times
    in seconds to 0.1 s: arrivals and departures are interpolated at fence boundaries)."""
    rows: list[tuple[object, ...]] = []
    for s, e in events:
        if isinstance(e, Alert):
            end = round((e.end - T0).total_seconds(), 1) if e.end else None
            rows.append((s, e.type, e.status, e.stop_id, round((e.start - T0).total_seconds(), 1), end))
        else:
            when = round((e.at - T0).total_seconds(), 1)
            rows.append((s, e.kind, "retracted" if e.retracted else "ok", e.stop_id, when, None))
    return rows


def delivery_day() -> Sim:
    """Depot -> s1 (5 min) -> corner -> s2 (2 min), 10 m/s, a fix every 5 s."""
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    t = sim.drive(0, (0, 0), (1000, 0))  # 100 s; 75 m from s1 (its circle) at 92.5 s
    t = sim.park(t, (1000, 0), 400)  # standing from 105 s
    t = sim.drive(t, (1000, 0), (2000, 0))  # 1050 m at 405 s (in the band), 1100 m at 410 s: out
    t = sim.drive(t, (2000, 0), (2000, 2000))  # 500..700 s; in the s2 circle from 692.5 s
    sim.park(t, (2000, 2000), 820)
    return sim


# ---------------------------------------------------------------- the pipeline end to end


def test_a_delivery_day_gives_exactly_its_stop_events() -> None:
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, delivery_day().items) + drain(va, 900)
    assert brief(out) == [
        # confirmed by the first standing fix (105 s), at the boundary crossing; out 10 s later
        # (reorder wait) + 1 s latency
        (116.0, "arrival", "ok", "s1", 92.5, None),
        (481.0, "departure", "ok", "s1", 407.5, None),  # 60 s outside, at the crossing 405..410 s
        (716.0, "arrival", "ok", "s2", 692.5, None),
    ]
    arrival, departure = out[0][1], out[1][1]
    assert isinstance(departure, StopEvent) and isinstance(arrival, StopEvent)
    assert arrival.id == stop_event_id("acme", "van-1", "arrival", "s1", 1, 1)
    assert arrival.details["evidence"] == "speed" and departure.details["evidence"] == "outside"
    assert departure.details["service_s"] == 315.0
    assert va.lateness.late_readings == 0 and va.lateness.corrections == 0


def test_a_shift_that_ends_at_the_last_stop_raises_nothing_when_the_device_goes_quiet() -> None:
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, delivery_day().items) + drain(
        va, 20_000
    )  # parked at s2 (its last stop) from 705 s, quiet after 820 s
    assert [r[1] for r in brief(out)] == ["arrival", "departure", "arrival"]  # no offline, no long_dwell
    assert not va.on_duty and va.next_timer() is None
    # quiet after one fix inside s2, still driving (no arrival): the shift ended there too
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, [i for i in delivery_day().items if i.reading.fix_time <= at(695)]) + drain(va, 20_000)
    assert [r[1] for r in brief(out)] == ["arrival", "departure"] and not va.on_duty


def test_movement_puts_a_finished_vehicle_back_on_duty_and_a_new_plan_restarts_the_offline_clock() -> None:
    sim = delivery_day()
    sim.drive(820, (2000, 2000), (2000, 3000))  # drives off after its round: 825..920 s, then goes silent
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, sim.items) + drain(va, 2000)
    assert [r[1:5] for r in brief(out) if r[1] == "offline"] == [("offline", "open", None, 920.0)]  # silent on the road

    # parked at s2 and quiet from 820 s; a new plan at 5000 s: offline 300 s later, not at once
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    run(va, delivery_day().items)
    assert drain(va, 5000) == [] and not va.on_duty
    v2 = Plan("acme", "van-1", 2, (S3,), None)
    assert va.set_plan(v2, at(5000)) == [] and va.on_duty
    assert [(s, e.type, e.status) for s, e in drain(va, 6000)] == [(5300.0, "offline", "open")]


def test_a_plan_over_by_time_is_off_duty() -> None:
    late = Plan("acme", "van-1", 1, (replace(S1, window_end=at(600)),), None)
    cfg = AnalyticsConfig(plan_end_grace_s=0.0)
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    t = sim.drive(0, (0, 0), (0, 6500))  # never goes to s1; parks at 650 s, past its window end (600 s)
    sim.park(t, (0, 6500), 760)  # and goes quiet after 760 s
    va = VehicleAnalytics("acme", "van-1", cfg, plan=late)
    assert [e.type for _, e in run(va, sim.items) + drain(va, 5000)] == []
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    sim.park(0, (0, 0), 200)  # quiet from 200 s: still on duty then
    va = VehicleAnalytics("acme", "van-1", cfg, plan=late)
    assert [(s, e.type) for s, e in run(va, sim.items) + drain(va, 5000)] == [(501.0, "offline")]


def test_one_condition_raises_one_alert_open_then_resolved_with_the_same_id() -> None:
    sim = Sim()
    for i in range(40):
        sim.temp(30 * i, 4.0 if i < 5 or i >= 35 else 11.0)  # out of range 150..1020 s
    va = VehicleAnalytics("acme", "van-1", AnalyticsConfig(temp_range_c=(2.0, 8.0)))
    out = run(va, sim.items, timer_every=5) + drain(va, 2000)
    alerts = [e for _, e in out if isinstance(e, Alert) and e.type == "temp_excursion"]
    assert [(a.status, a.start, a.end) for a in alerts] == [("open", at(150), None), ("resolved", at(150), at(1050))]
    assert alerts[0].id == alerts[1].id == alert_id("acme", "van-1", "temp_excursion", at(150), subject="p1")


# ---------------------------------------------------------------- late data


def test_a_shuffled_burst_within_the_reorder_wait_changes_nothing() -> None:
    in_order = delivery_day().items
    shuffled = []
    # each pair (fixes 5 s apart) arrives together, newest first, 2 s late: its oldest fix is
    # 8 s behind the clock then, inside the 10 s reorder wait
    for k in range(0, len(in_order), 2):
        group = in_order[k : k + 2]
        rx = group[-1].received_at + timedelta(seconds=2)
        shuffled += [StoredReading(i.reading, None, rx, 0, i.shard_seq) for i in reversed(group)]
    va_a = VehicleAnalytics("acme", "van-1", plan=PLAN)
    va_b = VehicleAnalytics("acme", "van-1", plan=PLAN)
    expected = [e for _, e in run(va_a, in_order) + drain(va_a, 900)]
    got = [e for _, e in run(va_b, shuffled) + drain(va_b, 900)]
    assert got == expected and len(got) == 3
    assert va_b.lateness.late_readings == 0 and va_b.lateness.corrections == 0


def test_a_late_fix_corrects_the_arrival_time_under_the_same_id() -> None:
    sim = delivery_day()
    # the 95 s fix (the van already at s1's centre, standing) arrives late
    sim.items = [
        replace(i, reading=replace(i.reading, lat=S1.lat, lon=S1.lon, speed_mps=0.0), received_at=at(200))
        if i.reading.fix_time == at(95)
        else i
        for i in sim.items
    ]
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, [i for i in sim.items if i.reading.fix_time <= at(300)]) + drain(va, 300)
    assert brief(out) == [
        (116.0, "arrival", "ok", "s1", 92.5, None),  # without the 95 s fix: crossed between 90 and 100 s
        (200.0, "arrival", "ok", "s1", 91.2, None),  # 100 m -> 0 m in 90..95 s: corrected in place
    ]
    assert out[0][1].id == out[1][1].id
    assert (va.lateness.late_readings, va.lateness.corrected_readings, va.lateness.corrections) == (1, 1, 1)
    assert va.lateness.max_lateness_s == 95.0  # watermark 190 s (the clock when it arrives, 200 s, - 10 s) - 95 s


def test_offline_then_a_late_burst_raises_no_dwell_from_the_silence() -> None:
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    t = sim.drive(0, (0, 0), (500, 0))  # 50 s
    t = sim.park(t, (500, 0), 250)  # stopped 55..250 s away from any stop (a 3-minute wait)
    t = sim.drive(t, (500, 0), (1000, 0))  # 255..300 s; inside s1 from 292.5 s
    t = sim.park(t, (1000, 0), 600)
    t = sim.drive(t, (1000, 0), (1500, 0))  # out of the s1 band from 610 s
    sim.park(t, (1500, 0), 1000)
    # the link drops after 120 s; the edge outbox delivers the rest at 900 s
    sim.items = [
        replace(i, received_at=max(at(900), i.received_at)) if i.reading.fix_time > at(120) else i for i in sim.items
    ]
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, sim.items, timer_every=10) + drain(va, 1100)
    assert brief(out) == [
        # nothing received since 121 s (the 120 s fix); last heard on the way to s1
        (421.0, "offline", "open", "s1", 120.0, None),
        # seen standing 65 s (55..120 s): the silence is no unplanned dwell (it stood 3 minutes)
        (900.0, "offline", "resolved", "s1", 120.0, 900.0),  # the burst arrives
        (900.0, "arrival", "ok", "s1", 292.5, None),
        (900.0, "departure", "ok", "s1", 607.5, None),
    ]
    stats = va.lateness
    # nothing fired behind the burst: it is applied in order, no replay
    assert stats.corrections == 0 and stats.too_late_readings == 0 and stats.corrected_readings == 0
    # behind the reorder watermark when the burst arrives (the clock, 900 s, - 10 s): flagged late
    assert stats.late_readings == sum(1 for i in sim.items if at(120) < i.reading.fix_time < at(890))


def test_readings_older_than_the_correction_window_are_counted_not_analysed() -> None:
    cfg = AnalyticsConfig(correction_window_s=600, checkpoint_every_s=60)
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    sim.drive(0, (0, 0), (15000, 0))  # 1500 s
    va = VehicleAnalytics("acme", "van-1", cfg, plan=PLAN)
    run(va, sim.items)
    old = StoredReading(GpsFix("acme", "van-1", 999, at(100), *p(5000, 5000)), None, at(1600), 0, 999)
    assert va.update(old, at(1600)) == [] and va.on_timer(at(1600)) == []
    assert va.lateness.too_late_readings == 1 and va.lateness.corrections == 0


# ---------------------------------------------------------------- plan changes


def replanned_day() -> tuple[Sim, Plan]:
    """Leaves s1 at 410 s, then the plan changes: s3 first, reached by driving north-east."""
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    t = sim.drive(0, (0, 0), (1000, 0))
    t = sim.park(t, (1000, 0), 400)
    t = sim.drive(t, (1000, 0), (1000, 1500))  # north, away from the v1 route
    t = sim.drive(t, (1000, 1500), (1500, 1500))  # east to s3 (1500, 1500)
    sim.park(t, (1500, 1500), 900)
    v2 = Plan("acme", "van-1", 2, (S1, S3, S2), (p(1000, 0), p(1000, 1500), p(2000, 1500), p(2000, 2000)))
    return sim, v2


def test_a_plan_change_mid_route_takes_effect_at_once() -> None:
    sim, v2 = replanned_day()
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    before = [i for i in sim.items if i.received_at <= at(420)]
    out = run(va, before)
    assert va.trackers.geofence.next_stop() == S2
    out += [(420.0, e) for e in va.set_plan(v2, at(420))]
    assert va.plan == v2 and va.trackers.geofence.next_stop() == S3  # re-sequenced, s1 still done
    out += run(va, [i for i in sim.items if i.received_at > at(420)], timer_every=10) + drain(va, 1000)
    assert brief(out) == [
        (116.0, "arrival", "ok", "s1", 92.5, None),
        (481.0, "departure", "ok", "s1", 407.5, None),
        (616.0, "arrival", "ok", "s3", 592.5, None),  # 75 m from s3 at 592.5 s, standing at 605 s
    ]
    assert out[-1][1].id == stop_event_id("acme", "van-1", "arrival", "s3", 2, 1)

    # the same drive without the new plan drifts off the old route
    va_old = VehicleAnalytics("acme", "van-1", plan=PLAN)
    old = run(va_old, sim.items, timer_every=10) + drain(va_old, 1000)
    assert [r[1:3] for r in brief(old) if r[1] == "route_drift"] == [("route_drift", "open")]


def test_a_late_reading_from_before_a_plan_change_is_replayed_under_the_old_plan() -> None:
    sim = Sim()
    sim.fix(0, 0, 0, 0.0)
    t = sim.park(0, (0, 0), 60)  # waits a minute at the depot
    t = sim.drive(t, (0, 0), (1000, 0))  # into s1 at 152.5 s
    t = sim.park(t, (1000, 0), 460)
    t = sim.drive(t, (1000, 0), (1000, 1500))  # out of the s1 band at 470 s
    t = sim.drive(t, (1000, 1500), (1500, 1500))  # into s3 at 652.5 s
    sim.park(t, (1500, 1500), 900)
    # the depot fixes of 5..40 s arrive after the plan change
    sim.items = [replace(i, received_at=at(560)) if at(0) < i.reading.fix_time <= at(40) else i for i in sim.items]
    late = [i for i in sim.items if i.received_at == at(560)]
    _, v2 = replanned_day()
    v2 = Plan("acme", "van-1", 2, (Stop("s0", *p(0, 0), 75.0), *v2.stops), v2.route)  # v2 has a depot stop
    va = VehicleAnalytics("acme", "van-1", plan=PLAN)
    out = run(va, [i for i in sim.items if i.received_at <= at(480)])
    out += [(480.0, e) for e in va.set_plan(v2, at(480))]
    out += run(va, [i for i in sim.items if i.received_at > at(480)], timer_every=10) + drain(va, 1000)
    # no arrival at the depot: at 5..40 s the plan was version 1, which has no depot stop
    assert [r[1:5] for r in brief(out)] == [
        ("arrival", "ok", "s1", 152.5),
        ("departure", "ok", "s1", 467.5),
        ("arrival", "ok", "s3", 652.5),
    ]
    assert va.lateness.corrections == 1 and va.lateness.corrected_readings == len(late)
    # under version 2 from the start the same readings do arrive at the depot
    va2 = VehicleAnalytics("acme", "van-1", plan=v2)
    assert brief(run(va2, sim.items, timer_every=10))[0][1:5] == ("arrival", "ok", "s0", 0.0)


# ---------------------------------------------------------------- state


def test_pickle_round_trip_mid_route_continues_identically() -> None:
    sim = delivery_day()
    sim.temp(30, 4.0)
    sim.door(100, True)
    first, rest = sim.items[:60], sim.items[60:]
    va = VehicleAnalytics("acme", "van-1", AnalyticsConfig(temp_range_c=(2.0, 8.0)), plan=PLAN)
    run(va, first)
    blob = pickle.dumps(va)
    restored = pickle.loads(blob)
    restored.attach_history(store_of(sim.items))  # the door event at 100 s comes late: a replay
    assert restored.plan == va.plan
    assert restored.trackers.active.corridor.cells == va.trackers.active.corridor.cells
    a = run(va, rest) + drain(va, 1200)
    b = run(restored, rest) + drain(restored, 1200)
    assert a == b
    # a correction after the restore replays from an unpickled checkpoint the same way
    late = StoredReading(GpsFix("acme", "van-1", 999, at(692), *p(2000, 1930), 10.0), None, at(1300), 0, 999)
    back_a, back_b = va.update(late, at(1300)), restored.update(late, at(1300))
    assert back_a == back_b == []  # it had reached its last stop: off duty, so no offline alert to resolve
    fixed_a, fixed_b = va.on_timer(at(1300)), restored.on_timer(at(1300))
    assert fixed_a == fixed_b and [(e.kind, round((e.at - T0).total_seconds(), 1)) for e in fixed_a] == [
        ("arrival", 691.7)  # 100 m at 690 s, 70 m at 692 s: the 75 m circle at 691.7 s
    ]
    # the door opened at 100 s is never heard closed: the van drove off, so it closed unheard
    # (resolved at the last fix where it stood); the probe reported once, at 30 s
    assert [r[1:3] for r in brief(a)] == [
        ("door_open_too_long", "open"),
        ("door_open_too_long", "resolved"),
        ("departure", "ok"),
        ("sensor_fault", "open"),
        ("arrival", "ok"),
    ]
    print(f"\npickled VehicleAnalytics mid-route: {len(blob)} bytes, {va.history_size} history entries")


def test_throughput_of_update() -> None:
    """Printed, not asserted: microseconds per VehicleAnalytics.update on a delivery-day stream."""
    sim = Sim()
    t = 0.0
    for leg in range(40):
        y = 100.0 * (leg % 2)
        t = sim.drive(t, (0 if leg % 2 == 0 else 3000, y), (3000 if leg % 2 == 0 else 0, 100 - y))
        if leg % 5 == 0:
            sim.temp(t, 4.0)
    items = sim.items
    va = VehicleAnalytics("acme", "van-1", AnalyticsConfig(temp_range_c=(2.0, 8.0)), plan=PLAN)
    started = time.perf_counter()
    for item in items:
        va.update(item, item.received_at)
    elapsed = time.perf_counter() - started
    print(f"\nVehicleAnalytics.update: {elapsed / len(items) * 1e6:.1f} us per reading over {len(items)} readings")
    started = time.perf_counter()
    blob = pickle.dumps(va)
    dumped = time.perf_counter() - started
    hours = (items[-1].reading.fix_time - items[0].reading.fix_time).total_seconds() / 3600
    print(
        f"state after {hours:.1f} h (window {va.config.correction_window_s:.0f} s): {len(blob)} bytes pickled, "
        f"{va.history_size} history rows, pickle.dumps {dumped * 1e3:.2f} ms"
    )
