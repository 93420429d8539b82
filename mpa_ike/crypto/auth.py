"""AUTH payload data (RFC 7296 §2.15, §2.16; RFC 4754; RFC 7427).

The signed octets are ``RealMessage | Nonce(peer) | prf(SK_p, RestOfIDPayload)``
where RestOfIDPayload is the ID payload body after its generic header (ID
type, three reserved bytes, identification data) and SK_p is SK_pi for the
initiator's AUTH and SK_pr for the responder's.

Shared-key methods compute ``prf(prf(key, "Key Pad for IKEv2"), octets)``
with the pre-shared secret, or after EAP the MSK (SK_pi/SK_pr when the EAP
method made no MSK). Signature methods:

- 1 RSA: PKCS#1 v1.5 with SHA-1 (RFC 7296 §3.8).
- 9/10/11 ECDSA P-256/SHA-256, P-384/SHA-384, P-521/SHA-512 with the
  signature as fixed-length r | s (RFC 4754 §3, §7).
- 14 Digital Signature (RFC 7427 §3): one length byte, a DER
  AlgorithmIdentifier, then the signature: PKCS#1 v1.5, RSASSA-PSS (salt as
  long as the hash, MGF1 with the same hash) or ECDSA (DER Ecdsa-Sig-Value)
  with SHA-256/384/512, or Ed25519 (RFC 8420).

Failed verification raises RemoteProtocolError(AUTHENTICATION_FAILED).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from mpa_ike.constants import AuthMethod, HashAlgorithm, NotifyType
from mpa_ike.crypto.prf import Prf
from mpa_ike.errors import ConfigError, RemoteProtocolError
from mpa_ike.records import quick_init

KEY_PAD = b"Key Pad for IKEv2"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def _auth_failed(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"AUTH verification failed: {why}", NotifyType.AUTHENTICATION_FAILED)


def auth_octets(
    message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes, id_payload_body: bytes
) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 §2.15).

    ``message`` is this side's first message (IKE_SA_INIT request for the
    initiator, response for the responder) from the IKE header on;
    ``peer_nonce`` the other side's nonce data; ``sk_p`` this side's SK_pi or
    SK_pr; ``id_payload_body`` this side's IDi/IDr body after the generic header.
    """
    return message + peer_nonce + prf(sk_p, id_payload_body)


