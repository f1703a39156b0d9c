"""Reorder buffer: fix-time order after a bounded wait; late items released at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.trackers.reorder import Released, ReorderBuffer

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def push(buf: ReorderBuffer[str], s: float) -> list[tuple[str, bool, float]]:
    return [(r.item, r.late, r.lateness_s) for r in buf.push(f"r{s:g}", at(s))]


def test_a_shuffled_burst_is_released_in_fix_time_order() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(max_delay_s=10)
    assert push(buf, 0) == [] and push(buf, 2) == [] and push(buf, 1) == []
    assert push(buf, 5) == [] and push(buf, 4) == []
    assert buf.watermark == at(-5)
    # fix time 13 moves the watermark to 3: everything at or before it leaves, sorted
    assert push(buf, 13) == [("r0", False, 0.0), ("r1", False, 0.0), ("r2", False, 0.0)]
    assert push(buf, 3) == [("r3", False, 0.0)]  # exactly on the watermark: on time
    assert push(buf, 2.5) == [("r2.5", True, 0.5)]  # behind it: at once, flagged late
    assert push(buf, 20) == [("r4", False, 0.0), ("r5", False, 0.0)]
    assert len(buf) == 2 and buf.next_timer() == at(23)


def test_processing_time_flush_bounds_the_wait_without_new_data() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(max_delay_s=10)
    push(buf, 100)
    push(buf, 101)
    assert buf.next_timer() == at(110)
    assert buf.on_timer(at(109)) == []
    assert [r.item for r in buf.on_timer(at(110))] == ["r100"]
    assert [r.item for r in buf.on_timer(at(200))] == ["r101"]
    assert buf.next_timer() is None
    # the flush moved the watermark: a reading from before it is late by that much
    assert push(buf, 150) == [("r150", True, 40.0)]


def test_equal_fix_times_keep_arrival_order_and_flush_empties() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(max_delay_s=10)
    for name in ("a", "b", "c"):
        buf.push(name, at(7))
    buf.push("d", at(6))
    assert [(r.item, r.fix_time) for r in buf.flush()] == [("d", at(6)), ("a", at(7)), ("b", at(7)), ("c", at(7))]
    assert buf.watermark == at(7)
    assert buf.push("e", at(6.5)) == [Released("e", at(6.5), True, 0.5)]
