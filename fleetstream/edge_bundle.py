"""``fleetstream edge bundle``: one archive that takes a Raspberry Pi from zero to a running agent, offline.

The archive ``fleetstream-edge-<tenant>-<vehicle>.tar.gz`` holds one folder with:

* ``wheels/``: a wheel of the agent (``fleetstream-edge``: the ``edge`` package and
  ``core/contract.py``, standard library only, plus its one dependency) and a wheel of
  ``paho-mqtt``, both written here from the installed files (pure Python, ``py3-none-any``),
  so ``pip install --no-index --find-links wheels fleetstream-edge`` needs no network;
* ``edge.toml``: the agent's config, filled in: tenant, vehicle, the broker's address and
  TLS port, ``ca_file = "ca.crt"`` and ``password_file = "edge.password"`` (relative paths
  are relative to the config's folder, so it works where it is unpacked and in /etc/fleetstream);
* ``ca.crt`` (the services' CA) and ``edge.password`` (the device's password, mode 0600);
* ``fleetstream-edge.service`` (the systemd unit) and ``install.sh`` (the steps, as root).

The device account is provisioned here (``fleetstream device add``), idempotently.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings

__all__ = ["build_bundle", "edge_wheel", "installed_wheel"]

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip times: the same sources give the same wheel
_EDGE_SOURCES = ("edge",)  # packages of the agent, every .py and the example config
_EDGE_FILES = ("core/__init__.py", "core/contract.py")  # the contract the agent speaks (standard library only)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write_wheel(out_dir: Path, name: str, version: str, files: dict[str, bytes], metadata: bytes) -> Path:
    """A pure-Python wheel (PEP 427) of ``files`` {path in site-packages: content}; RECORD hashed."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    wheel_meta = b"Wheel-Version: 1.0\nGenerator: fleetstream edge bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    content = {**files, f"{info}/METADATA": metadata, f"{info}/WHEEL": wheel_meta}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dist}-py3-none-any.whl"
    record = [f"{arc},{_record_hash(data)},{len(data)}" for arc, data in content.items()]
    record.append(f"{info}/RECORD,,")
    content[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for arc in sorted(content):
            entry = zipfile.ZipInfo(arc, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            z.writestr(entry, content[arc], zipfile.ZIP_DEFLATED)
    return path


def edge_wheel(out_dir: Path, root: Path = PROJECT_ROOT) -> Path:
    """The agent's wheel ``fleetstream_edge-<version>-py3-none-any.whl`` from the sources under
    ``root``: ``edge/`` and ``core/contract.py``; needs ``paho-mqtt`` only; the ``fleetstream-edge`` command."""
    version = _version()
    paho = importlib.metadata.version("paho-mqtt")
    files: dict[str, bytes] = {}
    for package in _EDGE_SOURCES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    for name in _EDGE_FILES:
        files[name] = (root / name).read_bytes()
    metadata = (
        "Metadata-Version: 2.1\nName: fleetstream-edge\n"
        f"Version: {version}\n"
        "Summary: fleetstream's edge agent for a vehicle's Raspberry Pi: sensors -> durable outbox -> MQTT\n"
        "License: Apache-2.0\nRequires-Python: >=3.11\n"
        f"Requires-Dist: paho-mqtt>={paho},<3\n"
    ).encode()
    info = f"fleetstream_edge-{version}.dist-info"
    files[f"{info}/entry_points.txt"] = b"[console_scripts]\nfleetstream-edge = edge.agent.__main__:main\n"
    return _write_wheel(out_dir, "fleetstream-edge", version, files, metadata)


def installed_wheel(dist_name: str, out_dir: Path) -> Path:
    """A wheel of the installed pure-Python distribution ``dist_name`` (e.g. paho-mqtt), from its
    files in site-packages: how the bundle carries the agent's dependency without a network."""
    dist = importlib.metadata.distribution(dist_name)
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL", "METADATA"}
    files: dict[str, bytes] = {}
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if "__pycache__" in parts or str(f).endswith(".pyc") or parts[0].startswith(".."):
            continue
        if parts[0].endswith(".dist-info") and parts[-1] in skip:
            continue
        files[Path(str(f)).as_posix()] = Path(str(f.locate())).read_bytes()
    metadata = dist.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {dist.version}\n"
    return _write_wheel(out_dir, dist.metadata["Name"], dist.version, files, metadata.encode())


def _version() -> str:
    try:
        return importlib.metadata.version("fleetstream")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _config(tenant: str, vehicle: str, host: str, port: int) -> str:
    return f"""# fleetstream edge agent for {tenant}/{vehicle} (written by `fleetstream edge bundle`)
# Check: fleetstream-edge --config edge.toml --check   Every other key: edge/agent/example.toml in the wheel.
# Relative paths are relative to this file's folder (install.sh puts all in /etc/fleetstream).

[device]
tenant = "{tenant}"
vehicle = "{vehicle}"

[broker]
host = "{host}"
port = {port}                     # the broker's TLS port
ca_file = "ca.crt"              # the server's CA: the broker's certificate is verified against it
password_file = "edge.password"

[outbox]
path = "/var/lib/fleetstream-edge/outbox.sqlite3"

[sensors.gps]
source = "gpsd"                 # gpsd | fake | off
host = "127.0.0.1"
port = 2947

[sensors.temp]
source = "w1"                   # DS18B20 probes on 1-Wire | fake | off
devices_dir = "/sys/bus/w1/devices"

[[sensors.doors]]
name = "rear"
source = "gpio"                 # gpio (the gpiod package) | fake
chip = "/dev/gpiochip0"
line = 17                       # BCM GPIO number
bias = "pull_up"
open_level = 1
"""


_INSTALL = """#!/bin/sh
# Install the fleetstream edge agent from this folder, offline, as root on Debian / Raspberry Pi OS.
set -eu
cd "$(dirname "$0")"
id fleetstream >/dev/null 2>&1 || useradd --system --home-dir /var/lib/fleetstream-edge \\
    --shell /usr/sbin/nologin --groups gpio fleetstream 2>/dev/null || useradd --system \\
    --home-dir /var/lib/fleetstream-edge --shell /usr/sbin/nologin fleetstream
python3 -m venv --system-site-packages /opt/fleetstream/.venv   # system packages: Debian's python3-libgpiod
/opt/fleetstream/.venv/bin/pip install --no-index --find-links wheels fleetstream-edge
install -d -m 0750 -g fleetstream /etc/fleetstream
install -m 0640 -g fleetstream edge.toml ca.crt edge.password /etc/fleetstream/
install -m 0644 fleetstream-edge.service /etc/systemd/system/
/opt/fleetstream/.venv/bin/fleetstream-edge --config /etc/fleetstream/edge.toml --check || true
systemctl daemon-reload
systemctl enable --now fleetstream-edge
echo "running: journalctl -u fleetstream-edge -f"
"""


def build_bundle(settings: Settings, tenant: str, vehicle: str, out_dir: Path, host: str | None = None) -> Path:
    """Provision ``tenant``/``vehicle`` and write its archive into ``out_dir``; returns its path.

    ``host``: the address the van reaches the broker at (default: the first ``mqtt_also_listen``
    address, else ``mqtt_host``). Needs the embedded broker with its TLS port (its CA)."""
    from fleetstream import credentials, tls

    if not settings.embedded_mqtt:
        raise ValueError("edge bundle needs the embedded broker (mqtt_url is set: give the agent its config by hand)")
    if not settings.mqtt_tls_port:
        raise ValueError("edge bundle needs the broker's TLS port (mqtt_tls_port is 0)")
    ca = tls.ca_file(settings)
    if not ca.exists():
        raise ValueError(f"no CA at {ca} yet: start the services once (fleetstream services up)")
    password = credentials.add_device(settings, tenant, vehicle)
    host = host or next(iter(settings.mqtt_also_listen_on()), settings.mqtt_host)
    name = f"fleetstream-edge-{tenant}-{vehicle}"
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{name}.tar.gz"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        wheels = folder / "wheels"
        edge_wheel(wheels)
        installed_wheel("paho-mqtt", wheels)
        (folder / "edge.toml").write_text(_config(tenant, vehicle, host, settings.mqtt_tls_port), encoding="utf-8")
        shutil.copyfile(ca, folder / "ca.crt")
        secret = folder / "edge.password"
        secret.touch(mode=0o600)
        secret.write_text(password + "\n", encoding="utf-8")
        shutil.copyfile(
            PROJECT_ROOT / "edge" / "systemd" / "fleetstream-edge.service", folder / "fleetstream-edge.service"
        )
        (folder / "install.sh").write_text(_INSTALL, encoding="utf-8")
        (folder / "install.sh").chmod(0o755)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname=name)
    archive.chmod(0o600)  # it holds the device's password
    return archive
