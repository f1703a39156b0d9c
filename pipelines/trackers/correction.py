"""Late-data correction: checkpoints of a replayable state, its history, a ledger of
what it emitted, and the replay that turns late readings into corrected results.

A ``Corrector`` owns one ``Replayable`` state (the trackers of one vehicle). Rows are
plain tuples sorted by their first item, the row's time in integer microseconds since
1970 UTC; what a row means is the state's business (``Replayable.step``).

Live
    ``process(row)`` checkpoints the state every ``checkpoint_every_s`` of row time,
    appends the row to the history, steps the state and passes what it emitted
    through the ledger, which drops exact repeats.

Late
    A row behind what the state already processed (its ``frontier``) cannot be
    applied. ``defer(row)`` inserts it into the history and marks a correction
    pending from its time; ``correct()`` restores the last checkpoint at or before
    the earliest pending time, replays the history in row-time order (timers firing
    in between, up to the old frontier) and diffs the replayed ledger against what
    was emitted: changed results are re-emitted under the same id, results that no
    longer hold are emitted retracted.

Results
    Anything emitted is a ``Result``. Most results are one thing that changes over
    time (an alert, a stop event): the ledger keeps each under its id and the diff
    compares versions. A *prediction* (an ETA) is one of a series: each has its own
    id, and the ledger keeps only the series' latest under the series key
    (``ledger_key != id``). A correction emits every prediction its replay made from
    the earliest late row on, and retracts the series' current prediction when the
    replay no longer makes it; earlier live predictions stay as they were made.

Checkpoints are pickled once, when taken, into bytes that name the shared immutable
parts (``Replayable.shared()``: the config, the plan) instead of copying them. History,
checkpoints and settled ledger entries older than ``window_s`` behind the frontier are
forgotten (by the checkpoints' ledgers too).

Snapshot
    A pickled ``Corrector`` holds the live state, the ledger, the oldest checkpoint (the one
    a replay of the whole window starts from) and the plan-change rows, but neither the
    history's readings nor the later checkpoints: the store holds every reading, and a
    replay rebuilds checkpoints as it goes. Unpickled, the readings from the oldest
    checkpoint to the frontier are a *gap*: the first replay that needs them asks
    ``loader(from_us, to_us)`` for them (the rows this corrector had taken in, as they were)
    and merges them in. Until then a checkpoint of the live state, taken on unpickling, serves
    replays of rows not behind it. Without a loader a row behind that checkpoint cannot be
    replayed: ``defer`` drops it, as it does a row older than the oldest checkpoint.
"""

from __future__ import annotations

import io
import pickle
from bisect import bisect_left, bisect_right, insort_right
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

__all__ = ["Corrector", "HistoryLoader", "Replayable", "Result", "Row", "at_us", "us"]

