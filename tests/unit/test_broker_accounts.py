"""The broker's accounts as the dynamic-security plugin gets them, and which stored sessions no
rule allows (pure: no broker)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from core.settings import Settings
from fleetstream import credentials, dynsec
from fleetstream.credentials import SERVICE_ROLES, sessions_to_end
from fleetstream.dynsec import Acl, BrokerAccount, StoredSession


def accounts(tmp_path: Path) -> dict[str, BrokerAccount]:
    settings = Settings(state_dir=tmp_path, mqtt_url="mqtt://nobody@127.0.0.1:1")  # no broker to tell
    credentials.add_devices(settings, "acme", ["van-1"])
    credentials.add_owntracks_account(settings, "acme", "van-2")
    credentials.add_account(settings, "acme", "desk", "manager")
    credentials.add_account(settings, "acme", "planner", "dispatcher")
    credentials.service_account(settings, "gateway")
    credentials.write_broker_config(settings)
    return {a.username: a for a in credentials.broker_accounts(settings)}


def test_every_account_outside_the_engine_is_bound_to_its_username(tmp_path: Path) -> None:
    by_name = accounts(tmp_path)
    for user in ("acme.van-1", "ot.acme.van-2", "manager.acme.desk", "dispatcher.acme.planner"):
        assert by_name[user].client_id == user
    for role in ("gateway", "control", "sessions"):
        assert by_name[role].client_id is None


def test_the_plugin_file_refuses_by_default_and_hashes_every_password(tmp_path: Path) -> None:
    by_name = accounts(tmp_path)
    doc = json.loads((tmp_path / "mosquitto" / "dynsec" / "dynamic-security.json").read_text())
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    for client in doc["clients"]:
        account = by_name[client["username"]]
        salt = base64.b64decode(client["salt"])
        expected = hashlib.pbkdf2_hmac("sha512", account.password.encode(), salt, client["iterations"], 64)
        assert base64.b64decode(client["password"]) == expected and len(salt) == 12
        assert account.password not in json.dumps(client)
        assert client["roles"] == [{"rolename": dynsec.role_name(account.username)}]
    device_role = next(r for r in doc["roles"] if r["rolename"] == "acct:acme.van-1")
    assert {(a["acltype"], a["topic"]) for a in device_role["acls"]} == {
        ("publishClientSend", "fleet/acme/van-1/#"),
        ("subscribePattern", "fleet/acme/van-1/cmd/#"),
        ("publishClientReceive", "fleet/acme/van-1/cmd/#"),
    }
    manager = next(r for r in doc["roles"] if r["rolename"] == "acct:manager.acme.desk")
    assert {a["topic"] for a in manager["acls"]} == {
        "alerts/acme/#",
        "stops/acme/#",
        "etas/acme/#",
        "open_alerts/acme/#",
    }
    assert not any(a["acltype"] == "publishClientSend" for a in manager["acls"])


def test_tenant_account_names_and_roles_are_checked() -> None:
    assert credentials.tenant_account_username("acme", "desk", "manager") == "manager.acme.desk"
    with pytest.raises(ValueError, match="unknown tenant account role"):
        credentials.tenant_account_username("acme", "desk", "admin")
    with pytest.raises(ValueError, match="bad account id"):
        credentials.tenant_account_username("acme", "de.sk", "manager")
    with pytest.raises(ValueError, match="unknown service role"):
        credentials.service_account(Settings(mqtt_url="mqtt://x@h:1"), "root")


DEVICE = BrokerAccount(
    "acme.van-1",
    "pw",
    (Acl("publishClientSend", "fleet/acme/van-1/#"), Acl("subscribePattern", "fleet/acme/van-1/cmd/#")),
    client_id="acme.van-1",
)
GATEWAY = BrokerAccount("gateway", "pw", SERVICE_ROLES["gateway"])


@pytest.mark.parametrize(
    ("session", "ends"),
    [
        (StoredSession("acme.van-1", "acme.van-1", ("fleet/acme/van-1/cmd/#",)), False),
        (StoredSession("acme.van-1", "acme.van-1", ("fleet/acme/van-1/cmd/stored",)), False),
        (StoredSession("acme.van-1", "acme.van-1", ()), False),
        # from before the rules: the share group, a wildcard, another id
        (StoredSession("acme.van-1", "acme.van-1", ("$share/fleetstream/fleet/+/+/+",)), True),
        (StoredSession("acme.van-1", "acme.van-1", ("fleet/acme/+/cmd/#",)), True),
        (StoredSession("thief", "acme.van-1", ()), True),
        (StoredSession("acme.gone", "acme.gone", ()), True),  # its account was removed
        (StoredSession("fleetstream-gw-0", "gateway", ("$share/fleetstream/fleet/+/+/+",)), False),
        (StoredSession("fleetstream-dispatch", "gateway", ("dispatch/+/plan",)), False),
        (StoredSession("fleetstream-gw-0", "gateway", ("#",)), True),
        (StoredSession("anonymous-left-over", None, ("#",)), False),  # no account: nothing to judge by
    ],
)
def test_which_stored_sessions_no_rule_allows(session: StoredSession, ends: bool) -> None:
    assert (sessions_to_end([session], [DEVICE, GATEWAY]) == [session]) is ends
