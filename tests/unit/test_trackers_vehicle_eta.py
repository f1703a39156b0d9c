"""VehicleAnalytics with the live ETA tracker: ETA updates go through the ledger one per
stop (the history is the database's), and a late-data correction emits the predictions its
replay made and retracts the stop's current ETA when the replay no longer makes it."""

from __future__ import annotations

from core.thresholds import EtaConfig
from pipelines.trackers.eta import EtaTracker
from pipelines.trackers.events import EtaUpdate, StopEvent
from pipelines.trackers.vehicle import VehicleAnalytics
from pipelines.vehicle_state import StoredReading
from tests.unit.test_trackers_vehicle import PLAN, T0, at, delivery_day, drain, run


def s(t) -> float:
    return (t - T0).total_seconds()


def analytics() -> VehicleAnalytics:
    # re-emit on 10 s changes: the vehicle's ETA for s1 moves while it closes in
    return VehicleAnalytics(
        "acme", "van-1", plan=PLAN, eta=EtaTracker("acme", "van-1", EtaConfig(reemit_s=10, estimate_every_s=0.0))
    )


def day(held_back: tuple[float, float] | None = None) -> list[StoredReading]:
    """The delivery day; fixes with fix times in ``held_back`` received together at 300 s."""
    items = []
    for item in delivery_day().items:
        t = s(item.reading.fix_time)
        if held_back is not None and held_back[0] <= t <= held_back[1]:
            item = StoredReading(item.reading, None, at(300), 0, item.shard_seq)
        items.append(item)
    return sorted(items, key=lambda i: i.received_at)


def s1_etas(out) -> list[tuple[float, float, float, bool]]:
    """(server s, predicted at s, eta s, retracted) of the s1 ETA updates."""
    return [(srv, s(e.at), s(e.eta), e.retracted) for srv, e in out if isinstance(e, EtaUpdate) and e.stop_id == "s1"]


def test_the_ledger_keeps_one_eta_per_stop() -> None:
    va = analytics()
    out = run(va, day()) + drain(va, 900)
    assert s1_etas(out) == [
        (11.0, 0.0, 125.0, False),
        (16.0, 5.0, 228.0, False),
        (21.0, 10.0, 122.0, False),
        (66.0, 55.0, 111.0, False),
        (111.0, 100.0, 100.0, False),
        (126.0, 115.0, 115.0, False),
    ]
    assert sum(isinstance(e, EtaUpdate) for _, e in out) > 10
    etas = {e.ledger_key: e for e in va.emitted() if isinstance(e, EtaUpdate)}
    assert sorted(etas) == ["eta|s1", "eta|s2"]
    assert s(etas["eta|s1"].at) == 115.0


def test_a_correction_retracts_the_current_eta_it_disproves_and_emits_its_own() -> None:
    # 95..140 s (the arrival at s1) arrives at 300 s: live, the van seems to arrive at 145 s
    va = analytics()
    out = run(va, day(held_back=(95.0, 140.0))) + drain(va, 900)
    assert s1_etas(out) == [
        (11.0, 0.0, 125.0, False),
        (16.0, 5.0, 228.0, False),
        (21.0, 10.0, 122.0, False),
        (66.0, 55.0, 111.0, False),
        (156.0, 145.0, 145.0, False),
        (171.0, 160.0, 160.0, False),  # live, with the gap
        (300.0, 160.0, 160.0, True),  # the replay has the van at s1 since 95 s: no ETA at 160 s
        (300.0, 100.0, 100.0, False),
        (300.0, 115.0, 115.0, False),  # what the replay predicted
    ]
    arrivals = [(srv, s(e.at)) for srv, e in out if isinstance(e, StopEvent) and e.kind == "arrival"]
    assert arrivals[:2] == [(186.0, 145.0), (300.0, 95.0)]
    assert va.lateness.corrections == 1


def test_estimate_every_s_skips_estimates_between_but_not_a_change_of_stops(monkeypatch) -> None:
    from pipelines.trackers.quality import CheckedFix
    from tests.unit.test_trackers_vehicle import S1, S2, p

    tracker = EtaTracker("acme", "van-1", EtaConfig(estimate_every_s=15.0))
    tracker.set_plan(PLAN)
    estimated: list[float] = []
    observe = tracker.observe
    monkeypatch.setattr(
        tracker, "observe", lambda fix, remaining: estimated.append(s(fix.time)) or observe(fix, remaining)
    )
    for t in range(0, 45, 5):
        remaining = (S1, S2) if t < 25 else (S2,)  # s1 done at 25 s
        tracker.update(CheckedFix(at(t), *p(10 * t, 0), 10.0, 5.0, None), remaining)
    assert estimated == [0.0, 15.0, 25.0, 40.0]
    assert tracker.speed_mps == 10.0 and tracker.last is not None and s_of(tracker.last[0]) == 40.0


def s_of(epoch_s: float) -> float:
    return epoch_s - T0.timestamp()
