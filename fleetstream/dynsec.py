"""The broker's accounts through Mosquitto's dynamic-security plugin.

Why this plugin: Mosquitto's ACL file restricts publishes and deliveries but grants every
SUBSCRIBE (in every 2.0 and 2.1 release), so a device could join the gateway's shared
subscription and make other tenants' readings disappear; and it cannot bind a client id to
an account. The plugin checks SUBSCRIBE against the whole filter (``$share/<group>/``
included) and refuses it with SUBACK 0x87 (MQTT 5) or 0x80 (3.1.1), and an account with a
bound client id may connect under that id only (any other: CONNACK 0x87 / 5, before the
broker looks for a session to take over, so the victim is neither kicked nor wiped).

Each account is one plugin *client* with one *role* of its own (``acct:<username>``) that
holds its rules; nothing is allowed by default (deliveries included). The plugin's file is
generated from the secret files while the broker is stopped (:func:`config_document`): the
plugin never re-reads it and overwrites it on its next change, so while the broker runs,
changes are commands on ``$CONTROL/dynamic-security/v1`` (:func:`send_commands`), many per
message (Mosquitto 2.1 saves the file once per message).

Deleting an account kicks its connection but keeps its session, subscriptions and queue:
:func:`end_sessions` takes each of its client ids over with a clean start and session expiry
0, which removes the session. :func:`stored_sessions` lists the sessions the persist-sqlite
plugin holds, so every session of a removed account is found, not only its bound id.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACL_TYPES",
    "CONTROL_TOPIC",
    "Acl",
    "BrokerAccount",
    "ControlError",
    "StoredSession",
    "account_commands",
    "config_document",
    "end_sessions",
    "removal_commands",
    "role_name",
    "send_commands",
    "stored_sessions",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ACL_TYPES = (
    "publishClientSend",  # the client may publish to matching topics
    "publishClientReceive",  # the broker may deliver matching topics to the client
    "subscribeLiteral",  # the client may subscribe with exactly this filter
    "subscribePattern",  # ... with a filter inside this one (+ and # of the rule match any level)
    "unsubscribeLiteral",
    "unsubscribePattern",
)
# Offline hashes: PBKDF2-HMAC-SHA512, 64 bytes, 12-byte salt, as the plugin reads them in its
# 2.0 and 2.1 versions. The passwords are 192-bit random tokens, so iterations add nothing
# against guessing; the plugin's own default for this format is 101.
_ITERATIONS = 101
_SALT_BYTES = 12
_COMMANDS_PER_MESSAGE = 200  # the broker handles one message at a time: bounded pauses, bounded packets
_IGNORED_ERRORS = {"deleteClient": "Client not found", "deleteRole": "Role not found"}


class ControlError(RuntimeError):
    """The broker refused or did not answer a dynamic-security command."""


@dataclass(frozen=True, slots=True)
class Acl:
    """One rule of a role: ``kind`` is one of :data:`ACL_TYPES`."""

    kind: str
    topic: str
    allow: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ACL_TYPES:
            raise ValueError(f"unknown ACL type {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"acltype": self.kind, "topic": self.topic, "allow": self.allow, "priority": 0}


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """An MQTT account: its rules, and the one client id it may use (None: any)."""

    username: str
    password: str = field(repr=False)
    acls: tuple[Acl, ...]
    client_id: str | None = None


def role_name(username: str) -> str:
    """The plugin role holding ``username``'s rules."""
    return f"acct:{username}"


def _hash(password: str, salt: bytes) -> str:
    return base64.b64encode(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS, 64)).decode()


def config_document(accounts: Iterable[BrokerAccount]) -> dict[str, Any]:
    """The plugin's configuration file for ``accounts`` (new salts every time)."""
    clients, roles = [], []
    for account in sorted(accounts, key=lambda a: a.username):
        salt = os.urandom(_SALT_BYTES)
        client: dict[str, Any] = {
            "username": account.username,
            "password": _hash(account.password, salt),
            "salt": base64.b64encode(salt).decode(),
            "iterations": _ITERATIONS,
            "roles": [{"rolename": role_name(account.username)}],
        }
        if account.client_id is not None:
            client["clientid"] = account.client_id
        clients.append(client)
        roles.append({"rolename": role_name(account.username), "acls": [a.to_json() for a in account.acls]})
    return {
        # nothing by default, deliveries included: a subscription receives only what its rules allow
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "roles": roles,
        "groups": [],
    }


def removal_commands(username: str) -> list[dict[str, Any]]:
    """Commands that delete ``username``'s client (kicking its connection) and role."""
    return [
        {"command": "deleteClient", "username": username},
        {"command": "deleteRole", "rolename": role_name(username)},
    ]