def shared_key_auth(prf: Prf, key: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(key, "Key Pad for IKEv2"), octets) (RFC 7296 §2.15)."""
    return prf(prf(key, KEY_PAD), octets)


def psk_auth(prf: Prf, secret: bytes, octets: bytes) -> bytes:
    """Shared Key Message Integrity Code (method 2) from a pre-shared secret."""
    return shared_key_auth(prf, secret, octets)


def eap_auth(prf: Prf, msk: bytes | None, sk_p: bytes, octets: bytes) -> bytes:
    """AUTH after EAP (RFC 7296 §2.16): keyed by the MSK, or SK_p without one."""
    return shared_key_auth(prf, msk if msk else sk_p, octets)


def verify_shared_key_auth(prf: Prf, key: bytes, octets: bytes, received: bytes) -> None:
    """Compare a received shared-key AUTH in constant time."""
    if not hmac.compare_digest(shared_key_auth(prf, key, octets), received):
        raise _auth_failed("shared key MIC mismatch")


# --- RFC 7427 AlgorithmIdentifiers -------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


_NULL = b"\x05\x00"
_HASH_OIDS = {
    HashAlgorithm.SHA2_256: "2.16.840.1.101.3.4.2.1",
    HashAlgorithm.SHA2_384: "2.16.840.1.101.3.4.2.2",
    HashAlgorithm.SHA2_512: "2.16.840.1.101.3.4.2.3",
}
_PKCS1_OIDS = {
    HashAlgorithm.SHA1: "1.2.840.113549.1.1.5",
    HashAlgorithm.SHA2_256: "1.2.840.113549.1.1.11",
    HashAlgorithm.SHA2_384: "1.2.840.113549.1.1.12",
    HashAlgorithm.SHA2_512: "1.2.840.113549.1.1.13",
}
_ECDSA_OIDS = {
    HashAlgorithm.SHA2_256: "1.2.840.10045.4.3.2",
    HashAlgorithm.SHA2_384: "1.2.840.10045.4.3.3",
    HashAlgorithm.SHA2_512: "1.2.840.10045.4.3.4",
}
_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"
_ED25519_OID = "1.3.101.112"

_HASHES: dict[HashAlgorithm, hashes.HashAlgorithm] = {
    HashAlgorithm.SHA1: hashes.SHA1(),
    HashAlgorithm.SHA2_256: hashes.SHA256(),
    HashAlgorithm.SHA2_384: hashes.SHA384(),
    HashAlgorithm.SHA2_512: hashes.SHA512(),
}


def _pss_identifier(hash_alg: HashAlgorithm, hash_null: bool) -> bytes:
    hash_id = _der(0x30, _oid(_HASH_OIDS[hash_alg]) + (_NULL if hash_null else b""))
    salt = _der(0x02, bytes((_HASHES[hash_alg].digest_size,)))
    params = _der(
        0x30,
        _der(0xA0, hash_id) + _der(0xA1, _der(0x30, _oid(_MGF1_OID) + hash_id)) + _der(0xA2, salt),
    )
    return _der(0x30, _oid(_PSS_OID) + params)


@quick_init
@dataclass(frozen=True, slots=True)
class SignatureScheme:
    """What an RFC 7427 AlgorithmIdentifier stands for."""

    kind: str  # "pkcs1", "pss", "ecdsa" or "ed25519"
    hash: HashAlgorithm


def _identifiers() -> dict[bytes, SignatureScheme]:
    table: dict[bytes, SignatureScheme] = {}
    for hash_alg, oid in _PKCS1_OIDS.items():
        table[_der(0x30, _oid(oid) + _NULL)] = SignatureScheme("pkcs1", hash_alg)
    for hash_alg, oid in _ECDSA_OIDS.items():
        table[_der(0x30, _oid(oid))] = SignatureScheme("ecdsa", hash_alg)
    for hash_alg in _HASH_OIDS:
        # Hash AlgorithmIdentifiers appear both with and without NULL parameters.
        table[_pss_identifier(hash_alg, hash_null=False)] = SignatureScheme("pss", hash_alg)
        table[_pss_identifier(hash_alg, hash_null=True)] = SignatureScheme("pss", hash_alg)
    table[_der(0x30, _oid(_ED25519_OID))] = SignatureScheme("ed25519", HashAlgorithm.IDENTITY)
    return table


ALGORITHM_IDENTIFIERS: dict[bytes, SignatureScheme] = _identifiers()


def algorithm_identifier(scheme: SignatureScheme) -> bytes:
    """The DER AlgorithmIdentifier this implementation sends for ``scheme``."""
    if scheme.kind == "pss":
        return _pss_identifier(scheme.hash, hash_null=True)
    for encoded, known in ALGORITHM_IDENTIFIERS.items():
        if known == scheme:
            return encoded
    raise ConfigError(f"no RFC 7427 algorithm identifier for {scheme}")


# --- SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4) -----------------------------------------

SUPPORTED_HASH_ALGORITHMS: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)


def encode_hash_algorithms(algorithms: Iterable[int] = SUPPORTED_HASH_ALGORITHMS) -> bytes:
    """Notification data of SIGNATURE_HASH_ALGORITHMS: 16-bit identifiers."""
    return b"".join(int(alg).to_bytes(2, "big") for alg in algorithms)


def decode_hash_algorithms(data: bytes) -> list[HashAlgorithm]:
    """Parse SIGNATURE_HASH_ALGORITHMS data; unknown identifiers are kept."""
    if len(data) % 2:
        raise RemoteProtocolError("SIGNATURE_HASH_ALGORITHMS data of odd length")
    return [
        HashAlgorithm.of(int.from_bytes(data[i : i + 2], "big")) for i in range(0, len(data), 2)
    ]


# --- signing ---------------------------------------------------------------------

_ECDSA_METHODS: dict[AuthMethod, tuple[str, HashAlgorithm]] = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", HashAlgorithm.SHA2_256),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", HashAlgorithm.SHA2_384),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", HashAlgorithm.SHA2_512),
}


def sign_auth(
    method: AuthMethod,
    key: SigningKey,
    octets: bytes,
    hash_alg: HashAlgorithm = HashAlgorithm.SHA2_256,
    *,
    pss: bool = False,
) -> bytes:
    """Authentication Data of the AUTH payload for a signature ``method``.

    ``hash_alg`` and ``pss`` only matter for method 14 (with Ed25519 the hash
    is implied). ECDSA signatures are randomised by the library.
    """
    method = AuthMethod.of(method)
    if method == AuthMethod.RSA_SIG:
        return _sign_pkcs1(_rsa_private(key), octets, HashAlgorithm.SHA1)
    if method in _ECDSA_METHODS:
        curve_name, method_hash = _ECDSA_METHODS[method]
        ec_key = _ec_private(key, curve_name)
        return _der_to_fixed(ec_key.sign(octets, ec.ECDSA(_HASHES[method_hash])), ec_key.curve)
    if method == AuthMethod.DIGITAL_SIGNATURE:
        return _sign_digital(key, octets, hash_alg, pss)
    raise ConfigError(f"{method.name} is not a signature method")


def _sign_digital(key: SigningKey, octets: bytes, hash_alg: HashAlgorithm, pss: bool) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        scheme = SignatureScheme("ed25519", HashAlgorithm.IDENTITY)
        signature = key.sign(octets)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        scheme = SignatureScheme("ecdsa", _hash_for(hash_alg, _ECDSA_OIDS))
        signature = key.sign(octets, ec.ECDSA(_HASHES[scheme.hash]))
    elif pss:
        scheme = SignatureScheme("pss", _hash_for(hash_alg, _HASH_OIDS))
        signature = key.sign(octets, _pss_padding(scheme.hash), _HASHES[scheme.hash])
    else:
        scheme = SignatureScheme("pkcs1", _hash_for(hash_alg, _PKCS1_OIDS))
        signature = _sign_pkcs1(key, octets, scheme.hash)
    identifier = algorithm_identifier(scheme)
    return bytes((len(identifier),)) + identifier + signature


def _hash_for(hash_alg: HashAlgorithm, table: dict[HashAlgorithm, str]) -> HashAlgorithm:
    if hash_alg not in table:
        raise ConfigError(f"hash {HashAlgorithm(hash_alg).name} not usable for this key")
    return HashAlgorithm.of(hash_alg)


def _pss_padding(hash_alg: HashAlgorithm) -> padding.PSS:
    algorithm = _HASHES[hash_alg]
    return padding.PSS(padding.MGF1(algorithm), algorithm.digest_size)


def _sign_pkcs1(key: rsa.RSAPrivateKey, octets: bytes, hash_alg: HashAlgorithm) -> bytes:
    return key.sign(octets, padding.PKCS1v15(), _HASHES[hash_alg])


def _rsa_private(key: SigningKey) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("RSA signature method needs an RSA key")
    return key


def _ec_private(key: SigningKey, curve_name: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != curve_name:
        raise ConfigError(f"ECDSA method needs a {curve_name} key")
    return key


def _coordinate_size(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def _der_to_fixed(signature: bytes, curve: ec.EllipticCurve) -> bytes:
    r, s = decode_dss_signature(signature)
    size = _coordinate_size(curve)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


# --- verification ----------------------------------------------------------------


def verify_auth(method: AuthMethod, key: VerifyingKey, octets: bytes, auth_data: bytes) -> None:
    """Verify AUTH payload data; raises RemoteProtocolError(AUTHENTICATION_FAILED)."""
    method = AuthMethod.of(method)
    try:
        if method == AuthMethod.RSA_SIG:
            _verify_pkcs1(key, auth_data, octets, HashAlgorithm.SHA1)
        elif method in _ECDSA_METHODS:
            _verify_ecdsa_fixed(method, key, octets, auth_data)
        elif method == AuthMethod.DIGITAL_SIGNATURE:
            _verify_digital(key, octets, auth_data)
        else:
            raise _auth_failed(f"{method.name} is not a signature method")
    except (InvalidSignature, ValueError) as exc:
        raise _auth_failed(f"{method.name} signature invalid") from exc


def _verify_ecdsa_fixed(
    method: AuthMethod, key: VerifyingKey, octets: bytes, auth_data: bytes
) -> None:
    curve_name, hash_alg = _ECDSA_METHODS[method]
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve_name:
        raise _auth_failed(f"{method.name} needs a {curve_name} public key")
    size = _coordinate_size(key.curve)
    if len(auth_data) != 2 * size:
        raise _auth_failed(f"{method.name} signature of {len(auth_data)} bytes")
    r = int.from_bytes(auth_data[:size], "big")
    s = int.from_bytes(auth_data[size:], "big")
    key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(_HASHES[hash_alg]))


def parse_digital_signature(auth_data: bytes) -> tuple[SignatureScheme, bytes]:
    """Split method 14 data into the scheme its AlgorithmIdentifier names and the signature."""
    if not auth_data or len(auth_data) < 1 + auth_data[0]:
        raise _auth_failed("truncated RFC 7427 signature")
    identifier = auth_data[1 : 1 + auth_data[0]]
    scheme = ALGORITHM_IDENTIFIERS.get(identifier)
    if scheme is None:
        raise _auth_failed(f"unsupported signature algorithm {identifier.hex()}")
    return scheme, auth_data[1 + auth_data[0] :]


def _verify_digital(key: VerifyingKey, octets: bytes, auth_data: bytes) -> None:
    scheme, signature = parse_digital_signature(auth_data)
    if scheme.kind == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, octets)
    elif scheme.kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, octets, ec.ECDSA(_HASHES[scheme.hash]))
    elif scheme.kind == "pss" and isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, octets, _pss_padding(scheme.hash), _HASHES[scheme.hash])
    elif scheme.kind == "pkcs1":
        _verify_pkcs1(key, signature, octets, scheme.hash)
    else:
        raise _auth_failed(f"{scheme.kind} signature does not fit the peer's key")


def _verify_pkcs1(
    key: VerifyingKey, signature: bytes, octets: bytes, hash_alg: HashAlgorithm
) -> None:
    if not isinstance(key, rsa.RSAPublicKey):
        raise _auth_failed("RSA signature but the peer's key is not RSA")
    key.verify(signature, octets, padding.PKCS1v15(), _HASHES[hash_alg])
