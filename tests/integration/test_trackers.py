"""Tracker front ends against the running engine: real Mosquitto, real TimescaleDB, real processes.

Every front end stores real-format data exactly once (documented example packets and our own
frames, each sent twice) and the dataflow counts it; bad frames are dead letters with their raw
bytes; unknown identities are refused and counted. A Teltonika device gets each acknowledgement
only after its records are committed, through a killed listener, missed acknowledgements and a
database crash, and its re-sends are stored once with nothing missing. An OsmAnd request made
while the database is down gets no 200 until its row is stored. A short load of concurrent
trackers is stored once (``FLEETSTREAM_TEST_TRACKERS`` makes it bigger).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.settings import Settings
from fleetstream import services
from fleetstream.bench.trackers import tracker_load
from fleetstream.engine import Engine
from fleetstream.trackers import add_tracker
from ingest.protocols import gt06, osmand, teltonika
from ingest.protocols.owntracks import encode_location
from ingest.protocols.teltonika import CODEC_8, CODEC_8E, CODEC_16, AvlRecord, IoElement
from store.db import connect, migrate
from tests.integration.trackers import TeltonikaClient, gps_records, packet, with_listeners
from tests.integration.waiting import wait_until

# Teltonika's documented Codec 8 Extended example with a real fix (Vilnius, 2017-11-14T11:18:44Z)
C8E_NX = (
    "000000000000005F8E010000015FBA40B620000F0DCDE420959D30008A000006000000000006000100EF0000010011001E0001"
    "00100000CBDF0002000B000000003544C875000E0000000029BFE4D10001010000110000000000000000000000000000000000"
    "010000D153"
)
# The GT06 document's login (IMEI 123456789012345), locations (0x12, 0x22), heartbeat and SOS alarm
GT06_LOGIN = ("78780D01012345678901234500018CDD0D0A", "787805010001D9DC0D0A")
GT06_LOCATION = "78781F120B081D112E10CF027AC7EB0C46584900148F01CC00287D001FB8000380810D0A"
GT06_LOCATION_UTC = "787822220F0C1D023305C9027AC8180C46586000140001CC00287D001F71000001000820860D0A"
GT06_HEARTBEAT = ("78780A134401040001000508450D0A", "787805130005AFD50D0A")
GT06_ALARM = (
    "787825160B0B0F0E241DCF027AC8870C4657E60014020901CC00287D001F726506040101003656A40D0A",
    "78780516003695700D0A",
)
# One of Traccar's OsmAnd test requests (device 902064, 2016-01-27)
OSMAND_VECTOR = (
    "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0&altitude=224.0&speed=0.0"
)
# OwnTracks' documented location
OWNTRACKS_EXAMPLE = b'{"lon":2.29513,"lat":48.85833,"_type":"location","tst":1497476456,"tid":"JJ"}'


@pytest.fixture(scope="module")
def engine_settings(services_settings: Settings) -> Settings:
    settings = with_listeners(services_settings)
    migrate(settings.dsn())
    return settings


@pytest.fixture(scope="module")
def engine(engine_settings: Settings) -> Iterator[Engine]:
    """The engine with its tracker listeners, supervised (a killed child is restarted)."""
    engine = Engine(engine_settings, with_dispatch=False, with_delivery=False)
    engine.start()
    stop = threading.Event()
    watcher = threading.Thread(target=engine.watch, args=(stop,), daemon=True)
    try:
        engine.wait_ready()
        watcher.start()
        yield engine
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(10)
        engine.stop()


def imei_for(run: int, n: int) -> str:
    return f"35{run % 10**11:011d}{n:02d}"


def counts(settings: Settings, tenant: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with connect(settings.dsn(), autocommit=True, attempts=30) as conn:
        for table in ("positions", "temperatures", "door_events"):
            rows = conn.execute(
                f"SELECT vehicle_id, count(*) FROM {table} WHERE tenant = %s GROUP BY vehicle_id", (tenant,)
            ).fetchall()
            out[table] = dict(rows)
    return out


def flow_counts(settings: Settings, tenant: str) -> dict[str, tuple[int, int, int]]:
    with connect(settings.dsn(), autocommit=True, attempts=30) as conn:
        rows = conn.execute(
            "SELECT vehicle_id, gps_count, temp_count, door_count FROM vehicle_state WHERE tenant = %s", (tenant,)
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def post(port: int, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def mqtt_publish(settings: Settings, username: str, password: str, messages: list[tuple[str, bytes]]) -> list[int]:
    """Publish QoS 1 as ``username`` (MQTT v5); the PUBACK reason code of each message."""
    reasons: dict[int, int] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{username}-phone", protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_publish = lambda _c, _u, mid, reason, _p: reasons.__setitem__(mid, int(reason.value))
    client.connect(*settings.mqtt_endpoint())
    client.loop_start()
    try:
        mids = [client.publish(topic, payload, qos=1).mid for topic, payload in messages]
        wait_until(lambda: all(m in reasons for m in mids), 30, "PUBACKs")
        return [reasons[m] for m in mids]
    finally:
        client.disconnect()
        client.loop_stop()


def gt06_exchange(port: int, frames: list[bytes], replies: int) -> list[str]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for raw in frames:
            sock.sendall(raw)
        out, buffer = [], b""
        while len(out) < replies:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 10:
                out.append(buffer[:10].hex().upper())
                buffer = buffer[10:]
        return out


def test_every_front_end_stores_real_format_data_once_and_the_dataflow_counts_it(
    engine_settings: Settings, engine: Engine
) -> None:
    s = engine_settings
    run = int(time.time())
    tenant = f"trk{run}"
    started = datetime.now(UTC)
    base = started.replace(microsecond=0) - timedelta(minutes=20)
    imei = imei_for(run, 1)
    add_tracker(s, tenant, "van-1", "teltonika", imei, {1: "rear"})
    add_tracker(s, tenant, "van-2", "gt06", "123456789012345")
    add_tracker(s, tenant, "van-3", "osmand", "902064")
    phone = add_tracker(s, tenant, "van-4", "owntracks")

    # Teltonika: the documented capture, then our frames of every codec; every packet twice
    client = TeltonikaClient(s.teltonika_port, imei)
    assert client.connect() == b"\x01"
    doc = bytes.fromhex(C8E_NX)
    assert [client.send(doc), client.send(doc)] == [1, 1]
    for k, codec in enumerate((CODEC_8, CODEC_8E, CODEC_16)):
        raw = teltonika.encode_packet(codec, gps_records(base, 3 * k, 3))
        assert [client.send(raw), client.send(raw)] == [3, 3]
    ms = int(base.timestamp() * 1000) + 60_000
    door = AvlRecord(ms, 1, 0, 0, 0, 0, 0, 0, 1, (IoElement(1, 1, 1), IoElement(66, 2, 12_500)))
    assert client.send(packet([door])) == 1
    bad = teltonika.encode_packet(CODEC_8E, gps_records(base, 100, 2), crc=0xBEEF)
    assert client.send(bad) == 0  # nothing accepted: a device would send it again
    client.close()
    assert TeltonikaClient(s.teltonika_port, imei_for(run, 99)).connect() == b"\x00"  # unknown IMEI

    # GT06: the documented packets get the documented replies; a location twice; garbage skipped
    ours = gt06.encode_location(base, 60.1699, 24.9384, 36, 90, serial=9)
    garbage = f"noise {run}".encode()
    frames = [
        bytes.fromhex(GT06_LOGIN[0]),
        bytes.fromhex(GT06_LOCATION),
        bytes.fromhex(GT06_LOCATION_UTC),
        bytes.fromhex(GT06_HEARTBEAT[0]),
        bytes.fromhex(GT06_ALARM[0]),
        ours,
        garbage + ours,
    ]
    replies = gt06_exchange(s.gt06_port, frames, 7)
    assert replies[0] == GT06_LOGIN[1] and replies[3] == GT06_HEARTBEAT[1] and replies[4] == GT06_ALARM[1]
    assert replies[1] == gt06.reply(gt06.LOCATION, 3).hex().upper() and replies[5] == replies[6]

    # OsmAnd: Traccar's test request and a Traccar Client 9 JSON body, each twice; refusals with reasons
    fresh = base + timedelta(minutes=1)
    body = json.dumps(
        {
            "device_id": "902064",
            "location": {
                "timestamp": fresh.isoformat().replace("+00:00", "Z"),
                "coords": {"latitude": 60.17, "longitude": 24.94, "speed": 8.0, "heading": 90, "accuracy": 5},
                "battery": {"level": 0.8, "is_charging": False},
            },
        }
    ).encode()
    for _ in range(2):
        assert post(s.osmand_port, OSMAND_VECTOR) == (200, "")
        assert post(s.osmand_port, "/", body, {"Content-Type": "application/json"}) == (200, "")
    status, text = post(s.osmand_port, osmand.encode_query(f"nobody-{run}", fresh, 60.0, 24.0))
    assert (status, text.split(":")[0]) == (400, "unknown_device")
    status, text = post(s.osmand_port, osmand.encode_query("902064", fresh + timedelta(seconds=run % 1000), 95.0, 24.0))
    assert (status, text.split(":")[0]) == (400, "out_of_range")

    # OwnTracks: the documented location and ours, twice; the ACL keeps the phone in its own topics
    user, password = phone["username"], phone["password"]
    ours_ot = encode_location(user, "phone", fresh, 60.18, 24.95, 10.0, 45.0, 6.0, 14.0, 77)
    mine = [(f"owntracks/{user}/phone", OWNTRACKS_EXAMPLE), ours_ot]
    assert mqtt_publish(s, user, password, mine + mine) == [0, 0, 0, 0]
    (refused,) = mqtt_publish(s, user, password, [(f"owntracks/ot.{tenant}.van-1/phone", OWNTRACKS_EXAMPLE)])
    assert refused == 0x87  # not authorized

    expected = {
        "positions": {"van-1": 10, "van-2": 4, "van-3": 2, "van-4": 2},
        "temperatures": {"van-1": 9},
        "door_events": {"van-1": 1},
    }
    wait_until(lambda: counts(s, tenant) == expected, 60, f"{expected} stored (have {counts(s, tenant)})")
    per_vehicle = {
        v: (expected["positions"][v], expected["temperatures"].get(v, 0), expected["door_events"].get(v, 0))
        for v in expected["positions"]
    }
    wait_until(lambda: flow_counts(s, tenant) == per_vehicle, 120, f"the dataflow's counts {per_vehicle}")

    with connect(s.dsn(), autocommit=True) as db:
        dead = db.execute(
            "SELECT topic, reason, payload FROM dead_letters WHERE received_at > %s AND topic = ANY(%s) ORDER BY topic",
            (started, [f"teltonika/{imei}", "gt06/123456789012345", f"osmand/nobody-{run}", "osmand/902064"]),
        ).fetchall()
        reasons = sorted((t, r) for t, r, _ in dead)
        assert (f"teltonika/{imei}", "bad_crc") in reasons and ("gt06/123456789012345", "bad_frame") in reasons
        assert (f"osmand/nobody-{run}", "unknown_device") in reasons and ("osmand/902064", "out_of_range") in reasons
        assert next(bytes(p) for t, r, p in dead if r == "bad_crc" and t.startswith("teltonika/")) == bad
        assert next(bytes(p) for t, r, p in dead if r == "bad_frame") == garbage
        statuses = dict(
            db.execute(
                "SELECT state, count(*) FROM device_status WHERE tenant = %s AND vehicle_id = 'van-2' GROUP BY state",
                (tenant,),
            ).fetchall()
        )
        assert statuses == {"heartbeat": 1, "alarm": 1}

    def refusals() -> set[tuple[str, str]]:
        with connect(s.dsn(), autocommit=True) as db:
            return set(db.execute("SELECT protocol, identity FROM tracker_refusals").fetchall())

    wait_until(
        lambda: {("teltonika", imei_for(run, 99)), ("osmand", f"nobody-{run}")} <= refusals(), 30, "refusals counted"
    )


def test_teltonika_acks_follow_commits_and_resends_are_stored_once_through_kills(
    engine_settings: Settings, engine: Engine
) -> None:
    s = engine_settings
    run = int(time.time())
    tenant, imei = f"tka{run}", imei_for(run, 2)
    add_tracker(s, tenant, "van-1", "teltonika", imei)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    packets = [gps_records(base, 5 * i, 5) for i in range(60)]
    with connect(s.dsn(), autocommit=True) as db:
        dups_before = db.execute("SELECT coalesce(sum(duplicates), 0) FROM gateway_shards WHERE shard = 100").fetchone()
    client = TeltonikaClient(s.teltonika_port, imei)
    assert client.connect() == b"\x01"
    restart: threading.Thread | None = None
    missed_acks = 0

    def committed(records: list[AvlRecord]) -> int:
        """Rows of ``records`` in the store; asked again while the database crashes and restarts
        (the crash below may cut this very query off)."""
        first, last = records[0].fix_time, records[-1].fix_time
        deadline = time.monotonic() + 120
        while True:
            try:
                with connect(s.dsn(), autocommit=True, attempts=60) as db:
                    row = db.execute(
                        "SELECT count(*) FROM positions WHERE tenant = %s AND fix_time BETWEEN %s AND %s",
                        (tenant, first, last),
                    ).fetchone()
                return int(row[0]) if row else 0
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    try:
        for i, records in enumerate(packets):
            raw = packet(records)
            if i % 10 == 5:  # the device misses our acknowledgement: it sends, loses the link, sends again
                assert client.sock is not None
                client.sock.sendall(raw)
                client.close()
                assert client.connect() == b"\x01"
                missed_acks += 1
            if i == 20:  # the listener is killed with this packet in flight
                assert client.sock is not None
                client.sock.sendall(raw)
                os.kill(engine.pids()["listen-teltonika"], signal.SIGKILL)
                client.close()
                assert client.connect() == b"\x01"  # the engine restarts it; the device sends again
            if i == 40:  # the database crashes (immediate shutdown) while the device keeps sending
                restart = threading.Thread(target=services.restart_postgres, args=(s,), kwargs={"hard": True})
                restart.start()
            while True:
                try:
                    ack = client.send(raw)
                    break
                except OSError:
                    client.close()
                    assert client.connect() == b"\x01"
            assert ack == 5
            assert committed(records) == 5, f"packet {i} acknowledged before its records were stored"
    finally:
        if restart is not None:
            restart.join(120)  # the database is back before anything else runs
    client.close()
    assert restart is not None
    total = counts(s, tenant)
    assert total["positions"] == {"van-1": 300} and total["temperatures"] == {"van-1": 300}
    with connect(s.dsn(), autocommit=True) as db:
        distinct = db.execute(
            "SELECT count(DISTINCT (fix_time, seq)) FROM positions WHERE tenant = %s", (tenant,)
        ).fetchone()
        dups_after = db.execute("SELECT coalesce(sum(duplicates), 0) FROM gateway_shards WHERE shard = 100").fetchone()
    assert distinct is not None and distinct[0] == 300
    assert dups_before is not None and dups_after is not None
    assert dups_after[0] - dups_before[0] >= missed_acks * 10  # each re-sent packet: 5 positions, 5 temperatures
    wait_until(lambda: flow_counts(s, tenant) == {"van-1": (300, 300, 0)}, 120, "the dataflow's counts")


def test_an_osmand_report_during_a_database_outage_gets_no_200_until_it_is_stored(
    engine_settings: Settings, engine: Engine
) -> None:
    s = engine_settings
    run = int(time.time())
    tenant, phone = f"tko{run}", f"ph{run}"
    add_tracker(s, tenant, "van-1", "osmand", phone)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    result: dict[str, Any] = {}

    def report() -> None:
        result["answer"] = post(s.osmand_port, osmand.encode_query(phone, when, 60.17, 24.94, speed_mps=5.0))
        result["at"] = time.monotonic()

    services.stop_postgres(s)
    try:
        sender = threading.Thread(target=report)
        sender.start()
        sender.join(4.0)  # the report is in, the database is away: nothing may be answered
        assert sender.is_alive() and "answer" not in result
    finally:
        services.start_postgres(s)
    started = time.monotonic()
    sender.join(120)
    assert result["answer"] == (200, "")
    assert counts(s, tenant)["positions"] == {"van-1": 1}
    print(json.dumps({"answered_after_database_back_s": round(result["at"] - started, 2)}))


def test_concurrent_trackers_are_stored_exactly_once(engine_settings: Settings, engine: Engine) -> None:
    trackers = int(os.environ.get("FLEETSTREAM_TEST_TRACKERS", "200"))
    result = tracker_load(engine_settings, f"tkl{int(time.time())}", trackers, packets=3, records=5)
    summary = result.summary()
    print(json.dumps(summary))
    assert result.acked == result.records == result.stored == result.distinct == trackers * 15


def test_simulated_vans_with_trackers_are_stored_once_through_every_protocol(
    engine_settings: Settings, engine: Engine
) -> None:
    from dataclasses import replace

    from fleetstream.demo import simulate

    tenant = f"tks{int(time.time())}"
    settings = replace(
        engine_settings,
        tenant=tenant,
        sim_vehicles=4,
        sim_minutes=0.25,
        sim_speedup=20.0,
        sim_protocols="teltonika,gt06,osmand,owntracks",
        sim_protocol_share=1.0,
    )
    summary = simulate(settings)
    assert summary["tracker_flushed"] and summary["tracker_refused"] == 0
    sent = summary["readings"]
    assert sent["gps"] > 40 and sent["temp"] > 0  # one van is a Teltonika box with a probe
    expected = {"positions": sent["gps"], "temperatures": sent["temp"], "door_events": sent["door"]}

    def stored() -> dict[str, int]:
        return {table: sum(by_van.values()) for table, by_van in counts(settings, tenant).items()}

    wait_until(lambda: stored() == expected, 60, f"{expected} stored (have {stored()})")
    by_van = counts(settings, tenant)["positions"]
    assert len(by_van) == 4  # every protocol delivered
    wait_until(
        lambda: sum(sum(c) for c in flow_counts(settings, tenant).values()) == sum(expected.values()),
        120,
        "the dataflow's counts",
    )
    print(json.dumps({"sent": sent, "by_vehicle": by_van, "duplicates": summary["duplicates"]}))
