"""Every threshold of the per-vehicle analytics, in one frozen object.

Units are in the names: ``_s`` seconds, ``_m`` metres, ``_mps`` metres per second,
``_c`` degrees Celsius. Times compared against these are UTC fix times (event time),
or the fleet clock the engine passes in (``offline_after_s``, and the flush half of
``reorder_max_delay_s``), which is event time estimated from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["AnalyticsConfig", "EtaConfig"]


@dataclass(frozen=True)
class AnalyticsConfig:
    """Thresholds with defaults that suit a delivery van reporting a fix every few seconds."""

    # H3 resolution of positions, stop lookups and dwell baselines (same as Settings.h3_resolution).
    cell_resolution: int = 9

    # -- reorder buffer and late-data correction
    reorder_max_delay_s: float = 10.0  # a reading waits at most this long for earlier ones
    correction_window_s: float = (
        3600.0  # late readings this far behind are corrected by replay; older ones are not analysed
    )
    checkpoint_every_s: float = 300.0  # event-time spacing of the state checkpoints a replay starts from

    # -- GPS quality
    max_accuracy_m: float = 100.0  # fixes reporting a worse horizontal accuracy are not used
    max_speed_mps: float = 60.0  # implied speed between fixes above this (plus the allowance) is a jump
    jump_allowance_m: float = 50.0  # position noise tolerated on top of max_speed_mps * dt
    jump_confirm_fixes: int = 3  # this many consecutive, mutually consistent "jumped" fixes are a real relocation
    jitter_radius_m: float = 25.0  # a slow fix this close to the previous one is flagged as parked jitter

    # -- derived speed and heading (devices that send none) and the reporting cadence
    derive_min_span_s: float = 10.0  # speed is derived over at least this many seconds (GPS noise at 1 Hz) ...
    derive_max_span_s: float = 120.0  # ... and at most this many: across a longer gap it is unknown
    derive_noise_m: float = 5.0  # position noise taken off a displacement when the fix reports no accuracy
    silence_min_s: float = 60.0  # a gap between fixes longer than this and than ...
    silence_factor: float = 2.0  # ... this many times the vehicle's usual reporting interval is a silence

    # -- motion (hysteresis: start needs evidence, stop needs a calm window)
    start_speed_mps: float = 2.5  # reported speed that counts as driving ...
    start_confirm_fixes: int = 2  # ... on this many consecutive fixes
    start_distance_m: float = 80.0  # or this far from where the vehicle stopped
    stop_speed_mps: float = 1.0  # reported speed below this counts as standing
    stop_radius_m: float = 50.0  # slow fixes within this of the first one ...
    stop_confirm_s: float = 60.0  # ... for this long make the vehicle stopped

    # -- geofences at planned stops
    arrival_min_inside_s: float = 30.0  # seen inside the stop circle this long (boundary to boundary) = arrival
    departure_min_outside_s: float = 60.0  # continuously outside (circle + margin) this long = departure
    fence_exit_margin_m: float = 20.0  # hysteresis band outside the stop radius

    # -- dwell
    unplanned_dwell_s: float = 600.0  # stopped away from every stop this long -> unplanned_dwell (no baseline)
    long_dwell_s: float = 1800.0  # at a stop this long -> long_dwell (no baseline)
    dwell_baseline_factor: float = 2.0  # with a baseline: threshold = factor * baseline seconds ...
    dwell_min_threshold_s: float = 300.0  # ... but never below this

    # -- route drift
    corridor_resolution: int = 11  # H3 resolution of the route corridor (k = 1: about 110 m each side)
    corridor_k: int = 1  # grid_disk radius around the cells the route passes through
    drift_distance_m: float = 150.0  # off the corridor and further than this from the route = off route
    drift_min_duration_s: float = 60.0  # off route this long -> route_drift
    drift_resolve_s: float = 30.0  # back on route this long -> resolved
    detour_max_offset_m: float = 200.0  # a planned detour stays this close to the straight line to the next stop
    detour_slack_m: float = 100.0  # ... and never gets further than this from its closest approach to it

    # -- cold chain (degrees Celsius)
    temp_range_c: tuple[float, float] | None = None  # load range when the plan gives none; None = not refrigerated
    excursion_min_s: float = 300.0  # outside the range this long -> temp_excursion
    excursion_clear_c: float = 0.5  # an open excursion resolves only this far back inside the range
    sensor_max_jump_c: float = 10.0  # a change larger than this ...
    sensor_jump_window_s: float = 10.0  # ... within this many seconds (scaled for longer gaps) is impossible
    sensor_power_on_c: float | None = 85.0  # the DS18B20 power-on-reset value; None disables the check
    sensor_stuck_s: float = 3600.0  # the exact same value this long -> stuck sensor
    sensor_missing_s: float = 600.0  # a probe silent this long while the vehicle still reports -> missing
    sensor_fault_clear_readings: int = 3  # consecutive consistent readings that end an impossible-jump fault

    # -- doors
    door_open_max_s: float = 300.0  # a door of a refrigerated load open this long -> door_open_too_long
    door_reach_mps: float = 20.0  # a door opened after the last fix is placed at once if no stop lay within this speed x the time since (else the next fix places it)

    # -- live ETAs (the ETA tracker's own knobs: pipelines/trackers/eta.py EtaConfig)
    predicted_late_margin_s: float = (
        60.0  # an ETA this far past a stop's window end -> predicted_late (resolved back inside)
    )

    # -- connectivity (the receive clock: the engine's fleet clock)
    offline_after_s: float = 300.0  # no reading received for this long -> offline (while on duty)
    plan_end_grace_s: float = 3600.0  # a plan is over this long after its last stop's window end (off duty)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"AnalyticsConfig.{f.name} must be >= 0, got {value}")
        if self.temp_range_c is not None and not self.temp_range_c[0] < self.temp_range_c[1]:
            raise ValueError(
                f"AnalyticsConfig.temp_range_c must be (low, high) with low < high, got {self.temp_range_c}"
            )
        if not 0 <= self.cell_resolution <= 15 or not 0 <= self.corridor_resolution <= 15:
            raise ValueError("H3 resolutions must be in [0, 15]")


@dataclass(frozen=True)
class EtaConfig:
    """Knobs of the live ETA (seconds, metres, m/s)."""

    reemit_s: float = 60.0  # re-emit a stop's ETA when it moved by more than this
    models: str = "default"  # name of the model set in models.registry
    cell_resolution: int = 9  # H3 resolution of path pieces (that of the speed profiles)
    sample_m: float = 100.0  # paths are costed in pieces of at most this length
    default_speed_mps: float = 8.0  # driving speed without profiles (about 29 km/h)
    parked_speed_mps: float = 1.0  # slower than this is standing
    parked_after_s: float = 60.0  # standing this long = parked
    off_route_m: float = 200.0  # further than this from the route = off route
    traffic_ratio: float = 0.5  # moving below this share of the profile speed = in traffic
    traffic_horizon_m: float = 500.0  # ... and the next this many metres go at the current speed
    speed_smoothing: float = 0.3  # weight of a new fix's speed in the smoothed speed
    reproject_m: float = 25.0  # a fix this close (per axis) to the last projected one keeps its place on the route
    search_ahead_m: float = 500.0  # route projection window beyond the progress ...
    max_speed_mps: float = 40.0  # ... plus this much per second since the last fix
    leave_stop_m: float = 100.0  # the rest of a stop's service counts until this far outside its circle
    model_every_s: float = 120.0  # run the model at most this often per vehicle (fix time)
    model_max_ahead_s: float = 5400.0  # ask the model about stops this far ahead at most (its training horizons)
    estimate_every_s: float = 60.0  # estimate (and maybe re-emit) at most this often (fix time); 0 = every fix
    max_stops: int = 50  # ETAs for at most this many of the next remaining stops: bounds the work of a fix

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
                raise ValueError(f"EtaConfig.{name} must be >= 0, got {value}")
        if self.default_speed_mps <= 0 or not 0 < self.speed_smoothing <= 1:
            raise ValueError("EtaConfig: default_speed_mps must be > 0 and speed_smoothing in (0, 1]")
