"""Certificates for tests, the local cluster and the benchmark: a CA, agent certificates that
carry the agents' shared name (TLS_SERVER_NAME) as a DNS SAN, admin client certificates, and
expired ones. Written with the `cryptography` library (the `test` extra) into a directory the
caller owns; production certificates come from openssl or cert-manager (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "gossip-agent"
_DAY = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Authority:
    name: str
    cert: Path
    key: Path
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate

    def issue(
        self, directory: Path, name: str, *, dns: tuple[str, ...] = (SERVER_NAME,),
        ips: tuple[str, ...] = ("127.0.0.1",), expired: bool = False,
    ) -> Issued:
        """A leaf for `name` (its CN) valid for client and server use; `expired`: its
        validity ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 30 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in (name, *dns)]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return _write(directory, name, key, cert)


def authority(directory: Path, name: str = "gossip-agent-ca") -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY).not_valid_after(now + 365 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    issued = _write(directory, name, key, cert)
    return Authority(name=name, cert=issued.cert, key=issued.key, _key=key, _cert=cert)


def _write(
    directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert=cert_path, key=key_path)


def tls_env(*, ca: Authority, leaf: Issued) -> dict[str, str]:
    """The agent's TLS variables for one issued certificate."""
    return {"TLS_CERT": str(leaf.cert), "TLS_KEY": str(leaf.key), "TLS_CA": str(ca.cert)}
