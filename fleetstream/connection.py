"""Ready-to-paste commands for a first look: the data in psql, the alert feed, the control tower.

``fleetstream services status`` and the demo's closing summary print them, so that nobody
has to read the source or the secret files to connect. Every command uses an account of
least privilege: the tenant's read-only database login (``fleetstream db reader``) and the
tenant's fleet-manager MQTT account ``manager.<tenant>.manager`` (``fleetstream account``).
"""

from __future__ import annotations

import shlex
import socket
import sys
from pathlib import Path

from core.settings import Settings

__all__ = ["MANAGER_NAME", "cli_command", "connection_commands", "format_commands"]

MANAGER_NAME = "manager"  # the name of the fleet-manager account the printed commands use


def cli_command() -> str:
    """How to call the command line from here: the venv's ``fleetstream`` (absolute) when it exists."""
    script = Path(sys.executable).parent / "fleetstream"
    return str(script) if script.exists() else "fleetstream"


def _api_running(settings: Settings) -> bool:
    try:
        with socket.create_connection((settings.api_host, settings.api_port), timeout=0.5):
            return True
    except OSError:
        return False


def connection_commands(settings: Settings, tenant: str) -> dict[str, str]:
    """{what: command} for ``tenant``: ``psql`` (its read-only login), ``mosquitto_sub`` (its
    manager account: over TLS with the services' CA when the TLS port is on, else the loopback
    plaintext port), ``control_tower`` (the page's URL when the API answers, with how to get a
    token), ``cli``. Creates the reader login and the manager account on first use (idempotent:
    the same passwords every time). External services get only what can be said about them."""
    from fleetstream import credentials, database, tls

    out: dict[str, str] = {"cli": cli_command()}
    if settings.embedded_pg:
        try:
            out["psql"] = "psql " + shlex.quote(database.reader_dsn(settings, tenant))
        except ValueError as exc:  # e.g. right after `services up`: no schema yet
            out["psql"] = f"# not yet: {exc}"
    if settings.embedded_mqtt:
        user, password = credentials.add_account(settings, tenant, MANAGER_NAME, "manager")
        if settings.mqtt_tls_port and tls.ca_file(settings).exists():
            where = [
                "-h",
                settings.mqtt_host,
                "-p",
                str(settings.mqtt_tls_port),
                "--cafile",
                str(tls.ca_file(settings)),
            ]
        else:
            where = ["-h", settings.mqtt_host, "-p", str(settings.mqtt_port)]
        topics = [arg for kind in ("alerts", "stops") for arg in ("-t", f"{kind}/{tenant}/#")]
        argv = ["mosquitto_sub", *where, "-u", user, "-P", password, "-i", user, "-V", "mqttv5", "-q", "1"]
        out["mosquitto_sub"] = shlex.join([*argv, *topics, "-v"])
    if _api_running(settings):
        out["control_tower"] = (
            f"{settings.api_url()}/?token=TOKEN  (TOKEN: {cli_command()} token add {tenant} --role dispatcher)"
        )
    else:
        out["control_tower"] = f"not running (it runs with the engine: {cli_command()} engine)"
    return out


def format_commands(commands: dict[str, str], tenant: str) -> str:
    """The commands as a block a person reads and pastes from."""
    lines = [f"connect (tenant {tenant!r}; paste a line):"]
    labels = {
        "psql": "the data, read-only",
        "mosquitto_sub": "alerts and stop events, as its fleet manager",
        "control_tower": "the control tower",
        "cli": "the command line",
    }
    for key, label in labels.items():
        if key in commands:
            lines.append(f"  # {label}\n  {commands[key]}")
    return "\n".join(lines)
