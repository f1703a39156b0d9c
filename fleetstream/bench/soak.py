"""The soak: a fleet reporting live for minutes, every tracker and live ETAs on, the lag measured.

``vans`` vans, each with a plan, send one GPS fix every 5 s (``vans / 5`` readings/s), a reefer
reading every 30 s and every door change, paced in real time for ``minutes``, while the whole
engine runs (gateway shards, the analytics dataflow with ETAs, the deliverer publishing alerts
on MQTT). What it reports:

- readings/s sent and stored (the gateway's commits), and the generator's own delay behind its
  schedule (it says so when it fell behind: the rate was then not the one asked for);
- commit-to-analysed lag: the dataflow's own meter (``flow_lag.lag_s``, about once a second:
  wall time since the newest reading the step has seen was committed), p50/p99/max over the
  run and the worst minute's p99 ("throughout");
- threshold-to-alert lag: planted anomalies whose threshold time is known, on a few per cent of
  the vans spread over the whole fleet (silent vans: ``offline``; vans that stand still away
  from their next stop: ``unplanned_dwell`` or, inside a stop circle, ``long_dwell``; warm
  reefers: ``temp_excursion``). A fleet manager's account subscribed to ``alerts/<tenant>/#``
  notes when each alert arrives; its threshold time is the alert's own ``start_time`` plus the
  threshold of its type (what the engine was told), so the lag is: alert on MQTT minus the
  moment it became due. Every planted anomaly must arrive; each kind's timer fires per vehicle;
- flow CPU per analysed reading (``/proc/<pid>/stat`` of the dataflow process over the run), the
  peak RSS of every engine process and the broker, the PSS of all PostgreSQL processes, and the
  load average (the machine may be shared).

The generator is light: ``BASE_VANS`` simulated vans (``sim.simulator``, real roads, plans,
stops, doors, reefers) drive, and each of the ``vans`` is one of them under its own id and plan
copy, phase-shifted by a fraction of the 5 s period so the load is even. Every message is
encoded before the run starts and published at its fix time by a few paho connections of the
``bench`` service account (QoS 1). Per-device accounts are not used: a device account may only
publish its own topic under its own client id, so 20,000 accounts mean 20,000 connections, which
is no light generator; the broker's per-message work (dynamic-security ACL check on the topic,
delivery to the gateway's shared subscription) is the same for either account.

It runs its own Mosquitto and TimescaleDB (``bench_settings``: ``<state_dir>-bench``, ports +2),
emptied at the start. Threshold settings are shortened (``soak_thresholds``) so that every planted
anomaly comes due inside the run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading, encode_single
from core.geo import haversine_m
from core.plan import Plan
from core.settings import Settings
from fleetstream import credentials, services
from fleetstream.bench.analytics import _TABLES, bench_settings
from fleetstream.engine import Engine
from fleetstream.state import broker_pid
from models.roads import RoadNetwork
from sim.simulator import AnomalyPlan, FleetSimulator, RawMessage
from store.db import connect, migrate, scalar
from store.plans import store_plan

__all__ = ["SoakReport", "lead_s", "run_soak", "soak_thresholds"]

PERIOD_S = 5.0  # one GPS fix per van every 5 s
BASE_VANS = 250  # simulated routes; more vans are copies of these under their own ids and plans
PUBLISHERS = 4  # paho connections of the generator
PLANTED_SHARE = 0.01  # of the vans, per anomaly kind (at least 2 each)
WARM_C = 9.5  # a warm reefer's readings (the plans' range is 2-8 °C)
TARGET_P99_S = 5.0
KINDS = ("offline", "dwell", "temp_excursion")


def soak_thresholds(settings: Settings, duration_s: float) -> Settings:
    """Thresholds that come due inside a run of ``duration_s``: offline and excursion at most a
    third of it (the defaults, 300 s, in a 10-minute run); unplanned dwell at least 80 s (the
    engine confirms a stop after 60 s of slow fixes, which its reorder buffer releases 10 s
    late), at most 180 s. The long-dwell threshold at planned stops stays as it is."""
    short = min(settings.offline_after_s, max(15.0, duration_s / 3))
    return replace(
        settings,
        offline_after_s=short,
        excursion_min_s=min(settings.excursion_min_s, short),
        unplanned_dwell_s=max(80.0, min(180.0, duration_s / 3)),
    )


@dataclass
class Planted:
    """An anomaly planted on one van from ``at`` on (UTC)."""

    vehicle: str
    kind: str  # one of KINDS
    at: datetime
    alert_types: tuple[str, ...]


@dataclass
class SoakReport:
    """What the soak measured; ``summary()`` is the closing JSON."""

    vans: int
    minutes: float
    sent: int = 0
    stored: int = 0
    analysed: int = 0
    publish_s: float = 0.0
    behind_p99_s: float = 0.0  # the generator's delay behind its schedule
    behind_max_s: float = 0.0
    flow_lag_s: list[float] = field(default_factory=list)
    worst_minute_p99_s: float = 0.0
    alert_lag_s: dict[str, list[float]] = field(default_factory=dict)
    planted: dict[str, int] = field(default_factory=dict)
    alerted: dict[str, int] = field(default_factory=dict)
    other_alerts: dict[str, int] = field(default_factory=dict)  # by type: the fleet's own, not planted
    hold_s: dict[str, float] = field(default_factory=dict)  # per kind: the engine's designed wait (reorder buffer)
    flow_cpu_s: float = 0.0
    flow_wall_s: float = 0.0  # the run plus the settling after it
    generator_cpu_s: float = 0.0
    flow_phases: dict[str, float] = field(default_factory=dict)  # share of the dataflow's wall time
    rss_mb: dict[str, float] = field(default_factory=dict)
    load: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.0,) * 3, (0.0,) * 3)
    generate_s: float = 0.0  # encoding the messages
    plans_s: float = 0.0  # simulating the routes and storing the plans
    plans_absorbed_s: float = 0.0  # then until the dataflow had taken the plans in
    idle_flow_cpu_share: float = 0.0  # the dataflow before the first reading (plans and timers only)

    def summary(self) -> dict[str, Any]:
        all_alert_lags = [x for v in self.alert_lag_s.values() for x in v]
        # beyond the engine's designed wait: fix-time trackers see a reading once the vehicle's
        # reorder buffer lets it go, reorder_max_delay_s after its fix time
        beyond = [x - self.hold_s.get(k, 0.0) for k, v in self.alert_lag_s.items() for x in v]
        alert_p99, beyond_p99 = _pct(all_alert_lags, 99), _pct(beyond, 99)
        return {
            "vans": self.vans,
            "minutes": self.minutes,
            "readings_sent": self.sent,
            "readings_stored": self.stored,
            "readings_analysed": self.analysed,
            "sent_per_s": round(self.sent / self.publish_s) if self.publish_s else 0,
            "generator_behind_p99_s": round(self.behind_p99_s, 3),
            "generator_behind_max_s": round(self.behind_max_s, 3),
            "generator_cpu_share": round(self.generator_cpu_s / self.publish_s, 3) if self.publish_s else None,
            "lag_samples": len(self.flow_lag_s),
            "commit_to_analysed_p50_s": _pct(self.flow_lag_s, 50),
            "commit_to_analysed_p99_s": _pct(self.flow_lag_s, 99),
            "commit_to_analysed_max_s": max(self.flow_lag_s, default=None),
            "commit_to_analysed_worst_minute_p99_s": self.worst_minute_p99_s,
            "threshold_to_alert_p50_s": _pct(all_alert_lags, 50),
            "threshold_to_alert_p99_s": alert_p99,
            "threshold_to_alert_beyond_hold_p99_s": beyond_p99,
            "threshold_to_alert_by_kind": {
                k: {"p50": _pct(v, 50), "p99": _pct(v, 99), "max": max(v, default=None), "hold_s": self.hold_s.get(k)}
                for k, v in self.alert_lag_s.items()
            },
            "planted": self.planted,
            "alerted": self.alerted,
            "other_alerts": self.other_alerts,
            "flow_cpu_us_per_reading": round(self.flow_cpu_s / self.analysed * 1e6, 1) if self.analysed else None,
            "flow_cpu_share": round(self.flow_cpu_s / self.flow_wall_s, 3) if self.flow_wall_s else None,
            "flow_wall_time_shares": self.flow_phases,
            "flow_cpu_share_before_first_reading": self.idle_flow_cpu_share,
            "peak_rss_mb": self.rss_mb,
            "load_avg_before": self.load[0],
            "load_avg_after": self.load[1],
            # the target: the analysis within 5 s of the commits in every minute, and every alert
            # within 5 s of its due time plus the designed wait; nothing lost, the pace kept
            "holds_p99_under_5_s": (
                bool(self.flow_lag_s)
                and beyond_p99 is not None
                and self.worst_minute_p99_s < TARGET_P99_S
                and beyond_p99 < TARGET_P99_S
                and self.stored == self.sent == self.analysed
                and self.alerted == self.planted
                and all(self.planted.get(k) for k in KINDS)
                and self.behind_p99_s < 1.0
            ),
        }


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 3)


# ---------------------------------------------------------------- the generator


@dataclass
class _Fleet:
    messages: list[tuple[float, str, bytes]]  # (epoch seconds due, topic, payload), in time order
    planted: list[Planted]
    readings: int
    end: datetime  # the last message's due time at the latest: the fleet goes silent then


@dataclass
class _Routes:
    """The simulated routes from ``start`` (UTC) for ``duration_s``, and each van's copy of one."""

    start: datetime
    duration_s: float
    base: dict[str, list[Reading]]  # simulated van -> what it sends in the run, in order
    plans: dict[str, Plan]  # simulated van -> its plan
    ids: list[str]
    source: dict[str, str]  # van -> the simulated van it copies
    shifts: dict[str, timedelta]  # van -> how much later than its simulated van

    def van_plans(self) -> list[Plan]:
        return [replace(self.plans[self.source[vid]], vehicle=vid) for vid in self.ids]

    def messages(self) -> int:
        return sum(len(self.base[self.source[vid]]) for vid in self.ids)