Row = tuple[Any, ...]  # (time in µs since 1970 UTC, ...)
# the history rows (not plan changes) a snapshot left out, with times in [from_us, to_us]
HistoryLoader = Callable[[int, int], list[Row]]
_row_time = itemgetter(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
GENESIS_US = -(2**62)  # before any row


def us(t: datetime) -> int:
    """Integer microseconds since 1970 UTC."""
    return (t - _EPOCH) // _MICROSECOND


def at_us(value: int) -> datetime:
    """The UTC time ``value`` microseconds after 1970."""
    return _EPOCH + timedelta(microseconds=value)


class Result(Protocol):
    """What a replayable state emits: immutable, with a deterministic id."""

    @property
    def id(self) -> str: ...

    @property
    def ledger_key(self) -> str:
        """Where the ledger keeps it: its id, or (a prediction) its series."""
        ...

    @property
    def is_retracted(self) -> bool: ...

    @property
    def time(self) -> datetime:
        """When it last changed, in event time (UTC)."""
        ...

    @property
    def settled(self) -> bool:
        """Whether it may be forgotten once older than the window (an open alert never is)."""
        ...

    def retract(self) -> Self: ...


R = TypeVar("R", bound=Result)


class Replayable(Protocol[R]):
    """A state the corrector checkpoints and replays. ``time`` is its frontier: the
    latest row time applied or timer fired (None before the first)."""

    time: datetime | None

    def step(self, row: Row, *context: Any) -> list[R]:
        """Fire the timers due by the row's time, then apply the row (``context``: what
        ``Corrector.process`` was given with it live; nothing in a replay)."""
        ...

    def advance(self, t: datetime) -> list[R]:
        """Fire, in order, every timer due at or before ``t``."""
        ...

    def shared(self) -> dict[str, Any]:
        """Immutable parts by name, which checkpoints refer to instead of copying."""
        ...

    def kept(self, rows: list[Row]) -> list[Row]:
        """The ``rows`` a snapshot keeps (plan changes: the store does not hold them), in order."""
        ...


S = TypeVar("S", bound=Replayable[Any])


class _Checkpoint(NamedTuple):
    us: int  # the state before processing the history rows at or after this time
    shared: dict[str, Any]  # the immutable parts the blob names
    blob: bytes  # the pickled state
    ledger: dict[str, Any]  # what had been emitted; results are immutable, shared with the live ledger


class _SharingPickler(pickle.Pickler):
    """Writes shared immutable objects (config, plan parts) as names, not copies."""

    def __init__(self, file: io.BytesIO, shared: dict[str, Any]) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self._names = {id(obj): name for name, obj in shared.items() if obj is not None}

    def persistent_id(self, obj: Any) -> str | None:
        return self._names.get(id(obj))


class _SharingUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, shared: dict[str, Any]) -> None:
        super().__init__(file)
        self._shared = shared

    def persistent_load(self, pid: Any) -> Any:
        return self._shared[pid]


def _checkpoint_time(cp: _Checkpoint) -> int:
    return cp.us


