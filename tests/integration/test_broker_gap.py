"""The restored-session gap of Mosquitto 2.0, measured, and what the edge agent does about it.

Mosquitto 2.0 (Debian 12's 2.0.11) restores the gateway shards' shared-subscription sessions
after a restart but queues nothing for them until each shard subscribes again; meanwhile it
answers devices with PUBACK 0x10 "no matching subscribers" and drops the message. This test
runs a second broker, Debian's 2.0 (``/usr/sbin/mosquitto``; the suite's own is the 2.1 that
bootstrap.sh builds, which saves shared subscriptions and has no such gap), on the next port
(the suite's MQTT port + 1) and its own state folder, with the engine's gateway shards on it
and the suite's database. The shards are stopped (SIGSTOP) across a graceful broker restart,
so the devices reconnect first and publish into the gap for a few seconds:

* the edge agent loses nothing (its publisher sends a 0x10 message again; a reading leaves
  its outbox only with a stored receipt);
* a third-party device that takes 0x10 as delivered loses exactly what was answered 0x10.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.contract import GpsFix, encode_single
from core.settings import Settings
from fleetstream import credentials, services
from fleetstream.engine import Engine
from store.db import migrate
from tests.integration.faults import FaultRow, ThirdPartyDevice, record, stored_seqs
from tests.integration.test_edge_agent import AgentProcess, drain, new_outbox, outbox_state, write_config
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

MOSQUITTO_2_0 = Path("/usr/sbin/mosquitto")
GAP_S = 5.0  # how long the devices publish into the gap


@pytest.fixture(scope="module")
def broker_2_0(services_settings: Settings) -> Iterator[Settings]:
    """A Mosquitto 2.0 of the test's own, on the suite's database (its gateway shards replace the
    suite's while this module runs: a shard number has one writer)."""
    if not MOSQUITTO_2_0.exists():
        pytest.skip("no Mosquitto 2.0 at /usr/sbin/mosquitto")
    settings = replace(
        services_settings,
        state_dir=Path(services_settings.state_dir) / "broker-2.0",
        mqtt_port=services_settings.mqtt_port + 1,
        mqtt_broker_bin=str(MOSQUITTO_2_0),
        pg_dsn=services_settings.dsn(),
    )
    assert services.broker_sqlite_plugin(settings) is None
    services.up(settings)  # the broker only: the database is the suite's
    try:
        yield settings
    finally:
        services.down(settings)


def restart_across_the_gap(settings: Settings, engine: Engine) -> None:
    """Stop the shards, restart the broker gracefully, let the devices publish into the gap, then
    let the shards back (they subscribe again on connect)."""
    pids = [c.proc.pid for c in engine.children if c.shard is not None and c.proc is not None]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        services.restart_broker(settings)
        time.sleep(GAP_S)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_the_edge_agent_and_a_third_party_device_across_the_restart_gap(
    broker_2_0: Settings, db: Any, tmp_path: Path
) -> None:
    settings = broker_2_0
    migrate(settings.dsn())
    tenant = f"gap{int(time.time())}"
    engine = Engine(settings, with_flow=False, with_dispatch=False, with_delivery=False)
    engine.start()
    engine.wait_ready()
    agent_password = credentials.add_device(settings, tenant, "van-agent")
    device_password = credentials.add_device(settings, tenant, "van-plain")
    outbox = new_outbox(tmp_path)
    config = write_config(
        tmp_path / "edge.toml", settings, tenant, "van-agent", agent_password, gps_hz=40, temp_hz=5, status_s=1.0
    )
    agent = AgentProcess(config).start()
    device = ThirdPartyDevice(settings, tenant, "van-plain", device_password)
    base = datetime.now(UTC) - timedelta(hours=1)
    sent = 0
    try:
        wait_until(lambda: len(stored_seqs(db, tenant, "van-agent")) > 50, 60, "the agent's first readings")

        def plain(n: int) -> None:  # 50 readings/s from the third-party device
            nonlocal sent
            for _ in range(n):
                device.publish(
                    sent, *encode_single(GpsFix(tenant, "van-plain", sent, base + timedelta(seconds=sent), 60.2, 24.9))
                )
                sent += 1
                time.sleep(0.02)

        plain(100)
        sender = threading.Thread(target=plain, args=(int((GAP_S + 4) * 50),))
        sender.start()
        restart_across_the_gap(settings, engine)
        restored_at = time.monotonic()
        sender.join(60)
        plain(100)
        mark = outbox_state(outbox)["last_seq"]
        wait_until(
            lambda: set(range(1, mark + 1)) <= {s for _, s in stored_seqs(db, tenant, "van-agent")},
            120,
            "everything the agent recorded across the gap",
            every_s=0.25,
        )
        recover = time.monotonic() - restored_at
        assert agent.alive(), (tmp_path / "agent.log").read_text()[-3000:]
    finally:
        agent.terminate()
        device.close()
    wait_until(lambda: not device._inflight, 30, "a PUBACK for every plain message")
    drain(tmp_path, settings, tenant, "van-agent", agent_password)
    engine_settle = time.monotonic() + 10
    plain_seqs = [s for _, s in stored_seqs(db, tenant, "van-plain")]
    while len(set(plain_seqs)) < sent - device.unrouted and time.monotonic() < engine_settle:
        time.sleep(0.25)
        plain_seqs = [s for _, s in stored_seqs(db, tenant, "van-plain")]
    engine.stop()

    last = outbox_state(outbox)["last_seq"]
    agent_seqs = [s for _, s in stored_seqs(db, tenant, "van-agent")]
    unrouted = max(
        [
            int(r[0])
            for r in db.execute(
                "SELECT (details->>'unrouted_messages')::int FROM device_status WHERE tenant = %s AND vehicle_id = %s "
                "AND details ? 'unrouted_messages'",
                (tenant, "van-agent"),
            ).fetchall()
        ]
        or [0]
    )
    agent_row = FaultRow(
        "broker restart gap (Mosquitto 2.0), edge agent",
        last,
        len(set(agent_seqs)),
        0,
        last - len(set(agent_seqs)),
        len(agent_seqs) - len(set(agent_seqs)),
        recover,
        f"Mosquitto 2.0.11, the shards back {GAP_S:.0f} s after the restart; the agent saw {unrouted} PUBACKs 0x10 "
        "(as its last heartbeat reported) and sent those messages again",
    )
    plain_row = FaultRow(
        "broker restart gap (Mosquitto 2.0), third-party device",
        sent,
        len(set(plain_seqs)),
        0,
        sent - len(set(plain_seqs)),
        len(plain_seqs) - len(set(plain_seqs)),
        None,
        f"the same restart; {device.unrouted} publishes answered 0x10 (taken as delivered) were dropped by the broker",
    )
    record(settings.state_dir.parent, agent_row)
    record(settings.state_dir.parent, plain_row)
    assert (agent_row.lost, agent_row.duplicated) == (0, 0)
    assert sorted(set(agent_seqs)) == list(range(1, last + 1))
    assert device.unrouted > 0, "no gap: did Mosquitto 2.0 keep the shared subscriptions after all?"
    assert plain_row.lost == device.unrouted
    assert plain_row.duplicated == 0
