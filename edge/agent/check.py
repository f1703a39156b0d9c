"""``fleetstream-edge --check``: does this van's set-up work, and if not, what to fix.

Each check is real, not a reading of the file: the broker is reached and logs the device in
(over TLS verified against ``ca_file`` when it is set), gpsd answers, the 1-Wire probes and
the GPIO door lines exist. Every failure names its fix. Standard library and paho only.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.agent.config import AgentConfig

__all__ = ["Finding", "check_all", "format_findings"]

_TIMEOUT_S = 5.0  # per network check: a van on a slow link still answers within this


@dataclass(frozen=True)
class Finding:
    """One check: ``ok``, what was checked and found, and (when not ok) what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_broker(config: AgentConfig) -> Finding:
    """Reach the broker and log in as the device (CONNECT/CONNACK, then DISCONNECT).

    It connects with the device's own client id (the only one the broker accepts for it) and
    its own session (clean start off, the configured expiry), so a running agent's session is
    kept; the agent itself is disconnected for a moment and reconnects."""
    b = config.broker
    where = f"{b.host}:{b.port}"
    username = b.username or f"{config.device.tenant}.{config.device.vehicle}"
    try:
        with socket.create_connection((b.host, b.port), timeout=_TIMEOUT_S):
            pass
    except OSError as exc:
        return Finding(
            "broker",
            False,
            f"cannot reach {where}: {exc.strerror or exc}",
            "check [broker] host and port; on the server, `fleetstream services status` shows the TLS port "
            "and its addresses (mqtt_also_listen must include the address this van reaches)",
        )
    if not b.password and b.cert_file is None:
        return Finding(
            "broker",
            False,
            f"{where} answers, but the config has no password",
            "set [broker] password_file to a file holding the password `fleetstream device add "
            f"{config.device.tenant} {config.device.vehicle}` printed (or use `fleetstream edge bundle`)",
        )
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=b.client_id or username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, b.password or None)
    if b.ca_file is not None:
        try:
            client.tls_set(
                ca_certs=str(b.ca_file),
                certfile=str(b.cert_file) if b.cert_file else None,
                keyfile=str(b.key_file) if b.key_file else None,
            )
        except (OSError, ssl.SSLError) as exc:
            return Finding("broker", False, f"cannot use ca_file {b.ca_file}: {exc}", "copy the server's CA (ca.crt)")
    answered = threading.Event()
    result: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        result.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = b.session_expiry_s
    try:
        client.connect(b.host, b.port, keepalive=b.keepalive_s, clean_start=False, properties=props)
    except ssl.SSLCertVerificationError as exc:
        return Finding(
            "broker",
            False,
            f"TLS to {where}: the broker's certificate does not verify: {exc.verify_message}",
            f"ca_file must be the server's CA (its <state_dir>/tls/ca.crt) and host ({b.host}) a name or "
            "address the broker's certificate holds (the server's mqtt_also_listen)",
        )
    except (OSError, ssl.SSLError) as exc:
        fix = "is this the broker's TLS port? set ca_file for it" if b.ca_file is None else "is the port a TLS port?"
        return Finding("broker", False, f"connecting to {where}: {exc}", fix)
    client.loop_start()
    try:
        if not answered.wait(_TIMEOUT_S):
            return Finding(
                "broker",
                False,
                f"{where} took the connection but sent no CONNACK in {_TIMEOUT_S:.0f} s",
                "a TLS port needs ca_file; a plaintext port must not have it",
            )
    finally:
        client.disconnect()
        client.loop_stop()
    if result[0] != "Success":
        return Finding(
            "broker",
            False,
            f"{where} refused the login of {username}: {result[0]}",
            f"the password file must hold the password of `fleetstream device add {config.device.tenant} "
            f"{config.device.vehicle}` (on the server); the client id must be the username",
        )
    how = f"TLS verified against {b.ca_file}" if b.ca_file is not None else "plaintext (no ca_file)"
    return Finding("broker", True, f"{where} accepted {username} ({how})")


