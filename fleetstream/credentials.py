"""MQTT accounts of the embedded Mosquitto: service roles and devices.

Secrets live in the state folder (``credentials.json`` for service roles,
``devices.json`` for devices, both mode 0600). The broker's password file and
ACL file are regenerated from those two files after every change, and a
running broker is reloaded (SIGHUP) and probed until the new account logs in.

Service roles (usernames have no dot, device usernames always have one, so the
two namespaces cannot collide):

``gateway``, ``alerts``, ``simulator``, ``bench``
    ``topic readwrite fleet/#`` (the gateway subscribes through shared
    subscriptions ``$share/<group>/fleet/+/+/+``; Mosquitto checks the ACL
    against the topic filter without the ``$share/<group>/`` prefix).
``monitor``
    read only: ``fleet/#`` and ``$SYS/#``.
any other role name
    treated like ``gateway`` (service accounts are internal and trusted).

Devices: username ``{tenant}.{vehicle}``; may publish only to
``fleet/{tenant}/{vehicle}/#`` and read only ``fleet/{tenant}/{vehicle}/cmd/#``.
Under MQTT v5 a publish outside that gets PUBACK 0x87 (Not authorized).

OwnTracks phones: username ``ot.{tenant}.{vehicle}`` (two dots: never a device's or a role's);
may publish and read only under ``owntracks/{username}/`` (the app's default topic
``owntracks/%u/%d``). The gateway reads ``owntracks/#`` and stores what a provisioned user sends
for its vehicle (``fleetstream device add ... --protocol owntracks``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.contract import device_username
from core.settings import Settings
from fleetstream.state import broker_pid, state_lock

__all__ = [
    "ROLE_ACLS",
    "CredentialsError",
    "service_account",
    "mqtt_account",
    "add_device",
    "add_devices",
    "add_owntracks_account",
    "add_owntracks_accounts",
    "device_password",
    "owntracks_username",
    "device_username",
    "remove_device",
    "sync_broker_files",
    "password_file",
    "acl_file",
]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_ROLE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")

# role -> ACL lines written under "user <role>" in the broker's ACL file
ROLE_ACLS: dict[str, tuple[str, ...]] = {
    "gateway": ("topic readwrite fleet/#", "topic read dispatch/#", "topic read owntracks/#"),
    "alerts": ("topic write alerts/#", "topic write stops/#", "topic write etas/#"),
    "dispatch": ("topic write dispatch/#",),
    "simulator": ("topic readwrite fleet/#",),
    "bench": ("topic readwrite fleet/#",),
    "monitor": (
        "topic read fleet/#",
        "topic read $SYS/#",
        "topic read alerts/#",
        "topic read stops/#",
        "topic read etas/#",
        "topic read dispatch/#",
        "topic read owntracks/#",
    ),
}
_DEFAULT_ROLE_ACL: tuple[str, ...] = ("topic readwrite fleet/#",)
_OWNTRACKS = "owntracks"  # devices.json "kind" of an OwnTracks account (a contract device has none)
_RELOAD_PROBE_S = 3.0


class CredentialsError(RuntimeError):
    """An account could not be created or the broker did not accept it."""


# ---------------------------------------------------------------- paths


def _credentials_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "credentials.json"


def _devices_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "devices.json"


def _broker_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "mosquitto"


def password_file(settings: Settings) -> Path:
    """The broker's password file (hashed, generated)."""
    return _broker_dir(settings) / "passwd"


def acl_file(settings: Settings) -> Path:
    """The broker's ACL file (generated)."""
    return _broker_dir(settings) / "acl"


# ---------------------------------------------------------------- storage


