"""AUTH payload data: RFC 4754 ECDSA vectors, RFC 7427 identifiers, round trips."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mpa_ike.constants import AuthMethod, HashAlgorithm, NotifyType, PrfId
from mpa_ike.crypto.auth import (
    ALGORITHM_IDENTIFIERS,
    KEY_PAD,
    SignatureScheme,
    algorithm_identifier,
    auth_octets,
    decode_hash_algorithms,
    eap_auth,
    encode_hash_algorithms,
    parse_digital_signature,
    psk_auth,
    sign_auth,
    verify_auth,
    verify_shared_key_auth,
)
from mpa_ike.crypto.prf import get_prf
from mpa_ike.errors import ConfigError, RemoteProtocolError

CURVES = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1(), "secp521r1": ec.SECP521R1()}
OCTETS = b"RealMessage1" + b"NonceRData" + b"MACedIDForI"


def _public(case: dict[str, str]) -> ec.EllipticCurvePublicKey:
    numbers = ec.EllipticCurvePublicNumbers(
        int(case["x"], 16), int(case["y"], 16), CURVES[case["curve"]]
    )
    return numbers.public_key()


def test_rfc4754_signatures_verify(known_answers: dict[str, Any]) -> None:
    block = known_answers["rfc4754_ecdsa"]
    message = bytes.fromhex(block["message"])
    for case in block["cases"]:
        signature = bytes.fromhex(case["r"] + case["s"])
        verify_auth(AuthMethod(case["method"]), _public(case), message, signature)
        tampered = bytearray(signature)
        tampered[5] ^= 1
        with pytest.raises(RemoteProtocolError) as info:
            verify_auth(AuthMethod(case["method"]), _public(case), message, bytes(tampered))
        assert info.value.notify == NotifyType.AUTHENTICATION_FAILED


def test_rfc7427_identifiers(known_answers: dict[str, Any]) -> None:
    for case in known_answers["rfc7427_identifiers"]["cases"]:
        scheme = SignatureScheme(case["kind"], HashAlgorithm(case["hash"]))
        assert algorithm_identifier(scheme).hex() == case["der"]
        assert ALGORITHM_IDENTIFIERS[bytes.fromhex(case["der"])] == scheme


def test_octets_and_shared_key_auth() -> None:
    prf = get_prf(PrfId.HMAC_SHA2_256)
    octets = auth_octets(b"msg", b"nonce", prf, b"skp", b"\x02\x00\x00\x00id")
    assert octets == b"msg" + b"nonce" + prf(b"skp", b"\x02\x00\x00\x00id")
    mic = psk_auth(prf, b"secret", octets)
    assert mic == prf(prf(b"secret", KEY_PAD), octets)
    verify_shared_key_auth(prf, b"secret", octets, mic)
    with pytest.raises(RemoteProtocolError) as info:
        verify_shared_key_auth(prf, b"other", octets, mic)
    assert info.value.notify == NotifyType.AUTHENTICATION_FAILED


def test_eap_auth_uses_msk_or_sk_p() -> None:
    prf = get_prf(PrfId.HMAC_SHA1)
    assert eap_auth(prf, b"m" * 64, b"skp", OCTETS) == psk_auth(prf, b"m" * 64, OCTETS)
    assert eap_auth(prf, None, b"skp", OCTETS) == psk_auth(prf, b"skp", OCTETS)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def test_rsa_method_1(rsa_key: rsa.RSAPrivateKey) -> None:
    data = sign_auth(AuthMethod.RSA_SIG, rsa_key, OCTETS)
    verify_auth(AuthMethod.RSA_SIG, rsa_key.public_key(), OCTETS, data)
    with pytest.raises(RemoteProtocolError):
        verify_auth(AuthMethod.RSA_SIG, rsa_key.public_key(), OCTETS + b"x", data)


@pytest.mark.parametrize(
    ("method", "curve"),
    [
        (AuthMethod.ECDSA_SHA256_P256, ec.SECP256R1()),
        (AuthMethod.ECDSA_SHA384_P384, ec.SECP384R1()),
        (AuthMethod.ECDSA_SHA512_P521, ec.SECP521R1()),
    ],
)
def test_ecdsa_methods(method: AuthMethod, curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    data = sign_auth(method, key, OCTETS)
    assert len(data) == 2 * ((curve.key_size + 7) // 8)
    verify_auth(method, key.public_key(), OCTETS, data)
    with pytest.raises(RemoteProtocolError):
        verify_auth(method, key.public_key(), OCTETS, data[:-1])
    with pytest.raises(ConfigError):
        sign_auth(method, ec.generate_private_key(ec.SECP224R1()), OCTETS)


@pytest.mark.parametrize(
    "hash_alg", [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512]
)
@pytest.mark.parametrize("pss", [False, True])
def test_digital_signature_rsa(
    rsa_key: rsa.RSAPrivateKey, hash_alg: HashAlgorithm, pss: bool
) -> None:
    data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, rsa_key, OCTETS, hash_alg, pss=pss)
    scheme, _ = parse_digital_signature(data)
    assert scheme == SignatureScheme("pss" if pss else "pkcs1", hash_alg)
    verify_auth(AuthMethod.DIGITAL_SIGNATURE, rsa_key.public_key(), OCTETS, data)
    with pytest.raises(RemoteProtocolError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, rsa_key.public_key(), b"other", data)


def test_digital_signature_ecdsa_and_ed25519() -> None:
    ec_key = ec.generate_private_key(ec.SECP384R1())
    data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, ec_key, OCTETS, HashAlgorithm.SHA2_384)
    assert parse_digital_signature(data)[0] == SignatureScheme("ecdsa", HashAlgorithm.SHA2_384)
    verify_auth(AuthMethod.DIGITAL_SIGNATURE, ec_key.public_key(), OCTETS, data)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, ed_key, OCTETS)
    verify_auth(AuthMethod.DIGITAL_SIGNATURE, ed_key.public_key(), OCTETS, data)
    with pytest.raises(RemoteProtocolError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, ec_key.public_key(), OCTETS, data)


@pytest.mark.parametrize("data", [b"", b"\x20", b"\x05\x30\x03\x06\x01\x00sig", b"\x01"])
def test_malformed_digital_signature(data: bytes) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(RemoteProtocolError):
        verify_auth(AuthMethod.DIGITAL_SIGNATURE, key, OCTETS, data)


def test_non_signature_method() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(RemoteProtocolError):
        verify_auth(AuthMethod.PSK, key.public_key(), OCTETS, b"x")
    with pytest.raises(ConfigError):
        sign_auth(AuthMethod.PSK, key, OCTETS)


def test_signature_hash_algorithms_notify() -> None:
    data = encode_hash_algorithms()
    assert data == bytes.fromhex("0002000300040005")
    assert decode_hash_algorithms(data + b"\x00\x09")[-1] == 9
    with pytest.raises(RemoteProtocolError):
        decode_hash_algorithms(b"\x00")