def _routes(settings: Settings, tenant: str, vans: int, start: datetime, duration_s: float) -> _Routes:
    """``BASE_VANS`` simulated vans on their rounds from ``start`` on (they left their depots up to
    15 minutes before), and ``vans`` copies of them."""
    base_n = min(vans, BASE_VANS)
    sim = FleetSimulator(
        RoadNetwork.from_settings(settings),
        vehicles=base_n,
        seed=16,
        start=start - timedelta(minutes=15),
        gps_period_s=PERIOD_S,
        anomalies=AnomalyPlan.none(),
        tenant=tenant,
        stagger_s=600.0,
    )
    base: dict[str, list[Reading]] = {v: [] for v in sim.vehicle_ids}
    for event in sim.events(until=start + timedelta(seconds=duration_s)):
        if event.at >= start and not isinstance(event.item, RawMessage):
            base[event.vehicle].append(event.item)
    ids = [f"van-{i:05d}" for i in range(vans)]
    return _Routes(
        start,
        duration_s,
        base,
        {p["vehicle"]: Plan.from_dict(p) for p in sim.contract_plans()},
        ids,
        {vid: sim.vehicle_ids[i % base_n] for i, vid in enumerate(ids)},
        # copy k of a route runs k/(copies) of the 5 s period later: the load is even over the period
        {vid: timedelta(seconds=PERIOD_S * (i // base_n) * base_n / vans) for i, vid in enumerate(ids)},
    )


def _generate(settings: Settings, routes: _Routes, t0: datetime) -> _Fleet:
    """Every message of the run starting at ``t0``, encoded, with its due time; the planted
    anomalies. The routes move from their start to ``t0`` (the plans stay as stored: their
    windows are half an hour wide; what moves is the few minutes the set-up took)."""
    duration_s = routes.duration_s
    end = t0 + timedelta(seconds=duration_s)
    base, source, ids, base_plans = routes.base, routes.source, routes.ids, routes.plans
    shifts = {vid: shift + (t0 - routes.start) for vid, shift in routes.shifts.items()}
    planted = _plant(settings, ids, source, base, base_plans, shifts, t0, duration_s)
    by_vehicle = {p.vehicle: p for p in planted}
    out: list[tuple[float, str, bytes]] = []
    readings = 0
    for vid in ids:
        anomaly = by_vehicle.get(vid)
        still: tuple[float, float] | None = None
        for r in base[source[vid]]:
            when = r.fix_time + shifts[vid]
            if when > end:
                break
            r = replace(r, vehicle=vid, fix_time=when)
            if anomaly is not None and when >= anomaly.at:
                if anomaly.kind == "offline":
                    break
                if anomaly.kind == "dwell" and isinstance(r, GpsFix):
                    still = still or (r.lat, r.lon)
                    r = replace(r, lat=still[0], lon=still[1], speed_mps=0.0, heading_deg=None)
                if anomaly.kind == "dwell" and isinstance(r, DoorEvent):
                    continue  # standing in traffic with the doors shut (a gap in seq the engine tolerates)
                if anomaly.kind == "temp_excursion" and isinstance(r, TemperatureReading):
                    r = replace(r, celsius=WARM_C)
            topic, payload = encode_single(r)
            out.append((when.timestamp(), topic, payload))
            readings += 1
    out.sort(key=lambda m: m[0])
    return _Fleet(out, planted, readings, end)


def _plant(
    settings: Settings,
    ids: list[str],
    source: dict[str, str],
    base: dict[str, list[Reading]],
    plans: dict[str, Plan],
    shifts: dict[str, timedelta],
    t0: datetime,
    duration_s: float,
) -> list[Planted]:
    """Anomalies on vans spread over the fleet (every ``stride``-th), starting from ``warm`` s to
    as late as lets each come due with a margin of a fifth of its threshold before the end:

    - ``offline``: nothing more from the van;
    - ``dwell``: it stands still from a moment it drives at 4 m/s or more and is 150 m or more
      from every stop of its plan (so the dwell is unplanned, timed by ``unplanned_dwell_s``);
    - ``temp_excursion``: its reefer reads ``WARM_C`` (only vans whose plan has a range)."""
    per_kind = max(2, round(len(ids) * PLANTED_SHARE))
    thresholds = {
        "offline": settings.offline_after_s,
        "dwell": settings.unplanned_dwell_s + 10.0,  # and a fix or two to be seen standing
        "temp_excursion": settings.excursion_min_s + 30.0,  # the next reefer reading after the start
    }
    types = {"offline": ("offline",), "dwell": ("unplanned_dwell", "long_dwell"), "temp_excursion": ("temp_excursion",)}
    warm = min(30.0, duration_s / 12)
    stride = max(1, len(ids) // (per_kind * len(KINDS) * 2))
    out: list[Planted] = []
    used: set[str] = set()
    for k, kind in enumerate(KINDS):
        latest = max(warm, duration_s - thresholds[kind] * 1.2 - 5.0)
        n = 0
        for vid in ids[k::stride] + ids:  # spread first, then any van that fits
            if n == per_kind:
                break
            if vid in used or (kind == "temp_excursion" and plans[source[vid]].temp_range_c is None):
                continue
            start = t0 + timedelta(seconds=warm + (latest - warm) * n / max(1, per_kind - 1))
            if kind == "dwell":
                stops = plans[source[vid]].stops
                spot = next(
                    (
                        r.fix_time + shifts[vid]
                        for r in base[source[vid]]
                        if isinstance(r, GpsFix)
                        and start <= r.fix_time + shifts[vid] <= t0 + timedelta(seconds=latest + 3 * PERIOD_S)
                        and (r.speed_mps or 0.0) >= 4.0
                        and all(haversine_m(r.lat, r.lon, st.lat, st.lon) >= 150.0 for st in stops)
                    ),
                    None,
                )
                if spot is None:
                    continue
                start = spot
            out.append(Planted(vid, kind, start, types[kind]))
            used.add(vid)
            n += 1
    return out


class _Publisher:
    """A few paho connections publishing the pre-encoded messages at their due times (QoS 1);
    a vehicle always goes through the same connection, so its order is kept.

    A message's lateness is from its due time to the broker's PUBACK (so a client that queues
    what it cannot send in time counts as late, not as on time). At most ``MAX_UNACKED``
    messages per connection wait for their PUBACK (paho's message ids wrap at 65,535): past
    that the pacing waits, and the wait shows as lateness."""

    MAX_UNACKED = 20_000

    def __init__(self, settings: Settings, connections: int) -> None:
        user, password = credentials.mqtt_account(settings, "bench")
        self.clients: list[mqtt.Client] = []
        # per connection, in order: (message id, due) as published, (message id, wall time) as
        # acknowledged; the k-th use of an id pairs with its k-th PUBACK (ids wrap at 65,535)
        self.sent: list[list[tuple[int, float]]] = []
        self.acked: list[list[tuple[int, float]]] = []
        for i in range(connections):
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"soak-{i}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
            )
            c.username_pw_set(user, password)
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(0)  # the broker's receive maximum still bounds it
            c.user_data_set(i)
            c.on_publish = self._on_puback
            c.connect(*settings.mqtt_endpoint())
            c.loop_start()
            self.clients.append(c)
            self.sent.append([])
            self.acked.append([])

    def _on_puback(self, _c: Any, index: int, mid: int, _rc: Any, _props: Any) -> None:
        self.acked[index].append((mid, time.time()))  # list.append: atomic, no lock under paho's own

    def _unacked(self) -> int:
        return sum(len(s) - len(a) for s, a in zip(self.sent, self.acked, strict=True))

    def run(self, messages: list[tuple[float, str, bytes]]) -> list[float]:
        """Publish each message at its due time; returns how late each one was acknowledged (seconds)."""
        parts: list[list[tuple[float, str, bytes]]] = [[] for _ in self.clients]
        for m in messages:
            parts[hash(m[1].split("/", 3)[2]) % len(self.clients)].append(m)  # by vehicle
        threads = [threading.Thread(target=self._pace, args=(i, p), daemon=True) for i, p in enumerate(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 300
        while self._unacked() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._unacked():
            raise RuntimeError(f"the broker did not acknowledge {self._unacked()} of the generator's messages")
        if sum(map(len, self.sent)) != len(messages):
            raise RuntimeError(f"published {sum(map(len, self.sent))} of {len(messages)} messages")
        late: list[float] = []
        for sent, acked in zip(self.sent, self.acked, strict=True):
            acks: dict[int, list[float]] = {}
            for mid, at in acked:
                acks.setdefault(mid, []).append(at)
            used: dict[int, int] = {}
            for mid, due in sent:
                k = used.get(mid, 0)
                used[mid] = k + 1
                late.append(max(0.0, acks[mid][k] - due))
        return late

    def _pace(self, index: int, part: list[tuple[float, str, bytes]]) -> None:
        client, sent, acked = self.clients[index], self.sent[index], self.acked[index]
        for when, topic, payload in part:
            wait = when - time.time()
            if wait > 0:
                time.sleep(wait)
            while len(sent) - len(acked) >= self.MAX_UNACKED:
                time.sleep(0.005)
            info = client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
            sent.append((info.mid, when))

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


class _Manager:
    """A fleet manager's account on ``alerts/<tenant>/#``: each alert id's first open message,
    with the wall time it arrived."""

    def __init__(self, settings: Settings, tenant: str) -> None:
        username, password = credentials.add_account(settings, tenant, "soak", "manager")
        self.first: dict[str, tuple[float, dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(*settings.mqtt_endpoint())
        self.client.loop_start()
        self.client.subscribe(f"alerts/{tenant}/#", qos=1)
        if not subscribed.wait(15):
            raise RuntimeError("the manager's subscription was not acknowledged")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        doc = json.loads(msg.payload)
        with self.lock:
            self.first.setdefault(doc["id"], (arrived, doc))

    def alerts(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.first.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------- processes


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    parts = stat[stat.rindex(")") + 2 :].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _kib(pid: int, key: str, path: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(d.name))
    return out


class _Memory(threading.Thread):
    """Peak RSS of each named process (MB) every 5 s; PostgreSQL as the PSS sum of all its processes."""

    def __init__(self, pids: dict[str, int], postmaster: int | None) -> None:
        super().__init__(daemon=True)
        self.pids, self.postmaster = pids, postmaster
        self.peak: dict[str, float] = {}
        self.done = threading.Event()

    def sample(self) -> None:
        now = {name: _kib(pid, "VmRSS:") / 1024 for name, pid in self.pids.items()}
        if self.postmaster is not None:
            pg = [self.postmaster, *_children(self.postmaster)]
            now["postgres (PSS, all)"] = sum(_kib(p, "Pss:", "smaps_rollup") for p in pg) / 1024
        for name, mb in now.items():
            self.peak[name] = round(max(mb, self.peak.get(name, 0.0)), 1)

    def run(self) -> None:
        while not self.done.wait(5.0):
            self.sample()


# ---------------------------------------------------------------- the run


def run_soak(main: Settings, vans: int = 20_000, minutes: float = 10.0) -> dict[str, Any]:
    """Run the soak on the benchmark's own stack; print the table and the closing JSON."""
    duration_s = minutes * 60
    settings = soak_thresholds(replace(bench_settings(main), flow_analytics=1, flow_eta=1), duration_s)
    services.up(settings)
    try:
        report = _soak(settings, vans, minutes)
    finally:
        services.down(settings)
    summary = report.summary()
    _print(report, summary, settings)
    return summary


def lead_s(messages: int) -> float:
    """Seconds from choosing the start to the first message: encoding (about 30 µs a message
    here, twice that on a busy machine) with room to spare."""
    return 15.0 + messages * 60e-6


def _flow_idle(pid: int, timeout_s: float) -> tuple[float, float]:
    """Wait until the dataflow process uses under a fifth of a core over 3 s (it has taken the
    plans in), at most ``timeout_s``; returns the seconds waited and its last 3 s share of a core
    (with no readings yet: what the plans and timers alone cost)."""
    began = time.monotonic()
    share = 0.0
    while time.monotonic() - began < timeout_s:
        cpu = _cpu_s(pid)
        time.sleep(3.0)
        share = (_cpu_s(pid) - cpu) / 3.0
        if share < 0.2 and time.monotonic() - began > 15.0:  # not before it has read its first poll
            break
    return time.monotonic() - began, round(share, 3)


def _soak(settings: Settings, vans: int, minutes: float, fresh: bool = True) -> SoakReport:
    """The run on running services. ``fresh``: empty the tables and the dataflow's recovery
    first (the benchmark's own stack); otherwise only alerts stored before are marked delivered."""
    duration_s = minutes * 60
    migrate(settings.dsn())
    with connect(settings.dsn(), autocommit=True) as conn:
        if fresh:
            conn.execute(f"TRUNCATE {', '.join(_TABLES)}, flow_lag")
            shutil.rmtree(settings.recovery_dir, ignore_errors=True)
        conn.execute(  # the manager hears this run's alerts, not a backlog of earlier ones
            "INSERT INTO delivery_cursors (channel, last_rev) SELECT 'mqtt', coalesce(max(rev), 0) FROM"
            " (SELECT max(rev) AS rev FROM alerts UNION ALL SELECT max(rev) FROM stop_events"
            " UNION ALL SELECT max(rev) FROM eta_updates) r"
            " ON CONFLICT (channel) DO UPDATE SET last_rev = GREATEST(delivery_cursors.last_rev, excluded.last_rev)"
        )
    tenant = f"soak{int(time.time())}"
    report = SoakReport(vans, minutes, load=(os.getloadavg(), (0.0, 0.0, 0.0)))
    began = time.monotonic()
    routes = _routes(settings, tenant, vans, datetime.now(UTC), duration_s)
    with connect(settings.dsn(), autocommit=True) as conn:  # a fleet's morning dispatch, before the engine
        for plan in routes.van_plans():
            store_plan(conn, plan, "bench")
    report.plans_s = time.monotonic() - began
    engine = Engine(settings, with_dispatch=False, with_delivery=True, with_api=False, with_listeners=False)
    engine.start()
    try:
        engine.wait_ready()
        manager = _Manager(settings, tenant)
        # the dataflow takes every plan in before the run starts (about 30 ms a plan here; with
        # thousands of vans it may never idle: its timers and snapshots keep it busy)
        report.plans_absorbed_s, report.idle_flow_cpu_share = _flow_idle(engine.pids()["flow"], 60.0 + 0.03 * vans)
        t0 = (datetime.now(UTC) + timedelta(seconds=lead_s(routes.messages()))).replace(microsecond=0)
        began = time.monotonic()
        fleet = _generate(settings, routes, t0)
        del routes
        report.generate_s = time.monotonic() - began
        publisher = _Publisher(settings, PUBLISHERS)
        if datetime.now(UTC) > t0 - timedelta(seconds=1):
            raise RuntimeError(f"encoding took {report.generate_s:.0f} s, past the planned start: raise lead_s")
        report.planted = {k: sum(p.kind == k for p in fleet.planted) for k in KINDS}
        flow = engine.pids()["flow"]
        memory = _Memory(
            engine.pids() | {"mosquitto": broker_pid(settings) or 0, "generator": os.getpid()},
            services.postgres_pid(settings),
        )
        memory.start()
        time.sleep(max(0.0, t0.timestamp() - time.time()))
        cpu0, wall0, gen0 = _cpu_s(flow), time.time(), _own_cpu_s()
        lates = publisher.run(fleet.messages)
        report.publish_s = time.time() - wall0
        report.generator_cpu_s = _own_cpu_s() - gen0
        report.sent = fleet.readings
        lates.sort()
        report.behind_p99_s = lates[int(len(lates) * 0.99)] if lates else 0.0
        report.behind_max_s = lates[-1] if lates else 0.0
        _settle(settings, tenant, fleet, manager, report)
        report.flow_cpu_s = _cpu_s(flow) - cpu0
        report.flow_wall_s = time.time() - wall0
        memory.done.set()
        memory.sample()
        report.rss_mb = memory.peak
        report.load = (report.load[0], os.getloadavg())
        _lags(settings, report, t0, t0 + timedelta(seconds=duration_s))
        _alert_lags(settings, fleet, manager, report)
        publisher.close()
        manager.close()
    finally:
        engine.stop()
    return report


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _settle(settings: Settings, tenant: str, fleet: _Fleet, manager: _Manager, report: SoakReport) -> None:
    """Wait (at most 2 minutes) until everything sent is stored and analysed and every planted
    anomaly alerted; count what arrived."""
    deadline = time.monotonic() + 120
    stored_q = (
        "SELECT (SELECT count(*) FROM positions WHERE tenant = %(t)s) + (SELECT count(*) FROM temperatures"
        " WHERE tenant = %(t)s) + (SELECT count(*) FROM door_events WHERE tenant = %(t)s)"
    )
    analysed_q = "SELECT coalesce(sum(gps_count + temp_count + door_count), 0) FROM vehicle_state WHERE tenant = %(t)s"
    with connect(settings.dsn(), autocommit=True) as conn:
        while True:
            report.stored = int(scalar(conn, stored_q, {"t": tenant}))
            report.analysed = int(scalar(conn, analysed_q, {"t": tenant}))
            _count_alerts(fleet, manager, report)
            done = report.stored >= fleet.readings and report.analysed >= fleet.readings
            if (done and report.alerted == report.planted) or time.monotonic() > deadline:
                return
            time.sleep(1.0)


def _matches(fleet: _Fleet, manager: _Manager) -> dict[str, tuple[Planted, float, dict[str, Any]]]:
    """Per planted vehicle: its anomaly's alert (the first of its types to arrive)."""
    by_vehicle = {p.vehicle: p for p in fleet.planted}
    out: dict[str, tuple[Planted, float, dict[str, Any]]] = {}
    for arrived, doc in sorted(manager.alerts(), key=lambda a: a[0]):
        p = by_vehicle.get(doc["vehicle"])
        if p is not None and doc["type"] in p.alert_types and p.vehicle not in out:
            out[p.vehicle] = (p, arrived, doc)
    return out


def _count_alerts(fleet: _Fleet, manager: _Manager, report: SoakReport) -> None:
    found = _matches(fleet, manager)
    report.alerted = {k: sum(p.kind == k for p, _, _ in found.values()) for k in KINDS}
    planted_ids = {doc["id"] for _, _, doc in found.values()}
    other: dict[str, int] = {}
    silent_from = (fleet.end - timedelta(seconds=3 * PERIOD_S)).timestamp()
    for _, doc in manager.alerts():
        if doc["id"] not in planted_ids:
            kind = doc["type"]
            if kind == "offline" and datetime.fromisoformat(doc["start_time"]).timestamp() >= silent_from:
                kind = "offline after the run (the fleet stops)"
            other[kind] = other.get(kind, 0) + 1
    report.other_alerts = dict(sorted(other.items()))


def _alert_lags(settings: Settings, fleet: _Fleet, manager: _Manager, report: SoakReport) -> None:
    """Alert on MQTT minus (the alert's start_time + its type's threshold)."""
    thresholds = {
        "offline": settings.offline_after_s,
        "unplanned_dwell": settings.unplanned_dwell_s,
        "long_dwell": settings.long_dwell_s,
        "temp_excursion": settings.excursion_min_s,
    }
    report.alert_lag_s = {k: [] for k in KINDS}
    report.hold_s = {
        "offline": 0.0,
        "dwell": settings.reorder_max_delay_s,
        "temp_excursion": settings.reorder_max_delay_s,
    }
    for p, arrived, doc in _matches(fleet, manager).values():
        due = datetime.fromisoformat(doc["start_time"]).timestamp() + thresholds[doc["type"]]
        report.alert_lag_s[p.kind].append(round(arrived - due, 3))


def _lags(settings: Settings, report: SoakReport, t0: datetime, t1: datetime) -> None:
    """The dataflow's lag samples during the run (after its first reading), and the worst minute's p99."""
    with connect(settings.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM at), lag_s FROM flow_lag WHERE at BETWEEN %s AND %s AND lag_s IS NOT NULL"
            " ORDER BY at",
            (t0, t1 + timedelta(seconds=5)),
        ).fetchall()
    report.flow_lag_s = [float(lag) for _, lag in rows]
    minutes: dict[int, list[float]] = {}
    for at, lag in rows:
        minutes.setdefault(int((float(at) - t0.timestamp()) // 60), []).append(float(lag))
    report.worst_minute_p99_s = max((_pct(v, 99) or 0.0 for v in minutes.values()), default=0.0)
    phases = ("source", "step", "notify", "sink", "snapshot", "other", "gc")
    with connect(settings.dsn(), autocommit=True) as conn:
        totals = conn.execute(
            f"SELECT sum(interval_s), {', '.join(f'sum({p}_s)' for p in phases)} FROM flow_lag WHERE at BETWEEN %s AND %s",
            (t0, t1 + timedelta(seconds=5)),
        ).fetchone()
    if totals is not None and totals[0]:
        # where the dataflow's wall time went (shares; gc overlaps the phases it interrupted)
        report.flow_phases = {
            ("bytewax" if p == "other" else p): round(float(v or 0) / float(totals[0]), 3)
            for p, v in zip(phases, totals[1:], strict=True)
        }


def _print(report: SoakReport, s: dict[str, Any], settings: Settings) -> None:
    rate = report.vans / PERIOD_S
    print(
        f"\nfleetstream soak — {report.vans:,} vans with plans, a fix every {PERIOD_S:g} s ({rate:,.0f} fixes/s) plus "
        f"reefer readings and doors, {report.minutes:g} min, every tracker and live ETAs on "
        f"({PUBLISHERS} publisher connections)"
    )
    rows = [
        ("readings sent / stored / analysed", f"{report.sent:,} / {report.stored:,} / {report.analysed:,}"),
        ("readings/s sent (paced)", f"{s['sent_per_s']:,}"),
        ("generator behind schedule p99 / max", f"{s['generator_behind_p99_s']} s / {s['generator_behind_max_s']} s"),
        (
            "commit -> analysed lag p50 / p99 / max",
            f"{s['commit_to_analysed_p50_s']} / {s['commit_to_analysed_p99_s']} / {s['commit_to_analysed_max_s']} s",
        ),
        ("  worst minute's p99", f"{s['commit_to_analysed_worst_minute_p99_s']} s"),
        (
            "threshold -> alert on MQTT p50 / p99",
            f"{s['threshold_to_alert_p50_s']} / {s['threshold_to_alert_p99_s']} s "
            f"(p99 beyond the designed wait: {s['threshold_to_alert_beyond_hold_p99_s']} s)",
        ),
    ]
    for kind in KINDS:
        k = s["threshold_to_alert_by_kind"].get(kind, {})
        rows.append(
            (
                f"  {kind}: alerted / planted, p50 / p99 / max",
                f"{report.alerted.get(kind, 0)} / {report.planted.get(kind, 0)}, "
                f"{k.get('p50')} / {k.get('p99')} / {k.get('max')} s (wait {k.get('hold_s')} s)",
            )
        )
    rows += [
        ("other alerts (the fleet's own)", ", ".join(f"{t} {n}" for t, n in report.other_alerts.items()) or "none"),
        ("generator CPU", f"{s['generator_cpu_share']} of a core"),
        ("flow CPU per analysed reading", f"{s['flow_cpu_us_per_reading']} µs ({s['flow_cpu_share']} of a core)"),
        ("flow wall time", ", ".join(f"{p} {v:.0%}" for p, v in report.flow_phases.items())),
        *((f"peak RSS {name}", f"{mb:,.0f} MB") for name, mb in sorted(report.rss_mb.items())),
        ("load average before / after", f"{s['load_avg_before'][0]:.2f} / {s['load_avg_after'][0]:.2f}"),
        ("p99 lag under 5 s, nothing lost", "yes" if s["holds_p99_under_5_s"] else "NO"),
    ]
    print(
        f"set-up: routes and {report.vans:,} plans stored in {report.plans_s:.0f} s; the dataflow then busy for "
        f"{report.plans_absorbed_s:.0f} s (at the end {report.idle_flow_cpu_share:.2f} of a core, no readings yet); "
        f"messages encoded in {report.generate_s:.0f} s"
    )
    print(
        f"thresholds: offline {settings.offline_after_s:g} s, excursion {settings.excursion_min_s:g} s, "
        f"dwell {settings.unplanned_dwell_s:g} s"
    )
    for name, value in rows:
        print(f"{name:<46}{value}")
    print(json.dumps(s))
