"""The soak at a small size, on the session's Mosquitto and TimescaleDB: a live fleet with plans,
every tracker and live ETAs on, paced in real time (``fleetstream bench --soak`` runs the
20,000-van size on its own stack).

200 vans for 90 s (``FLEETSTREAM_TEST_SOAK_VANS`` / ``FLEETSTREAM_TEST_SOAK_MINUTES`` make it
larger): every reading sent is stored once and analysed, every planted anomaly (silent vans,
vans standing still, warm reefers) reaches the fleet manager's MQTT subscription, and the
report carries the lag figures, the CPU and memory of the processes.
"""

from __future__ import annotations

import os
from dataclasses import replace

from core.settings import Settings
from fleetstream.bench.soak import KINDS, _soak, soak_thresholds

VANS = int(os.environ.get("FLEETSTREAM_TEST_SOAK_VANS", "200"))
MINUTES = float(os.environ.get("FLEETSTREAM_TEST_SOAK_MINUTES", "1.5"))


def test_a_live_fleet_is_stored_analysed_and_every_planted_anomaly_alerted(services_settings: Settings) -> None:
    settings = soak_thresholds(replace(services_settings, flow_analytics=1, flow_eta=1), MINUTES * 60)
    report = _soak(settings, VANS, MINUTES, fresh=False)
    s = report.summary()
    print(s)
    # counts: sent, stored, analysed; none lost or duplicated
    assert report.sent > VANS * MINUTES * 60 / 5 * 0.9
    assert report.stored == report.sent, (report.stored, report.sent)
    assert report.analysed == report.sent, (report.analysed, report.sent)
    # every kind planted, every planted anomaly alerted on MQTT, once per vehicle, after it came due
    assert all(report.planted[k] >= 2 for k in KINDS), report.planted
    assert report.alerted == report.planted, (report.alerted, report.planted)
    for kind, lags in report.alert_lag_s.items():
        assert len(lags) == report.planted[kind]
        assert all(lag > -2.0 for lag in lags), (kind, lags)  # not before its threshold (clock rounding aside)
    # the figures are there
    assert s["lag_samples"] >= MINUTES * 60 / 2, s["lag_samples"]  # the flow's meter: about one a second
    assert s["commit_to_analysed_p50_s"] is not None and s["commit_to_analysed_p99_s"] is not None
    assert s["threshold_to_alert_p99_s"] is not None
    assert s["flow_cpu_us_per_reading"] is not None and s["flow_cpu_us_per_reading"] > 0
    assert {"flow", "gateway-0", "deliver", "mosquitto", "postgres (PSS, all)"} <= set(report.rss_mb)
    assert all(mb > 1 for mb in report.rss_mb.values()), report.rss_mb
    # the generator kept its schedule (else the rate was not the one asked for)
    assert s["generator_behind_p99_s"] < 2.0, s["generator_behind_p99_s"]
