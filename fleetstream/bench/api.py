"""API benchmark: request latency, live-stream capacity, and what stream clients cost the engine.

All in one run, on the benchmark's own Mosquitto and TimescaleDB (``bench_settings``: state
folder ``<state_dir>-bench``, ports +2, emptied first), with the API as its own process:

1. **Latency** with ``vehicles`` vans (default 1,000) and one hour of history each (a fix
   every 5 s, written straight into ``positions``, with plans, state and ETAs): p50/p99 of
   ``GET /v1/vehicles`` and of one van's one-hour ``/track``, sequential requests, against
   the same SQL run directly (the reference: what the API adds).
2. **Stored-readings rate with and without 50 stream clients**: the engine (gateway shards +
   analytics dataflow) under a flood of batch messages (50 fixes each, the vans in turn, as
   fast as the broker acknowledges) for a while, once with no client and once with 50
   ``/v1/stream`` clients of that tenant attached, receiving what the dataflow writes
   meanwhile; the gateway's rate is the stored readings over the flood's last three
   quarters. Alternating rounds, medians. Target: with clients >= 0.9 of without.
3. **Live**: the vans report every 5 s (``vehicles`` / 5 readings/s) for ``live_s`` seconds
   with K stream clients each; per K: events each client got per second, the latency from
   the gateway receiving a van's fix to a client receiving its vehicle event (p50/p99), and
   clients the server dropped.

The stream clients run in this process on one asyncio loop and only count frames (they
parse one vehicle event in 20 for its latency), so they take little from the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import h3
import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from api.tokens import add_token
from core.contract import GpsFix, Reading, encode_batch
from core.plan import Plan, Stop
from core.settings import Settings
from fleetstream import credentials, services
from fleetstream.bench.analytics import bench_settings
from fleetstream.engine import Engine, settings_env
from store.db import connect, migrate, scalar
from store.plans import store_plan

__all__ = ["run_api_benchmark"]

CENTRE = (60.1699, 24.9384)
CENTRE_CELL = h3.str_to_int(h3.latlng_to_cell(*CENTRE, 9))
PERIOD_S = 5.0  # each van reports every 5 s
_WIPE = (
    "positions, temperatures, door_events, dead_letters, plans, alerts, stop_events, eta_updates, cell_minutes, "
    "vehicle_state, vehicles, gateway_shards, device_status, api_tokens, alert_actions"
)


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


# ------------------------------------------------------------------ 1. latency


def _load_history(settings: Settings, tenant: str, vehicles: int, end: datetime) -> list[str]:
    """An hour of fixes per van straight into positions (shard 99: the dataflow never reads it),
    plans, vehicle state, one ETA per van and an open alert in ten."""
    ids = [f"van-{i:04d}" for i in range(vehicles)]
    rng = random.Random(5)
    start = end - timedelta(hours=1)
    columns = (
        "fix_time, tenant, vehicle_id, seq, lat, lon, speed_mps, heading_deg, h3_cell, received_at, shard, shard_seq"
    )
    with connect(settings.dsn(), autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY positions ({columns}) FROM STDIN") as copy:
            n = 0
            for v in ids:
                lat, lon = CENTRE[0] + rng.uniform(-0.02, 0.02), CENTRE[1] + rng.uniform(-0.04, 0.04)
                for k in range(int(3600 / PERIOD_S)):
                    n += 1
                    at = start + timedelta(seconds=PERIOD_S * k)
                    lat += rng.uniform(-1e-4, 1e-4)
                    lon += rng.uniform(-2e-4, 2e-4)
                    copy.write_row((at, tenant, v, k, lat, lon, 8.0, 90.0, CENTRE_CELL, at, 99, n))
        for i, v in enumerate(ids):
            stops = [
                Stop(f"s{j}", CENTRE[0] + 0.001 * j, CENTRE[1] + 0.001 * i % 0.05, 75.0, end, end + timedelta(hours=1))
                for j in range(10)
            ]
            store_plan(conn, Plan(tenant, v, 0, tuple(stops)), "bench")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO vehicle_state (tenant, vehicle_id, last_fix_time, lat, lon, speed_mps, gps_count, temp_count,"
                " door_count, motion, plan_version, next_stop_id, stops_remaining) VALUES (%s, %s, %s, %s, %s, 8, 720, 0,"
                " 0, 'moving', 1, 's3', 7)",
                [(tenant, v, end, CENTRE[0], CENTRE[1]) for v in ids],
            )
            cur.executemany(
                "INSERT INTO eta_updates (at, id, tenant, vehicle_id, stop_id, plan_version, eta, detected_at)"
                " VALUES (%s, %s, %s, %s, 's3', 1, %s, %s)",
                [(end, uuid.uuid4(), tenant, v, end + timedelta(minutes=20), end) for v in ids],
            )
            cur.executemany(
                "INSERT INTO alerts (start_second, id, tenant, vehicle_id, type, severity, status, start_time, detected_at)"
                " VALUES (date_trunc('second', %s::timestamptz), %s, %s, %s, 'long_dwell', 'warning', 'open', %s, %s)",
                [(end, uuid.uuid4(), tenant, v, end, end) for v in ids[::10]],
            )
        conn.execute("ANALYZE positions, vehicle_state, plans, eta_updates, alerts")
    return ids


def _latency(settings: Settings, token: str, tenant: str, ids: list[str], end: datetime, quick: bool) -> dict[str, Any]:
    runs = 30 if quick else 100
    rng = random.Random(9)
    out: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    since = (end - timedelta(hours=1)).isoformat()
    until = (end + timedelta(seconds=1)).isoformat()
    with httpx.Client(base_url=settings.api_url(), headers=headers, timeout=30) as http:
        http.get("/v1/vehicles").raise_for_status()  # warm: the pool's connections, the plans' cache
        for name, path in (
            ("vehicle list", lambda: "/v1/vehicles"),
            ("one-hour track", lambda: f"/v1/vehicles/{rng.choice(ids)}/track"),
        ):
            times, size = [], 0
            for _ in range(runs):
                t = time.perf_counter()
                response = http.get(path(), params={} if name == "vehicle list" else {"since": since, "until": until})
                response.raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
                size = len(response.content)
            p50, p99 = _quantiles(times)
            out[name] = {"p50_ms": p50, "p99_ms": p99, "bytes": size}
    from api import queries

    async def bare() -> dict[str, float]:  # the same SQL without HTTP, JSON or auth: the reference
        async with await psycopg.AsyncConnection.connect(settings.dsn(), row_factory=psycopg.rows.dict_row) as conn:
            result = {}
            for name, sql, args in (
                ("vehicle list", queries.VEHICLES_SQL, {"tenant": tenant, "vehicle": None}),
                (
                    "one-hour track",
                    queries.TRACK_SQL,
                    {
                        "tenant": tenant,
                        "vehicle": ids[0],
                        "since": end - timedelta(hours=1),
                        "until": end + timedelta(seconds=1),
                        "limit": 5000,
                    },
                ),
            ):
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    await (await conn.execute(sql, args)).fetchall()
                    times.append((time.perf_counter() - t) * 1000)
                result[name] = _quantiles(times)[0]
            return result

    for name, p50 in asyncio.run(bare()).items():
        out[name]["sql_p50_ms"] = p50
    return out


# ------------------------------------------------------------------ stream clients


@dataclass
class _Clients:
    """``count`` /v1/stream clients on one asyncio loop in a thread; frames counted, a sample parsed."""

    url: str
    token: str
    count: int
    frames: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # gateway received the fix -> client got its event
    api_latencies_ms: list[float] = field(default_factory=list)  # dataflow stored the state -> client got it
    ended_early: int = 0
    connected: int = 0

    def start(self) -> None:
        self.frames = [0] * self.count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while self.connected < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connected < self.count:
            raise RuntimeError(f"only {self.connected} of {self.count} stream clients connected")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.count + 5)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), limits=limits) as http:
            tasks = [asyncio.create_task(self._one(http, i)) for i in range(self.count)]
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, http: httpx.AsyncClient, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with http.stream("GET", f"{self.url}/v1/stream", headers=headers) as response:
                self.connected += 1
                tail = b""
                async for chunk in response.aiter_bytes():
                    data = tail + chunk
                    *frames, tail = data.split(b"\n\n")
                    self.frames[index] += len(frames)
                    if index == 0:  # one client measures the latency, on a sample of vehicle events
                        now = datetime.now(UTC)
                        for frame in frames[::20]:
                            if b"event: vehicle" in frame:
                                body = json.loads(frame.split(b"data: ", 1)[1])
                                if body.get("last_received_at") and body.get("processed_at"):
                                    received = datetime.fromisoformat(body["last_received_at"])
                                    processed = datetime.fromisoformat(body["processed_at"])
                                    self.latencies_ms.append((now - received).total_seconds() * 1000)
                                    self.api_latencies_ms.append((now - processed).total_seconds() * 1000)
            if not self._stop.is_set():
                self.ended_early += 1
        except asyncio.CancelledError:
            pass
        except httpx.HTTPError:
            self.ended_early += 1


# ------------------------------------------------------------------ 2. drain with and without clients


def _publisher(settings: Settings) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-api-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(*credentials.mqtt_account(settings, "bench"))
    client.max_inflight_messages_set(500)
    client.connect(*settings.mqtt_endpoint())
    client.loop_start()
    return client


def _fresh_flow(settings: Settings) -> None:
    """The next engine's dataflow starts on this round's readings alone: no snapshot to resume
    (and resynchronise) thousands of earlier vans from, no earlier rows to replay."""
    shutil.rmtree(settings.recovery_dir, ignore_errors=True)
    with connect(settings.dsn(), autocommit=True) as conn:
        for table in ("positions", "temperatures", "door_events"):
            conn.execute(f"DELETE FROM {table} WHERE shard <> 99")  # 99: the latency part's history


def _flood(settings: Settings, tenant: str, vehicles: int, seconds: float) -> None:
    """Publisher process: batch messages of 50 fixes, the vans in turn, as fast as PUBACKs come
    back (at most 1,000 unacknowledged), for ``seconds``."""
    client = _publisher(settings)
    base = datetime.now(UTC) - timedelta(hours=3)
    sent: list[Any] = []
    seq = dict.fromkeys(range(vehicles), 0)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        van = i % vehicles
        first = seq[van]
        fixes: list[Reading] = [
            GpsFix(
                tenant,
                f"van-{van:04d}",
                first + k + 1,
                base + timedelta(seconds=PERIOD_S * (first + k)),
                CENTRE[0] + 1e-5 * ((first + k) % 400),
                CENTRE[1] + 1e-4 * (van % 300),
                8.0,
                90.0,
                5.0,
            )
            for k in range(50)
        ]
        seq[van] += 50
        sent.append(client.publish(*encode_batch(tenant, f"van-{van:04d}", fixes), qos=1))
        if len(sent) >= 1000:
            sent.pop(0).wait_for_publish(60)
        i += 1
    for info in sent:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def _load_round(
    settings: Settings, url: str, clients: int, vehicles: int, seconds: float, api_pid: int
) -> tuple[float, float]:
    """The gateway's stored readings/s under a flood of batch messages, with the analytics dataflow
    running and ``clients`` stream clients of the tenant attached (receiving what the dataflow
    writes), and the API's CPU (cores) meanwhile. The first quarter of the flood is warm-up."""
    tenant = f"d{uuid.uuid4().hex[:8]}"
    _fresh_flow(settings)
    with connect(settings.dsn(), autocommit=True) as conn:
        token = add_token(conn, tenant, "viewer", "bench")[0]
    engine = Engine(settings, with_dispatch=False, with_delivery=False, with_api=False)
    engine.start()
    streams = _Clients(url, token, clients) if clients else None
    try:
        engine.wait_ready()
        if streams:
            streams.start()
        flood = mp.get_context("fork").Process(target=_flood, args=(settings, tenant, vehicles, seconds))
        flood.start()
        stored = "SELECT coalesce(sum(stored), 0) FROM gateway_shards"
        with connect(settings.dsn(), autocommit=True) as conn:
            time.sleep(seconds / 4)
            t0, n0, cpu0 = time.monotonic(), int(scalar(conn, stored)), _cpu_s(api_pid)
            time.sleep(seconds * 3 / 4 - 1.0)
            t1, n1, cpu1 = time.monotonic(), int(scalar(conn, stored)), _cpu_s(api_pid)
        flood.join(120)
        if streams is not None and sum(streams.frames) == 0:
            raise RuntimeError("the stream clients got nothing: the load round measured no streaming")
    finally:
        if streams:
            streams.stop()
        engine.stop()
    return (n1 - n0) / (t1 - t0), (cpu1 - cpu0) / (t1 - t0)