def _locked(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Serialise read-modify-write of the secret files across processes."""
    return state_lock(settings, "credentials")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise CredentialsError(f"{path} does not hold a JSON object")
    return data


def _write_secret_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_secret() -> str:
    return secrets.token_urlsafe(24)


# ---------------------------------------------------------------- broker files


def _acl_text(roles: dict[str, str], devices: dict[str, dict[str, Any]]) -> str:
    lines = ["# generated by fleetstream.credentials: do not edit", ""]
    for role in sorted(roles):
        lines.append(f"user {role}")
        lines.extend(ROLE_ACLS.get(role, _DEFAULT_ROLE_ACL))
        lines.append("")
    for username in sorted(devices):
        dev = devices[username]
        tenant, vehicle = dev["tenant"], dev["vehicle"]
        lines.append(f"user {username}")
        if dev.get("kind") == _OWNTRACKS:  # the app publishes on owntracks/%u/%d[/...] and reads its own
            lines.append(f"topic write owntracks/{username}/#")
            lines.append(f"topic read owntracks/{username}/#")
        else:
            lines.append(f"topic write fleet/{tenant}/{vehicle}/#")
            lines.append(f"topic read fleet/{tenant}/{vehicle}/cmd/#")
        lines.append("")
    return "\n".join(lines)


def _mosquitto_ids() -> tuple[int, int] | None:
    """(uid, gid) of the mosquitto user when we run as root, else None."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _install_broker_file(path: Path, tmp: Path) -> None:
    ids = _mosquitto_ids()
    if ids is not None:
        os.chown(tmp, *ids)
    os.chmod(tmp, 0o600 if ids is not None else 0o644)
    os.replace(tmp, path)


def _write_broker_files(settings: Settings, roles: dict[str, str], devices: dict[str, dict[str, Any]]) -> bool:
    """Regenerate the password and ACL files; True when either changed."""
    bdir = _broker_dir(settings)
    bdir.mkdir(parents=True, exist_ok=True)
    pw_path, acl_path = password_file(settings), acl_file(settings)

    # The password file is fully determined by the secrets; keep a digest of the
    # plaintext next to it so unchanged accounts do not rewrite (or reload) anything.
    plain = "".join(f"{u}:{p}\n" for u, p in sorted(roles.items()))
    plain += "".join(f"{u}:{d['password']}\n" for u, d in sorted(devices.items()))
    digest = hashlib.sha256(plain.encode()).hexdigest()
    digest_path = bdir / ".passwd.sha256"
    changed = False
    try:
        same_pw = digest_path.read_text().strip() == digest and pw_path.exists()
    except FileNotFoundError:
        same_pw = False
    if not same_pw:
        exe = shutil.which("mosquitto_passwd")
        if exe is None:
            raise CredentialsError("mosquitto_passwd not found (apt-get install mosquitto)")
        tmp = bdir / f".passwd.{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(plain)
            # -U hashes a plaintext file in place (PBKDF2-SHA512): fast, one call for all users
            proc = subprocess.run([exe, "-U", str(tmp)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise CredentialsError(f"mosquitto_passwd -U failed: {proc.stderr.strip() or proc.stdout.strip()}")
            _install_broker_file(pw_path, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fd = os.open(digest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(digest + "\n")
        changed = True

    acl = _acl_text(roles, devices)
    try:
        same_acl = acl_path.read_text(encoding="utf-8") == acl
    except FileNotFoundError:
        same_acl = False
    if not same_acl:
        tmp = bdir / f".acl.{uuid.uuid4().hex}"
        try:
            tmp.write_text(acl, encoding="utf-8")
            _install_broker_file(acl_path, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        changed = True
    return changed


def sync_broker_files(settings: Settings) -> bool:
    """Make sure the password/ACL files match the stored secrets (used before a broker start).

    Creates the ``monitor`` account so the files are never empty. Does not reload.
    """
    with _locked(settings):
        roles = _read_json(_credentials_path(settings))
        if not roles:
            roles = {"monitor": _new_secret()}
            _write_secret_json(_credentials_path(settings), roles)
        devices = _read_json(_devices_path(settings))
        return _write_broker_files(settings, roles, devices)


# ---------------------------------------------------------------- reload


def _try_login(settings: Settings, username: str, password: str, timeout: float = 1.0) -> int | None:
    """Connect once with MQTT v5; the CONNACK reason code (0 = accepted) or None (no answer)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.reasoncodes import ReasonCode

    host, port = settings.mqtt_endpoint()
    result: list[int] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"fs-probe-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(username, password)

    def on_connect(_c: object, _u: object, _flags: object, reason_code: ReasonCode, _props: object) -> None:
        result.append(int(reason_code.value))

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10, clean_start=True)
    except OSError:
        return None
    deadline = time.monotonic() + timeout
    try:
        while not result and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.05)
    return result[0] if result else None


def _reload_broker(settings: Settings, probe: tuple[str, str] | None) -> None:
    """SIGHUP a running embedded broker and wait until ``probe`` credentials log in."""
    if not settings.embedded_mqtt:
        return
    pid = broker_pid(settings)
    if pid is None:
        return  # the files are read when the broker starts
    os.kill(pid, 1)  # SIGHUP: Mosquitto re-reads password_file and acl_file
    if probe is None:
        return
    deadline = time.monotonic() + _RELOAD_PROBE_S
    last: int | None = None
    while time.monotonic() < deadline:
        last = _try_login(settings, *probe, timeout=0.5)
        if last == 0:
            return
        time.sleep(0.05)
    raise CredentialsError(
        f"broker (pid {pid}) did not accept {probe[0]!r} within {_RELOAD_PROBE_S:.0f} s after a reload "
        f"(last CONNACK reason: {last})"
    )


# ---------------------------------------------------------------- public API


def mqtt_account(settings: Settings, role: str) -> tuple[str, str]:
    """(username, password) a service ``role`` logs in with: the account ``mqtt_url`` names,
    if it names one, else the embedded broker's service account for the role."""
    return settings.mqtt_url_account() or service_account(settings, role)


def service_account(settings: Settings, role: str) -> tuple[str, str]:
    """(username, password) of a service role, created on first use."""
    if not _ROLE.match(role):
        raise ValueError(f"bad role name {role!r}: use [A-Za-z0-9_-]")
    with _locked(settings):
        roles = _read_json(_credentials_path(settings))
        if role in roles:
            password = roles[role]
            # the broker files may have been removed (fresh broker dir): repair quietly
            if password_file(settings).exists() and acl_file(settings).exists():
                return role, password
        else:
            password = roles[role] = _new_secret()
            _write_secret_json(_credentials_path(settings), roles)
        devices = _read_json(_devices_path(settings))
        changed = _write_broker_files(settings, roles, devices)
    if changed:
        _reload_broker(settings, (role, password))
    return role, password


def _check_ids(tenant: str, vehicle: str) -> None:
    for what, value in (("tenant", tenant), ("vehicle", vehicle)):
        if not _ID.match(value):
            raise ValueError(f"bad {what} id {value!r}: use [A-Za-z0-9_-]{{1,64}}")


def add_devices(settings: Settings, tenant: str, vehicles: Iterable[str]) -> dict[str, str]:
    """Provision many devices with one password-file write and one broker reload.

    Returns {vehicle: password}; existing devices keep their password.
    """
    vehicles = list(dict.fromkeys(vehicles))
    for v in vehicles:
        _check_ids(tenant, v)
    return _add(settings, tenant, {v: None for v in vehicles})


def add_device(settings: Settings, tenant: str, vehicle: str, password: str | None = None) -> str:
    """Provision one device (username ``tenant.vehicle``); returns its password.

    Idempotent: an existing device keeps its password unless ``password`` is given.
    """
    _check_ids(tenant, vehicle)
    return _add(settings, tenant, {vehicle: password})[vehicle]


def owntracks_username(tenant: str, vehicle: str) -> str:
    """The MQTT username of a vehicle's OwnTracks phone: ``ot.<tenant>.<vehicle>``."""
    return f"ot.{tenant}.{vehicle}"


def add_owntracks_account(
    settings: Settings, tenant: str, vehicle: str, password: str | None = None
) -> tuple[str, str]:
    """Provision the MQTT account of ``vehicle``'s OwnTracks phone; (username, password).
    Idempotent like ``add_device``."""
    _check_ids(tenant, vehicle)
    return owntracks_username(tenant, vehicle), _add(settings, tenant, {vehicle: password}, _OWNTRACKS)[vehicle]


def add_owntracks_accounts(settings: Settings, tenant: str, vehicles: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Provision many OwnTracks accounts with one broker reload; {vehicle: (username, password)}."""
    vehicles = list(dict.fromkeys(vehicles))
    for v in vehicles:
        _check_ids(tenant, v)
    passwords = _add(settings, tenant, {v: None for v in vehicles}, _OWNTRACKS)
    return {v: (owntracks_username(tenant, v), passwords[v]) for v in vehicles}


def _username(kind: str | None, tenant: str, vehicle: str) -> str:
    return owntracks_username(tenant, vehicle) if kind == _OWNTRACKS else device_username(tenant, vehicle)


def _add(settings: Settings, tenant: str, wanted: dict[str, str | None], kind: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    probe: tuple[str, str] | None = None
    with _locked(settings):
        roles = _read_json(_credentials_path(settings))
        devices = _read_json(_devices_path(settings))
        dirty = False
        for vehicle, password in wanted.items():
            user = _username(kind, tenant, vehicle)
            current = devices.get(user)
            if current is not None and (password is None or password == current["password"]):
                out[vehicle] = current["password"]
                continue
            secret = password if password is not None else _new_secret()
            devices[user] = {"tenant": tenant, "vehicle": vehicle, "password": secret}
            if kind is not None:
                devices[user]["kind"] = kind
            out[vehicle] = secret
            probe = (user, secret)
            dirty = True
        if dirty:
            _write_secret_json(_devices_path(settings), devices)
        changed = _write_broker_files(settings, roles, devices)
    if changed:
        if probe is None and wanted:  # files repaired, nothing new: probe with any of them
            vehicle = next(iter(wanted))
            probe = (_username(kind, tenant, vehicle), out[vehicle])
        _reload_broker(settings, probe)
    return out


def device_password(settings: Settings, tenant: str, vehicle: str) -> str | None:
    """The stored password of a device, or None when it is not provisioned."""
    dev = _read_json(_devices_path(settings)).get(device_username(tenant, vehicle))
    return None if dev is None else dev["password"]


def remove_device(settings: Settings, tenant: str, vehicle: str) -> bool:
    """Deprovision a device; True when it existed. Already connected sessions stay up."""
    with _locked(settings):
        roles = _read_json(_credentials_path(settings))
        devices = _read_json(_devices_path(settings))
        if devices.pop(device_username(tenant, vehicle), None) is None:
            return False
        _write_secret_json(_devices_path(settings), devices)
        changed = _write_broker_files(settings, roles, devices)
    if changed:
        _reload_broker(settings, None)
        time.sleep(0.2)  # no positive probe for a removal; give the broker a main-loop turn
    return True
