"""The database crashes mid-stream and stays down: nothing is acknowledged before it is stored.

PostgreSQL is shut down in immediate mode (a crash: recovery at the next start) while a device
publishes, and started again ``FLEETSTREAM_TEST_PG_OUTAGE_S`` seconds later (default 20). The
gateway keeps the batch it could not commit un-acknowledged and retries; the broker queues
meanwhile. Every reading is stored exactly once (a fault-matrix row).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

from core.contract import GpsFix, encode_single
from edge.publisher import DevicePublisher
from fleetstream import credentials, services
from fleetstream.engine import Engine
from store.db import connect, migrate
from tests.integration.faults import FaultRow, record

READINGS = 4000
OUTAGE_S = float(os.environ.get("FLEETSTREAM_TEST_PG_OUTAGE_S", "20"))


def test_readings_survive_a_database_crash(services_settings) -> None:  # type: ignore[no-untyped-def]
    settings = services_settings
    migrate(settings.dsn())
    tenant = f"dbr{int(time.time())}"
    password = credentials.add_devices(settings, tenant, ["van-1"])["van-1"]
    base = datetime.now(UTC) - timedelta(hours=2)
    engine = Engine(settings)
    engine.start()
    engine.wait_ready()
    sent = [0]
    try:
        pub = DevicePublisher(*settings.mqtt_endpoint(), f"{tenant}.van-1", password, client_id=f"{tenant}-van-1")
        pub.connect()

        def publish() -> None:  # about 4000 readings over the outage, at ~100/s
            for seq in range(READINGS):
                pub.publish(*encode_single(GpsFix(tenant, "van-1", seq, base + timedelta(seconds=seq), 60.2, 24.9)))
                sent[0] += 1
                time.sleep(max(0.001, OUTAGE_S / READINGS * 2))

        thread = threading.Thread(target=publish)
        thread.start()
        while sent[0] < READINGS // 4:
            time.sleep(0.05)
        services.stop_postgres(settings, mode="immediate")  # a crash: recovery at the next start
        time.sleep(OUTAGE_S)
        services.start_postgres(settings)
        started_at = time.monotonic()
        mark = sent[0]
        with connect(settings.dsn(), autocommit=True, attempts=30) as db:

            def count_below(n: int) -> int:
                return int(
                    db.execute(
                        "SELECT count(DISTINCT seq) FROM positions WHERE tenant = %s AND seq < %s", (tenant, n)
                    ).fetchone()[0]
                )

            while count_below(mark) < mark and time.monotonic() - started_at < 120:
                time.sleep(0.2)
            recover = time.monotonic() - started_at
            thread.join(120)
            assert pub.flush(120)
            pub.close()
            deadline = time.monotonic() + 120
            count = 0
            while time.monotonic() < deadline:
                count = db.execute("SELECT count(*) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[0]
                if count >= READINGS:
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # a reading stored twice would show now
            count = db.execute("SELECT count(*) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[0]
            distinct = count_below(READINGS)
            row = FaultRow(
                "PostgreSQL immediate shutdown",
                READINGS,
                distinct,
                int(
                    db.execute(
                        "SELECT count(*) FROM dead_letters WHERE topic LIKE %s", (f"fleet/{tenant}/%",)
                    ).fetchone()[0]
                ),
                READINGS - distinct,
                count - distinct,
                recover,
                f"down {OUTAGE_S:.0f} s while a device sent ~{READINGS / (OUTAGE_S * 2):.0f} readings/s; the gateway "
                "retried its batch, the broker queued the rest",
            )
            record(settings.state_dir, row)
            assert (row.sent, row.stored, row.lost, row.duplicated) == (READINGS, READINGS, 0, 0)
    finally:
        engine.stop()
