"""Parsing real recordings (GPX, TCX, NMEA) and the dense truth taken from them: standstills,
sessions cut at gaps, and what a sparse device would have sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce

from core.geo import offset
from sim.recordings import Fix, dense_stops, parse, parse_nmea, sessions, subsample

T0 = datetime(2010, 2, 1, 8, 0, tzinfo=UTC)


def test_gpx_track_points_with_speed_and_hdop_and_no_waypoints() -> None:
    gpx = """<?xml version="1.0"?><gpx version="1.0" xmlns="http://www.topografix.com/GPX/1/0">
    <wpt lat="1" lon="1"><time>2010-02-01T07:00:00Z</time></wpt>
    <trk><trkseg>
      <trkpt lat="52.01" lon="4.35"><time>2010-02-01T08:00:01.545Z</time><speed>3.5</speed><hdop>1.6</hdop></trkpt>
      <trkpt lat="52.02" lon="4.36"><time>2010-02-01T08:00:00Z</time></trkpt>
    </trkseg></trk></gpx>"""
    a, b = parse("x.gpx", gpx)
    assert (a.time, a.lat, a.speed_mps, a.accuracy_m) == (T0, 52.02, None, None)  # in time order
    assert (b.time, b.speed_mps, b.accuracy_m) == (T0 + timedelta(seconds=1.545), 3.5, 8.0)


def test_tcx_track_points_with_a_position() -> None:
    tcx = """<TrainingCenterDatabase xmlns="http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"><Activities>
    <Activity><Lap><Track>
      <Trackpoint><Time>2010-02-01T08:00:00Z</Time><Position><LatitudeDegrees>37.4</LatitudeDegrees>
        <LongitudeDegrees>-122.1</LongitudeDegrees></Position></Trackpoint>
      <Trackpoint><Time>2010-02-01T08:00:01Z</Time><HeartRateBpm><Value>90</Value></HeartRateBpm></Trackpoint>
    </Track></Lap></Activity></Activities></TrainingCenterDatabase>"""
    (only,) = parse("x.tcx", tcx)
    assert (only.time, only.lat, only.lon) == (T0, 37.4, -122.1)


def _nmea(body: str) -> str:
    return f"${body}*{reduce(lambda c, ch: c ^ ord(ch), body, 0):02X}"


def test_nmea_rmc_with_checksums_and_the_gga_hdop() -> None:
    lines = [
        _nmea("GPGGA,080000.00,5347.523,N,00144.123,W,1,08,1.0,100.0,M,47.0,M,,"),
        _nmea("GPRMC,080000.00,A,5347.523,N,00144.123,W,10.0,270.0,010210,,,A"),
        _nmea("GPRMC,080001.00,V,5347.523,N,00144.123,W,0.0,0.0,010210,,,N"),  # no fix
        "$GPRMC,080002.00,A,5347.523,N,00144.123,W,0.0,0.0,010210,,,A*00",  # bad checksum
    ]
    (fix,) = parse_nmea("\r\n".join(lines))
    assert fix.time == T0 and round(fix.lat, 5) == round(53 + 47.523 / 60, 5) and fix.lon < 0
    assert round(fix.speed_mps or 0, 3) == round(10 * 1852 / 3600, 3) and fix.accuracy_m == 5.0


def test_standstills_sessions_and_thinning() -> None:
    fixes = []
    for s in range(0, 200):  # 1 Hz: 60 s driving at 10 m/s, 40 s standing, 100 s driving on
        east = 10.0 * min(s, 60) + 10.0 * max(0, s - 100)
        fixes.append(Fix(T0 + timedelta(seconds=s), *offset(52.0, 4.3, 0.0, east)))
    (stop,) = dense_stops(fixes)
    assert 30 <= stop.dwell_s <= 40 and stop.spread_m < 1.0  # the +-3 s speed window trims its ends
    later = [Fix(f.time + timedelta(hours=1), f.lat, f.lon) for f in fixes]
    assert [len(s) for s in sessions(fixes + later)] == [200, 200]
    every_30 = subsample(fixes, 30.0, offset_s=10.0)
    assert [(f.time - T0).total_seconds() for f in every_30] == [10, 40, 70, 100, 130, 160, 190]


def test_a_logger_that_pauses_while_the_vehicle_stands_still_shows_the_stop() -> None:
    # a fix every 10 s at 10 m/s; nothing for 3 min at a stop (it moved 20 m, jitter and
    # creeping); then on. A 60 s gap in a tunnel, 600 m on, is no stop.
    fixes = [Fix(T0 + timedelta(seconds=10 * k), *offset(52.0, 4.3, 0.0, 100.0 * k)) for k in range(10)]
    fixes += [Fix(T0 + timedelta(seconds=270 + 10 * k), *offset(52.0, 4.3, 0.0, 920.0 + 100 * k)) for k in range(10)]
    fixes += [Fix(T0 + timedelta(seconds=420 + 10 * k), *offset(52.0, 4.3, 0.0, 2420.0 + 100 * k)) for k in range(5)]
    (stop,) = dense_stops(fixes)
    assert (stop.start, stop.end) == (T0 + timedelta(seconds=90), T0 + timedelta(seconds=270))
