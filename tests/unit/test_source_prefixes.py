"""The replay source's per-poll cut: receive order across shards, progress on every poll."""

from datetime import UTC, datetime, timedelta

from core.contract import GpsFix, TemperatureReading
from pipelines.connectors import _receive_prefixes
from pipelines.vehicle_state import StoredReading

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _row(shard: int, shard_seq: int, message: int, temp: bool = False) -> StoredReading:
    at = T0 + timedelta(seconds=message)
    reading = (
        TemperatureReading("t", "v", shard_seq, at, "cargo", 4.0, None)
        if temp
        else GpsFix("t", "v", shard_seq, at, 60.0, 25.0, 5.0, 0.0, 5.0, None, None)
    )
    return StoredReading(reading, None, at, shard, shard_seq)


def _commit(shard: int, first_seq: int, messages: range) -> list[StoredReading]:
    """One gateway commit: all its positions, then all its temperatures, each in message order."""
    rows = [_row(shard, 0, m) for m in messages] + [_row(shard, 0, m, temp=True) for m in messages]
    return [StoredReading(r.reading, r.h3_cell, r.received_at, shard, first_seq + i) for i, r in enumerate(rows)]


def test_partial_reads_are_handed_on_whole() -> None:
    reads = {0: _commit(0, 1, range(3)), 1: _commit(1, 1, range(2))}
    assert _receive_prefixes(reads, limit=100) == reads


def test_a_full_read_ending_in_a_commits_temperatures_is_taken_whole() -> None:
    # one shard, one big commit read in part: positions of messages 0..9, temperatures of 0..1
    rows = _commit(0, 1, range(10))[:12]
    assert rows[-1].received_at < rows[5].received_at  # receive time is not monotonic in shard_seq
    assert _receive_prefixes({0: rows}, limit=12) == {0: rows}


def test_a_shard_ahead_in_receive_time_waits_for_the_other() -> None:
    early = _commit(0, 1, range(0, 10))[:12]  # full read, newest receive time: message 9
    late = _commit(1, 1, range(5, 30))[:12]  # full read, messages 5..16
    cut = _receive_prefixes({0: early, 1: late}, limit=12)
    assert cut[0] == early
    assert cut[1] == late[:5]  # messages 5..9 only
    assert all(r.received_at <= early[9].received_at for r in cut[1])


def test_every_poll_makes_progress_through_big_commits() -> None:
    # two shards each committing 200-message batches, read 50 rows at a time
    shards = {s: _commit(s, 1, range(s, 400, 2)) + _commit(s, 401, range(400 + s, 800, 2)) for s in (0, 1)}
    after = {0: 0, 1: 0}
    polls = 0
    while any(after[s] < len(shards[s]) for s in shards):
        polls += 1
        assert polls < 100
        reads = {s: shards[s][after[s] : after[s] + 50] for s in shards}
        cut = _receive_prefixes(reads, limit=50)
        assert sum(len(rows) for rows in cut.values()) > 0
        for s, rows in cut.items():
            after[s] += len(rows)
