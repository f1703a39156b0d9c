"""Delivery of alerts and stop events to fleet managers: MQTT per tenant and signed webhooks.

The dataflow upserts ``alerts`` and ``stop_events``; every insert or change of a row sets
``rev = nextval('event_rev')``. The deliverer only *reads* those tables, tailing them by
``rev``, so nothing here can stall the dataflow. Each channel has its own thread, its own
database connection and its own cursor (``delivery_cursors``), so a dead or slow endpoint
never delays another channel:

``mqtt``
    Every alert and stop-event change, QoS 1, to ``alerts/<tenant>/<vehicle>`` or
    ``stops/<tenant>/<vehicle>``, and (``eta_mqtt``) every ETA update (``eta_updates``) to
    ``etas/<tenant>/<vehicle>``, with the broker account ``alerts`` (MQTT v5). The cursor
    moves only after the broker's PUBACKs. Broker down, or a PUBACK refused for the channel
    (0x87 when the account's ACL lacks ``alerts/#``, 0x97 quota): log, back off, retry; never
    skip. A change the broker refuses for what it is (0x95 too large, 0x90 bad topic, 0x99
    bad payload, 0x83) is found by sending the page again one change at a time, recorded in
    ``delivery_failures`` and skipped: one undeliverable change never stalls the channel. A
    PUBACK 0x10 (no matching subscribers: nobody listens on that topic, the broker dropped
    it) is not a delivery: counted in ``delivery_cursors.unheard``, not in ``delivered``.
    For a late subscriber, each vehicle's open alerts: after a page with alert changes (and
    for every vehicle with open alerts when the channel connects), the deliverer publishes the
    vehicle's alerts still open, as stored then, retained, QoS 1, to
    ``open_alerts/<tenant>/<vehicle>`` (:func:`open_alerts_payload`); an empty retained
    message clears it when nothing is open. A manager who subscribes to
    ``open_alerts/<tenant>/+`` gets at once one message per vehicle with something open.
``webhook:<url>``
    Every *alert* change (not stop events) as a signed HTTP POST. 2xx is delivered; anything
    else (other status, redirect, timeout, refused connection) is retried after
    :func:`retry_schedule` delays; after ``webhook_max_attempts`` attempts the change is
    recorded in ``delivery_failures`` and the channel moves on. ``webhook_timeout_s`` bounds
    a whole attempt, connecting to the last byte of the response: a receiver that trickles
    its answer a byte at a time is cut off then (a socket timeout alone bounds each read).

Cursors start at rev 0 (a new channel gets everything stored) and survive restarts.

**At least once.** A crash or outage between sending and saving the cursor sends a change
again, so receivers must dedupe on ``(id, rev)``: the same pair is the same document. A
higher ``rev`` of an ``id`` supersedes every lower one (keep the highest, ignore lower ones
that arrive late after a re-send). Only the latest version of a row is stored, so versions
written between two polls collapse into the last one (open -> resolved may arrive as just
resolved). Order within a channel is rev order, which is commit order because the dataflow
is the single writer of both tables.

**Webhook signature.** Headers ``Content-Type: application/json``,
``X-Fleetstream-Timestamp`` (unix seconds, UTC), ``X-Fleetstream-Event-Id`` (the alert id)
and ``X-Fleetstream-Signature: sha256=<hex>``, the HMAC-SHA256 with key
``webhook_secret`` of ``timestamp + "." + raw body``. A receiver recomputes it over the raw
body bytes it received (before parsing), compares in constant time, and rejects timestamps
more than a few minutes from its clock (every attempt is signed afresh)::

    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Fleetstream-Signature"])
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import re
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import h3
import psycopg
from psycopg.rows import dict_row

from core.contract import format_time
from core.metrics import DELIVERED, DELIVERY_CURSOR, DELIVERY_FAILURES, DELIVERY_LAG, WEBHOOK_RETRIES
from core.settings import Settings
from store.db import connect
from store.events import merge_rev_pages

__all__ = [
    "MQTT_CHANNEL",
    "PAYLOAD_VERSION",
    "ChangeFeed",
    "DeliveryConfigError",
    "Failure",
    "MqttChannel",
    "WebhookChannel",
    "delivery_channels",
    "encode_body",
    "event_payload",
    "event_topic",
    "open_alerts_payload",
    "open_alerts_topic",
    "merge_pages",
    "retry_delay",
    "retry_schedule",
    "run_delivery",
    "sign",
    "post_within",
    "webhook_headers",
    "webhook_urls",
]

log = logging.getLogger("fleetstream.delivery")

MQTT_CHANNEL = "mqtt"
PAYLOAD_VERSION = 1
RETRY_CAP_S = 30.0  # longest wait between two webhook attempts
_OUTAGE_FIRST_S = 0.5  # database or broker away: first wait, doubling ...
_OUTAGE_CAP_S = 10.0  # ... up to this
_PAGE_ROWS = 500  # changes read per query and table
_PUBLISH_TIMEOUT_S = 10.0  # longest wait for one PUBACK
_ERROR_TEXT_CAP = 500  # characters of an error kept in delivery_failures
_RESPONSE_READ_CAP = 64 * 1024  # bytes of a webhook response read (and ignored)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # tenant and vehicle ids (core/contract.py): safe topic levels

# payload field <- column, after kind, id, rev, tenant, vehicle (stop_events.kind becomes "type")
_ALERT_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (c, c)
    for c in (
        "type",
        "severity",
        "status",
        "stop_id",
        "h3_cell",
        "start_time",
        "end_time",
        "details",
        "detected_at",
        "updated_at",
        # the context (pipelines/trackers/context.py): where, which stop, which plan, in one line
        "summary",
        "lat",
        "lon",
        "stop_name",
        "plan_version",
        # what people did about it (the API's alert actions)
        "acknowledged_at",
        "acknowledged_by",
        "owner",
        "closed_at",
        "closed_by",
        "comments",
    )
)
_STOP_EVENT_FIELDS: tuple[tuple[str, str], ...] = (("type", "kind"),) + tuple(
    (c, c)
    for c in (
        "stop_id",
        "plan_version",
        "visit",
        "at",
        "h3_cell",
        "window_start",
        "window_end",
        "on_time",
        "service_s",
        "details",
        "retracted",
        "detected_at",
        "updated_at",
        "summary",
        "lat",
        "lon",
        "stop_name",
    )
)
_ETA_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (c, c)
    for c in (
        "stop_id",
        "plan_version",
        "at",
        "eta",
        "h3_cell",
        "window_end",
        "method",
        "state",
        "details",
        "retracted",
        "detected_at",
        "updated_at",
    )
)
_TABLES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "alerts": ("alert", _ALERT_FIELDS),
    "stop_events": ("stop_event", _STOP_EVENT_FIELDS),
    "eta_updates": ("eta", _ETA_FIELDS),
}
_TOPIC_ROOT = {"alert": "alerts", "stop_event": "stops", "eta": "etas"}
OPEN_ALERTS_ROOT = "open_alerts"
OPEN_ALERTS_CAP = 100  # alerts listed in one vehicle's open-alerts message (newest first); count says how many


class DeliveryConfigError(ValueError):
    """The delivery settings cannot work (e.g. webhooks without a secret); raised before anything starts."""


@dataclass(frozen=True)
class Failure:
    """A change a channel gave up on: one ``delivery_failures`` row."""

    rev: int
    event_id: str
    attempts: int
    error: str


# ------------------------------------------------------------------ pure parts


def event_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document of one alert or stop-event version.

    ``row`` holds the columns of one ``alerts``, ``stop_events`` or ``eta_updates`` row plus
    ``"table"`` (the table's name). The document: ``v`` (payload version, 1), ``kind``
    (``alert``, ``stop_event`` or ``eta``), ``id``, ``rev``, ``tenant``, ``vehicle``, then the
    row's columns (an ETA: ``at`` when predicted, ``eta`` the predicted arrival). For a
    stop event the column ``kind`` (``arrival``/``departure``) is named ``type``, as an
    alert's type is. Times are RFC 3339 UTC strings with milliseconds; ``h3_cell`` is the H3
    index as a hex string or null; ``service_s`` in seconds. ``alerts.start_second`` (a
    storage key, ``start_time`` cut to the second) is left out.
    """
    try:
        kind, fields = _TABLES[row["table"]]
    except KeyError:
        raise ValueError(f"not an alerts or stop_events row (nor eta_updates): table={row.get('table')!r}") from None
    doc: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "kind": kind,
        "id": str(row["id"]),
        "rev": int(row["rev"]),
        "tenant": row["tenant"],
        "vehicle": row["vehicle_id"],
    }
    for name, column in fields:
        value = row[column]
        if column == "h3_cell":
            value = h3.int_to_str(value) if value is not None else None
        elif isinstance(value, datetime):
            value = format_time(value)
        doc[name] = value
    return doc


