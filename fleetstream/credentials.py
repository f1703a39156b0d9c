"""MQTT accounts of the embedded Mosquitto: service roles, devices, OwnTracks phones, tenant accounts.

Secrets live in the state folder, mode 0600: ``credentials.json`` (service roles),
``devices.json`` (devices and OwnTracks phones), ``accounts.json`` (tenant accounts). The
broker enforces them through its dynamic-security plugin (``fleetstream/dynsec.py``): its
file is generated from these before the broker starts; while it runs, every change is sent
to it as plugin commands, under the same lock as the change to the files.

Usernames (ids are ``[A-Za-z0-9_-]``, so the kinds cannot collide):

``<role>`` (no dot): a service role, held by the engine's processes and tools
    ``gateway``   subscribes ``$share/<group>/fleet/+/+/+``, ``$share/<group>/owntracks/#`` and
                  ``dispatch/+/plan``; receives those; publishes stored receipts ``fleet/+/+/cmd/#``
    ``alerts``    publishes ``alerts/#``, ``stops/#``, ``etas/#``, ``open_alerts/#`` (the deliverer)
    ``dispatch``  publishes ``dispatch/+/plan`` (``fleetstream plan publish``)
    ``simulator`` publishes ``fleet/#``; subscribes and receives ``fleet/+/+/cmd/#``
    ``bench``     publishes, subscribes and receives ``fleet/#``
    ``monitor``   read only, for operators: ``fleet/#``, ``alerts/#``, ``stops/#``, ``etas/#``, ``open_alerts/#``,
                  ``dispatch/#``, ``owntracks/#``, ``$SYS/#``
    ``control``, ``sessions``: the broker's own administration (plugin commands; ending the
                  sessions of a removed account)
    Service accounts may use any client id: they are not held outside this machine.
``<tenant>.<vehicle>``: a device. Publishes under ``fleet/<tenant>/<vehicle>/``; subscribes and
    receives only ``fleet/<tenant>/<vehicle>/cmd/#``. Client id: its username, nothing else.
``ot.<tenant>.<vehicle>``: a vehicle's OwnTracks phone: publishes, subscribes and receives only
    under ``owntracks/<username>/``. Client id: its username.
``manager.<tenant>.<name>``: subscribes and receives ``alerts/<tenant>/#``, ``stops/<tenant>/#``,
    ``etas/<tenant>/#`` and ``open_alerts/<tenant>/#`` (each vehicle's open alerts, retained).
    Client id: its username.
``dispatcher.<tenant>.<name>``: publishes ``dispatch/<tenant>/plan`` (the dispatch listener also
    refuses a plan whose tenant is not the topic's). Client id: its username.

Every other SUBSCRIBE (wildcards past these, other vehicles or tenants, ``$share/...``, ``$SYS``)
is refused: SUBACK 0x87 under MQTT 5, 0x80 under 3.1.1; a publish outside the rules gets PUBACK
0x87 (3.1.1: dropped). An account with a bound client id connecting under any other is refused
(CONNACK 0x87 / 5) and the client using that id is left alone.

Removing a device or account deletes it from the broker (which disconnects it) and then ends
every session it left (:func:`fleetstream.dynsec.end_sessions`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.contract import device_username, subscription_filter
from core.settings import Settings
from fleetstream import dynsec
from fleetstream.dynsec import Acl, BrokerAccount, StoredSession
from fleetstream.state import broker_paths, broker_pid, state_lock
from ingest.dispatch import PLAN_FILTER, plan_topic
from ingest.owntracks import TOPIC_FILTER as OWNTRACKS_FILTER

__all__ = [
    "SERVICE_ROLES",
    "TENANT_ROLES",
    "CredentialsError",
    "service_account",
    "mqtt_account",
    "add_device",
    "add_devices",
    "add_owntracks_account",
    "add_owntracks_accounts",
    "add_account",
    "remove_account",
    "tenant_account_username",
    "tenant_accounts",
    "device_password",
    "owntracks_username",
    "device_username",
    "remove_device",
    "broker_accounts",
    "write_broker_config",
    "broker_start_lock",
    "sessions_to_end",
    "sweep_sessions",
]

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_OWNTRACKS = "owntracks"  # devices.json "kind" of an OwnTracks account (a contract device has none)
TENANT_ROLES = ("manager", "dispatcher")


def _send(topic: str) -> Acl:
    return Acl("publishClientSend", topic)


def _read(topic: str) -> tuple[Acl, Acl]:
    """Subscribe with filters inside ``topic`` and receive what matches it."""
    return Acl("subscribePattern", topic), Acl("publishClientReceive", topic)


def _receive(topic: str) -> Acl:
    return Acl("publishClientReceive", topic)


# role -> its rules on the embedded broker
SERVICE_ROLES: dict[str, tuple[Acl, ...]] = {
    "gateway": (
        # any share group name (tests use their own); never a plain wildcard
        Acl("subscribePattern", f"$share/+/{subscription_filter()}"),
        Acl("subscribePattern", f"$share/+/{OWNTRACKS_FILTER}"),
        Acl("subscribeLiteral", PLAN_FILTER),  # the dispatch listener
        _receive("fleet/#"),
        _receive(OWNTRACKS_FILTER),
        _receive("dispatch/#"),
        _send("fleet/+/+/cmd/#"),  # stored receipts
    ),
    "alerts": (_send("alerts/#"), _send("stops/#"), _send("etas/#"), _send("open_alerts/#")),
    "dispatch": (_send(PLAN_FILTER),),
    "simulator": (_send("fleet/#"), *_read("fleet/+/+/cmd/#")),
    "bench": (_send("fleet/#"), *_read("fleet/#")),
    "monitor": tuple(
        acl
        for topic in (
            "fleet/#",
            "alerts/#",
            "stops/#",
            "etas/#",
            "open_alerts/#",
            "dispatch/#",
            OWNTRACKS_FILTER,
            "$SYS/#",
        )
        for acl in _read(topic)
    ),
    "control": (_send(f"{dynsec.CONTROL_TOPIC}"), *_read(f"{dynsec.CONTROL_TOPIC}/#")),
    "sessions": (),
}
_CONTROL, _SESSIONS = "control", "sessions"


class CredentialsError(RuntimeError):
    """An account could not be created or the broker did not accept it."""


# ---------------------------------------------------------------- storage


def _credentials_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "credentials.json"


def _devices_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "devices.json"


def _accounts_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / "accounts.json"


def _locked(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Serialise changes of the secret files and of the running broker's accounts across processes."""
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


