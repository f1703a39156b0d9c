"""Edge sensors: gpsd reports, DS18B20 probes in a fake sysfs, debounced door contacts."""

from __future__ import annotations

import json
import math
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.agent.sampling import GpsSample, distance_m
from edge.agent.sensors.door import Debouncer, DoorContact, DoorPoller, DoorSensorError, FakeDoorLine, GpiodLine
from edge.agent.sensors.gps import WATCH_COMMAND, FakeGps, GpsdSource, parse_report, parse_tpv
from edge.agent.sensors.temperature import FakeThermometers, ProbeFault, W1Thermometers, parse_w1_slave

# ---------------------------------------------------------------- gpsd

# captured from gpsd 3.22 replaying test/daemon/bundg_zeus_9.log (gpsd's own test data)
TPV_3D = (
    b'{"class":"TPV","device":"/dev/pts/1","mode":3,"time":"2018-08-20T09:47:39.000Z","ept":0.005,'
    b'"lat":52.850121667,"lon":5.313550000,"epx":7.467,"epy":8.881,"epv":20.700,"track":229.9000,'
    b'"magtrack":232.0000,"magvar":1.4,"speed":2.932,"eps":17.76,"epc":41.40,"geoidSep":43.514,'
    b'"eph":11.400,"sep":20.900,"depth":5.400}'
)
TPV_2D = (
    b'{"class":"TPV","device":"/dev/pts/1","mode":2,"time":"2018-08-20T09:47:38.000Z","ept":0.005,'
    b'"lat":52.850140000,"lon":5.313581667,"track":235.1000,"magtrack":236.5000,"magvar":1.4,"speed":2.984}'
)
TPV_NOFIX = b'{"class":"TPV","device":"/dev/pts/1","mode":1,"time":"2018-08-20T09:47:37.000Z"}'
VERSION = b'{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}'


def test_tpv_with_a_3d_fix() -> None:
    cls, sample = parse_report(TPV_3D)
    assert cls == "TPV" and sample is not None
    assert sample.time == datetime(2018, 8, 20, 9, 47, 39, tzinfo=UTC)
    assert (sample.lat, sample.lon, sample.mode) == (52.850121667, 5.31355, 3)
    assert sample.speed_mps == 2.932 and sample.heading_deg == 229.9
    assert sample.accuracy_m == 11.4  # eph


def test_tpv_with_a_2d_fix_uses_the_larger_of_epx_epy() -> None:
    sample = parse_tpv({**json.loads(TPV_2D), "epx": 3.0, "epy": 5.5})
    assert sample is not None and sample.mode == 2 and sample.accuracy_m == 5.5 and sample.alt_m is None
    assert parse_tpv(json.loads(TPV_2D)).accuracy_m is None  # type: ignore[union-attr]


def test_reports_without_a_fix_or_not_tpv() -> None:
    assert parse_report(TPV_NOFIX) == ("TPV", None)
    assert parse_report(VERSION) == ("VERSION", None)
    assert parse_report(b"garbage{") == (None, None)
    assert parse_tpv({"class": "TPV", "mode": 3, "lat": 95.0, "lon": 1.0, "time": "2018-08-20T09:47:39Z"}) is None
    assert parse_tpv({"class": "TPV", "mode": 3, "lat": 1.0, "lon": 1.0}) is None


class FakeGpsd:
    """A TCP server speaking gpsd's side of the protocol from scripted lines, one script per connection."""

    def __init__(self, scripts: list[list[bytes]]) -> None:
        self.scripts = scripts
        self.commands: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for script in self.scripts:
            conn, _ = self.server.accept()
            with conn:
                conn.sendall(VERSION + b"\r\n")
                self.commands.append(conn.recv(1024))
                for line in script:  # split mid-line to exercise reassembly
                    data = line + b"\r\n"
                    conn.sendall(data[:10])
                    time.sleep(0.002)
                    conn.sendall(data[10:])
        self.server.close()


