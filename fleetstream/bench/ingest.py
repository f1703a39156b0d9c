"""Ingest benchmark: publish-to-committed throughput and latency, with references.

All in one run, on the same machine, QoS 1 everywhere and every guarantee on:

(a) drain: with the engine stopped, a backlog is queued in the broker for the
    engine's shard sessions and for two reference subscribers; then each
    consumer drains it alone, so the load generator does not compete for the
    cores. Consumers: the engine (decode, validate, COPY, dedup insert, commit,
    then PUBACK), a bare paho subscriber that only counts, and Mosquitto's own
    C client (mosquitto_sub). The third reference is a bare binary COPY of the
    same rows into a copy of the positions hypertable.
(b) latency: a paced publisher at a steady rate; every commit NOTIFYs its last
    shard_seq, so each reading's publish (device_time) to commit time is known.
(c) receipts: the batch backlog again with every message asking for stored receipts, a
    listener subscribed to the receipt topics as the vans would be; its drain rate beside
    the same batches' without receipts (target: at least 0.9 of it).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.contract import GpsFix, Limits, Reading, encode_batch, encode_single
from core.settings import Settings
from fleetstream import credentials, services
from fleetstream.engine import Engine
from ingest.batching import Received, prepare
from ingest.writer import COMMIT_CHANNEL, TABLES
from store.db import connect, migrate, scalar

__all__ = ["publish", "run_benchmark"]

VEHICLES = 100
REF_PAHO = "bench-ref-paho"
REF_C = "bench-ref-c"


@dataclass
class Figure:
    name: str
    readings: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------- load


def _readings(tenant: str, start_seq: int, count: int, base: datetime) -> list[GpsFix]:
    out = []
    for i in range(count):
        seq = start_seq + i
        vehicle = f"v{seq % VEHICLES:03d}"
        out.append(
            GpsFix(
                tenant,
                vehicle,
                seq,
                base + timedelta(milliseconds=seq),
                60.15 + (seq % 997) * 1e-5,
                24.9 + (seq % 991) * 1e-5,
                speed_mps=8.0,
                heading_deg=90.0,
                accuracy_m=5.0,
            )
        )
    return out


def _messages(
    tenant: str, part: int, parts: int, readings: int, per_message: int, base: datetime, receipt: bool = False
) -> list[tuple[str, bytes]]:
    out = []
    share = readings // parts
    fixes = _readings(tenant, part * share, share, base)
    if per_message == 1:
        return [encode_single(f) for f in fixes]
    by_vehicle: dict[str, list[Reading]] = {}
    for f in fixes:
        group = by_vehicle.setdefault(f.vehicle, [])
        group.append(f)
        if len(group) == per_message:
            out.append(encode_batch(tenant, f.vehicle, group, receipt=receipt))
            by_vehicle[f.vehicle] = []
    return out


def _client(settings: Settings, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(*credentials.mqtt_account(settings, "bench"))
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    return client


def _connect(client: mqtt.Client, settings: Settings, expiry: int = 3600, clean: bool = False) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    host, port = settings.mqtt_endpoint()
    client.connect(host, port, keepalive=60, clean_start=clean, properties=props)


def _publish_part(
    settings: Settings,
    tenant: str,
    part: int,
    parts: int,
    readings: int,
    per_message: int,
    rate: float,
    stamp: bool,
    done: Any,
    receipt: bool = False,
) -> None:
    """Publisher process: QoS 1, waits for every PUBACK; ``rate`` readings/s (0 = as fast as possible)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    client = _client(settings, f"bench-pub-{os.getpid()}")
    unrouted = [0]

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        if getattr(reason, "value", 0) == 0x10:
            unrouted[0] += 1

    client.on_publish = on_publish
    _connect(client, settings, expiry=0, clean=True)
    client.loop_start()
    infos = []
    start = time.perf_counter()
    if stamp:  # latency run: encode at send time so device_time is the publish time
        fixes = _readings(tenant, part * (readings // parts), readings // parts, base)
        for i, fix in enumerate(fixes):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            fix = GpsFix(
                fix.tenant,
                fix.vehicle,
                fix.seq,
                fix.fix_time,
                fix.lat,
                fix.lon,
                fix.speed_mps,
                fix.heading_deg,
                fix.accuracy_m,
                None,
                datetime.now(UTC),
            )
            infos.append(client.publish(*encode_single(fix), qos=1))
    else:
        for topic, payload in _messages(tenant, part, parts, readings, per_message, base, receipt):
            infos.append(client.publish(topic, payload, qos=1))
    sending = time.perf_counter() - start
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()
    # a PUBACK 0x10 (no matching subscribers) is not a delivery: the sessions were primed, so none come
    done.put((sum(1 for i in infos if i.is_published()) - unrouted[0], sending))


def publish(
    settings: Settings,
    tenant: str,
    readings: int,
    per_message: int,
    rate: float = 0,
    stamp: bool = False,
    processes: int = 2,
    receipt: bool = False,
) -> float:
    """Publish from ``processes`` processes; returns the send rate (messages/s) while sending."""
    ctx = mp.get_context("fork")
    done = ctx.Queue()
    procs = [
        ctx.Process(
            target=_publish_part,
            args=(
                settings,
                tenant,
                i,
                processes,
                readings,
                per_message,
                rate / processes if rate else 0,
                stamp,
                done,
                receipt,
            ),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    parts = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(acked / seconds for acked, seconds in parts if seconds > 0))


# ---------------------------------------------------------------- consumers


def _stored(settings: Settings) -> int:
    with connect(settings.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(stored), 0) FROM gateway_shards").fetchone()
        return int(row[0]) if row else 0


def _drain_engine(settings: Settings, tenant: str, expected: int, before: int) -> Figure:
    """Start the engine on a queued backlog; time from the first reading received to the last commit.

    The start is the earliest ``received_at`` (gateway clock) of the backlog, so
    process start-up is left out and nothing the engine did is: a commit can hold
    100 000 readings, so timing between commits would be too coarse.
    """
    engine = Engine(
        settings, with_flow=False, with_dispatch=False, with_delivery=False, with_api=False, with_listeners=False
    )
    engine.start()
    try:
        deadline = time.monotonic() + 900
        stored = 0
        with connect(settings.dsn(), autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT coalesce(sum(stored), 0) FROM gateway_shards").fetchone()
                stored = int(row[0]) - before if row else 0
                if stored >= expected:
                    break
                time.sleep(0.01)
            done_at = time.time()
            first = scalar(
                conn, "SELECT extract(epoch FROM min(received_at)) FROM positions WHERE tenant = %s", (tenant,)
            )
        if stored < expected:
            raise RuntimeError(f"engine stored {stored} of {expected} readings")
        return Figure("engine", expected, done_at - float(first))
    finally:
        engine.stop()


def _prime_sessions(settings: Settings, tenant: str) -> None:
    """Create the engine's and the references' persistent sessions so the backlog queues for them."""
    engine = Engine(
        settings, with_flow=False, with_dispatch=False, with_delivery=False, with_api=False, with_listeners=False
    )
    engine.start()
    engine.wait_ready()
    engine.stop()
    ref = _client(settings, REF_PAHO)
    _connect(ref, settings)
    ref.loop_start()
    ref.subscribe(f"fleet/{tenant}/+/+", qos=1)
    time.sleep(0.5)
    ref.loop_stop()
    ref.disconnect()
    _mosquitto_sub(settings, tenant, count=None)


def _drain_paho(settings: Settings, messages: int, readings: int) -> Figure:
    got = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal got, first, last
        got += 1
        last = time.perf_counter()
        if got == 1:
            first = last
        if got >= messages:
            done.set()

    ref = _client(settings, REF_PAHO)
    ref.on_message = on_message
    _connect(ref, settings)
    ref.loop_start()
    done.wait(600)
    ref.loop_stop()
    ref.disconnect()
    per_message = readings / messages
    return Figure("paho subscriber", int((got - 1) * per_message), last - first)


def _mosquitto_sub(settings: Settings, tenant: str, count: int | None) -> float:
    user, password = credentials.mqtt_account(settings, "bench")
    host, port = settings.mqtt_endpoint()
    argv = [
        "mosquitto_sub",
        "-h",
        host,
        "-p",
        str(port),
        "-u",
        user,
        "-P",
        password,
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-c",
        "-i",
        REF_C,
        "-x",
        "3600",
        "-t",
        f"fleet/{tenant}/+/+",
    ]
    argv += ["-E"] if count is None else ["-C", str(count)]
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, timeout=600)
    return time.perf_counter() - start


def _copy_reference(settings: Settings, readings: int) -> Figure:
    """Bare binary COPY of the same rows into a scratch copy of the positions hypertable, 5000 per commit."""
    fixes = _readings("benchcopy", 0, readings, datetime.now(UTC) - timedelta(hours=1))
    now = datetime.now(UTC).timestamp()
    prepared = prepare([Received(*encode_single(f), now) for f in fixes], Limits(), settings.h3_resolution, 4096)
    table = TABLES[0]
    columns = ", ".join(table.columns)
    with connect(settings.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_positions")
        conn.execute("CREATE TABLE bench_positions (LIKE positions INCLUDING ALL)")
        conn.execute(
            "SELECT create_hypertable('bench_positions', by_range('fix_time', INTERVAL '1 day'), "
            "create_default_indexes => false)"
        )
        conn.autocommit = False
        start = time.perf_counter()
        for lo in range(0, readings, 5000):
            with conn.cursor() as cur, cur.copy(f"COPY bench_positions ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(table.types)
                for i, row in enumerate(prepared.positions[lo : lo + 5000], start=lo):
                    copy.write_row((*row, 0, i))
            conn.commit()
        seconds = time.perf_counter() - start
        conn.autocommit = True
        conn.execute("DROP TABLE bench_positions")
    return Figure("binary COPY", readings, seconds)


# ---------------------------------------------------------------- latency


def _latency(settings: Settings, rate: float, seconds: float) -> dict[str, float]:
    tenant = f"lat{int(time.time())}"
    commits: list[tuple[int, int, float]] = []
    listening = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        with connect(settings.dsn(), autocommit=True) as conn:
            conn.execute(f"LISTEN {COMMIT_CHANNEL}")
            listening.set()
            while not stop.is_set():
                for note in conn.notifies(timeout=0.5):
                    shard, last = note.payload.split(":")
                    commits.append((int(shard), int(last), datetime.now(UTC).timestamp()))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    listening.wait(10)
    engine = Engine(
        settings, with_flow=True, with_dispatch=False, with_delivery=False, with_api=False, with_listeners=False
    )
    engine.start()
    engine.wait_ready()
    readings = int(rate * seconds)
    achieved = publish(settings, tenant, readings, 1, rate=rate, stamp=True)
    deadline = time.monotonic() + 60
    with connect(settings.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM positions WHERE tenant = %s", (tenant,)).fetchone()
            if row and row[0] >= readings:
                break
            time.sleep(0.2)
        time.sleep(1)
        rows = conn.execute(
            "SELECT shard, shard_seq, extract(epoch FROM device_time) FROM positions WHERE tenant = %s", (tenant,)
        ).fetchall()
    stop.set()
    listener.join()
    engine.stop()
    by_shard: dict[int, list[tuple[int, float]]] = {}
    for shard, last, at in commits:
        by_shard.setdefault(shard, []).append((last, at))
    latencies = []
    for shard, shard_seq, sent in rows:
        commit_at = next((at for last, at in sorted(by_shard.get(shard, [])) if last >= shard_seq), None)
        if commit_at is not None:
            latencies.append((commit_at - float(sent)) * 1000)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 100 else [float("nan")] * 99
    return {
        "target_rate": rate,
        "publish_rate": achieved,
        "readings": len(rows),
        "measured": len(latencies),
        "p50_ms": q[49],
        "p99_ms": q[98],
        "max_ms": latencies[-1] if latencies else float("nan"),
    }


# ---------------------------------------------------------------- main


class _ReceiptListener:
    """Subscribed to every device's receipt topic of a tenant, as the vans would be: counts receipts."""

    def __init__(self, settings: Settings, tenant: str) -> None:
        self.count = 0
        self.client = _client(settings, f"bench-receipts-{os.getpid()}")
        self.client.on_message = self._on_message
        _connect(self.client, settings, expiry=0, clean=True)
        self.client.loop_start()
        self.client.subscribe(f"fleet/{tenant}/+/cmd/stored", qos=1)

    def _on_message(self, _c: Any, _u: Any, _m: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _drain_round(
    settings: Settings, tenant: str, readings: int, per_message: int, receipt: bool = False, references: bool = True
) -> dict[str, Any]:
    messages = readings // per_message
    _prime_sessions(settings, tenant)
    before = _stored(settings)
    publish_rate = publish(settings, tenant, readings, per_message, receipt=receipt)
    listener = _ReceiptListener(settings, tenant) if receipt else None
    try:
        engine = _drain_engine(settings, tenant, messages * per_message, before)
    finally:
        if listener is not None:
            time.sleep(0.5)
            listener.close()
    figures = [engine]
    if references:
        figures.append(_drain_paho(settings, messages, messages * per_message))
        c_seconds = _mosquitto_sub(settings, tenant, messages)
        figures.append(Figure("mosquitto_sub", messages * per_message, c_seconds))
    else:  # the references' sessions still hold the backlog: take it off them
        _drain_paho(settings, messages, messages * per_message)
        _mosquitto_sub(settings, tenant, messages)
    return {
        "per_message": per_message,
        "receipt": receipt,
        "receipts_heard": None if listener is None else listener.count,
        "readings": messages * per_message,
        "publish_msgs_per_s": publish_rate,
        "figures": figures,
    }


def run_benchmark(settings: Settings, readings: int = 100_000, quick: bool = False) -> int:
    """Print the figures; returns 0."""
    if quick:
        readings = 10_000
    if settings.embedded_mqtt or settings.embedded_pg:
        services.up(settings)
    migrate(settings.dsn())
    if shutil.which("mosquitto_sub") is None:
        raise SystemExit("mosquitto_sub not found: run scripts/bootstrap.sh")
    credentials.service_account(settings, "bench")
    run_id = int(time.time())
    results = []
    for per_message, size in ((1, readings), (50, 5 * readings)):  # batches drain fast: a bigger backlog
        results.append(_drain_round(settings, f"b{run_id}m{per_message}", size, per_message))
    # the same batches asking for stored receipts (a receipt per device and commit, heard by a listener)
    receipts = _drain_round(settings, f"b{run_id}m50r", 5 * readings, 50, receipt=True, references=False)
    copy_ref = _copy_reference(settings, readings)
    latency = _latency(settings, 5000.0, 8.0 if quick else 20.0)

    print(f"\nfleetstream ingest benchmark — {os.cpu_count()} cores, QoS 1, commit-before-PUBACK, dedup on")
    print(f"reference: bare binary COPY into a positions hypertable copy: {copy_ref.rate:,.0f} rows/s\n")
    print(f"{'messages':<22}{'consumer':<18}{'readings/s':>12}{'engine ÷ this':>15}")
    for result in results:
        engine = result["figures"][0]
        label = "single reading" if result["per_message"] == 1 else f"batch of {result['per_message']}"
        for fig in [*result["figures"], copy_ref]:
            ratio = engine.rate / fig.rate if fig.rate else float("nan")
            print(f"{label:<22}{fig.name:<18}{fig.rate:>12,.0f}{ratio:>15.2f}")
        print(
            f"{'':<22}(backlog of {result['readings']:,} readings published at "
            f"{result['publish_msgs_per_s']:,.0f} msg/s)"
        )
    plain_batches = results[1]["figures"][0]
    with_receipts = receipts["figures"][0]
    print(
        f"{'batch of 50, receipts':<22}{'engine':<18}{with_receipts.rate:>12,.0f}"
        f"{with_receipts.rate / plain_batches.rate:>15.2f}  (÷ the same batches without receipts; "
        f"{receipts['receipts_heard']:,} receipts heard)"
    )
    print(
        f"\nlatency, publish → committed, steady {latency['target_rate']:,.0f} readings/s "
        f"(achieved {latency['publish_rate']:,.0f}/s, {latency['measured']:,} readings): "
        f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms, max {latency['max_ms']:.0f} ms"
    )
    summary = {
        "results": [
            {
                "per_message": r["per_message"],
                "readings": r["readings"],
                **{f.name: round(f.rate) for f in r["figures"]},
            }
            for r in results
        ],
        "binary_copy": round(copy_ref.rate),
        "batch_with_receipts": round(with_receipts.rate),
        "receipts_ratio": round(with_receipts.rate / plain_batches.rate, 3),
        "receipts_heard": receipts["receipts_heard"],
        "latency": latency,
    }
    print("\n" + json.dumps(summary, default=str))
    return 0
