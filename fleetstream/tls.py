"""The embedded services' certificates: a CA of their own and the certificates it signs.

Everything lives in ``<state_dir>/tls``: ``ca.crt`` (what devices and clients verify the
broker against; public), ``ca.key`` (the CA's private key, mode 0600, owned by the user
that runs the services), ``server.crt`` / ``server.key`` (the broker's TLS listener; a copy
of the pair for each service user that reads it: ``mosquitto/``, ``postgres/``).

* The CA is created on the first start that needs it and kept: ECDSA P-256, valid 10 years.
* The server certificate is issued again whenever it is missing, expires within
  ``RENEW_BEFORE_DAYS``, was signed by another CA, or does not name every address the
  services listen on (``mqtt_host``, ``mqtt_also_listen``, ``pg_host``, ``localhost``, the
  host name): valid ``SERVER_DAYS`` days.
* :func:`issue_client_certificate` signs a certificate for a device (the edge agent presents
  it when the broker asks for one: ``mqtt_tls_require_certificate``).

Rotation is in docs/security.md: a new server certificate is automatic; a new CA means
moving ``tls/`` away, starting the services (a new CA is made) and giving devices the new
``ca.crt`` (during the change a device may trust both: a CA file can hold several).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.settings import Settings
from fleetstream.state import state_path

__all__ = [
    "CA_DAYS",
    "RENEW_BEFORE_DAYS",
    "SERVER_DAYS",
    "ClientCertificate",
    "TlsFiles",
    "ca_file",
    "ensure_server_files",
    "issue_client_certificate",
    "server_names",
    "tls_dir",
]

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity clients commonly accept for a server certificate
RENEW_BEFORE_DAYS = 30
CLIENT_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and one service's copy of the server certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate and its key (PEM files), and the CA that signed it."""

    cert: Path
    key: Path
    ca_cert: Path


def tls_dir(settings: Settings) -> Path:
    return state_path(settings) / "tls"


def ca_file(settings: Settings) -> Path:
    """The CA certificate (PEM) devices verify the broker against (it may not exist yet:
    the services create it on their first start)."""
    return tls_dir(settings) / "ca.crt"


def server_names(settings: Settings) -> list[str]:
    """Every name and address the server certificate must carry."""
    names = ["localhost", "127.0.0.1", "::1", settings.mqtt_host, settings.pg_host, *settings.mqtt_also_listen_on()]
    with contextlib.suppress(OSError):
        names.append(socket.gethostname())
    wild = {"0.0.0.0", "::", ""}  # every interface: the names above and the host's own cover it
    return list(dict.fromkeys(n for n in names if n not in wild))


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(settings: Settings) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA, created on first use (its key 0600)."""
    folder = tls_dir(settings)
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC key")
        os.chmod(key_path, 0o600)  # whatever happened to it since
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # ca.crt is public; the keys in here are 0600
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetstream"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fleetstream CA {socket.gethostname()}"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)  # the key first: a CA certificate never exists without it
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common_name: str, days: int, server_names: list[str] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names is not None:
        builder = builder.add_extension(_san(server_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _server_cert_fits(path: Path, ca_cert: x509.Certificate, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=RENEW_BEFORE_DAYS):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    held = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    return wanted <= held


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def ensure_server_files(settings: Settings, service: str, owner: tuple[int, int] | None) -> TlsFiles:
    """The CA (created on first use) and ``service``'s copy of a server certificate naming every
    address of :func:`server_names` (issued again when it does not fit: see the module doc),
    its key 0600 and owned by ``owner`` (the service's OS user; None: ours)."""
    folder = tls_dir(settings)
    ca = _load_ca(settings)
    main_cert, main_key = folder / "server.crt", folder / "server.key"
    names = server_names(settings)
    if not _server_cert_fits(main_cert, ca[0], names) or not main_key.exists():
        cert, key = _leaf(ca, names[0] if names else "localhost", SERVER_DAYS, names)
        _write(main_key, _key_pem(key), 0o600)
        _write(main_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    copy = folder / service
    copy.mkdir(parents=True, exist_ok=True)
    os.chmod(copy, 0o700)
    if owner is not None:
        os.chown(copy, *owner)
    files = TlsFiles(folder / "ca.crt", copy / "server.crt", copy / "server.key")
    for src, dst, mode in ((main_cert, files.cert, 0o644), (main_key, files.key, 0o600)):
        data = src.read_bytes()
        try:
            same = dst.read_bytes() == data
        except FileNotFoundError:
            same = False
        if not same:
            _write(dst, data, mode, owner)
    return files


def issue_client_certificate(settings: Settings, common_name: str, out_dir: Path) -> ClientCertificate:
    """Sign a client certificate for ``common_name`` (e.g. a device's username) with the
    services' CA; writes ``<out_dir>/<common_name>.crt``, ``.key`` (0600) and ``ca.crt``."""
    ca = _load_ca(settings)
    cert, key = _leaf(ca, common_name, CLIENT_DAYS, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = ClientCertificate(out_dir / f"{common_name}.crt", out_dir / f"{common_name}.key", out_dir / "ca.crt")
    _write(out.key, _key_pem(key), 0o600)
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
    return out