def _write_secret_json(path: Path, data: dict[str, Any], owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
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


@contextlib.contextmanager
def _store(settings: Settings) -> Iterator[_Store]:
    with _locked(settings):
        yield _Store(settings)


class _Store:
    """The three secret files, read once under the lock; ``save`` writes what changed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.roles: dict[str, str] = _read_json(_credentials_path(settings))
        self.devices: dict[str, dict[str, Any]] = _read_json(_devices_path(settings))
        self.accounts: dict[str, dict[str, Any]] = _read_json(_accounts_path(settings))
        self._dirty: set[str] = set()

    def touch(self, *which: str) -> None:
        self._dirty.update(which)

    def save(self) -> None:
        if "roles" in self._dirty:
            _write_secret_json(_credentials_path(self.settings), self.roles)
        if "devices" in self._dirty:
            _write_secret_json(_devices_path(self.settings), self.devices)
        if "accounts" in self._dirty:
            _write_secret_json(_accounts_path(self.settings), self.accounts)
        self._dirty.clear()

    def ensure_internal(self) -> list[str]:
        """The broker's own administration accounts exist; the roles created now."""
        created = [r for r in (_CONTROL, _SESSIONS) if r not in self.roles]
        for role in created:
            self.roles[role] = _new_secret()
        if created:
            self.touch("roles")
        return created

    def account(self, username: str) -> BrokerAccount | None:
        """The broker account of ``username`` as the files describe it, or None."""
        if username in self.roles:
            return BrokerAccount(username, self.roles[username], SERVICE_ROLES.get(username, ()))
        if username in self.devices:
            return _device_account(username, self.devices[username])
        if username in self.accounts:
            return _tenant_account(username, self.accounts[username])
        return None

    def all_accounts(self) -> list[BrokerAccount]:
        names = [*self.roles, *self.devices, *self.accounts]
        return [a for a in (self.account(u) for u in names) if a is not None]


# ---------------------------------------------------------------- accounts -> broker rules


def _device_account(username: str, dev: dict[str, Any]) -> BrokerAccount:
    if dev.get("kind") == _OWNTRACKS:  # the app publishes on owntracks/%u/%d[/...] and reads its own
        acls = (_send(f"owntracks/{username}/#"), *_read(f"owntracks/{username}/#"))
    else:
        tenant, vehicle = dev["tenant"], dev["vehicle"]
        acls = (_send(f"fleet/{tenant}/{vehicle}/#"), *_read(f"fleet/{tenant}/{vehicle}/cmd/#"))
    return BrokerAccount(username, dev["password"], acls, client_id=username)


def _tenant_account(username: str, acct: dict[str, Any]) -> BrokerAccount:
    tenant = acct["tenant"]
    if acct["role"] == "manager":
        kinds = ("alerts", "stops", "etas", "open_alerts")
        acls: tuple[Acl, ...] = tuple(a for kind in kinds for a in _read(f"{kind}/{tenant}/#"))
    else:
        acls = (_send(plan_topic(tenant)),)
    return BrokerAccount(username, acct["password"], acls, client_id=username)


def broker_accounts(settings: Settings) -> list[BrokerAccount]:
    """Every account the embedded broker should hold, from the secret files."""
    with _store(settings) as store:
        return store.all_accounts()


def _dynsec_file(settings: Settings) -> Path:
    return broker_paths(settings)["dynsec"]


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


def _write_config_locked(store: _Store) -> Path:
    store.ensure_internal()
    store.save()
    path = _dynsec_file(store.settings)
    ids = _mosquitto_ids()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # the plugin writes <file>.new there and renames it
    if ids is not None:
        os.chown(path.parent, *ids)
    _write_secret_json(path, dynsec.config_document(store.all_accounts()), owner=ids)
    return path


def write_broker_config(settings: Settings) -> Path:
    """Generate the dynamic-security plugin's file from the secret files (the broker must not
    be running: it would overwrite the file on its next change). Creates the ``monitor``,
    ``control`` and ``sessions`` accounts if missing. Returns the file's path."""
    with _store(settings) as store:
        if not store.roles:
            store.roles["monitor"] = _new_secret()
            store.touch("roles")
        return _write_config_locked(store)


@contextlib.contextmanager
def broker_start_lock(settings: Settings) -> Iterator[Path]:
    """Hold the accounts' lock while the broker starts: the plugin's file is generated, then the
    caller starts the broker and waits for its port. An account changed meanwhile waits, and then
    finds the broker running (so it is sent to it) instead of being lost between the two."""
    with _store(settings) as store:
        if not store.roles:
            store.roles["monitor"] = _new_secret()
            store.touch("roles")
        yield _write_config_locked(store)


def _running(settings: Settings) -> bool:
    return settings.embedded_mqtt and broker_pid(settings) is not None


def _apply(store: _Store, changed: Iterable[BrokerAccount], removed: Iterable[str] = ()) -> None:
    """Send the changes to the running embedded broker (nothing when it is not running: its
    file is generated from the secret files when it starts)."""
    settings = store.settings
    if not _running(settings):
        return
    commands = [c for username in removed for c in dynsec.removal_commands(username)]
    commands += [c for account in changed for c in dynsec.account_commands(account)]
    if not commands:
        return
    try:
        dynsec.send_commands(settings.mqtt_endpoint(), (_CONTROL, store.roles[_CONTROL]), commands)
    except dynsec.ControlError as exc:
        raise CredentialsError(f"the broker did not take the account change: {exc}") from None


# ---------------------------------------------------------------- public API: service roles


def mqtt_account(settings: Settings, role: str) -> tuple[str, str]:
    """(username, password) a service ``role`` logs in with: the account ``mqtt_url`` names,
    if it names one, else the embedded broker's service account for the role."""
    return settings.mqtt_url_account() or service_account(settings, role)


def service_account(settings: Settings, role: str) -> tuple[str, str]:
    """(username, password) of a service role (:data:`SERVICE_ROLES`), created on first use."""
    if role not in SERVICE_ROLES:
        raise ValueError(f"unknown service role {role!r}: one of {', '.join(SERVICE_ROLES)}")
    with _store(settings) as store:
        if role in store.roles:
            return role, store.roles[role]
        store.ensure_internal()
        store.roles[role] = _new_secret()
        store.touch("roles")
        store.save()
        account = store.account(role)
        assert account is not None
        _apply(store, [account])
        return role, store.roles[role]


# ---------------------------------------------------------------- public API: devices


def _check_ids(**ids: str) -> None:
    for what, value in ids.items():
        if not _ID.match(value):
            raise ValueError(f"bad {what} id {value!r}: use [A-Za-z0-9_-]{{1,64}}")


def add_devices(settings: Settings, tenant: str, vehicles: Iterable[str]) -> dict[str, str]:
    """Provision many devices with one round of broker commands. Returns {vehicle: password};
    existing devices keep their password."""
    vehicles = list(dict.fromkeys(vehicles))
    for v in vehicles:
        _check_ids(tenant=tenant, vehicle=v)
    return _add(settings, tenant, {v: None for v in vehicles})


def add_device(settings: Settings, tenant: str, vehicle: str, password: str | None = None) -> str:
    """Provision one device (username and client id ``tenant.vehicle``); returns its password.

    Idempotent: an existing device keeps its password unless ``password`` is given.
    """
    _check_ids(tenant=tenant, vehicle=vehicle)
    return _add(settings, tenant, {vehicle: password})[vehicle]


def owntracks_username(tenant: str, vehicle: str) -> str:
    """The MQTT username (and client id) of a vehicle's OwnTracks phone: ``ot.<tenant>.<vehicle>``."""
    return f"ot.{tenant}.{vehicle}"


def add_owntracks_account(
    settings: Settings, tenant: str, vehicle: str, password: str | None = None
) -> tuple[str, str]:
    """Provision the MQTT account of ``vehicle``'s OwnTracks phone; (username, password).
    Idempotent like ``add_device``."""
    _check_ids(tenant=tenant, vehicle=vehicle)
    return owntracks_username(tenant, vehicle), _add(settings, tenant, {vehicle: password}, _OWNTRACKS)[vehicle]


def add_owntracks_accounts(settings: Settings, tenant: str, vehicles: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Provision many OwnTracks accounts with one round of broker commands; {vehicle: (username, password)}."""
    vehicles = list(dict.fromkeys(vehicles))
    for v in vehicles:
        _check_ids(tenant=tenant, vehicle=v)
    passwords = _add(settings, tenant, {v: None for v in vehicles}, _OWNTRACKS)
    return {v: (owntracks_username(tenant, v), passwords[v]) for v in vehicles}


def _username(kind: str | None, tenant: str, vehicle: str) -> str:
    return owntracks_username(tenant, vehicle) if kind == _OWNTRACKS else device_username(tenant, vehicle)


def _add(settings: Settings, tenant: str, wanted: dict[str, str | None], kind: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    changed: list[BrokerAccount] = []
    with _store(settings) as store:
        store.ensure_internal()
        for vehicle, password in wanted.items():
            user = _username(kind, tenant, vehicle)
            current = store.devices.get(user)
            if current is not None and (password is None or password == current["password"]):
                out[vehicle] = current["password"]
                continue
            secret = password if password is not None else _new_secret()
            store.devices[user] = {"tenant": tenant, "vehicle": vehicle, "password": secret}
            if kind is not None:
                store.devices[user]["kind"] = kind
            store.touch("devices")
            out[vehicle] = secret
            changed.append(_device_account(user, store.devices[user]))
        store.save()
        _apply(store, changed)
    return out


def device_password(settings: Settings, tenant: str, vehicle: str) -> str | None:
    """The stored password of a device, or None when it is not provisioned."""
    dev = _read_json(_devices_path(settings)).get(device_username(tenant, vehicle))
    return None if dev is None else str(dev["password"])


def remove_device(settings: Settings, tenant: str, vehicle: str, owntracks: bool = False) -> bool:
    """Deprovision a device (``owntracks``: the vehicle's OwnTracks phone); True when it existed.
    The broker disconnects it, and every session it left (under its client id or, from before
    ids were bound, any other) is ended."""
    username = owntracks_username(tenant, vehicle) if owntracks else device_username(tenant, vehicle)
    return _remove(settings, username, "devices")


def _remove(settings: Settings, username: str, where: str) -> bool:
    with _store(settings) as store:
        table: dict[str, Any] = store.devices if where == "devices" else store.accounts
        if table.pop(username, None) is None:
            return False
        store.ensure_internal()
        store.touch(where)
        store.save()
        _apply(store, [], [username])
        if _running(settings):
            ids = [s.client_id for s in _stored(settings) if s.username == username]
            _end(store, [username, *ids])
    return True


def _stored(settings: Settings) -> list[StoredSession]:
    return dynsec.stored_sessions(broker_paths(settings)["data"] / "mosquitto.sqlite3")


def _end(store: _Store, client_ids: Iterable[str]) -> int:
    try:
        return dynsec.end_sessions(store.settings.mqtt_endpoint(), (_SESSIONS, store.roles[_SESSIONS]), client_ids)
    except dynsec.ControlError as exc:
        raise CredentialsError(f"could not end the sessions of a removed account: {exc}") from None


# ---------------------------------------------------------------- public API: tenant accounts


def tenant_account_username(tenant: str, name: str, role: str) -> str:
    """The MQTT username (and client id) of a tenant account: ``<role>.<tenant>.<name>``."""
    if role not in TENANT_ROLES:
        raise ValueError(f"unknown tenant account role {role!r}: one of {', '.join(TENANT_ROLES)}")
    _check_ids(tenant=tenant, account=name)
    return f"{role}.{tenant}.{name}"


def add_account(settings: Settings, tenant: str, name: str, role: str, password: str | None = None) -> tuple[str, str]:
    """Create (or return) a tenant account: a ``manager`` reads ``alerts/``, ``stops/``, ``etas/``
    and ``open_alerts/`` of ``tenant``; a ``dispatcher`` publishes its plans. (username, password);
    idempotent like ``add_device``."""
    username = tenant_account_username(tenant, name, role)
    with _store(settings) as store:
        store.ensure_internal()
        current = store.accounts.get(username)
        if current is not None and (password is None or password == current["password"]):
            return username, str(current["password"])
        secret = password if password is not None else _new_secret()
        store.accounts[username] = {"tenant": tenant, "name": name, "role": role, "password": secret}
        store.touch("accounts")
        store.save()
        _apply(store, [_tenant_account(username, store.accounts[username])])
        return username, secret


def remove_account(settings: Settings, tenant: str, name: str, role: str) -> bool:
    """Remove a tenant account (disconnected, its sessions ended); True when it existed."""
    return _remove(settings, tenant_account_username(tenant, name, role), "accounts")


def tenant_accounts(settings: Settings, tenant: str | None = None) -> list[dict[str, str]]:
    """The tenant accounts (of ``tenant``, or all), without passwords."""
    rows = _read_json(_accounts_path(settings))
    return [
        {"username": u, "tenant": a["tenant"], "name": a["name"], "role": a["role"]}
        for u, a in sorted(rows.items())
        if tenant is None or a["tenant"] == tenant
    ]


# ---------------------------------------------------------------- sessions left behind


def _filter_within(rule: str, wanted: str) -> bool:
    """True when a subscription to ``wanted`` lies inside the pattern ``rule`` (``+`` and ``#``
    of the rule match any level, as the plugin's subscribePattern does; ``+`` never a ``#``)."""
    rule_levels, levels = rule.split("/"), wanted.split("/")
    for i, part in enumerate(rule_levels):
        if part == "#":
            return True
        if i >= len(levels):
            return False
        if part == "+":
            if levels[i] == "#":
                return False
        elif part != levels[i]:
            return False
    return len(levels) == len(rule_levels)


def _may_subscribe(account: BrokerAccount, topic: str) -> bool:
    for acl in account.acls:
        if acl.kind == "subscribeLiteral" and acl.topic == topic:
            return acl.allow
        if acl.kind == "subscribePattern" and _filter_within(acl.topic, topic):
            return acl.allow
    return False


def sessions_to_end(sessions: Iterable[StoredSession], accounts: Iterable[BrokerAccount]) -> list[StoredSession]:
    """The stored sessions no current rule allows: of an account that is gone; of an account
    bound to one client id but under another; or holding a subscription its account may not
    make (both from before the rules existed). Sessions without a username are left alone."""
    by_name = {a.username: a for a in accounts}
    out = []
    for session in sessions:
        if session.username is None:
            continue
        account = by_name.get(session.username)
        if (
            account is None
            or (account.client_id is not None and session.client_id != account.client_id)
            or not all(_may_subscribe(account, t) for t in session.subscriptions)
        ):
            out.append(session)
    return out


def sweep_sessions(settings: Settings) -> list[str]:
    """End the stored sessions :func:`sessions_to_end` finds (the broker must be running); their
    client ids. A deprovisioning while the broker was down, or sessions from before the
    broker's rules, leave such sessions behind."""
    with _store(settings) as store:
        store.ensure_internal()
        doomed = sessions_to_end(_stored(settings), store.all_accounts())
        if doomed:
            _end(store, [s.client_id for s in doomed])
            log.warning(
                "mosquitto: ended %d stored session(s) no account rule allows: %s",
                len(doomed),
                ", ".join(f"{s.client_id} ({s.username})" for s in doomed[:10]),
            )
    return [s.client_id for s in doomed]