# ------------------------------------------------------------------ 3. live


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _live_round(
    settings: Settings, url: str, clients: int, vehicles: int, seconds: float, api_pid: int
) -> dict[str, Any]:
    tenant = f"l{uuid.uuid4().hex[:8]}"
    _fresh_flow(settings)
    with connect(settings.dsn(), autocommit=True) as conn:
        token = add_token(conn, tenant, "viewer", "bench")[0]
    engine = Engine(settings, with_dispatch=False, with_delivery=False, with_api=False)
    engine.start()
    engine.wait_ready()
    streams = _Clients(url, token, clients)
    streams.start()
    client = _publisher(settings)
    published = 0
    try:
        rng = random.Random(3)
        where = {
            i: (CENTRE[0] + rng.uniform(-0.02, 0.02), CENTRE[1] + rng.uniform(-0.04, 0.04)) for i in range(vehicles)
        }
        slots = 50  # every 0.1 s a fiftieth of the fleet reports: each van every 5 s
        start = time.monotonic()
        tick = 0
        counted_from = None
        while time.monotonic() - start < seconds:
            for i in range(tick % slots, vehicles, slots):
                lat, lon = where[i]
                where[i] = (lat + 3e-4, lon)
                fix = GpsFix(tenant, f"van-{i:04d}", tick + 1, datetime.now(UTC), lat, lon, 8.0, 0.0, 5.0)
                client.publish(*encode_batch(tenant, f"van-{i:04d}", [fix]), qos=1)
                published += 1
            tick += 1
            pause = start + tick * PERIOD_S / slots - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if counted_from is None and time.monotonic() - start > min(10.0, seconds / 3):  # warmed up
                counted_from = (time.monotonic(), list(streams.frames), _cpu_s(api_pid), time.process_time())
        assert counted_from is not None
        elapsed = time.monotonic() - counted_from[0]
        api_cpu = (_cpu_s(api_pid) - counted_from[2]) / elapsed
        bench_cpu = (time.process_time() - counted_from[3]) / elapsed
        rates = [(now - was) / elapsed for now, was in zip(streams.frames, counted_from[1], strict=True)]
    finally:
        client.loop_stop()
        client.disconnect()
        streams.stop()
        engine.stop()
    p50, p99 = _quantiles(streams.latencies_ms)
    api50, api99 = _quantiles(streams.api_latencies_ms)
    return {
        "stored_to_client_p50_ms": api50,
        "stored_to_client_p99_ms": api99,
        "clients": clients,
        "readings_per_s": published / seconds,
        "events_per_client_s_min": min(rates),
        "events_per_client_s_median": statistics.median(rates),
        "fix_to_client_p50_ms": p50,
        "fix_to_client_p99_ms": p99,
        "dropped": streams.ended_early,
        "api_cpu_cores": api_cpu,
        "bench_process_cpu_cores": bench_cpu,
    }


