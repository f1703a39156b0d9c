"""Cold chain: temperature excursions, and failed sensors told apart from them.

Per probe (``TemperatureReading.sensor``), in fix-time order:

Sensor faults (``sensor_fault``, subject ``<sensor>/<reason>``; the reading is not
used for excursions):

- ``power_on_value``: exactly ``sensor_power_on_c`` (85 °C, what a DS18B20 reports
  before its first conversion); resolved by the next plausible reading.
- ``impossible_jump``: more than ``sensor_max_jump_c`` away from the last plausible
  reading, faster than that per ``sensor_jump_window_s`` (the allowed change grows
  with the gap: ``max_jump * max(1, dt / window)``); resolved by the next plausible
  reading, or accepted as the new level after ``sensor_fault_clear_readings``
  consecutive readings consistent with each other.
- ``stuck``: the exact same value (±0.001 °C) for ``sensor_stuck_s``; starts at the
  first reading of that value, resolved when the value changes. While stuck the
  probe's readings are not used for excursions.
- ``missing``: no reading from the probe for ``sensor_missing_s`` while the vehicle
  keeps sending other data (``observe``); a silent vehicle is ``offline`` instead: of a
  silence of the whole vehicle (longer than its cadence's ``silence_s``, ``hear``) only
  that much counts. Starts at the probe's last reading, resolved by its next one.

Excursion (``temp_excursion``, subject ``<sensor>``): plausible readings outside the
load's range continuously for ``excursion_min_s`` (confirmed by ``on_timer`` too, while
the vehicle is heard within its cadence: a silence alone confirms nothing);
starts at the first reading outside, resolved at the first one back inside by at least
``excursion_clear_c`` (hysteresis: hovering at the limit is one excursion). Details
carry the side (``high``/``low``) and the peak value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.contract import TemperatureReading
from core.thresholds import AnalyticsConfig
from pipelines.trackers.events import Alert, new_alert
from pipelines.trackers.state import restore_fields

__all__ = ["ColdChainTracker"]

_SAME_C = 0.001


@dataclass(slots=True)
class _Probe:
    last_time: datetime  # last reading of any kind (for "missing")
    good_time: datetime | None = None  # last plausible reading
    good_c: float | None = None
    same_since: datetime | None = None  # first reading of the current exact value
    same_c: float | None = None
    suspect_c: float | None = None  # last implausible jump value
    suspect_run: int = 0
    out_since: datetime | None = None  # first plausible reading outside the range
    out_cell: int | None = None
    side: str = ""
    peak_c: float = 0.0
    limit_c: float | None = None  # the limit crossed (°C), and the load's range, when it went out
    range_c: tuple[float, float] | None = None
    excursion: Alert | None = None
    faults: dict[str, Alert] = field(default_factory=dict)  # reason -> open sensor_fault
    quiet_from: datetime | None = None  # its silence counts from here (last_time, moved past vehicle silences)

    def __setstate__(self, state: Any) -> None:  # states pickled before ``quiet_from`` existed
        restore_fields(self, state)


class ColdChainTracker:
    """Temperature probes of one vehicle."""

    # class defaults: state pickled before they existed still loads
    heard: datetime | None = None
    silence_s: float = 60.0

    def __init__(self, tenant: str, vehicle: str, config: AnalyticsConfig) -> None:
        self.tenant, self.vehicle, self.config = tenant, vehicle, config
        self.probes: dict[str, _Probe] = {}
        self.heard = None  # the vehicle's last reading of any kind (fix time)
        self.silence_s = config.silence_min_s  # the longest gap after it still counted (its cadence)

    def hear(self, t: datetime, silence_s: float | None = None) -> None:
        """The vehicle sent something at fix time ``t`` (call first, for every reading;
        ``silence_s``: its cadence, from a fix). Of a silence before it only ``silence_s``
        counts towards a probe's ``missing``."""
        heard = self.heard
        if heard is not None and t > heard:
            unheard = (t - heard).total_seconds() - self.silence_s
            if unheard > 0:
                shift = timedelta(seconds=unheard)
                for probe in self.probes.values():
                    probe.quiet_from = min(t, (probe.quiet_from or probe.last_time) + shift)
        if heard is None or t > heard:
            self.heard = t
        if silence_s is not None:
            self.silence_s = silence_s

    def update(
        self, reading: TemperatureReading, temp_range: tuple[float, float] | None, h3_cell: int | None
    ) -> list[Alert]:
        """Feed one reading; ``temp_range`` is the load's (low, high) °C, None = not refrigerated."""
        cfg = self.config
        t, c = reading.fix_time, reading.celsius
        probe = self.probes.get(reading.sensor)
        if probe is None:
            probe = self.probes[reading.sensor] = _Probe(t)
        out: list[Alert] = []
        probe.last_time, probe.quiet_from = t, None
        out += self._resolve(probe, "missing", t)

        reason = None
        if cfg.sensor_power_on_c is not None and abs(c - cfg.sensor_power_on_c) < _SAME_C:
            reason = "power_on_value"
        elif probe.good_c is not None and probe.good_time is not None:
            dt = max(0.0, (t - probe.good_time).total_seconds())
            if abs(c - probe.good_c) > cfg.sensor_max_jump_c * max(1.0, dt / cfg.sensor_jump_window_s):
                reason = "impossible_jump"
        if reason == "impossible_jump":
            consistent = probe.suspect_c is not None and abs(c - probe.suspect_c) <= cfg.sensor_max_jump_c
            probe.suspect_run = probe.suspect_run + 1 if consistent else 1
            probe.suspect_c = c
            if probe.suspect_run >= cfg.sensor_fault_clear_readings:
                reason = None  # a consistent new level: the probe is fine, the jump was real
        if reason is not None:
            out += self._open_fault(probe, reading.sensor, reason, t, h3_cell, {"celsius": c})
            return out

        probe.suspect_c, probe.suspect_run = None, 0
        out += self._resolve(probe, "power_on_value", t)
        out += self._resolve(probe, "impossible_jump", t)
        probe.good_time, probe.good_c = t, c
        if probe.same_c is not None and abs(c - probe.same_c) < _SAME_C:
            assert probe.same_since is not None
            if t - probe.same_since >= timedelta(seconds=cfg.sensor_stuck_s):
                out += self._open_fault(probe, reading.sensor, "stuck", probe.same_since, h3_cell, {"celsius": c})
        else:
            probe.same_since, probe.same_c = t, c
            out += self._resolve(probe, "stuck", t)
        if "stuck" in probe.faults or temp_range is None:
            return out

        low, high = temp_range
        if low <= c <= high:
            if probe.excursion is not None:
                # hysteresis: an open excursion ends only well inside the range, so a load
                # hovering at its limit raises one alert, not one per crossing
                margin = min(cfg.excursion_clear_c, (high - low) / 2)
                if not low + margin <= c <= high - margin:
                    return out
                out.append(probe.excursion.resolve(t, peak_c=probe.peak_c))
                probe.excursion = None
            probe.out_since = None
            return out
        side = "high" if c > high else "low"
        if probe.out_since is None or side != probe.side:
            probe.out_since, probe.out_cell, probe.side, probe.peak_c = t, h3_cell, side, c
            probe.limit_c, probe.range_c = (high if side == "high" else low), temp_range
        probe.peak_c = max(probe.peak_c, c) if side == "high" else min(probe.peak_c, c)
        out += self._check_excursion(reading.sensor, probe, t)
        return out

    def observe(self, now: datetime, h3_cell: int | None) -> list[Alert]:
        """The vehicle sent something at fix time ``now``: flag probes that went silent."""
        out: list[Alert] = []
        limit = self.config.sensor_missing_s
        for sensor, probe in self.probes.items():
            quiet = probe.quiet_from or probe.last_time
            if "missing" not in probe.faults and now - quiet >= timedelta(seconds=limit):
                out += self._open_fault(probe, sensor, "missing", probe.last_time, h3_cell, {})
        return out

    def on_timer(self, now: datetime) -> list[Alert]:
        """Open excursions whose duration has passed with no reading back in range (while heard)."""
        out: list[Alert] = []
        for sensor, probe in self.probes.items():
            due = self._due(probe)
            if due is not None and now >= due:
                out += self._check_excursion(sensor, probe, now)
        return out

    def next_timer(self) -> datetime | None:
        dues = [d for d in (self._due(p) for p in self.probes.values()) if d is not None]
        return min(dues) if dues else None

    def _due(self, probe: _Probe) -> datetime | None:
        """When an excursion is confirmed with no further reading: ``excursion_min_s`` after it
        began, if the vehicle was heard about a reporting interval before (``silence_s /
        silence_factor``: one a report overdue may be in a silence), else the next reading decides."""
        if probe.out_since is None or probe.excursion is not None:
            return None
        due = probe.out_since + timedelta(seconds=self.config.excursion_min_s)
        if self.heard is not None and due > self.heard + timedelta(seconds=self.silence_s / self.config.silence_factor):
            return None
        return due

    def _check_excursion(self, sensor: str, probe: _Probe, now: datetime) -> list[Alert]:
        assert probe.out_since is not None
        if probe.excursion is not None or now - probe.out_since < timedelta(seconds=self.config.excursion_min_s):
            return []
        # the values that triggered it: the latest reading, the worst so far, the limit crossed
        details: dict[str, object] = {
            "sensor": sensor,
            "side": probe.side,
            "celsius": probe.good_c,
            "peak_c": probe.peak_c,
            "limit_c": probe.limit_c,
            "range_c": list(probe.range_c) if probe.range_c is not None else None,
            "confirmed_after_s": (now - probe.out_since).total_seconds(),
        }
        probe.excursion = new_alert(
            "temp_excursion",
            self.tenant,
            self.vehicle,
            probe.out_since,
            subject=sensor,
            h3_cell=probe.out_cell,
            details=details,
        )
        return [probe.excursion]

    def _open_fault(
        self, probe: _Probe, sensor: str, reason: str, start: datetime, h3_cell: int | None, details: dict[str, object]
    ) -> list[Alert]:
        if reason in probe.faults:
            return []
        alert = new_alert(
            "sensor_fault",
            self.tenant,
            self.vehicle,
            start,
            subject=f"{sensor}/{reason}",
            h3_cell=h3_cell,
            details={"sensor": sensor, "reason": reason, **details},
        )
        probe.faults[reason] = alert
        return [alert]

    def _resolve(self, probe: _Probe, reason: str, end: datetime) -> list[Alert]:
        alert = probe.faults.pop(reason, None)
        return [] if alert is None else [alert.resolve(end)]