def test_gpsd_source_watches_parses_and_reconnects() -> None:
    gpsd = FakeGpsd([[TPV_NOFIX, TPV_2D, b"not json"], [TPV_3D]])
    source = GpsdSource("127.0.0.1", gpsd.port, reconnect_min_s=0.05, reconnect_max_s=0.1)
    got: list[GpsSample] = []
    stop = threading.Event()

    def emit(sample: GpsSample) -> None:
        got.append(sample)
        if len(got) == 2:
            stop.set()

    thread = threading.Thread(target=source.run, args=(emit, stop))
    thread.start()
    thread.join(15)
    stop.set()
    assert not thread.is_alive()
    assert gpsd.commands[:2] == [WATCH_COMMAND, WATCH_COMMAND]
    assert [s.mode for s in got] == [2, 3]
    faults = source.faults()
    assert faults["no_fix"] == 1 and faults["bad_report"] == 1 and faults["disconnected"] >= 1


def test_gpsd_source_keeps_trying_when_gpsd_is_absent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there
    source = GpsdSource("127.0.0.1", port, reconnect_min_s=0.01, reconnect_max_s=0.02)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(lambda s: None, stop))
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    assert source.faults()["connect_failed"] >= 3


def test_fake_gps_drives_a_circle() -> None:
    gps = FakeGps(rate_hz=1.0, radius_m=500.0, speed_mps=10.0)
    when = datetime(2026, 11, 22, tzinfo=UTC)
    a, b = gps.sample(0.0, when), gps.sample(10.0, when)
    assert distance_m(a.lat, a.lon, b.lat, b.lon) == pytest.approx(100.0, rel=0.01)
    assert a.heading_deg == pytest.approx(0.0, abs=0.01) or a.heading_deg == pytest.approx(360.0, abs=0.01)
    assert b.speed_mps == 10.0 and b.mode == 3
    quarter = gps.sample(500.0 * math.pi / 2 / 10.0, when)
    assert quarter.heading_deg == pytest.approx(270.0, abs=0.01)  # counter-clockwise: heading west at the top


# ---------------------------------------------------------------- DS18B20 over 1-Wire sysfs

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
NEGATIVE = "ec ff 4b 46 7f ff 0c 10 a5 : crc=a5 YES\nec ff 4b 46 7f ff 0c 10 a5 t=-1250\n"
CRC_NO = "72 01 4b 46 7f ff 0e 10 57 : crc=1c NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
ALL_ZERO = "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n"


def test_w1_slave_parsing() -> None:
    assert parse_w1_slave(GOOD) == 23.125
    assert parse_w1_slave(NEGATIVE) == -1.25
    for text, kind in (
        (CRC_NO, "crc"),
        (POWER_ON, "power_on"),
        (ALL_ZERO, "no_data"),
        ("", "no_data"),
        ("72 01 : crc=57 YES\n72 01 x=1\n", "no_data"),
    ):
        with pytest.raises(ProbeFault) as info:
            parse_w1_slave(text)
        assert info.value.kind == kind


def make_sysfs(root: Path, probes: dict[str, str]) -> Path:
    devices = root / "devices"
    devices.mkdir()
    (devices / "w1_bus_master1").mkdir()  # the bus master sits next to the probes, as on a Pi
    for probe, text in probes.items():
        (devices / probe).mkdir()
        (devices / probe / "w1_slave").write_text(text)
    return devices


def test_w1_probes_read_with_faults_counted_never_sent(tmp_path: Path) -> None:
    devices = make_sysfs(
        tmp_path,
        {"28-000000000001": GOOD, "28-000000000002": CRC_NO, "28-000000000003": POWER_ON, "28-000000000004": NEGATIVE},
    )
    names = {
        "28-000000000001": "reefer",
        "28-000000000002": "cab",
        "28-000000000003": "door-zone",
        "28-000000000004": "freezer",
        "28-00000000000f": "gone",
    }
    when = datetime(2026, 11, 22, 5, tzinfo=UTC)
    therm = W1Thermometers(devices, names, clock=lambda: when)
    first = therm.read()
    assert [(s.sensor, s.celsius, s.time) for s in first] == [("reefer", 23.125, when), ("freezer", -1.25, when)]
    (devices / "28-000000000002" / "w1_slave").write_text(GOOD)  # the bus recovered
    second = therm.read()
    assert [s.sensor for s in second] == ["reefer", "cab", "freezer"]
    assert therm.faults() == {"cab.crc": 1, "door-zone.power_on": 2, "gone.missing": 2}