# ------------------------------------------------------------------ main


def run_api_benchmark(main: Settings, vehicles: int = 1000, quick: bool = False) -> dict[str, Any]:
    """Print the figures (see the module docstring); returns them."""
    settings = replace(bench_settings(main), api_port=main.api_port + 2, engine_api=0)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the figures
    services.up(settings)
    api: subprocess.Popen[bytes] | None = None
    try:
        migrate(settings.dsn())
        with connect(settings.dsn(), autocommit=True) as conn:
            conn.execute(f"TRUNCATE {_WIPE}")
        credentials.service_account(settings, "bench")
        log = open(settings.state_dir / "bench-api.log", "ab")  # noqa: SIM115 - closed with the process
        api = subprocess.Popen(
            [sys.executable, "-m", "fleetstream.cli", "api"], env=settings_env(settings), stdout=log, stderr=log
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{settings.api_url()}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {log.name}")
            time.sleep(0.2)
        tenant = "latency"
        end = datetime.now(UTC).replace(microsecond=0)
        ids = _load_history(settings, tenant, vehicles, end)
        with connect(settings.dsn(), autocommit=True) as conn:
            token = add_token(conn, tenant, "viewer", "bench")[0]
        latency = _latency(settings, token, tenant, ids, end, quick)

        flood_s = 16.0 if quick else 40.0
        # alternating rounds, medians: one round's rate swings with whatever else the machine does
        drains: dict[int, list[float]] = {0: [], 50: []}
        drain_cpu: dict[int, list[float]] = {0: [], 50: []}
        for _ in range(1 if quick else 2):
            for n in (0, 50):
                rate, cores = _load_round(settings, settings.api_url(), n, vehicles, flood_s, api.pid)
                drains[n].append(rate)
                drain_cpu[n].append(cores)
        drain = {n: statistics.median(rates) for n, rates in drains.items()}
        live_s = 20.0 if quick else 60.0
        live = [
            _live_round(settings, settings.api_url(), n, vehicles, live_s, api.pid)
            for n in ((50,) if quick else (50, 200))
        ]
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        services.down(settings)

    print(f"\nfleetstream API benchmark — {vehicles} vans, one API process, 2 gateway shards, analytics dataflow")
    print(f"{'request':<18}{'p50 ms':>9}{'p99 ms':>9}{'bare SQL p50 ms':>17}{'bytes':>10}")
    for name, f in latency.items():
        print(f"{name:<18}{f['p50_ms']:>9.1f}{f['p99_ms']:>9.1f}{f['sql_p50_ms']:>17.1f}{f['bytes']:>10,}")
    ratio = drain[50] / drain[0]
    print(
        f"\nflood of batch messages for {flood_s:g} s, analytics dataflow running (median of {len(drains[0])} "
        f"alternating rounds): {drain[0]:,.0f} stored/s with no stream client, {drain[50]:,.0f}/s with 50 attached: "
        f"{ratio:.2f} "
        f"(target >= 0.9; rounds: {', '.join(f'{r:,.0f}' for r in drains[0])} / {', '.join(f'{r:,.0f}' for r in drains[50])});"
        f" the API used {statistics.median(drain_cpu[0]):.2f} / {statistics.median(drain_cpu[50]):.2f} cores"
    )
    print(f"\nlive, every van every {PERIOD_S:g} s ({vehicles / PERIOD_S:.0f} readings/s) for {live_s:g} s:")
    print(
        f"{'clients':>8}{'events/s each (min, median)':>30}{'fix→client p50, p99 ms':>24}"
        f"{'stored→client p50, p99 ms':>27}{'dropped':>9}{'API cores':>11}"
    )
    for r in live:
        print(
            f"{r['clients']:>8}{r['events_per_client_s_min']:>15.0f}{r['events_per_client_s_median']:>15.0f}"
            f"{r['fix_to_client_p50_ms']:>12.0f}{r['fix_to_client_p99_ms']:>12.0f}"
            f"{r['stored_to_client_p50_ms']:>14.0f}{r['stored_to_client_p99_ms']:>13.0f}{r['dropped']:>9}"
            f"{r['api_cpu_cores']:>11.2f}"
        )
    print("(fix→client: from the gateway receiving a fix; stored→client: from the dataflow storing the van's state)")
    summary = {
        "latency": latency,
        "drain_stored_per_s": drains,
        "drain_ratio_50_clients": round(ratio, 3),
        "drain_api_cores": drain_cpu,
        "live": live,
        "load_average": os.getloadavg(),
    }
    print("\n" + json.dumps(summary, default=lambda x: round(x, 1) if isinstance(x, float) else str(x)))
    return summary
