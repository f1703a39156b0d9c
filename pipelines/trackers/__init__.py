"""Pure per-vehicle analytics: small state objects fed readings in fix-time order.

No I/O, no clock reads, no Bytewax: every tracker has ``update(...)`` returning
events, ``on_timer(now)`` and ``next_timer()``; time always comes from the readings
or is passed in. ``VehicleAnalytics`` (``vehicle.py``) chains them behind a reorder
buffer and corrects its results when late data arrives.
"""

from core.plan import Plan, PlanError, Stop
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, StopEvent
from pipelines.trackers.vehicle import LatenessStats, VehicleAnalytics

__all__ = ["AnalyticsConfig", "Alert", "LatenessStats", "Plan", "PlanError", "Stop", "StopEvent", "VehicleAnalytics"]