def event_topic(payload: Mapping[str, Any]) -> str:
    """``alerts/<tenant>/<vehicle>``, ``stops/<tenant>/<vehicle>`` or ``etas/<tenant>/<vehicle>`` of a payload.

    Raises ``ValueError`` when an id is not a safe topic level (``[A-Za-z0-9_-]{1,64}``).
    """
    tenant, vehicle = payload["tenant"], payload["vehicle"]
    for what, value in (("tenant", tenant), ("vehicle", vehicle)):
        if not isinstance(value, str) or not _ID.match(value):
            raise ValueError(f"{what} id {value!r} is not a valid topic level")
    return f"{_TOPIC_ROOT[payload['kind']]}/{tenant}/{vehicle}"


def open_alerts_topic(tenant: str, vehicle: str) -> str:
    """``open_alerts/<tenant>/<vehicle>``; raises ``ValueError`` for an id no topic level can hold."""
    return event_topic({"kind": "alert", "tenant": tenant, "vehicle": vehicle}).replace("alerts/", "open_alerts/", 1)


def open_alerts_payload(tenant: str, vehicle: str, rows: Sequence[Mapping[str, Any]], as_of_rev: int) -> bytes:
    """The retained message of one vehicle's open alerts: empty (clears the retained message)
    when ``rows`` is empty, else ``{"v": 1, "kind": "open_alerts", "tenant", "vehicle", "rev":
    as_of_rev, "count", "alerts": [...]}`` with the newest ``OPEN_ALERTS_CAP`` alerts, each the
    document :func:`event_payload` makes. ``rev``: the change log position it was read after
    (a higher one supersedes)."""
    if not rows:
        return b""
    newest = sorted(rows, key=lambda r: (r["start_time"], r["rev"]), reverse=True)[:OPEN_ALERTS_CAP]
    return encode_body(
        {
            "v": PAYLOAD_VERSION,
            "kind": "open_alerts",
            "tenant": tenant,
            "vehicle": vehicle,
            "rev": as_of_rev,
            "count": len(rows),
            "alerts": [event_payload(r) for r in newest],
        }
    )


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the MQTT payload and the webhook body (the bytes that are signed)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``"sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))``: X-Fleetstream-Signature."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def webhook_headers(secret: bytes, event_id: str, body: bytes, unix_s: int) -> dict[str, str]:
    """The headers of one webhook attempt signed at ``unix_s`` (seconds since the epoch, UTC)."""
    timestamp = str(int(unix_s))
    return {
        "Content-Type": "application/json",
        "X-Fleetstream-Timestamp": timestamp,
        "X-Fleetstream-Signature": sign(secret, timestamp, body),
        "X-Fleetstream-Event-Id": event_id,
    }


