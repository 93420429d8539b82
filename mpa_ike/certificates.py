"""X.509 for IKE: the gateway's credential, and the mobile node's check of it.

The initiator trusts a configured CA: the end-entity certificate (the first
CERT payload) must chain to it through the other CERT payloads, be valid at
the given time, and name the configured gateway identity (RFC 4945 §3.1: a
SubjectAltName of the identity's type, or the subject for a DN; the CN only
when the certificate has no SubjectAltName, as strongSwan also accepts). The
time is passed in: the core reads no clock.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mpa_ike.constants import AuthMethod, CertEncoding, HashAlgorithm, IdType, NotifyType
from mpa_ike.crypto.auth import SigningKey, VerifyingKey
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.identity import Identity
from mpa_ike.wire import CertPayload, CertReqPayload

MAX_CHAIN_LENGTH = 8


def _auth_failed(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, NotifyType.AUTHENTICATION_FAILED)


@dataclass(frozen=True)
class CertificateCredential:
    """A private key and its certificate chain, end entity first."""

    key: SigningKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    def cert_payloads(self) -> list[CertPayload]:
        return list(self._cert_payloads)

    @functools.cached_property
    def _cert_payloads(self) -> tuple[CertPayload, ...]:
        """Encoded once: every IKE_AUTH response of the gateway carries them."""
        der = serialization.Encoding.DER
        return tuple(
            CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(der)) for c in self.chain
        )


def ca_key_hash(ca: x509.Certificate) -> bytes:
    """SHA-1 of the CA's SubjectPublicKeyInfo, the CERTREQ authority entry (§3.7)."""
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki).digest()


def certreq_payload(cas: Sequence[x509.Certificate]) -> CertReqPayload:
    return CertReqPayload(CertEncoding.X509_SIGNATURE, b"".join(ca_key_hash(ca) for ca in cas))


def signature_method(key: SigningKey, peer_hashes: Sequence[HashAlgorithm]) -> AuthMethod:
    """RFC 7427 method 14 when the peer announced SHA-256; else the classic method."""
    if HashAlgorithm.SHA2_256 in peer_hashes:
        return AuthMethod.DIGITAL_SIGNATURE
    if isinstance(key, rsa.RSAPrivateKey):
        return AuthMethod.RSA_SIG
    if isinstance(key, ec.EllipticCurvePrivateKey):
        classic = {
            "secp256r1": AuthMethod.ECDSA_SHA256_P256,
            "secp384r1": AuthMethod.ECDSA_SHA384_P384,
            "secp521r1": AuthMethod.ECDSA_SHA512_P521,
        }
        if key.curve.name in classic:
            return classic[key.curve.name]
    return AuthMethod.DIGITAL_SIGNATURE


def verify_peer_certificate(
    cert_payloads: Sequence[CertPayload],
    cas: Sequence[x509.Certificate],
    identity: Identity,
    at: datetime.datetime,
) -> VerifyingKey:
    """The public key of a certificate chain that passes the checks above.

    Raises RemoteProtocolError(AUTHENTICATION_FAILED) naming what failed.
    """
    certs = [_load(p) for p in cert_payloads if p.encoding == CertEncoding.X509_SIGNATURE]
    if not certs:
        raise _auth_failed("no X.509 certificate from the peer")
    end_entity, pool = certs[0], certs[1:]
    _check_chain(end_entity, pool, cas, at)
    if not certificate_names(end_entity, identity):
        raise _auth_failed(f"certificate does not name {identity}")
    key = end_entity.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _auth_failed("unsupported public key type in the peer certificate")
    return key


def _load(payload: CertPayload) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(payload.data)
    except ValueError as exc:
        raise _auth_failed("unparseable certificate") from exc


def _valid_at(cert: x509.Certificate, at: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_chain(
    cert: x509.Certificate,
    pool: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate],
    at: datetime.datetime,
) -> None:
    current = cert
    for _ in range(MAX_CHAIN_LENGTH):
        if not _valid_at(current, at):
            raise _auth_failed(f"certificate {current.subject.rfc4514_string()} not valid now")
        if any(_issued_by(current, ca) and _valid_at(ca, at) for ca in cas):
            return
        issuer = next((c for c in pool if c is not current and _issued_by(current, c)), None)
        if issuer is None or not _is_ca(issuer):
            break
        current = issuer
    raise _auth_failed("certificate does not chain to a trusted CA")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def certificate_names(cert: x509.Certificate, identity: Identity) -> bool:
    """Whether ``cert`` is a certificate for ``identity`` (RFC 4945 §3.1)."""
    if identity.id_type == IdType.DER_ASN1_DN:
        reversed_subject = x509.Name(list(reversed(cert.subject.rdns)))
        return identity.data in (cert.subject.public_bytes(), reversed_subject.public_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    if identity.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        wanted = ipaddress.ip_address(identity.data)
        return sans is not None and wanted in sans.get_values_for_type(x509.IPAddress)
    text = identity.data.decode("utf-8", "replace")
    if identity.id_type == IdType.RFC822_ADDR:
        return sans is not None and text in sans.get_values_for_type(x509.RFC822Name)
    if identity.id_type != IdType.FQDN:
        return False
    if sans is not None:
        return text.lower() in (n.lower() for n in sans.get_values_for_type(x509.DNSName))
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return any(str(cn.value).lower() == text.lower() for cn in common_names)
