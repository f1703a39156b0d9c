"""The engine's Prometheus metrics, declared once; every name starts with ``fleetstream_``.

Each engine process (gateway shards, dataflow, deliverer, API) updates the metrics it
owns; the API's ``/metrics`` serves them all. That works through prometheus-client's
multiprocess mode: every process writes its values to files in one folder
(``Settings.metrics_dir``, ``<state_dir>/metrics``), named by the environment variable
``PROMETHEUS_MULTIPROC_DIR``, which must be set *before this module is imported* (the
engine sets it for its children; ``fleetstream`` sets it for the commands the engine
runs). Without it the values stay in the process (tests, scripts).

Counters of a process that died keep counting in the sum (its file stays until the
engine starts again), so they never go backwards while the engine runs; gauges marked
``live`` drop a process's value when the engine sees it exit.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ALERTS_RAISED",
    "COMMIT_LATENCY",
    "CONFLICTS",
    "DEAD_LETTERS",
    "DELIVERED",
    "DELIVERY_CURSOR",
    "DELIVERY_LAG",
    "DUPLICATES",
    "FLEET_CLOCK_LAG",
    "FLOW_HEARTBEAT",
    "FLOW_LAG_READINGS",
    "FLOW_LAG_SECONDS",
    "FLOW_VEHICLES",
    "LATE_READINGS",
    "MESSAGES",
    "READINGS_STORED",
    "REPLAYS",
    "SSE_CLIENTS",
    "SSE_DROPPED",
    "TOO_LATE_READINGS",
    "DELIVERY_FAILURES",
    "WEBHOOK_RETRIES",
]

# ------------------------------------------------------------------ gateway shards
READINGS_STORED = Counter("fleetstream_readings_stored", "Readings committed by the gateway, by stream", ["stream"])
MESSAGES = Counter("fleetstream_messages", "MQTT messages committed and acknowledged by the gateway")
DEAD_LETTERS = Counter("fleetstream_dead_letters", "Dead letters stored, by reason code", ["reason"])
DUPLICATES = Counter("fleetstream_duplicates", "Readings received again and not stored again")
CONFLICTS = Counter("fleetstream_conflicts", "Readings whose key was stored with other content (dead-lettered)")
COMMIT_LATENCY = Histogram(
    "fleetstream_commit_latency_seconds",
    "Per committed batch: seconds from its oldest message's receipt to the commit (the batch's worst case)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# ------------------------------------------------------------------ dataflow
FLOW_LAG_READINGS = Gauge(
    "fleetstream_flow_lag_readings",
    "Readings committed by the gateway that the dataflow has not read yet",
    multiprocess_mode="livemax",
)
FLOW_LAG_SECONDS = Gauge(
    "fleetstream_flow_lag_seconds",
    "Age of the oldest committed reading the dataflow has not read yet (0 when caught up)",
    multiprocess_mode="livemax",
)
FLOW_VEHICLES = Gauge(
    "fleetstream_flow_vehicles",
    "Vehicles whose analytics state this dataflow process holds (one value per process of a cluster)",
    multiprocess_mode="all",
)
FLOW_HEARTBEAT = Gauge(
    "fleetstream_flow_last_poll_timestamp_seconds",
    "Unix time of the dataflow source's last successful read of the database",
    multiprocess_mode="livemax",
)
FLEET_CLOCK_LAG = Gauge(
    "fleetstream_fleet_clock_lag_seconds",
    "Wall clock minus the tenant's fleet clock (event time), seconds",
    ["tenant"],
    multiprocess_mode="livemax",
)
LATE_READINGS = Counter("fleetstream_late_readings", "Readings released behind a vehicle's reorder watermark")
TOO_LATE_READINGS = Counter(
    "fleetstream_too_late_readings", "Readings older than the correction window: stored, not analysed"
)
REPLAYS = Counter("fleetstream_replays", "Late-data corrections: a vehicle's trackers restored and replayed")
ALERTS_RAISED = Counter("fleetstream_alerts_raised", "Alerts first stored, by type", ["type"])

# ------------------------------------------------------------------ deliverer
DELIVERED = Counter("fleetstream_delivered", "Changes delivered, by channel", ["channel"])
DELIVERY_LAG = Gauge(
    "fleetstream_delivery_lag_seconds",
    "Age of the oldest change not yet delivered on a channel (0 when caught up)",
    ["channel"],
    multiprocess_mode="livemax",
)
DELIVERY_CURSOR = Gauge(
    "fleetstream_delivery_cursor_rev", "A channel's delivery cursor (rev)", ["channel"], multiprocess_mode="livemax"
)
WEBHOOK_RETRIES = Counter("fleetstream_webhook_retries", "Webhook attempts that failed and were retried", ["channel"])
DELIVERY_FAILURES = Counter(
    "fleetstream_delivery_failures",
    "Changes a channel gave up on (webhook: after the last attempt), as in delivery_failures",
    ["channel"],
)

# ------------------------------------------------------------------ API
SSE_CLIENTS = Gauge("fleetstream_sse_clients", "Open /v1/stream connections", multiprocess_mode="livesum")
SSE_DROPPED = Counter("fleetstream_sse_dropped", "Stream clients disconnected by the server, by reason", ["reason"])
