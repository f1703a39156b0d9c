"""The database crashes mid-stream: nothing is acknowledged before it is stored again."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from core.contract import GpsFix, encode_single
from edge.publisher import DevicePublisher
from fleetstream import credentials, services
from fleetstream.engine import Engine
from store.db import connect, migrate

READINGS = 4000


def test_readings_survive_a_database_crash(services_settings) -> None:
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

        def publish() -> None:
            for seq in range(READINGS):
                pub.publish(*encode_single(GpsFix(tenant, "van-1", seq, base + timedelta(seconds=seq), 60.2, 24.9)))
                sent[0] += 1
                time.sleep(0.001)

        thread = threading.Thread(target=publish)
        thread.start()
        while sent[0] < READINGS // 3:
            time.sleep(0.05)
        services.restart_postgres(settings, hard=True)  # immediate shutdown: crash recovery on start
        thread.join(120)
        assert pub.flush(120)
        pub.close()
        with connect(settings.dsn(), autocommit=True, attempts=30) as db:
            deadline = time.monotonic() + 120
            count = 0
            while time.monotonic() < deadline:
                count = db.execute("SELECT count(*) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[0]
                if count >= READINGS:
                    break
                time.sleep(0.5)
            assert count == READINGS
            distinct = db.execute("SELECT count(DISTINCT seq) FROM positions WHERE tenant = %s", (tenant,)).fetchone()[
                0
            ]
            assert distinct == READINGS
    finally:
        engine.stop()
