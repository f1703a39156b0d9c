"""The fleet clock: "now" on the event-time axis, per tenant, estimated from the data.

Per-vehicle timers (dwell, drift, offline, the reorder buffer's flush) must fire on
event time even when a vehicle sends nothing more. The wall clock is the wrong axis
for that whenever the data is not live: a replay after a crash, a backlog drained
after an outage, or a simulated fleet running ten times faster than real time would
all see every timer fire at once. So each tenant has a clock driven by what its
fleet sends:

* Each source partition (gateway shard) has a watermark: the newest fix time it has
  delivered for the tenant, each fix time capped at its own receive time (a device
  clock running ahead cannot drag the fleet forward).
* The clock is the lowest of those watermarks, so a shard whose rows the dataflow
  reads later does not see its vehicles' timers fire before their data.
* When no data has arrived for ``idle_grace_s`` of wall time, the clock moves on with
  the wall clock from there: a fleet that went silent still sees its timers fire.

For a live fleet this is the server time less the network delay. Pure: the wall time
is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["FleetClock", "WorkerClock"]


@dataclass(slots=True)
class _Tenant:
    marks: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)  # shard -> (fix-time mark, wall)
    last_wall: datetime | None = None  # wall time of the newest observation
    floor: datetime | None = None  # the latest "now" handed out: the clock never runs backwards


class FleetClock:
    """Event-time "now" per tenant (UTC)."""

    def __init__(self, idle_grace_s: float = 5.0) -> None:
        self.idle_grace = timedelta(seconds=idle_grace_s)
        self._tenants: dict[str, _Tenant] = {}

    def observe(self, tenant: str, shard: int, fix_time: datetime, received_at: datetime, wall: datetime) -> None:
        """A reading of ``tenant`` read from ``shard`` at wall time ``wall``."""
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        mark = min(fix_time, received_at)
        known = t.marks.get(shard)
        t.marks[shard] = (mark if known is None or mark > known[0] else known[0], wall)
        t.last_wall = wall

    def now(self, tenant: str, wall: datetime) -> datetime | None:
        """The tenant's event-time now at wall time ``wall``; None before its first reading.

        The lowest watermark of the shards that delivered within ``idle_grace_s`` (a shard
        gone quiet does not hold the others back); when none did, the highest watermark
        plus the wall time since ``idle_grace_s`` after the last reading. Never decreases.
        """
        t = self._tenants.get(tenant)
        if t is None or t.last_wall is None:
            return None
        fresh = [mark for mark, seen in t.marks.values() if wall - seen <= self.idle_grace]
        if fresh:
            now = min(fresh)
        else:
            now = max(mark for mark, _ in t.marks.values()) + (wall - t.last_wall - self.idle_grace)
        if t.floor is not None and now < t.floor:
            now = t.floor
        t.floor = now
        return now


@dataclass(slots=True)
class _Seen:
    stamp: datetime  # the newest fleet-clock stamp this worker received for the tenant
    wall: datetime  # the wall time it was received
    floor: datetime  # the latest "now" handed out
    rate: float = 1.0  # fleet-clock seconds per wall second, lately (a replayed or simulated fleet runs faster)
    since: tuple[datetime, datetime] | None = None  # (stamp, wall) where the current rate window began


_RATE_WINDOW_S = 5.0  # wall seconds over which a worker measures how fast its fleet clock runs


class WorkerClock:
    """The fleet clock as one dataflow worker sees it, for timers of vehicles with no new data.

    One ``FleetClock`` stamps every item in stream order on the worker that reads the
    source, before the items are keyed; in a cluster of several processes a vehicle's
    logic may run on another worker, which never sees that clock. So each worker keeps,
    per tenant, the newest stamp it received with the items routed to it, and after
    ``idle_grace_s`` of wall time with none it moves on with the wall clock from there,
    the rule ``FleetClock`` applies to a fleet gone silent. With one process every item
    passes through it, so it trails the stamping clock by at most one input batch. It also
    measures how fast the clock runs against the wall (``seconds_to``), so a vehicle sleeps
    until its next timer is due instead of waking every tick.
    Never decreases. Pure: the wall time is passed in.
    """

    def __init__(self, idle_grace_s: float = 5.0) -> None:
        self.idle_grace = timedelta(seconds=idle_grace_s)
        self._tenants: dict[str, _Seen] = {}

    def seen(self, tenant: str, stamp: datetime, wall: datetime) -> None:
        """An item of ``tenant`` stamped ``stamp`` reached this worker at wall time ``wall``."""
        known = self._tenants.get(tenant)
        if known is None:
            self._tenants[tenant] = _Seen(stamp, wall, stamp, since=(stamp, wall))
            return
        if stamp >= known.stamp:
            known.stamp, known.wall = stamp, wall
        start = known.since
        if start is None:
            known.since = (stamp, wall)
        elif (span := (wall - start[1]).total_seconds()) >= _RATE_WINDOW_S:
            known.rate = max(1.0, (known.stamp - start[0]).total_seconds() / span)
            known.since = (known.stamp, wall)

    def seconds_to(self, tenant: str, due: datetime, wall: datetime) -> float | None:
        """Wall seconds until the tenant's clock on this worker reaches ``due`` at its recent
        rate (never slower than real time); None before the tenant's first item."""
        now = self.now(tenant, wall)
        if now is None:
            return None
        known = self._tenants[tenant]
        return (due - now).total_seconds() / known.rate

    def now(self, tenant: str, wall: datetime) -> datetime | None:
        """The tenant's event-time now on this worker at wall time ``wall``; None before its first item."""
        known = self._tenants.get(tenant)
        if known is None:
            return None
        idle = wall - known.wall - self.idle_grace
        now = known.stamp + idle if idle > timedelta(0) else known.stamp
        if now < known.floor:
            return known.floor
        known.floor = now
        return now
