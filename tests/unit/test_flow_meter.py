"""The flow meter: where the dataflow's wall time went, and the stalls the evaluation reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetstream.evaluation import lag_report
from pipelines.meter import FlowMeter

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_phases_gaps_and_the_lag_behind_the_commits() -> None:
    clock = Clock()
    meter = FlowMeter(clock)
    with meter.phase("source"):
        clock.t += 0.1
    clock.t += 0.05  # Bytewax between the phases
    with meter.phase("step"):
        clock.t += 0.4
        meter.seen(T0)
        meter.count(readings=100, batches=3, corrections=1, replayed=40)
    with meter.phase("snapshot"):
        clock.t += 0.01
    clock.t += 3.0  # serialising the states after the snapshot: a stall
    with meter.phase("sink"):
        clock.t += 0.2
    sample = meter.take(T0 + timedelta(seconds=5))
    assert (sample.source_s, sample.step_s, sample.snapshot_s, sample.sink_s) == (0.1, 0.4, 3.01, 0.2)
    assert (sample.other_s, sample.max_gap_s, sample.max_gap_after) == (0.05, 3.0, "snapshot")
    assert (sample.lag_s, sample.readings, sample.corrections, sample.replayed) == (5.0, 100, 1, 40)
    assert sample.cause() == "snapshot" and meter.stalled(sample)
    quiet = meter.take(T0 + timedelta(seconds=6))
    assert quiet.readings == 0 and quiet.step_s == 0.0 and not meter.stalled(quiet)


def test_the_lag_report_names_the_stalls_and_their_cause() -> None:
    def row(at: int, lag: float, gap: float, **parts: float) -> dict:
        base = dict.fromkeys(("snapshot_s", "other_s", "gc_s", "step_s", "notify_s", "source_s", "sink_s"), 0.0)
        return {
            "at": T0 + timedelta(seconds=at),
            "interval_s": 1.0,
            "lag_s": lag,
            "max_gap_s": gap,
            "max_gap_after": "step",
            "corrections": 2,
            "replayed": 900,
            **base,
            **parts,
        }

    report = lag_report([row(0, 0.2, 0.1, step_s=0.3), row(1, 0.3, 0.2), row(2, 14.0, 12.0, step_s=11.5)])
    assert (report["samples"], report["p50_s"], report["max_s"]) == (3, 0.3, 14.0)
    (stall,) = report["stalls"]
    assert stall["cause"] == "step" and "2 corrections replaying 900 entries" in stall["breakdown"]
