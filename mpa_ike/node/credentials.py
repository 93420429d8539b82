"""The gateway's X.509 credential from files: certificates, private key, and their match."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mpa_ike.certificates import CertificateCredential
from mpa_ike.crypto.auth import SigningKey
from mpa_ike.errors import ConfigError


def load_certificates(file: Path, key: str) -> tuple[x509.Certificate, ...]:
    """Every PEM (or the one DER) certificate in ``file``; ConfigError naming ``key``."""
    data = _read(file, key)
    try:
        if b"-----BEGIN" in data:
            return tuple(x509.load_pem_x509_certificates(data))
        return (x509.load_der_x509_certificate(data),)
    except ValueError:
        raise ConfigError(f"no X.509 certificate in '{file}'", key=key) from None


def load_private_key(file: Path, key: str) -> SigningKey:
    data = _read(file, key)
    try:
        if b"-----BEGIN" in data:
            loaded = serialization.load_pem_private_key(data, password=None)
        else:
            loaded = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"no unencrypted private key in '{file}'", key=key) from None
    if not isinstance(
        loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(f"unsupported key type in '{file}' (RSA, ECDSA or Ed25519)", key=key)
    return loaded


def _read(file: Path, key: str) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read '{file}': {error.strerror}", key=key) from None


def credential(certificate: Path, private_key: Path) -> CertificateCredential:
    """The gateway's key and chain; the key must belong to the first certificate."""
    chain = load_certificates(certificate, "certificate")
    key = load_private_key(private_key, "private_key")
    der = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, der)
    theirs = chain[0].public_key().public_bytes(serialization.Encoding.DER, der)
    if ours != theirs:
        raise ConfigError("does not match the certificate's public key", key="private_key")
    return CertificateCredential(key, chain)
