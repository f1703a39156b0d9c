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


def day(held_back: tuple[float, float] | None = None, received: float = 300.0) -> list[StoredReading]:
    """The delivery day; fixes with fix times in ``held_back`` received together at ``received`` s."""
    items = []
    for item in delivery_day().items:
        t = s(item.reading.fix_time)
        if held_back is not None and held_back[0] <= t <= held_back[1]:
            item = StoredReading(item.reading, None, at(received), 0, item.shard_seq)
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
        (111.0, 100.0, 100.0, False),  # standing at s1 from 105 s: arrived (at 92.5 s)
    ]
    assert sum(isinstance(e, EtaUpdate) for _, e in out) > 10
    etas = {e.ledger_key: e for e in va.emitted() if isinstance(e, EtaUpdate)}
    assert sorted(etas) == ["eta|s1", "eta|s2"]
    assert s(etas["eta|s1"].at) == 100.0


def test_a_correction_retracts_the_current_eta_it_disproves_and_emits_its_own() -> None:
    # the whole visit to s1 (95..410 s) arrives at 430 s: live, the van seems to have driven past it
    va = analytics()
    out = run(va, day(held_back=(95.0, 410.0), received=430.0)) + drain(va, 900)
    assert s1_etas(out) == [
        (11.0, 0.0, 125.0, False),
        (16.0, 5.0, 228.0, False),
        (21.0, 10.0, 122.0, False),
        (66.0, 55.0, 111.0, False),
        (426.0, 415.0, 439.0, False),  # live, past s1 without having been seen there
        (430.0, 420.0, 452.0, False),
        (430.0, 420.0, 452.0, True),  # the replay has the van at s1 since 92.5 s: no ETA at 420 s
        (430.0, 100.0, 100.0, False),  # what the replay predicted (earlier live ones stay as made)
    ]
    arrivals = [(srv, s(e.at)) for srv, e in out if isinstance(e, StopEvent) and e.kind == "arrival"]
    assert arrivals[:1] == [(430.0, 92.5)]
    assert va.lateness.corrections == 1


def test_estimate_every_s_skips_estimates_between_but_not_a_change_of_stops(monkeypatch) -> None:
    from pipelines.trackers.quality import CheckedFix
    from tests.unit.test_trackers_vehicle import S1, S2, p

    tracker = EtaTracker("acme", "van-1", EtaConfig(estimate_every_s=15.0))
    tracker.set_plan(PLAN)
    estimated: list[float] = []
    observe = tracker.observe
    monkeypatch.setattr(
        tracker,
        "observe",
        lambda fix, remaining, visit=None, **kw: estimated.append(s(fix.time)) or observe(fix, remaining, visit, **kw),
    )
    for t in range(0, 45, 5):
        remaining = (S1, S2) if t < 25 else (S2,)  # s1 done at 25 s
        tracker.update(CheckedFix(at(t), *p(10 * t, 0), 10.0, 5.0, None), remaining)
    assert estimated == [0.0, 15.0, 25.0, 40.0]
    assert tracker.speed_mps == 10.0 and tracker.last is not None and s_of(tracker.last[0]) == 40.0


def s_of(epoch_s: float) -> float:
    return epoch_s - T0.timestamp()
