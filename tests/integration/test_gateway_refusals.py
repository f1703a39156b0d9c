"""Defence in depth: when the database still refuses a batch, only the refused messages are lost
to the store (as dead letters), the rest of the batch is stored, and the shard goes on.

The refusal is the database's own: a trigger the test puts on ``positions`` raises a data
exception (SQLSTATE 22023) for readings of one tenant at latitude 12.345678 (a value the
contract accepts), as PostgreSQL would for a value it cannot hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.contract import GpsFix, encode_batch, encode_single
from core.settings import Settings
from ingest.batching import Received
from ingest.gateway import GatewayShard
from store.db import migrate

pytestmark = pytest.mark.integration

SHARD = 91  # a shard number of its own
POISON_LAT = 12.345678


@pytest.fixture
def refusing_trigger(services_settings: Settings, db: Any) -> Iterator[str]:
    migrate(services_settings.dsn())
    tenant = f"ref{int(time.time())}"
    db.execute(
        f"""CREATE FUNCTION refuse_{tenant}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.tenant = '{tenant}' AND NEW.lat = {POISON_LAT} THEN
                RAISE EXCEPTION 'value refused by the test' USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END $$"""
    )
    db.execute(
        f"CREATE TRIGGER refuse_{tenant} BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION refuse_{tenant}()"
    )
    try:
        yield tenant
    finally:
        db.execute(f"DROP TRIGGER IF EXISTS refuse_{tenant} ON positions")
        db.execute(f"DROP FUNCTION IF EXISTS refuse_{tenant}()")


def test_a_batch_the_database_refuses_is_isolated_to_its_bad_messages(
    services_settings: Settings, db: Any, refusing_trigger: str
) -> None:
    tenant = refusing_trigger
    base = datetime.now(UTC) - timedelta(hours=1)

    def fix(seq: int, lat: float = 60.2) -> GpsFix:
        return GpsFix(tenant, "van-1", seq, base + timedelta(seconds=seq), lat, 24.9)

    messages = [Received(*encode_single(fix(seq)), time.time()) for seq in range(200)]
    messages[37] = Received(*encode_single(fix(37, POISON_LAT)), time.time())
    poison_batch = [fix(seq) for seq in range(300, 340)] + [fix(340, POISON_LAT)]
    messages.append(Received(*encode_batch(tenant, "van-1", poison_batch, receipt=True), time.time()))
    messages += [Received(*encode_single(fix(seq)), time.time()) for seq in range(400, 450)]

    gateway = GatewayShard(services_settings, SHARD, ("refusals", "unused"))  # never connects: store() only
    try:
        committed = gateway.store(messages, threading.Event())
    finally:
        gateway.writer.close()

    stored = {r[0] for r in db.execute("SELECT seq FROM positions WHERE tenant = %s", (tenant,)).fetchall()}
    assert stored == set(range(200)) - {37} | set(range(400, 450))
    dead = db.execute(
        "SELECT reason, detail FROM dead_letters WHERE topic LIKE %s ORDER BY detail", (f"fleet/{tenant}/%",)
    ).fetchall()
    assert [r[0] for r in dead] == ["db_refused", "db_refused"]
    assert all("value refused by the test" in r[1] for r in dead)
    assert sum(r.stored for _, r in committed) == len(stored)
    assert sum(r.dead_letters for _, r in committed) == 2
    # the refused batch message asked for a receipt: its readings are refused, never to be sent again
    refused = [p.receipts[(tenant, "van-1")] for p, _ in committed if p.receipts]
    assert [sorted(c.refused) for c in refused] == [list(range(300, 341))]
    # a dozen commits or so, not one per message: halves until the refused ones are alone
    assert len(committed) < 40
