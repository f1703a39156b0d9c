"""Provisioning tracker identities: ``fleetstream device add TENANT VEHICLE --protocol ...``.

Teltonika and GT06 trackers are known by their IMEI, Traccar Client phones by their OsmAnd
device id; the identity goes into the store's ``trackers`` table, where the front ends look it
up. An OwnTracks phone gets its own MQTT account (``credentials.add_owntracks_account``) and its
user name is its identity.
"""

from __future__ import annotations

import zlib
from typing import Any

import psycopg

from core.contract import ContractError, topic_for
from core.settings import Settings
from fleetstream import credentials
from ingest.protocols.common import PROTOCOLS, Profile, check_identity
from store.db import connect, migrate
from store.trackers import list_trackers, store_tracker, store_trackers

__all__ = ["PROTOCOLS", "add_tracker", "parse_door_inputs", "simulated_trackers", "trackers"]

SIMULATED_DOORS = {1: "rear"}  # a simulated Teltonika box's DIN1 is the rear door (sim.simulator.DOOR_ID)


def parse_door_inputs(items: list[str]) -> dict[int, str]:
    """``["1=rear", "2=side"]`` -> {1: "rear", 2: "side"} (Teltonika digital inputs to doors)."""
    doors = {}
    for item in items:
        number, sep, door = item.partition("=")
        if not sep or not number.strip().isdigit() or not door.strip():
            raise ValueError(f"--door-input {item!r}: write INPUT=DOOR, e.g. 1=rear")
        doors[int(number)] = door.strip()
    return doors


def add_tracker(
    settings: Settings,
    tenant: str,
    vehicle: str,
    protocol: str,
    identity: str | None = None,
    doors: dict[int, str] | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """Register a tracker of ``vehicle``; returns what its device must be set up with."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    try:
        topic_for(tenant, vehicle, "gps")  # tenant and vehicle ids as the contract's
    except ContractError as exc:
        raise ValueError(exc.detail) from None
    out: dict[str, Any] = {"tenant": tenant, "vehicle": vehicle, "protocol": protocol}
    if protocol == "owntracks":
        username, secret = credentials.add_owntracks_account(settings, tenant, vehicle, password)
        identity = username
        host, port = settings.mqtt_endpoint()
        out.update(
            {
                "username": username,
                "password": secret,
                "host": host,
                "port": port,
                "topic": f"owntracks/{username}/<device>",
            }
        )
    else:
        if not identity:
            raise ValueError(f"--protocol {protocol} needs --imei (the IMEI, or the OsmAnd device id)")
        try:
            check_identity(protocol, identity)
        except ContractError as exc:
            raise ValueError(exc.detail) from None
        out.update(
            {"identity": identity, "host": settings.device_listen_host, "port": settings.listener_ports().get(protocol)}
        )
    profile = Profile.from_json({"doors": doors or {}}).to_json()
    with connect(settings.dsn(), autocommit=True) as conn:
        try:
            before = store_tracker(conn, protocol, identity, tenant, vehicle, profile)
        except psycopg.errors.UndefinedTable:  # a database the engine has not set up yet
            migrate(settings.dsn())
            before = store_tracker(conn, protocol, identity, tenant, vehicle, profile)
    if doors:
        out["doors"] = profile["doors"]
    if before is not None and before != (tenant, vehicle):
        out["moved_from"] = f"{before[0]}/{before[1]}"
    return out


def trackers(settings: Settings, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every registered tracker identity (of ``tenant``)."""
    with connect(settings.dsn(), autocommit=True) as conn:
        rows = list_trackers(conn, tenant)
    return [
        {"protocol": p, "identity": i, "tenant": t, "vehicle": v, **({"profile": prof} if prof.get("doors") else {})}
        for p, i, t, v, prof in rows
    ]


def simulated_trackers(settings: Settings, vehicles: list[str]) -> list[dict[str, Any]]:
    """Provision trackers for the last ``sim_protocol_share`` of ``vehicles`` (the protocols of
    ``sim_protocols`` in turn): Teltonika and GT06 IMEIs and OsmAnd ids derived from the tenant and
    vehicle (the same every run), OwnTracks accounts. Returns {vehicle, protocol, identity, password}."""
    protocols = [p.strip() for p in settings.sim_protocols.split(",") if p.strip()]
    if not protocols:
        return []
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"sim_protocols: unknown {', '.join(unknown)} (one of {', '.join(PROTOCOLS)})")
    off = [p for p in protocols if p != "owntracks" and p not in settings.listener_ports()]
    if off:
        raise ValueError(f"sim_protocols: the {', '.join(off)} listener is off (its port setting is 0)")
    count = round(len(vehicles) * settings.sim_protocol_share)
    chosen = vehicles[len(vehicles) - count :]
    by_van = {v: protocols[i % len(protocols)] for i, v in enumerate(chosen)}
    tenant = settings.tenant
    phones = credentials.add_owntracks_accounts(settings, tenant, [v for v, p in by_van.items() if p == "owntracks"])
    out, rows = [], []
    for index, (vehicle, protocol) in enumerate(by_van.items()):
        password = None
        if protocol == "owntracks":
            identity, password = phones[vehicle]
        elif protocol == "osmand":
            identity = f"{tenant}-{vehicle}"
        else:  # 15 digits, stable for the tenant and van
            identity = f"86{zlib.crc32(f'{tenant}/{vehicle}'.encode()):010d}{index % 1000:03d}"
        doors = SIMULATED_DOORS if protocol == "teltonika" else {}
        rows.append((protocol, identity, tenant, vehicle, Profile.from_json({"doors": doors}).to_json()))
        out.append({"vehicle": vehicle, "protocol": protocol, "identity": identity, "password": password})
    migrate(settings.dsn())
    with connect(settings.dsn(), autocommit=True) as conn:
        store_trackers(conn, rows)
    return out
