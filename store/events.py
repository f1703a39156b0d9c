"""The change log: every alert, stop event, ETA update and vehicle state change takes a ``rev``.

``rev`` comes from the sequence ``event_rev``, taken by every insert or change of a row
in ``alerts``, ``stop_events``, ``eta_updates`` and ``vehicle_state``. Readers (the
deliverer, the API's live stream) tail those tables by ``rev``, so rev order must be
commit order: a reader that has seen rev 105 must never later find a committed rev
100. Every writer therefore takes :data:`EVENT_REV_LOCK` (a transaction-scoped advisory
lock) before its first ``nextval`` and holds it to its commit; the dataflow's sinks and
the API's alert actions are the writers. Each such transaction ends with a NOTIFY on
:data:`EVENTS_CHANNEL`, which wakes the live stream at commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["EVENTS_CHANNEL", "EVENT_REV_LOCK", "LOCK_SQL", "MAX_REV_SQL", "NOTIFY_SQL", "merge_rev_pages"]

EVENT_REV_LOCK = 0x65766E74  # advisory lock id ("evnt"): one change-log writer at a time
EVENTS_CHANNEL = "fleetstream_events"
LOCK_SQL = f"SELECT pg_advisory_xact_lock({EVENT_REV_LOCK})"
NOTIFY_SQL = f"SELECT pg_notify('{EVENTS_CHANNEL}', '')"
# The highest committed rev: writers hold the lock from nextval to commit, so every rev an
# uncommitted transaction holds is above it. One statement, one snapshot.
MAX_REV_SQL = (
    "SELECT GREATEST((SELECT max(rev) FROM alerts), (SELECT max(rev) FROM stop_events), "
    "(SELECT max(rev) FROM eta_updates), (SELECT max(rev) FROM vehicle_state), 0)"
)


def merge_rev_pages(pages: Sequence[Sequence[Mapping[str, Any]]], page_rows: int) -> list[Mapping[str, Any]]:
    """Rev-ordered pages of several tables (each at most ``page_rows``) as one rev-ordered list with no gap.

    A full page may end before rows of another table that come after it; those are cut
    off here and read again next time, so nothing is passed over.
    """
    rows = sorted((row for page in pages for row in page), key=lambda r: r["rev"])
    ends = [page[-1]["rev"] for page in pages if len(page) >= page_rows]
    if ends:
        rows = [r for r in rows if r["rev"] <= min(ends)]
    return rows
