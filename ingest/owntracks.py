"""The OwnTracks front end: messages on ``owntracks/<user>/<device>[/<kind>]``, through the gateway.

The gateway shards subscribe to ``owntracks/#`` beside the contract's topics (same shared
subscription group, same commit-before-PUBACK) and hand each batch to ``OwnTracksFrontEnd.prepare``:
contract messages pass through unchanged, OwnTracks messages are translated
(``ingest/protocols/owntracks.py``) for the vehicle their user is provisioned for. The broker's ACL
lets each OwnTracks account publish only under its own ``owntracks/<user>/``; a user that is not
provisioned is refused (a dead letter ``unknown_device``, counted in ``tracker_refusals``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from core.contract import ContractError, Limits
from ingest.batching import Prepared, Received, prepare
from ingest.frontend import Frame, TrackerDirectory, prepare_frames
from ingest.protocols import owntracks

__all__ = ["TOPIC_FILTER", "OwnTracksFrontEnd"]

TOPIC_FILTER = f"{owntracks.ROOT}/#"
_PREFIX = f"{owntracks.ROOT}/"
_FLUSH_EVERY_S = 5.0


class OwnTracksFrontEnd:
    """Prepares a gateway batch that may hold OwnTracks messages (looks their users up)."""

    def __init__(self, directory: TrackerDirectory, limits: Limits, h3_resolution: int, raw_cap: int) -> None:
        self.directory, self.limits, self.h3_resolution, self.raw_cap = directory, limits, h3_resolution, raw_cap
        self._flushed = time.monotonic()

    def prepare(self, messages: list[Received]) -> Prepared:
        """Rows for ``messages``; raises ``psycopg.OperationalError`` if a user cannot be looked up."""
        if not any(m.topic.startswith(_PREFIX) for m in messages):
            return prepare(messages, self.limits, self.h3_resolution, self.raw_cap)
        frames = [self._frame(m) if m.topic.startswith(_PREFIX) else Frame.passthrough(m) for m in messages]
        if time.monotonic() - self._flushed > _FLUSH_EVERY_S:
            self._flushed = time.monotonic()
            self.directory.flush_refusals()
        return prepare_frames(frames, self.limits, self.h3_resolution, self.raw_cap)[0]

    def _frame(self, m: Received) -> Frame:
        at = datetime.fromtimestamp(m.received_ts, UTC)
        try:
            if len(m.payload) > self.limits.max_payload_bytes:
                raise ContractError("oversized", f"{len(m.payload)} bytes > {self.limits.max_payload_bytes}")
            message = owntracks.parse_message(m.topic, m.payload)
            tracker = self.directory.find("owntracks", message.user)
            if tracker is None:
                self.directory.refuse("owntracks", message.user)
                raise ContractError("unknown_device", f"OwnTracks user {message.user[:64]!r} is not provisioned")
            return Frame.of(m.topic, m.payload, m.received_ts, owntracks.parts(message, tracker, at))
        except ContractError as exc:
            return Frame.refused(m.topic, m.payload, m.received_ts, exc.reason, exc.detail)