def test_w1_discovers_every_ds18b20_without_names(tmp_path: Path) -> None:
    devices = make_sysfs(tmp_path, {"28-00000aaaaaaa": GOOD, "28-00000bbbbbbb": NEGATIVE, "10-000000000001": GOOD})
    therm = W1Thermometers(devices)
    assert sorted(s.sensor for s in therm.read()) == ["28-00000aaaaaaa", "28-00000bbbbbbb"]  # 10-: not a DS18B20
    empty = tmp_path / "empty"
    empty.mkdir()
    none = W1Thermometers(empty)
    assert none.read() == [] and none.faults() == {"all.no_probes": 1}


def test_fake_thermometers_step_like_a_ds18b20() -> None:
    fake = FakeThermometers(("a", "b"), rate_hz=1.0)
    samples = fake.read()
    assert [s.sensor for s in samples] == ["a", "b"]
    assert all((s.celsius * 16).is_integer() and 0.0 < s.celsius < 8.0 for s in samples)


# ---------------------------------------------------------------- doors


def test_debouncer_reports_a_level_only_after_it_held() -> None:
    d = Debouncer(0.2)
    assert d.update(0, 0.0) is None
    assert d.update(0, 0.2) == 0  # the first stable level is reported
    assert d.update(1, 1.0) is None  # bounce: 1, 0, 1 within 50 ms
    assert d.update(0, 1.01) is None
    assert d.update(1, 1.05) is None
    assert d.update(1, 1.2) is None  # held 150 ms only
    assert d.update(1, 1.3) == 1 and d.since == 1.05
    assert d.update(1, 5.0) is None


def test_door_contact_on_a_fake_line_debounces_and_stamps_the_first_edge() -> None:
    line = FakeDoorLine(0)
    contact = DoorContact("rear", line, debounce_s=0.1, open_level=1)
    wall0 = datetime(2026, 11, 22, 5, tzinfo=UTC)
    events = []
    # closed for 0.5 s, then a bouncing opening at 0.5 s, open from 0.53 s, closed again at 2.0 s
    script = [
        (0.0, 0),
        (0.5, 1),
        (0.51, 0),
        (0.52, 1),
        (0.53, 1),
        (0.6, 1),
        (0.7, 1),
        (2.0, 0),
        (2.05, 1),
        (2.06, 0),
        (2.2, 0),
    ]
    for t, level in script:
        line.value = level
        event = contact.poll(t, wall0 + (datetime.fromtimestamp(t, UTC) - datetime.fromtimestamp(0, UTC)))
        if event is not None:
            events.append(event)
    assert [e.open for e in events] == [True, False]  # no event for the first (closed) level: not yet stable
    assert [round((e.time - wall0).total_seconds(), 3) for e in events] == [0.52, 2.06]


def test_fake_door_line_toggles_on_its_own() -> None:
    now = [0.0]
    line = FakeDoorLine(toggle_s=1.0, clock=lambda: now[0])
    levels = []
    for t in (0.0, 0.5, 1.0, 1.5, 2.0):
        now[0] = t
        levels.append(line.get_value())
    assert levels == [0, 0, 1, 1, 0]


def test_door_poller_emits_debounced_changes() -> None:
    line = FakeDoorLine(0)
    poller = DoorPoller([DoorContact("rear", line, debounce_s=0.02)], poll_s=0.005)
    got = []
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(got.append, stop))
    thread.start()
    time.sleep(0.15)
    line.value = 1
    time.sleep(0.15)
    stop.set()
    thread.join(5)
    assert [(e.door, e.open) for e in got] == [("rear", False), ("rear", True)]


def test_gpio_without_gpiod_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # makes "import gpiod" fail
    with pytest.raises(DoorSensorError, match="gpiod"):
        GpiodLine("/dev/gpiochip0", 17)
