"""``StoreHistory``: the readings a resumed vehicle reloads for a late-data replay are the rows
the dataflow's source hands it (same values, same shard and shard_seq), in the fix-time range
asked for, of that vehicle only. Real TimescaleDB, written by the gateway's shard writer."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.contract import DoorEvent, GpsFix, Limits, TemperatureReading, encode_batch
from core.settings import Settings
from ingest.batching import Received, prepare
from ingest.writer import ShardWriter
from pipelines.connectors import read_after
from pipelines.replay_history import StoreHistory
from store.db import migrate

pytestmark = pytest.mark.integration


def test_the_store_history_reads_what_the_source_reads(services_settings: Settings, db: Any) -> None:
    dsn = services_settings.dsn()
    migrate(dsn)
    tenant = f"rh{uuid.uuid4().hex[:8]}"
    shard = random.randrange(5000, 9000)  # a shard of its own: no gateway writes it
    t0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=123000)  # the contract carries milliseconds

    def day(vehicle: str) -> list[Any]:
        out: list[Any] = []
        for k in range(30):
            t = t0 + timedelta(seconds=5 * k)
            out.append(GpsFix(tenant, vehicle, 3 * k + 1, t, 60.17 + k * 1e-4, 24.94, 8.25, 90.5, 4.0, 12.5))
            out.append(TemperatureReading(tenant, vehicle, 3 * k + 2, t, "p1", 4.25 + k / 8))
            out.append(DoorEvent(tenant, vehicle, 3 * k + 3, t, "rear", k % 2 == 0))
        return out

    messages = [
        Received(*encode_batch(tenant, vehicle, day(vehicle)), (t0 + timedelta(minutes=5)).timestamp())
        for vehicle in ("van-1", "van-2")
    ]
    writer = ShardWriter(dsn, shard)
    try:
        result = writer.write(prepare(messages, Limits(), services_settings.h3_resolution, 4096), len(messages))
    finally:
        writer.close()
    assert result.stored == 180

    source = [i for i in read_after(db, shard, 0, 1000) if i.reading.tenant == tenant]
    assert len(source) == 180
    history = StoreHistory(dsn)
    try:
        everything = history(tenant, "van-1", t0 - timedelta(seconds=1), t0 + timedelta(hours=1))
        start, end = t0 + timedelta(seconds=50), t0 + timedelta(seconds=100)
        some = history(tenant, "van-1", start, end)
    finally:
        history.close()

    def key(i: Any) -> tuple[int, int]:
        return i.shard, i.shard_seq

    van_1 = sorted((i for i in source if i.reading.vehicle == "van-1"), key=key)
    assert sorted(everything, key=key) == van_1  # equal values: readings, cells, receive times, positions
    assert sorted(some, key=key) == [i for i in van_1 if start <= i.reading.fix_time <= end]
    assert len(some) == 33  # fixes 10..20, inclusive at both ends, three readings each
