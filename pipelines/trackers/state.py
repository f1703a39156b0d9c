"""Tracker state that outlives a code change.

Vehicle states are pickled into Bytewax snapshots and the late-data checkpoints, and a new
version of the engine resumes from the old version's snapshot. ``dataclass(slots=True)``
pickles its fields as a list in field order and restores them by position, so a field
added later is left unset (an ``AttributeError`` at first use) and one inserted between
would take its neighbour's value. ``restore_fields`` is a ``__setstate__`` for such classes:
it restores by name (from that positional list, given the field order the old version
pickled, or from a dict), and gives the fields the old state lacks their defaults.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from operator import attrgetter
from typing import Any, TypeVar

__all__ = ["fast_getstate", "restore_fields"]

C = TypeVar("C", bound=type)


def fast_getstate(cls: C) -> C:
    """Class decorator (above ``@dataclass(slots=True)``): the same ``__getstate__`` as the
    dataclass's (its field values as a list, in field order), without calling ``fields()``
    for every object pickled (half of a vehicle snapshot's time went there)."""
    names = tuple(f.name for f in fields(cls))
    get = attrgetter(*names)
    if len(names) == 1:

        def one(self: Any) -> list[Any]:
            return [get(self)]

        setattr(cls, "__getstate__", one)  # noqa: B010 (mypy: a method assigned to a class)
    else:

        def many(self: Any) -> list[Any]:
            return list(get(self))

        setattr(cls, "__getstate__", many)  # noqa: B010 (mypy: a method assigned to a class)
    return cls


def restore_fields(obj: Any, state: Any, old_order: tuple[str, ...] = ()) -> None:
    """Set ``obj``'s dataclass fields from a pickled ``state``: a dict by name, slots' default
    ``(dict, slots dict)``, or a list in the current field order (or, with ``old_order`` and its
    length, in that order)."""
    names = [f.name for f in fields(obj)]
    if isinstance(state, dict):
        values = dict(state)
    elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        values = {**(state[0] or {}), **state[1]}  # the default pickling of slots: (dict, slots)
    else:
        order = old_order if old_order and len(state) == len(old_order) else names
        values = dict(zip(order, state, strict=False))
    for f in fields(obj):
        if f.name in values:
            value = values[f.name]
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            raise ValueError(f"{type(obj).__name__}: pickled state has no {f.name}")
        object.__setattr__(obj, f.name, value)
