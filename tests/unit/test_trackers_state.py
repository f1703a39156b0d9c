"""Vehicle states pickled by the engine's previous version still load (its snapshots outlive
an upgrade): fields added since take their defaults, inserted ones do not shift the others."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from core.plan import Stop
from pipelines.trackers.door import _OpenDoor
from pipelines.trackers.geofence import _Visit
from pipelines.trackers.quality import CheckedFix

T = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def _reduce(cls: type, slots: dict[str, object]) -> bytes:
    return pickle.dumps(_Old(cls, slots))


class _Old:
    """Pickles as ``cls`` with the default slots state of an older layout."""

    def __init__(self, cls: type, slots: dict[str, object]) -> None:
        self.cls, self.slots = cls, slots

    def __reduce__(self) -> tuple[object, ...]:
        return _blank, (self.cls,), (None, self.slots)


def _blank(cls: type) -> object:
    return object.__new__(cls)


def test_a_fix_pickled_before_the_derived_speed_and_cadence_loads_with_defaults() -> None:
    old = {"time": T, "lat": 60.0, "lon": 24.0, "speed_mps": 3.0, "accuracy_m": 5.0, "h3_cell": None, "flag": None}
    fix = pickle.loads(_reduce(CheckedFix, old))
    assert (fix.speed_mps, fix.heading_deg, fix.speed_derived, fix.silence_s) == (3.0, None, False, 60.0)
    assert fix.usable


def test_an_open_visit_and_door_of_an_older_layout_load_by_name() -> None:
    stop = Stop("s1", 60.0, 24.0, 50.0)
    old_visit = {"stop": stop, "plan_version": 2, "number": 1, "arrived_at": T, "out_since": None}
    visit = pickle.loads(_reduce(_Visit, old_visit))
    assert (visit.plan_version, visit.number, visit.out_since, visit.last_in) == (2, 1, None, None)
    assert visit.seen_in() == (T, 60.0, 24.0, 60.0)  # no last fix inside known: the stop at its arrival
    old_door = {"since": T, "refrigerated": True, "h3_cell": 7, "away": None, "too_long": None}
    door = pickle.loads(_reduce(_OpenDoor, old_door))
    assert (door.since, door.refrigerated, door.before) == (T, True, None)
