"""The test PKI of the core tests: a CA, RSA and ECDSA gateway certificates, a chain."""

from __future__ import annotations

from dataclasses import dataclass

from core_harness import GATEWAY_ID

from mpa_harness.pki import Credential, make_ca, make_cert
from mpa_ike.certificates import CertificateCredential


@dataclass(frozen=True)
class Pki:
    ca: Credential
    rsa: CertificateCredential
    ecdsa: CertificateCredential
    chain: CertificateCredential  # RSA end entity behind two intermediates
    other_ca: Credential


def _credential(cred: Credential, *extra: Credential) -> CertificateCredential:
    return CertificateCredential(cred.key, (cred.cert, *(e.cert for e in extra)))


def build_pki() -> Pki:
    ca = make_ca()
    rsa = make_cert(ca, GATEWAY_ID, "rsa")
    ecdsa = make_cert(ca, GATEWAY_ID, "ecdsa")
    inter1 = make_cert(ca, "intermediate one", "rsa", server=False)
    inter1 = _as_ca(ca, inter1)
    inter2 = _as_ca(inter1, make_cert(inter1, "intermediate two", "rsa", server=False))
    leaf = make_cert(inter2, GATEWAY_ID, "rsa")
    return Pki(
        ca=ca,
        rsa=_credential(rsa),
        ecdsa=_credential(ecdsa),
        chain=_credential(leaf, inter2, inter1),
        other_ca=make_ca("someone else's CA"),
    )


def _as_ca(issuer: Credential, subject: Credential) -> Credential:
    """Re-issue ``subject`` with CA basic constraints, signed by ``issuer``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    old = subject.cert
    cert = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(subject.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
    return Credential(cert, subject.key, subject.key_type)