class Corrector(Generic[S, R]):
    """Checkpoints, history and ledger of one replayable state; see the module docstring."""

    def __init__(self, state: S, checkpoint_every_s: float, window_s: float) -> None:
        self.state = state
        self._checkpoint_us = round(checkpoint_every_s * 1e6)
        self._window_us = round(window_s * 1e6)
        self._history: list[Row] = []
        self._checkpoints = [self._checkpoint(GENESIS_US, state, {})]
        self._ledger: dict[str, R] = {}  # ledger key -> last version emitted
        self.pending_us: int | None = None  # earliest row time a correction must replay from
        # unpickled: (from_us, to_us, kept rows) of the history left in the store, until loaded
        self._gap: tuple[int, int, list[Row]] | None = None
        self.loader: HistoryLoader | None = None  # set by the owner after unpickling
        self.unreplayed = 0  # corrections dropped: pending in a snapshot resumed without a loader

    def __getstate__(self) -> dict[str, Any]:
        """The snapshot: the live state, its ledger, the oldest checkpoint and the kept rows
        from it on (see the module docstring); not the rest of the history or checkpoints."""
        base = self._checkpoints[0]
        gap_from = base.us
        gap_to = self._history[-1][0] if self._history else GENESIS_US
        kept = self.state.kept(self._history)
        if self._gap is not None:  # never loaded since the last restore: still in the store
            gap_to = max(gap_to, self._gap[1])
            kept = sorted([*(r for r in self._gap[2] if r[0] >= gap_from), *kept], key=_row_time)
        return {
            "state": self.state,
            "checkpoint_us": self._checkpoint_us,
            "window_us": self._window_us,
            "base": base,
            "ledger": self._ledger,
            "pending_us": self.pending_us,
            "gap": (gap_from, gap_to, kept) if self._history or self._gap is not None else None,
        }

    def __setstate__(self, snap: dict[str, Any]) -> None:
        if "base" not in snap:  # pickled whole, before snapshots left the history out
            self.__dict__.update(snap)
            self._gap, self.loader, self.unreplayed = None, None, 0
            return
        self.state = snap["state"]
        self._checkpoint_us, self._window_us = snap["checkpoint_us"], snap["window_us"]
        self._ledger = snap["ledger"]
        self.pending_us = snap["pending_us"]
        self._gap = snap["gap"]
        self.loader = None
        self.unreplayed = 0
        self._history = []
        self._checkpoints = [snap["base"]]
        if self._gap is not None:
            # rows taken in from now on are not behind this one (or they load the gap first)
            frontier = self.state.time
            at = us(frontier) if frontier is not None else self._gap[1]
            self._checkpoints.append(self._checkpoint(max(at, self._gap[1]), self.state, self._ledger))

    # ---------------------------------------------------------------- verbs

    def process(self, row: Row, *context: Any) -> list[R]:
        """Apply ``row`` to the live state (it is not behind the frontier); what changed.
        ``context`` goes to ``step`` with it (e.g. the reading the row encodes, when at hand)."""
        self._maybe_checkpoint(row[0], self.state, self._ledger)
        self._history.append(row)
        out = self._emit(self.state.step(row, *context), self._ledger)
        self._prune()
        return out

    def behind(self, row: Row) -> bool:
        """Whether ``row`` is behind the frontier, so it needs a replay."""
        frontier = self.state.time
        return frontier is not None and row[0] < us(frontier)

    def defer(self, row: Row) -> bool:
        """Keep ``row`` for the next ``correct()``; False (and dropped) when it is older than
        the oldest checkpoint, so no replay can take it."""
        if row[0] < self._checkpoints[0].us:
            return False
        if self._gap is not None and row[0] < self._checkpoints[1].us and not self._load():
            return False  # behind the restore, and the store's readings are out of reach
        insort_right(self._history, row, key=_row_time)
        if self.pending_us is None or row[0] < self.pending_us:
            self.pending_us = row[0]
        return True

    def advance(self, t: datetime) -> list[R]:
        """Fire the live state's timers due by ``t``; what changed."""
        return self._emit(self.state.advance(t), self._ledger)

    def correct(self) -> tuple[list[R], int]:
        """Restore the checkpoint before the earliest pending row, replay, emit the differences.
        Returns those and how many history rows the replay re-processed."""
        assert self.pending_us is not None
        pending_us = self.pending_us
        if self._gap is not None and pending_us < self._checkpoints[1].us and not self._load():
            # pending when snapshotted, and the store's readings are out of reach
            self.pending_us = None
            self.unreplayed += 1
            return [], 0
        cps = self._checkpoints
        i = max(0, bisect_right(cps, pending_us, key=_checkpoint_time) - 1)
        cp = cps[i]
        del cps[i + 1 :]
        frontier = self.state.time
        state, ledger = self._restore(cp)
        touched: set[str] = set()
        predictions: dict[str, R] = {}  # every prediction the replay made, by id
        start = bisect_left(self._history, cp.us, key=_row_time)
        for k in range(start, len(self._history)):
            row = self._history[k]
            if k > start:
                self._maybe_checkpoint(row[0], state, ledger)
            _collect(predictions, self._emit(state.step(row), ledger, touched))
        if frontier is not None:
            _collect(predictions, self._emit(state.advance(frontier), ledger, touched))

        out: list[R] = []
        live = self._ledger
        for key, old in live.items():
            if key not in ledger:  # emitted since the checkpoint, no longer holds
                if not old.is_retracted:
                    old = old.retract()
                    out.append(old)
                ledger[key] = old
            elif old != ledger[key]:  # holds, with different content
                new = ledger[key]
                if not _is_prediction(new):
                    out.append(new)
                elif (
                    _is_prediction(old)
                    and old.id not in predictions
                    and not old.is_retracted
                    and us(old.time) >= pending_us
                ):  # made after the late data: the replay no longer makes it
                    out.append(old.retract())
        for key in [k for k in ledger if k not in live]:
            if key not in touched:
                del ledger[key]  # settled long ago and already pruned from the live ledger
            elif not _is_prediction(ledger[key]):
                out.append(ledger[key])  # new
        # every prediction the replay made from the earliest late row on (those before it are
        # the ones made live); an unchanged one rewrites its row to no effect
        out += [p for p in predictions.values() if us(p.time) >= pending_us and live.get(p.ledger_key) != p]
        self.state, self._ledger = state, ledger
        self.pending_us = None
        self._prune()
        return out, len(self._history) - start

    # ---------------------------------------------------------------- views

    def emitted(self) -> list[R]:
        """The latest version of every result still within the window, as emitted."""
        return list(self._ledger.values())

    def horizon(self) -> datetime | None:
        """Event time from which ``emitted()`` holds every result the state emitted (open
        alerts: all of them); None before the first row."""
        frontier = self.state.time
        if frontier is None:
            return None
        return at_us(us(frontier) - self._window_us)

    @property
    def history_size(self) -> int:
        return len(self._history)

    # ---------------------------------------------------------------- internals

    def _load(self) -> bool:
        """Merge the history a snapshot left in the store back in (False: no loader). Only the
        oldest checkpoint stays: the ones after it, taken with the gap missing, are replaced by
        those the next replay takes."""
        assert self._gap is not None
        if self.loader is None:
            return False
        gap_from, gap_to, kept = self._gap
        rows = [*self.loader(gap_from, gap_to), *kept]
        rows.sort(key=_row_time)  # stable: at equal times the store's rows before the kept ones
        self._history = [*rows, *self._history]  # the rows taken in since are not behind them
        del self._checkpoints[1:]
        self._gap = None
        return True

    def _checkpoint(self, at: int, state: S, ledger: dict[str, R]) -> _Checkpoint:
        shared = state.shared()
        buffer = io.BytesIO()
        _SharingPickler(buffer, shared).dump(state)
        return _Checkpoint(at, shared, buffer.getvalue(), dict(ledger))

    def _restore(self, cp: _Checkpoint) -> tuple[S, dict[str, R]]:
        state: S = _SharingUnpickler(io.BytesIO(cp.blob), cp.shared).load()
        return state, dict(cp.ledger)

    def _maybe_checkpoint(self, at: int, state: S, ledger: dict[str, R]) -> None:
        if at - self._checkpoints[-1].us >= self._checkpoint_us:
            self._checkpoints.append(self._checkpoint(at, state, ledger))

    @staticmethod
    def _emit(results: list[R], ledger: dict[str, R], touched: set[str] | None = None) -> list[R]:
        out: list[R] = []
        for result in results:
            key = result.ledger_key
            if ledger.get(key) != result:
                ledger[key] = result
                out.append(result)
                if touched is not None:
                    touched.add(key)
        return out

    def _prune(self) -> None:
        """Forget checkpoints, history and settled ledger entries older than the window."""
        frontier = self.state.time
        cps = self._checkpoints
        if frontier is None or len(cps) < 2:
            return
        horizon_us = us(frontier) - self._window_us
        if cps[1].us > horizon_us:
            return
        i = 1
        while i + 1 < len(cps) and cps[i + 1].us <= horizon_us:
            i += 1
        del cps[:i]
        if self._gap is not None:
            self._gap = None  # its rows were behind the checkpoint just dropped: no replay needs them
        del self._history[: bisect_left(self._history, cps[0].us, key=_row_time)]
        horizon = at_us(horizon_us)
        live = self._ledger
        for key in [k for k, r in live.items() if r.settled and r.time < horizon]:
            del live[key]
        # nor do the checkpoints' ledgers keep them: a replay from a checkpoint does not make again
        # what the trackers had already emitted by then (they emit on changes); if one did, it
        # would be re-emitted as new, an unchanged row rewritten
        for cp in cps:
            for key in [k for k in cp.ledger if k not in live]:
                del cp.ledger[key]


def _is_prediction(result: Result) -> bool:
    return result.ledger_key != result.id


def _collect(predictions: dict[str, R], results: list[R]) -> None:
    for result in results:
        if _is_prediction(result):
            predictions[result.id] = result
