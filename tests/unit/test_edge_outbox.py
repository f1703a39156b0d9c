"""The edge agent's durable outbox: order, seq, acknowledgement, byte cap and drop policy."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.agent.outbox import ROW_OVERHEAD_BYTES, Outbox

T0 = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def gps(outbox: Outbox, i: int) -> int:
    return outbox.add("gps", T0 + timedelta(seconds=i), {"lat": 60.0 + i * 1e-4, "lon": 24.9, "speed_mps": 8.0})


def temp(outbox: Outbox, i: int) -> int:
    return outbox.add("temp", T0 + timedelta(seconds=i), {"sensor": "reefer", "celsius": 4.0})


def door(outbox: Outbox, i: int) -> int:
    return outbox.add("door", T0 + timedelta(seconds=i), {"door": "rear", "open": i % 2 == 0})


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        assert outbox._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert outbox._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_readings_come_back_oldest_first_with_their_fields(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", first_seq=1) as outbox:
        seqs = [gps(outbox, 0), temp(outbox, 1), door(outbox, 2)]
        assert seqs == [1, 2, 3]
        rows = outbox.oldest(10)
        assert [r.seq for r in rows] == [1, 2, 3]
        assert [r.kind for r in rows] == ["gps", "temp", "door"]
        assert rows[0].fix_time == "2026-11-22T05:00:00.000Z"
        assert rows[0].fields == {"lat": 60.0, "lon": 24.9, "speed_mps": 8.0}
        assert rows[2].fields == {"door": "rear", "open": True}
        assert outbox.depth() == 3


def test_oldest_respects_the_byte_budget_but_returns_at_least_one(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", first_seq=1) as outbox:
        for i in range(10):
            gps(outbox, i)
        size = sum(r.nbytes for r in outbox.oldest(3))
        assert [r.seq for r in outbox.oldest(10, max_bytes=size)] == [1, 2, 3]
        assert [r.seq for r in outbox.oldest(10, max_bytes=size - 1)] == [1, 2]
        assert [r.seq for r in outbox.oldest(10, max_bytes=1)] == [1]
        assert len(outbox.oldest(4)) == 4


def test_seq_survives_restarts_and_is_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, first_seq=100) as outbox:
        assert [gps(outbox, i) for i in range(3)] == [100, 101, 102]
        outbox.ack([100, 101, 102])  # everything acknowledged: the table is empty
        assert outbox.depth() == 0
    with Outbox(path, first_seq=1) as outbox:  # first_seq only applies to a new outbox
        assert gps(outbox, 3) == 103
        assert outbox.next_seq() == 104


def test_a_new_outbox_numbers_from_the_clock(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", clock=lambda: 1_800_000_000.7) as outbox:
        assert gps(outbox, 0) == 1_800_000_000_000


def test_ack_deletes_only_what_was_acknowledged(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", first_seq=1) as outbox:
        for i in range(5):
            gps(outbox, i)
        before = outbox.stored_bytes()
        assert outbox.ack([2, 4, 99]) == 2
        assert [r.seq for r in outbox.oldest(10)] == [1, 3, 5]
        assert outbox.depth() == 3
        assert outbox.stored_bytes() < before


def test_lease_skips_readings_in_flight_until_released(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", first_seq=1) as outbox:
        for i in range(6):
            gps(outbox, i)
        assert [r.seq for r in outbox.lease(2)] == [1, 2]
        assert [r.seq for r in outbox.lease(2)] == [3, 4]
        assert outbox.leased == 4
        outbox.release([1, 2])  # e.g. refused by the broker: sent again, oldest first
        assert [r.seq for r in outbox.lease(3)] == [1, 2, 5]
        outbox.ack([1, 2, 3, 4, 5])
        assert outbox.leased == 0
        assert [r.seq for r in outbox.lease(10)] == [6]


def test_over_the_cap_oldest_gps_goes_first_then_temperatures_never_doors(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, max_bytes=10_000, first_seq=1) as probe:
        gps(probe, 0)
        one = probe.oldest(1)[0].nbytes
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    row = one + ROW_OVERHEAD_BYTES
    with Outbox(path, max_bytes=row * 30, first_seq=1) as outbox:
        kinds = {}
        for i in range(60):
            maker = (door, temp, gps, gps, gps)[i % 5]
            kinds[maker(outbox, i)] = maker.__name__
        assert outbox.stored_bytes() <= outbox.max_bytes
        left = {r.seq: r.kind for r in outbox.oldest(1000)}
        stats = outbox.stats()
        # every door event is still there, in order
        assert [s for s, k in kinds.items() if k == "door"] == [s for s, k in left.items() if k == "door"]
        assert stats.dropped["door"] == 0
        assert stats.dropped["gps"] > 0
        # the dropped GPS fixes are the oldest ones
        kept_gps = [s for s, k in left.items() if k == "gps"]
        all_gps = [s for s, k in kinds.items() if k == "gps"]
        assert kept_gps == all_gps[len(all_gps) - len(kept_gps) :]
        assert stats.dropped["gps"] + stats.dropped["temp"] + len(left) == 60
        # then temperatures, once no GPS fix is left to drop
        for i in range(60, 120):
            door(outbox, i) if i % 4 == 0 else temp(outbox, i)
        stats = outbox.stats()
        left = {r.seq: r.kind for r in outbox.oldest(1000)}
        assert "gps" not in left.values()
        assert stats.dropped["temp"] > 0 and stats.dropped["door"] == 0
        assert sum(1 for k in left.values() if k == "door") == 12 + 15
    with Outbox(path, max_bytes=row * 30) as reopened:  # the counters are persisted
        assert reopened.stats().dropped == stats.dropped
        assert reopened.depth() == len(left)


def test_doors_are_kept_even_over_the_cap_and_that_is_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_bytes=16 * 1024, first_seq=1) as outbox:
        for i in range(200):
            door(outbox, i)
        stats = outbox.stats()
        assert stats.depth == 200 and stats.bytes > stats.max_bytes
        assert stats.dropped == {"gps": 0, "temp": 0, "door": 0}
        assert stats.cap_exceeded > 0
        seq = gps(outbox, 200)  # nothing older to drop: the new fix itself goes
        assert seq == 201
        assert outbox.stats().dropped["gps"] == 1
        assert outbox.depth() == 200


def test_drop_policy_is_configurable(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_bytes=16 * 1024, drop_order=("temp",), first_seq=1) as outbox:
        for i in range(300):
            (gps if i % 2 else temp)(outbox, i)
        stats = outbox.stats()
        assert stats.dropped["gps"] == 0 and stats.dropped["temp"] == 150  # gps is now never dropped
    with pytest.raises(ValueError, match="unknown reading kind"):
        Outbox(tmp_path / "x.sqlite3", drop_order=("gps", "pressure"))


def test_readings_in_flight_are_never_dropped(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_bytes=16 * 1024, first_seq=1) as outbox:
        for i in range(20):
            gps(outbox, i)
        leased = [r.seq for r in outbox.lease(10)]
        for i in range(20, 300):
            gps(outbox, i)
        left = [r.seq for r in outbox.oldest(1000)]
        assert left[:10] == leased
        assert outbox.stats().dropped["gps"] > 0


def test_oldest_age_and_stats(tmp_path: Path) -> None:
    now = T0.timestamp() + 90
    with Outbox(tmp_path / "o.sqlite3", first_seq=7, clock=lambda: now) as outbox:
        assert outbox.oldest_age() is None
        gps(outbox, 0)
        gps(outbox, 30)
        assert outbox.oldest_age() == pytest.approx(90.0)
        stats = outbox.stats()
        assert stats.depth == 2 and stats.next_seq == 9 and stats.oldest_age_s == pytest.approx(90.0)
        assert stats.as_dict()["dropped"] == {"gps": 0, "temp": 0, "door": 0}


def test_bad_values_are_refused_at_the_door(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        with pytest.raises(ValueError):
            outbox.add("gps", T0, {"lat": float("nan"), "lon": 1.0})
        with pytest.raises(ValueError):
            outbox.add("humidity", T0, {"x": 1})
        with pytest.raises(ValueError, match="naive"):
            outbox.add("gps", datetime(2026, 1, 1), {"lat": 1.0, "lon": 1.0})  # noqa: DTZ001
        assert outbox.depth() == 0


def test_a_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with Outbox(path, first_seq=1) as outbox:
        assert gps(outbox, 0) == 1
    assert len(list(tmp_path.glob("o.sqlite3.corrupt-*"))) == 1


_WRITER = """
import sys
from datetime import UTC, datetime
from edge.agent.outbox import Outbox
outbox = Outbox(sys.argv[1], first_seq=1)
while True:
    seq = outbox.add("gps", datetime.now(UTC), {"lat": 60.0, "lon": 24.9})
    print(seq, flush=True)
"""


def test_every_reading_add_returned_survives_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    reported = []
    deadline = time.monotonic() + 30
    while len(reported) < 300 and time.monotonic() < deadline:
        reported.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = sqlite3.connect(path).execute("SELECT seq FROM readings ORDER BY seq").fetchall()
    stored = [r[0] for r in rows]
    assert stored[: len(reported)] == reported  # nothing lost, nothing reordered
    assert stored == list(range(1, len(stored) + 1))  # and no gap
