"""A local certificate authority for the embedded broker's TLS listener, made on first use.

``ensure_tls_files(dir, host)`` keeps in ``dir``: ``ca.crt`` and ``ca.key`` (the CA, ten years),
``server.crt`` and ``server.key`` (the broker's certificate, signed by the CA, for ``host``,
``localhost``, ``127.0.0.1`` and this machine's name). A device trusts ``ca.crt``
(paho: ``client.tls_set(ca_certs="ca.crt")``). An existing CA is kept; the server certificate is
made again when the listener's host changes or it is within 30 days of expiry.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest that Apple's and browsers' TLS stacks accept
RENEW_BEFORE = timedelta(days=30)
_WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    server_name: str  # a name in the certificate that clients can use to reach the listener


def _names(host: str) -> list[str]:
    names = [host] if host not in _WILDCARDS else []
    names += ["localhost", "127.0.0.1", socket.gethostname()]
    return list(dict.fromkeys(names))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for n in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            general.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(general)


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        if owner is not None:
            os.fchown(out.fileno(), *owner)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(d: Path, now: datetime, owner: tuple[int, int] | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citywatch local CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "citywatch")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(d / "ca.key", _pem_key(key), 0o600, owner)
    _write(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644, owner)


def _server_current(d: Path, names: list[str], now: datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
        ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    except (OSError, ValueError):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return (san == _san(names) and cert.issuer == ca.subject
            and cert.not_valid_after_utc - RENEW_BEFORE > now
            and (d / "server.key").exists())


def _make_server(d: Path, names: list[str], now: datetime, owner: tuple[int, int] | None) -> None:
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{d / 'ca.key'}: expected an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=SERVER_DAYS))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(d / "server.key", _pem_key(key), 0o600, owner)
    _write(d / "server.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644, owner)


def ensure_tls_files(d: Path, host: str, owner: tuple[int, int] | None = None,
                     now: datetime | None = None) -> TlsFiles:
    """The CA and server certificate in ``d``, made when missing (see the module's docstring);
    ``owner`` (uid, gid) gets the files, so a broker running as that user can read its key."""
    now = now or datetime.now(UTC)
    d.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(d, *owner)
    if not (d / "ca.crt").exists() or not (d / "ca.key").exists():
        _make_ca(d, now, owner)
    names = _names(host)
    if not _server_current(d, names, now):
        _make_server(d, names, now, owner)
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", names[0])