def retry_delay(first_s: float, retry: int, cap_s: float = RETRY_CAP_S) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): ``first_s`` doubling, at most ``cap_s``."""
    return min(cap_s, first_s * 2.0 ** min(retry, 64))


def retry_schedule(first_s: float, max_attempts: int, cap_s: float = RETRY_CAP_S) -> list[float]:
    """The waits (seconds) between ``max_attempts`` webhook attempts: one fewer than the attempts."""
    return [retry_delay(first_s, i, cap_s) for i in range(max(0, max_attempts - 1))]


def merge_pages(
    alerts: Sequence[Mapping[str, Any]],
    stops: Sequence[Mapping[str, Any]],
    page_rows: int,
    etas: Sequence[Mapping[str, Any]] = (),
) -> list[Mapping[str, Any]]:
    """Rev-ordered pages (each at most ``page_rows``) as one rev-ordered list with no gap
    (``store.events.merge_rev_pages``): rows past the end of a full page are read next time."""
    return merge_rev_pages((alerts, stops, etas), page_rows)


def webhook_urls(raw: str) -> list[str]:
    """The URLs of ``settings.webhook_urls`` (comma-separated), stripped, repeats dropped.

    Raises :class:`DeliveryConfigError` for anything that is not an http(s) URL with a host.
    """
    urls = list(dict.fromkeys(u.strip() for u in raw.split(",") if u.strip()))
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeliveryConfigError(f"webhook URL {url!r} is not an http:// or https:// URL with a host")
    return urls


def delivery_channels(settings: Settings) -> list[str]:
    """The channel (cursor) names these settings deliver to: ``mqtt`` and ``webhook:<url>``.

    Raises :class:`DeliveryConfigError` when webhooks are configured without
    ``webhook_secret`` or with a bad URL (``Settings`` checks ``webhook_max_attempts``).
    """
    urls = webhook_urls(settings.webhook_urls)
    if urls and not settings.webhook_secret:
        raise DeliveryConfigError(
            "webhook_urls is set but webhook_secret is empty: set FLEETSTREAM_WEBHOOK_SECRET "
            "(the HMAC key receivers verify X-Fleetstream-Signature with)"
        )
    return ([MQTT_CHANNEL] if settings.alert_mqtt else []) + [f"webhook:{u}" for u in urls]


def _outage_delay(outages: int) -> float:
    return retry_delay(_OUTAGE_FIRST_S, outages, _OUTAGE_CAP_S)


# ------------------------------------------------------------------ the change log in the database

_ALERT_SELECT = (
    "SELECT 'alerts' AS \"table\", id, rev, tenant, vehicle_id, "
    + ", ".join(c for _, c in _ALERT_FIELDS)
    + " FROM alerts WHERE rev > %s ORDER BY rev LIMIT %s"
)
_STOP_EVENT_SELECT = (
    "SELECT 'stop_events' AS \"table\", id, rev, tenant, vehicle_id, "
    + ", ".join(c for _, c in _STOP_EVENT_FIELDS)
    + " FROM stop_events WHERE rev > %s ORDER BY rev LIMIT %s"
)
# one query per page: the open alerts of the vehicles given as two arrays (tenants, vehicles), or of all
_OPEN_ALERTS_SELECT = (
    "SELECT 'alerts' AS \"table\", id, rev, tenant, vehicle_id, "
    + ", ".join(c for _, c in _ALERT_FIELDS)
    + " FROM alerts WHERE status = 'open' AND (%(all)s OR (tenant, vehicle_id) IN"
    " (SELECT * FROM unnest(%(tenants)s::text[], %(vehicles)s::text[])))"
)
_ETA_SELECT = (
    "SELECT 'eta_updates' AS \"table\", id, rev, tenant, vehicle_id, "
    + ", ".join(c for _, c in _ETA_FIELDS)
    + " FROM eta_updates WHERE rev > %s ORDER BY rev LIMIT %s"
)


class ChangeFeed:
    """One channel's view of the alert and stop-event log: its cursor and the changes after it.

    Holds its own autocommit connection, opened on first use and again after
    :meth:`reset`. Every method may raise ``psycopg.Error``; the caller backs off and
    retries. The in-memory cursor moves only after the database has stored it.
    """

    def __init__(
        self, dsn: str, channel: str, *, stop_events: bool, page_rows: int = _PAGE_ROWS, etas: bool = False
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.stop_events = stop_events
        self.etas = etas
        self.page_rows = page_rows
        self.last_rev: int | None = None  # None until read from delivery_cursors
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, autocommit=True)
        if self.last_rev is None:
            self._conn.execute(
                "INSERT INTO delivery_cursors (channel) VALUES (%s) ON CONFLICT (channel) DO NOTHING", (self.channel,)
            )
            row = self._conn.execute(
                "SELECT last_rev FROM delivery_cursors WHERE channel = %s", (self.channel,)
            ).fetchone()
            assert row is not None
            self.last_rev = int(row[0])
            log.info("delivery %s: resuming after rev %d", self.channel, self.last_rev)
        return self._conn

    def changes(self) -> list[Mapping[str, Any]]:
        """The next changes after the cursor, in rev order (at most about ``page_rows``)."""
        conn = self._connection()
        with conn.cursor(row_factory=dict_row) as cur:
            alerts = cur.execute(_ALERT_SELECT, (self.last_rev, self.page_rows)).fetchall()
            stops = (
                cur.execute(_STOP_EVENT_SELECT, (self.last_rev, self.page_rows)).fetchall() if self.stop_events else []
            )
            etas = cur.execute(_ETA_SELECT, (self.last_rev, self.page_rows)).fetchall() if self.etas else []
        rows = merge_pages(alerts, stops, self.page_rows, etas)
        oldest = min((r["updated_at"] for r in rows), default=None)
        lag = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        DELIVERY_LAG.labels(self.channel).set(max(0.0, lag))
        return rows

    def open_alerts(self, vehicles: Sequence[tuple[str, str]] | None) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """The open alerts of each (tenant, vehicle), as stored now; ``None``: of every vehicle
        that has any."""
        conn = self._connection()
        wanted = list(vehicles or ())
        args = {"all": vehicles is None, "tenants": [t for t, _ in wanted], "vehicles": [v for _, v in wanted]}
        found: dict[tuple[str, str], list[dict[str, Any]]] = {v: [] for v in wanted}
        with conn.cursor(row_factory=dict_row) as cur:
            for row in cur.execute(_OPEN_ALERTS_SELECT, args):
                found.setdefault((row["tenant"], row["vehicle_id"]), []).append(row)
        return found

    def advance(self, rev: int, delivered: int, failures: Sequence[Failure] = (), unheard: int = 0) -> None:
        """Store the cursor at ``rev`` with ``delivered`` more deliveries, ``unheard`` more changes nobody
        was subscribed to, and the ``failures``, in one transaction."""
        conn = self._connection()
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO delivery_failures (channel, rev, event_id, attempts, error) VALUES (%s, %s, %s, %s, %s)",
                    [(self.channel, f.rev, f.event_id, f.attempts, f.error[:_ERROR_TEXT_CAP]) for f in failures],
                )
            conn.execute(
                "UPDATE delivery_cursors SET last_rev = GREATEST(last_rev, %s), delivered = delivered + %s,"
                " unheard = unheard + %s, updated_at = now() WHERE channel = %s",
                (rev, delivered, unheard, self.channel),
            )
        self.last_rev = max(self.last_rev or 0, rev)
        DELIVERY_CURSOR.labels(self.channel).set(self.last_rev)
        if delivered:
            DELIVERED.labels(self.channel).inc(delivered)
        if failures:
            DELIVERY_FAILURES.labels(self.channel).inc(len(failures))

    def reset(self) -> None:
        """Drop the connection (after an error); the next call reconnects."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None


