"""Rush-hour congestion of the simulated fleet: by local hour, road class and place."""

from __future__ import annotations

import pytest

from sim.simulator import CENTRE, congestion_factor


def test_free_at_night_slowest_in_the_rush_on_main_roads_in_the_centre() -> None:
    assert congestion_factor(3.0, *CENTRE, 30.0) == pytest.approx(1.0, abs=1e-4)
    assert congestion_factor(8.0, *CENTRE, 40.0) == pytest.approx(1.0 - (0.15 + 0.15 + 0.25))
    assert congestion_factor(8.0, *CENTRE, 30.0) == pytest.approx(1.0 - (0.15 + 0.25))
    far = (CENTRE[0] + 0.05, CENTRE[1])  # about 5.6 km north: the centre's share has faded
    assert congestion_factor(8.0, *far, 30.0) == pytest.approx(0.85, abs=1e-4)
    assert congestion_factor(16.5, *far, 40.0) == pytest.approx(0.70, abs=1e-4)
    assert congestion_factor(8.0, *far, 30.0) < congestion_factor(9.0, *far, 30.0) < congestion_factor(12.0, *far, 30.0)
