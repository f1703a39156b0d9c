"""Tracker identities and profiles as `fleetstream device add` takes them."""

from __future__ import annotations

import pytest

from core.contract import ContractError
from fleetstream.trackers import parse_door_inputs
from ingest.protocols.common import Profile, check_identity, derived_seq


def test_identities_per_protocol() -> None:
    assert check_identity("teltonika", "356307042441013") == "356307042441013"
    assert check_identity("osmand", "48241179") == "48241179"
    assert check_identity("owntracks", "ot.acme.van-9") == "ot.acme.van-9"
    for protocol, bad in (("teltonika", "35630704244101X"), ("gt06", "1234"), ("osmand", "a b"), ("osmand", "x" * 65)):
        with pytest.raises(ContractError) as err:
            check_identity(protocol, bad)
        assert err.value.reason == "unknown_device"
    with pytest.raises(ValueError, match="unknown protocol"):
        check_identity("queclink", "1")


def test_door_inputs_and_profiles() -> None:
    assert parse_door_inputs(["1=rear", " 2 = side "]) == {1: "rear", 2: "side"}
    for bad in ("rear", "x=rear", "1="):
        with pytest.raises(ValueError, match="INPUT=DOOR"):
            parse_door_inputs([bad])
    profile = Profile.from_json({"doors": {"1": "rear"}})
    assert dict(profile.doors) == {1: "rear"} and Profile.from_json(profile.to_json()) == profile
    assert Profile.from_json(None) == Profile()


def test_derived_seq_slots() -> None:
    from datetime import UTC, datetime

    t = datetime(2026, 11, 22, 12, 0, 0, 250_000, tzinfo=UTC)
    assert derived_seq(t) == 1_795_348_800_250_000 and derived_seq(t, 1, 7) == 1_795_348_800_250_107
    with pytest.raises(ValueError):
        derived_seq(t, 0, 100)