# ------------------------------------------------------------------ MQTT channel


_NO_MATCHING_SUBSCRIBERS = 0x10  # a success code, yet the broker dropped the message
# PUBACK failures about the message itself (any other failure is about the channel: retry it all)
_MESSAGE_REFUSALS = {0x83: "implementation specific", 0x90: "bad topic", 0x95: "too large", 0x99: "bad payload"}


class _PublishClient(aiomqtt.Client):
    """An aiomqtt client that records the PUBACK reason codes aiomqtt itself ignores: failures
    (>= 0x80) and 0x10 (no matching subscribers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: list[int] = []
        self.unheard = 0

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refused.append(int(reason_code.value))
        elif getattr(reason_code, "value", 0) == _NO_MATCHING_SUBSCRIBERS:
            self.unheard += 1
        super()._on_publish(client, userdata, mid, reason_code, properties)


class _Refused(aiomqtt.MqttError):
    """The broker answered PUBACKs with a failure reason code: not delivered."""


class MqttChannel:
    """Every change, QoS 1, to ``alerts/<tenant>/<vehicle>`` / ``stops/<tenant>/<vehicle>`` and
    (``eta_mqtt``) every ETA update to ``etas/<tenant>/<vehicle>``.

    Runs its own asyncio loop (:meth:`run`, in a thread). A page of changes is published
    pipelined and the cursor saved once every PUBACK of the page is in; a change whose ids
    cannot form a topic is recorded in ``delivery_failures`` (attempts 0).
    """

    channel = MQTT_CHANNEL

    def __init__(self, settings: Settings, account: tuple[str, str], stop: threading.Event) -> None:
        self.account = account
        self.settings = settings
        self.stop = stop
        self.feed = ChangeFeed(settings.dsn("deliver"), self.channel, stop_events=True, etas=bool(settings.eta_mqtt))
        self._outages = 0

    def run(self) -> None:
        """Deliver until ``stop`` is set."""
        asyncio.run(self._run())
        self.feed.reset()

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.05, left))

    async def _run(self) -> None:
        while not self.stop.is_set():
            try:
                await self._session()
            except _Refused as exc:
                log.error("delivery mqtt: %s; retrying", exc)
            except aiomqtt.MqttError as exc:
                log.warning("delivery mqtt: broker unavailable (%s); retrying", exc)
            except Exception:  # never let the channel die: log, back off, go again
                log.exception("delivery mqtt: unexpected error; retrying")
            await self._pause(_outage_delay(self._outages))
            self._outages += 1

    async def _session(self) -> None:
        username, password = self.account
        host, port = self.settings.mqtt_endpoint()
        client = _PublishClient(
            host,
            port,
            username=username,
            password=password,
            identifier=f"fleetstream-delivery-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=_PUBLISH_TIMEOUT_S,
        )
        client.pending_calls_threshold = _PAGE_ROWS * 2 + 1  # a whole page is pending by design
        async with client:
            log.info("delivery mqtt: connected to %s:%d as %s", host, port, username)
            db_outages = 0
            everyone = True  # a broker that restarted may have lost its retained messages
            while not self.stop.is_set():
                try:
                    rows = self.feed.changes()
                except psycopg.Error as exc:
                    self.feed.reset()
                    log.warning("delivery mqtt: database unavailable (%s); retrying", exc)
                    await self._pause(_outage_delay(db_outages))
                    db_outages += 1
                    continue
                db_outages = 0
                if everyone:
                    if await self._publish_open(client, None, self.feed.last_rev or 0):
                        everyone = False
                    else:
                        continue
                if not rows:
                    self._outages = 0  # healthy (reset here, not on connect: a refusing broker accepts connects)
                    await self._pause(self.settings.delivery_poll_ms / 1000.0)
                    continue
                client.unheard = 0
                failures = await self._publish(client, rows)
                self._outages = 0
                unheard = client.unheard
                delivered = len(rows) - len(failures) - unheard
                touched = sorted({(r["tenant"], r["vehicle_id"]) for r in rows if r["table"] == "alerts"})
                # before the cursor moves: a crash in between sends the page and these again
                if touched and not await self._publish_open(client, touched, int(rows[-1]["rev"])):
                    continue
                try:
                    self.feed.advance(rows[-1]["rev"], delivered, failures, unheard)
                except psycopg.Error as exc:  # the page is sent again: at least once
                    self.feed.reset()
                    log.warning("delivery mqtt: could not save the cursor (%s); retrying", exc)
                    await self._pause(_outage_delay(0))

    async def _publish(self, client: _PublishClient, rows: Sequence[Mapping[str, Any]]) -> list[Failure]:
        """Publish a page and wait for every PUBACK; raises ``aiomqtt.MqttError`` unless all were accepted
        or refused for what they are (those are sent again one at a time and become failures)."""
        failures: list[Failure] = []
        messages: list[tuple[Mapping[str, Any], str, bytes]] = []
        for row in rows:
            try:
                payload = event_payload(row)
                topic = event_topic(payload)
                body = encode_body(payload)
            except (ValueError, TypeError) as exc:  # ids no topic can hold, a document JSON cannot
                log.error("delivery mqtt: rev %d: %s; recorded in delivery_failures", row["rev"], exc)
                failures.append(Failure(int(row["rev"]), str(row["id"]), 0, str(exc)))
                continue
            messages.append((row, topic, body))
        # paho sends in call order and queues past its in-flight window, so rev order holds
        refused = await self._send(client, [(topic, body) for _, topic, body in messages])
        if not refused:
            return failures
        if not set(refused) <= set(_MESSAGE_REFUSALS):
            raise _Refused(
                f"broker refused {len(refused)} publishes (reason codes "
                f"{sorted(set(refused))}); check the ACL of the alerts account"
            )
        client.unheard = 0  # counted again below, one by one
        for row, topic, body in messages:  # find the ones refused for what they are
            codes = await self._send(client, [(topic, body)])
            if codes and not set(codes) <= set(_MESSAGE_REFUSALS):
                raise _Refused(f"broker refused a publish (reason code {codes[0]:#04x})")
            if codes:
                why = f"broker refused it: {codes[0]:#04x} {_MESSAGE_REFUSALS[codes[0]]} ({len(body)} bytes)"
                log.error("delivery mqtt: rev %d: %s; recorded in delivery_failures", row["rev"], why)
                failures.append(Failure(int(row["rev"]), str(row["id"]), 1, why))
        return sorted(failures, key=lambda f: f.rev)

    async def _publish_open(self, client: _PublishClient, vehicles: Sequence[tuple[str, str]] | None, rev: int) -> bool:
        """Publish, retained, the open alerts of ``vehicles`` (None: of every vehicle with any);
        False when the database failed (the caller goes round again)."""
        try:
            found = self.feed.open_alerts(vehicles)
        except psycopg.Error as exc:
            self.feed.reset()
            log.warning("delivery mqtt: database unavailable (%s); retrying", exc)
            await self._pause(_outage_delay(0))
            return False
        publishes = []
        for (tenant, vehicle), rows in found.items():
            try:
                publishes.append((open_alerts_topic(tenant, vehicle), open_alerts_payload(tenant, vehicle, rows, rev)))
            except (ValueError, TypeError) as exc:  # ids no topic can hold: their changes are failures already
                log.error("delivery mqtt: open alerts of %s/%s: %s", tenant, vehicle, exc)
        client.refused.clear()
        results = await asyncio.gather(
            *(client.publish(topic, body, qos=1, retain=True) for topic, body in publishes), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0] if isinstance(errors[0], aiomqtt.MqttError) else aiomqtt.MqttError(repr(errors[0]))
        if client.refused:
            # the retained summary is a convenience: a broker whose ACL predates open_alerts/# (it
            # regenerates it when restarted) must not stall the alerts themselves
            log.error(
                "delivery mqtt: broker refused %d open-alerts publishes (reason codes %s); restart the broker "
                "or give the alerts account open_alerts/#",
                len(client.refused),
                sorted(set(client.refused)),
            )
            client.refused.clear()
        return True

    async def _send(self, client: _PublishClient, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish and wait for every PUBACK; the failure reason codes (raises if the broker went away)."""
        client.refused.clear()
        results = await asyncio.gather(
            *(client.publish(topic, body, qos=1) for topic, body in messages), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0] if isinstance(errors[0], aiomqtt.MqttError) else aiomqtt.MqttError(repr(errors[0]))
        return list(client.refused)


