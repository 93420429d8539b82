"""A throwaway test PKI built with ``cryptography``: one CA, end-entity certificates.

Keys are RSA 2048 or ECDSA P-256. End-entity certificates carry the identity as a
DNS subjectAltName (IP SANs optional), which is what charon matches a FQDN id against.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ecdsa"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r}")


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey
    key_type: KeyType

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def subject(self) -> str:
        """The subject DN in RFC 4514 form (charon accepts it as an ``id``)."""
        return self.cert.subject.rfc4514_string()

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        """Write the certificate (and the key, if a path is given) as PEM files."""
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(self.cert_pem)
        if key_path is not None:
            key_path.parent.mkdir(parents=True, exist_ok=True)
            key_path.write_bytes(self.key_pem)
            key_path.chmod(0o600)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)


def make_ca(cn: str = "mpa-ike test CA", key_type: KeyType = "rsa") -> Credential:
    """A self-signed CA certificate."""
    key = new_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpa-ike"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    return Credential(cert, key, key_type)


def make_cert(
    ca: Credential,
    identity: str,
    key_type: KeyType = "rsa",
    *,
    san_dns: Sequence[str] = (),
    san_ip: Sequence[str] = (),
    server: bool = True,
) -> Credential:
    """An end-entity certificate issued by ``ca``.

    ``identity`` becomes the CN and the first DNS SAN; ``san_dns``/``san_ip`` add more.
    """
    key = new_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpa-ike"),
            x509.NameAttribute(NameOID.COMMON_NAME, identity),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(identity)]
    sans += [x509.DNSName(d) for d in san_dns if d != identity]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in san_ip]
    eku = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Credential(cert, key, key_type)