def check_gpsd(config: AgentConfig) -> Finding:
    """gpsd greets every client with a VERSION report: read it."""
    g = config.gps
    where = f"{g.host}:{g.port}"
    fix = (
        'install and start gpsd (apt install gpsd; DEVICES="/dev/ttyACM0" or your receiver in '
        '/etc/default/gpsd; systemctl enable --now gpsd), or set [sensors.gps] source = "off"'
    )
    try:
        with socket.create_connection((g.host, g.port), timeout=_TIMEOUT_S) as conn:
            conn.settimeout(_TIMEOUT_S)
            line = conn.makefile("rb").readline(65536)
    except OSError as exc:
        return Finding("gpsd", False, f"no gpsd on {where}: {exc.strerror or exc}", fix)
    try:
        report = json.loads(line)
    except ValueError:
        report = {}
    if not isinstance(report, dict) or report.get("class") != "VERSION":
        return Finding("gpsd", False, f"{where} answered, but not as gpsd: {line[:80]!r}", fix)
    return Finding("gpsd", True, f"{where} answers (gpsd {report.get('release', '?')})")


def check_w1(config: AgentConfig) -> Finding:
    """The 1-Wire folder exists and holds the probes the config names (any DS18B20 when it names none)."""
    t = config.temperature
    fix = (
        "enable 1-Wire (dtoverlay=w1-gpio in /boot/firmware/config.txt, then reboot), wire the DS18B20 "
        'probes to GPIO 4 with a 4.7 kOhm pull-up, or set [sensors.temp] source = "off"'
    )
    folder = Path(t.devices_dir)
    if not folder.is_dir():
        return Finding("1-wire", False, f"{folder} does not exist", fix)
    present = sorted(p.name for p in folder.iterdir() if p.name.startswith("28-"))
    wanted = [probe for probe, _ in t.names]
    missing = [p for p in wanted if p not in present]
    if missing:
        return Finding(
            "1-wire",
            False,
            f"probe(s) {', '.join(missing)} not under {folder} (present: {', '.join(present) or 'none'})",
            "check the probe's wiring, or name the present ids in [sensors.temp.names]",
        )
    if not present:
        return Finding("1-wire", False, f"no DS18B20 probe (28-*) under {folder}", fix)
    return Finding("1-wire", True, f"{len(present)} probe(s) under {folder}: {', '.join(present)}")


def check_door(config: AgentConfig, index: int) -> Finding:
    """The door's GPIO chip exists, the ``gpiod`` package imports, and the chip has the line."""
    d = config.doors[index]
    name = f"door {d.name}"
    if not os.path.exists(d.chip):
        return Finding(
            name,
            False,
            f"{d.chip} does not exist",
            "on a Raspberry Pi the chip is /dev/gpiochip0 (Pi 5: /dev/gpiochip4); set [[sensors.doors]] chip",
        )
    try:
        import gpiod
    except ImportError:
        return Finding(
            name,
            False,
            "the gpiod Python package is missing",
            "pip install gpiod in the agent's venv, or make the venv with --system-site-packages and "
            "apt install python3-libgpiod",
        )
    try:
        if hasattr(gpiod, "request_lines"):  # gpiod 2.x
            with gpiod.Chip(d.chip) as chip:
                lines = int(chip.get_info().num_lines)
        else:  # gpiod 1.x
            lines = int(gpiod.Chip(d.chip).num_lines())
    except (OSError, AttributeError) as exc:
        return Finding(name, False, f"cannot open {d.chip}: {exc}", "the agent's user needs the gpio group")
    if d.line >= lines:
        return Finding(name, False, f"{d.chip} has {lines} lines, not line {d.line}", "set the door's line")
    return Finding(name, True, f"{d.chip} line {d.line} exists ({lines} lines)")


def check_all(config: AgentConfig) -> list[Finding]:
    """Every check that applies to ``config`` (fake and off sensors are not checked)."""
    out = [check_broker(config)]
    if config.gps.source == "gpsd":
        out.append(check_gpsd(config))
    if config.temperature.source == "w1":
        out.append(check_w1(config))
    out += [check_door(config, i) for i, d in enumerate(config.doors) if d.source == "gpio"]
    return out


def format_findings(findings: list[Finding]) -> str:
    """One line per check (``ok`` or ``FAIL``), each failure followed by its fix."""
    lines = []
    for f in findings:
        lines.append(f"{'ok  ' if f.ok else 'FAIL'} {f.name}: {f.detail}")
        if not f.ok and f.fix:
            lines.append(f"     fix: {f.fix}")
    return "\n".join(lines)