# ------------------------------------------------------------------ webhook channel


def post_within(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    """POST ``body`` to ``url`` and read (at most 64 KiB of) the response, all within
    ``timeout_s`` seconds; the response's status. A redirect is not followed (it is a status
    like any other). Raises ``TimeoutError`` when the deadline passes, ``OSError`` or
    ``http.client.HTTPException`` when the exchange fails."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    expired = threading.Event()

    def cut_off() -> None:  # a socket timeout bounds each read; this bounds them all
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout_s, cut_off)
    watchdog.daemon = True
    watchdog.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read(_RESPONSE_READ_CAP)
        status = int(response.status)
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError(f"no complete response within {timeout_s:g} s") from None
        raise
    finally:
        watchdog.cancel()
        conn.close()
    if expired.is_set():
        raise TimeoutError(f"no complete response within {timeout_s:g} s")
    return status


class WebhookChannel:
    """Every alert change as a signed POST to one URL, retried with backoff, then recorded as failed."""

    def __init__(self, settings: Settings, url: str, stop: threading.Event) -> None:
        self.settings = settings
        self.url = url
        self.stop = stop
        self.channel = f"webhook:{url}"
        self.feed = ChangeFeed(settings.dsn("deliver"), self.channel, stop_events=False)
        self.secret = settings.webhook_secret.encode()

    def run(self) -> None:
        """Deliver until ``stop`` is set."""
        outages = 0
        while not self.stop.is_set():
            try:
                rows = self.feed.changes()
                outages = 0
                if not rows:
                    self.stop.wait(self.settings.delivery_poll_ms / 1000.0)
                    continue
                for row in rows:
                    if self.stop.is_set():
                        break
                    payload = event_payload(row)
                    outcome = self._deliver(payload)
                    if outcome is None:  # stopped mid-retry: the cursor stays, it is sent again next run
                        break
                    self.feed.advance(
                        payload["rev"],
                        0 if isinstance(outcome, Failure) else 1,
                        [outcome] if isinstance(outcome, Failure) else [],
                    )
            except psycopg.Error as exc:
                self.feed.reset()
                log.warning("delivery %s: database unavailable (%s); retrying", self.channel, exc)
                self.stop.wait(_outage_delay(outages))
                outages += 1
            except Exception:  # never let the channel die
                log.exception("delivery %s: unexpected error; retrying", self.channel)
                self.stop.wait(_outage_delay(outages))
                outages += 1
        self.feed.reset()

    def _deliver(self, payload: Mapping[str, Any]) -> bool | Failure | None:
        """True once a POST got 2xx; a Failure after the last attempt; None if stopped while waiting."""
        body = encode_body(payload)
        delays = retry_schedule(self.settings.webhook_backoff_s, self.settings.webhook_max_attempts)
        for attempt in range(1, self.settings.webhook_max_attempts + 1):
            error = self._post(payload["id"], body)
            if error is None:
                return True
            if attempt == self.settings.webhook_max_attempts:
                log.error(
                    "delivery %s: rev %d failed %d times (%s); recorded in delivery_failures",
                    self.channel,
                    payload["rev"],
                    attempt,
                    error,
                )
                return Failure(payload["rev"], payload["id"], attempt, error)
            WEBHOOK_RETRIES.labels(self.channel).inc()
            log.warning(
                "delivery %s: rev %d attempt %d failed (%s); next in %.2f s",
                self.channel,
                payload["rev"],
                attempt,
                error,
                delays[attempt - 1],
            )
            if self.stop.wait(delays[attempt - 1]):
                return None
        raise AssertionError("unreachable")

    def _post(self, event_id: str, body: bytes) -> str | None:
        """One signed POST: None on 2xx, else what went wrong."""
        headers = webhook_headers(self.secret, event_id, body, int(time.time()))
        try:
            status = post_within(self.url, body, headers, self.settings.webhook_timeout_s)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timeout, reset, bad response
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"


# ------------------------------------------------------------------ entry point


def run_delivery(settings: Settings, account: tuple[str, str] | None, stop: threading.Event | None = None) -> None:
    """Deliver alerts and stop events until ``stop`` is set (or SIGTERM / SIGINT, when ``stop`` is None);
    MQTT as ``account`` (username, password; None when ``alert_mqtt`` is off).

    Raises :class:`DeliveryConfigError` at once if the settings cannot work. Database and
    broker outages never end it: each channel logs, backs off and retries.
    """
    channels = delivery_channels(settings)
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
    workers: list[MqttChannel | WebhookChannel] = []
    if settings.alert_mqtt:
        if account is None:
            raise DeliveryConfigError("alert_mqtt is on but no MQTT account was given")
        workers.append(MqttChannel(settings, account, stop))
    workers += [WebhookChannel(settings, url, stop) for url in webhook_urls(settings.webhook_urls)]
    if not workers:
        log.warning("delivery: no channel configured (alert_mqtt = 0 and no webhook_urls); idle")
    threads = [threading.Thread(target=w.run, name=f"delivery-{w.channel}", daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    log.info("delivery: running %s", ", ".join(channels) or "nothing")
    stop.wait()
    deadline = time.monotonic() + settings.webhook_timeout_s + _PUBLISH_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("delivery: %s did not stop in time", thread.name)
    log.info("delivery: stopped")
