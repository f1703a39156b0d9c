"""Per-vehicle basic state: last fix and reading counts. Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.contract import DoorEvent, GpsFix, Reading, TemperatureReading

__all__ = ["StoredReading", "VehicleState", "VehicleSummary"]


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as committed by the gateway: its place in the shard's commit order."""

    reading: Reading
    h3_cell: int | None
    received_at: datetime  # gateway clock, UTC
    shard: int
    shard_seq: int

    @property
    def key(self) -> str:
        return f"{self.reading.tenant}/{self.reading.vehicle}"


@dataclass(frozen=True, slots=True)
class VehicleSummary:
    """What the store keeps per vehicle (table ``vehicle_state``)."""

    tenant: str
    vehicle: str
    last_fix_time: datetime | None
    lat: float | None
    lon: float | None
    speed_mps: float | None
    h3_cell: int | None
    gps_count: int
    temp_count: int
    door_count: int
    last_celsius: float | None
    open_doors: tuple[str, ...]
    last_received_at: datetime | None
    # filled in by the analytics (pipelines/analytics.py); None / 0 in the basic flow
    motion: str | None = None  # moving, stopped
    plan_version: int | None = None
    next_stop_id: str | None = None
    stops_remaining: int | None = None
    late_readings: int = 0
    corrected_readings: int = 0
    too_late_readings: int = 0
    corrections: int = 0
    max_lateness_s: float = 0.0
    on_duty: bool | None = None  # see VehicleAnalytics.duty_at; None: not known (the basic flow)


@dataclass
class VehicleState:
    """Latest fix by fix time (late readings never move it back) and counts per stream."""

    tenant: str
    vehicle: str
    last_fix: GpsFix | None = None
    h3_cell: int | None = None
    gps_count: int = 0
    temp_count: int = 0
    door_count: int = 0
    last_temp: TemperatureReading | None = None
    doors: dict[str, DoorEvent] = field(default_factory=dict)
    last_received_at: datetime | None = None

    def update(self, item: StoredReading) -> VehicleSummary:
        self.observe(item)
        return self.summary()

    def observe(self, item: StoredReading) -> None:
        """Take one reading (``update`` without building the summary)."""
        r = item.reading
        if isinstance(r, GpsFix):
            self.gps_count += 1
            if self.last_fix is None or r.fix_time >= self.last_fix.fix_time:
                self.last_fix, self.h3_cell = r, item.h3_cell
        elif isinstance(r, TemperatureReading):
            self.temp_count += 1
            if self.last_temp is None or r.fix_time >= self.last_temp.fix_time:
                self.last_temp = r
        else:
            self.door_count += 1
            known = self.doors.get(r.door)
            if known is None or r.fix_time >= known.fix_time:
                self.doors[r.door] = r
        if self.last_received_at is None or item.received_at > self.last_received_at:
            self.last_received_at = item.received_at

    def summary(self) -> VehicleSummary:
        fix = self.last_fix
        return VehicleSummary(
            self.tenant,
            self.vehicle,
            fix.fix_time if fix else None,
            fix.lat if fix else None,
            fix.lon if fix else None,
            fix.speed_mps if fix else None,
            self.h3_cell,
            self.gps_count,
            self.temp_count,
            self.door_count,
            self.last_temp.celsius if self.last_temp else None,
            tuple(sorted(d for d, e in self.doors.items() if e.open)),
            self.last_received_at,
        )
