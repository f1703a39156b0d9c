"""The broker's TLS listener against the real Mosquitto, engine and database.

The services make a CA of their own under ``<state_dir>/tls`` on their first start (its key
0600) and a server certificate naming the broker's addresses; devices verify the broker
against that CA (the edge agent with ``ca_file``), and present a client certificate signed by
it when the broker asks for one (``mqtt_tls_require_certificate``).
"""

from __future__ import annotations

import ssl
import stat
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from core.contract import GpsFix, encode_single
from core.settings import Settings
from edge.publisher import DevicePublisher
from fleetstream import credentials, services, tls
from fleetstream.engine import Engine
from store.db import migrate
from tests.integration.test_edge_agent import AgentProcess, new_outbox, stored_seqs, write_config
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(services_settings: Settings) -> Iterator[Engine]:
    migrate(services_settings.dsn())
    eng = Engine(services_settings, with_flow=False, with_dispatch=False, with_delivery=False, with_api=False)
    eng.start()
    eng.wait_ready()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture()
def tenant() -> str:
    return f"tls{uuid.uuid4().hex[:8]}"


def test_the_services_made_a_ca_and_say_where_it_is(services_settings: Settings) -> None:
    status = services.status(services_settings)["mosquitto"]
    assert status["tls_port"] == services_settings.mqtt_tls_port
    ca_file = Path(status["ca_file"])
    assert ca_file == tls.ca_file(services_settings) and ca_file.is_file()
    key = ca_file.parent / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = x509.load_pem_x509_certificate((ca_file.parent / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    # the broker's copy of the key is its own user's, mode 0600
    broker_key = ca_file.parent / "mosquitto" / "server.key"
    assert stat.S_IMODE(broker_key.stat().st_mode) == 0o600


def test_a_device_publishes_over_tls_verifying_the_ca(
    services_settings: Settings, engine: Engine, db: Any, tenant: str
) -> None:
    settings = services_settings
    password = credentials.add_device(settings, tenant, "van-1")
    host, port = settings.mqtt_host, settings.mqtt_tls_port
    # without the CA (the system's trust store only) the broker is not trusted: nothing is sent
    stranger = DevicePublisher(
        host, port, f"{tenant}.van-1", password, tls_ca_file=ssl.get_default_verify_paths().cafile or "/dev/null"
    )
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        stranger.connect(timeout=3)
    stranger.close()
    device = DevicePublisher(host, port, f"{tenant}.van-1", password, tls_ca_file=str(tls.ca_file(settings)))
    device.connect(timeout=10)
    base = datetime.now(UTC) - timedelta(minutes=30)
    try:
        for seq in range(50):
            device.publish(*encode_single(GpsFix(tenant, "van-1", seq, base + timedelta(seconds=seq), 60.2, 24.9)))
        assert device.flush(30)
    finally:
        device.close()
    wait_until(lambda: len(stored_seqs(db, tenant, "van-1")) == 50, 30, "50 readings over TLS stored")


def test_the_agent_presents_a_client_certificate_when_the_broker_asks(
    services_settings: Settings, engine: Engine, db: Any, tenant: str, tmp_path: Path
) -> None:
    settings = services_settings
    password = credentials.add_device(settings, tenant, "van-1")
    cert = tls.issue_client_certificate(settings, f"{tenant}.van-1", tmp_path / "certs")
    assert stat.S_IMODE(cert.key.stat().st_mode) == 0o600
    strict = replace(settings, mqtt_tls_require_certificate=1)
    services.restart_broker(strict)
    try:
        # no certificate: the handshake is refused, the password is never even asked for
        without = DevicePublisher(
            settings.mqtt_host, settings.mqtt_tls_port, f"{tenant}.van-1", password, tls_ca_file=str(cert.ca_cert)
        )
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            without.connect(timeout=3)
        without.close()
        new_outbox(tmp_path)
        config = write_config(
            tmp_path / "edge.toml",
            settings,
            tenant,
            "van-1",
            password,
            gps_hz=20,
            temp_hz=0,
            door_toggle_s=None,
            broker_port=settings.mqtt_tls_port,
            broker_extra=f'ca_file = "{cert.ca_cert}"\ncert_file = "{cert.cert}"\nkey_file = "{cert.key}"',
        )
        agent = AgentProcess(config).start()
        try:
            wait_until(lambda: len(stored_seqs(db, tenant, "van-1")) >= 20, 60, "the agent's readings over TLS")
        finally:
            assert agent.terminate() == 0
        assert "SSL" not in agent.log.read_text()
    finally:
        services.restart_broker(settings)  # the suite's broker as it was (the shards reconnect)