def account_commands(account: BrokerAccount) -> list[dict[str, Any]]:
    """Commands that (re)create ``account``: whatever it was before is deleted first."""
    client: dict[str, Any] = {
        "command": "createClient",
        "username": account.username,
        "password": account.password,
        "roles": [{"rolename": role_name(account.username)}],
    }
    if account.client_id is not None:
        client["clientid"] = account.client_id
    return [
        *removal_commands(account.username),
        {
            "command": "createRole",
            "rolename": role_name(account.username),
            "acls": [a.to_json() for a in account.acls],
        },
        client,
    ]


def _mqtt_client(client_id: str, account: tuple[str, str]) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(*account)
    return client


def _connect(client: Any, endpoint: tuple[str, int], timeout_s: float, clean_start: bool = True) -> None:
    """Connect and wait for the CONNACK; ControlError when refused or silent."""
    got: list[int] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        got.append(int(reason.value))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(*endpoint, keepalive=30, clean_start=clean_start)
    except OSError as exc:
        raise ControlError(f"broker {endpoint[0]}:{endpoint[1]} unreachable: {exc}") from None
    client.loop_start()
    if not done.wait(timeout_s):
        raise ControlError(f"no CONNACK from {endpoint[0]}:{endpoint[1]} within {timeout_s} s")
    if got[0] != 0:
        raise ControlError(f"broker refused the connection (reason {got[0]:#x})")


def send_commands(
    endpoint: tuple[str, int], account: tuple[str, str], commands: Sequence[dict[str, Any]], timeout_s: float = 30.0
) -> None:
    """Run ``commands`` on the broker's dynamic-security plugin as ``account``, in order, up to
    :data:`_COMMANDS_PER_MESSAGE` per message. Raises ControlError naming the first command
    that failed (deleting what is not there is no failure)."""
    if not commands:
        return
    client = _mqtt_client(f"fs-control-{uuid.uuid4().hex[:12]}", account)
    answers: dict[str, dict[str, Any]] = {}  # correlationData -> response
    cond = threading.Condition()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        # every admin connection gets every response: each command carries its own correlationData
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with cond:
            for response in responses if isinstance(responses, list) else []:
                if isinstance(response, dict) and isinstance(response.get("correlationData"), str):
                    answers[response["correlationData"]] = response
            cond.notify_all()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        _connect(client, endpoint, timeout_s)
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(timeout_s):
            raise ControlError("no SUBACK for the dynamic-security response topic")
        for start in range(0, len(commands), _COMMANDS_PER_MESSAGE):
            key = uuid.uuid4().hex
            part = [
                {**c, "correlationData": f"{key}:{i}"}
                for i, c in enumerate(commands[start : start + _COMMANDS_PER_MESSAGE])
            ]
            client.publish(CONTROL_TOPIC, json.dumps({"commands": part}).encode(), qos=1)
            wanted = [c["correlationData"] for c in part]
            with cond:
                if not cond.wait_for(lambda wanted=wanted: all(w in answers for w in wanted), timeout_s):  # type: ignore[misc]
                    raise ControlError(
                        f"no answer from the broker's dynamic-security plugin within {timeout_s} s "
                        "(is the broker running with the configuration fleetstream generates? restart it)"
                    )
                responses = [answers.pop(w) for w in wanted]
            for command, response in zip(part, responses, strict=True):
                error = response.get("error")
                if error and error != _IGNORED_ERRORS.get(command["command"]):
                    who = command.get("username") or command.get("rolename")
                    raise ControlError(f"{command['command']} {who}: {error}")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


def end_sessions(
    endpoint: tuple[str, int], account: tuple[str, str], client_ids: Iterable[str], timeout_s: float = 10.0
) -> int:
    """Remove the sessions of ``client_ids``: ``account`` (one whose client id is not bound)
    connects under each with a clean start and session expiry 0, then disconnects. The
    broker kicks a connection still using the id. Returns how many were ended."""
    ended = 0
    for client_id in dict.fromkeys(client_ids):
        client = _mqtt_client(client_id, account)
        try:
            _connect(client, endpoint, timeout_s, clean_start=True)  # no SessionExpiryInterval: 0
            ended += 1
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()
    return ended


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session the broker keeps: its client id, the account that made it, its subscriptions."""

    client_id: str
    username: str | None
    subscriptions: tuple[str, ...]


def stored_sessions(database: Path, attempts: int = 20) -> list[StoredSession]:
    """The sessions in the persist-sqlite plugin's database (read only; it commits every
    second, so a session made in the last second may be missing). [] without the database."""
    if not database.exists():
        return []
    for attempt in range(attempts):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
                subs: dict[str, list[str]] = {}
                for client_id, topic in conn.execute("SELECT client_id, topic FROM subscriptions"):
                    subs.setdefault(client_id, []).append(topic)
                rows = conn.execute("SELECT client_id, username FROM clients").fetchall()
            return [StoredSession(c, u, tuple(sorted(subs.get(c, ())))) for c, u in rows]
        except sqlite3.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    return []
