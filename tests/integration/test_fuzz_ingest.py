"""Property-based: whatever a device sends, the gateway stores it or dead-letters it with a reason.

Hypothesis builds batches of device messages on every stream (gps, temp, door, status and the
batch form): valid ones, then mutated, with any Unicode (NUL and lone surrogates included, in
field values and in ``details`` keys), extreme and non-finite numbers, deep nesting, huge
strings, wrong types, bad JSON and invalid UTF-8. Each batch goes through the real decode and
the real writer (``GatewayShard.store``: prepare, COPY, seq claims, conflicts, isolation of what
the database refuses) into the test TimescaleDB, under a tenant of its own. Invariants:

* nothing raises;
* every reading stored is one a message held (same seq, fix time and stream), once;
* every reading a message held is stored, or the message has a dead letter (a conflict, or
  ``db_refused``), and every message the contract rejected (whole or in part) has its dead
  letter, with a known reason;
* the counts add up: the commits' ``stored`` is the rows stored, their ``dead_letters`` the
  dead-letter rows.

``FLEETSTREAM_TEST_FUZZ_EXAMPLES`` sets the budget (default 60 batches, about 20 s).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.contract import REASONS, decode
from core.settings import Settings
from ingest.batching import Received
from ingest.gateway import GatewayShard
from store.db import migrate

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FLEETSTREAM_TEST_FUZZ_EXAMPLES", "60"))
FUZZ_SHARD = 90  # a shard number of its own: the writer holds the shard's lock
NOW = datetime.now(UTC)
_TENANTS = itertools.count()
_RUN = f"fz{int(NOW.timestamp()) % 10**7}"

# ---------------------------------------------------------------- what devices might send

any_text = st.text(st.characters(exclude_categories=()), max_size=80)  # surrogates and NUL included
nasty_text = st.one_of(
    any_text,
    st.sampled_from(["\u0000", "\ud800", "\udfff", "a\u0000b", "x" * 65, "\U0001f69a", "", " ", "\n"]),
    st.integers(1, 300_000).map(lambda n: "y" * n),
)
extreme_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324, 10**300]),
)
recent = st.integers(0, 600).map(lambda s: (NOW - timedelta(seconds=s)).isoformat().replace("+00:00", "Z"))
times = st.one_of(
    recent,
    recent,
    recent,
    st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001 (Hypothesis takes naive bounds, then adds the zone)
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.timezones(),
    ).map(lambda t: t.isoformat()),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+01:00",
            "2026-01-01T00:00:00",
            "yesterday",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | extreme_numbers | nasty_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4),
    max_leaves=30,
)
deep = st.integers(1, 40).map(lambda n: json.loads("[" * n + "1" + "]" * n))


def _field_values() -> st.SearchStrategy[Any]:
    return st.one_of(json_values, deep, times, nasty_text, extreme_numbers)


@st.composite
def reading(draw: st.DrawFn, kind: str, seq: int) -> dict[str, Any]:
    """A valid reading of ``kind``, then maybe some fields mutated or dropped."""
    body: dict[str, Any] = {"seq": seq, "fix_time": draw(times)}
    if kind == "gps":
        body |= {
            "lat": draw(st.floats(-90, 90)),
            "lon": draw(st.floats(-180, 180)),
            "speed_mps": draw(st.floats(0, 150)),
        }
    elif kind == "temp":
        body |= {"sensor": draw(nasty_text), "celsius": draw(st.floats(-100, 150))}
    else:
        body |= {"door": draw(nasty_text), "open": draw(st.booleans())}
    mutations = draw(st.integers(0, 5))  # most readings stay valid: they must be stored
    for key in draw(st.lists(st.sampled_from([*body, "device_time", "extra"]), max_size=2)) if mutations < 2 else []:
        if draw(st.booleans()):
            body[key] = draw(_field_values())
        else:
            body.pop(key, None)
    return body


@st.composite
def message(draw: st.DrawFn, vehicle: str, seqs: Any) -> tuple[str, bytes]:
    """One message: topic and payload bytes."""
    stream = draw(st.sampled_from(["gps", "temp", "door", "status", "batch", "batch"]))
    envelope: dict[str, Any] = {"v": 1, "vehicle": vehicle}
    if draw(st.integers(0, 9)) == 0:
        envelope[draw(st.sampled_from(["v", "vehicle", "receipt"]))] = draw(_field_values())
    if stream == "status":
        body = envelope | {"sent_at": draw(times), "state": draw(nasty_text), "details": draw(json_values | deep)}
    elif stream == "batch":
        kinds = draw(st.lists(st.sampled_from(["gps", "temp", "door"]), min_size=1, max_size=6))
        items: list[Any] = [draw(reading(k, next(seqs))) | {"type": k} for k in kinds]
        if draw(st.booleans()):
            items.append(draw(_field_values()))
        body = envelope | {"readings": items, "receipt": draw(st.booleans())}
    else:
        body = envelope | draw(reading(stream, next(seqs)))
    if draw(st.integers(0, 4)) == 0:  # a seq used again, maybe on another stream or time
        body["seq"] = draw(st.integers(0, 3))
    payload = json.dumps(body, ensure_ascii=draw(st.booleans()))
    data = payload.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8 here
    choice = draw(st.integers(0, 19))
    if choice == 0:
        data = data[: draw(st.integers(0, len(data)))]  # cut short
    elif choice == 1:
        data = draw(st.binary(max_size=200))
    topic = f"fleet/{{tenant}}/{vehicle}/{stream}"
    return topic, data


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    seqs = itertools.count(10)
    vehicles = draw(
        st.lists(st.sampled_from(["van-1", "van-2", "van-3", "v\u00e9h"]), min_size=1, max_size=2, unique=True)
    )
    out = draw(st.lists(st.sampled_from(vehicles).flatmap(lambda v: message(v, seqs)), min_size=1, max_size=8))
    if draw(st.booleans()) and out:
        out.append(out[0])  # a redelivery
    return out


# ---------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def shard(services_settings: Settings) -> Any:
    migrate(services_settings.dsn())
    gateway = GatewayShard(services_settings, FUZZ_SHARD, ("fuzz", "unused"))  # never connects: store() only
    gateway.writer.open()
    try:
        yield gateway
    finally:
        gateway.writer.close()


def _rows(db: Any, sql: str, params: Any) -> list[Any]:
    return list(db.execute(sql, params).fetchall())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(batch=batches())
def test_every_message_is_stored_or_a_dead_letter_with_a_reason(shard: GatewayShard, db: Any, batch: Any) -> None:
    tenant = f"{_RUN}t{next(_TENANTS)}"
    received = [Received(topic.format(tenant=tenant), payload, NOW.timestamp()) for topic, payload in batch]
    committed = shard.store(received, threading.Event())  # raises nothing

    # what the contract makes of each message
    decoded = [decode(m.topic, m.payload, NOW, shard.limits) for m in received]
    held = {(r.vehicle, r.seq, r.fix_time, r.kind) for d in decoded for r in d.readings}
    stored = _rows(
        db,
        " UNION ALL ".join(
            f"SELECT vehicle_id, seq, fix_time, '{kind}' FROM {table} WHERE tenant = %(t)s"
            for table, kind in (("positions", "gps"), ("temperatures", "temp"), ("door_events", "door"))
        ),
        {"t": tenant},
    )
    dead = _rows(db, "SELECT topic, reason, digest FROM dead_letters WHERE topic LIKE %s", (f"fleet/{tenant}/%",))
    reasons = {reason for _, reason, _ in dead}
    event(f"readings stored: {'none' if not stored else 'some'}")
    event(f"reasons: {sorted(reasons)}")
    assert reasons <= set(REASONS), reasons

    # stored readings are readings a message held, each once
    assert len(stored) == len({(v, s) for v, s, _, _ in stored}), "a seq stored twice"
    assert {tuple(r) for r in stored} <= held

    # every message: its readings stored, or it has a dead letter; its rejects have theirs
    stored_keys = {(v, s, t, k) for v, s, t, k in stored}
    topics_dead = {topic for topic, _, _ in dead}
    conflicts_of = {topic.split("/")[2] for topic, reason, _ in dead if reason == "conflict"}
    for m, d in zip(received, decoded, strict=True):
        if d.rejected:
            assert m.topic in topics_dead, (m.topic, m.payload[:200], d.rejected)
        for r in d.readings:  # stored, or its message is a dead letter, or a conflict of its vehicle
            if (r.vehicle, r.seq, r.fix_time, r.kind) not in stored_keys:
                assert m.topic in topics_dead or r.vehicle in conflicts_of, (m.topic, m.payload[:200], r)
    statuses = _rows(db, "SELECT count(*) FROM device_status WHERE tenant = %s", (tenant,))[0][0]
    assert statuses <= sum(len(d.statuses) for d in decoded)

    # the counts add up
    assert sum(r.stored for _, r in committed) == len(stored)
    assert sum(r.dead_letters for _, r in committed) == len(dead)
    if any(reason == "db_refused" for _, reason, _ in dead):
        event("the database refused a message the contract let through")
