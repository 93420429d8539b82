"""SK payload protection: RFC 7634 Appendix B, round trips and tampering."""

from __future__ import annotations

import os
from typing import Any

import pytest

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.crypto.proposal import parse_proposal
from mpa_ike.crypto.sk import SkCipher, sk_cipher_pair
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.errors import IntegrityError, LocalProtocolError

ASSOCIATED = bytes(range(28)) + b"\x29\x00\x00\x00"

SUITES = [
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
    (EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_256_128),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
    (EncrId.AES_GCM_16, 128, None),
    (EncrId.AES_GCM_16, 256, None),
    (EncrId.CHACHA20_POLY1305, None, None),
]


def _cipher(encr: EncrId, bits: int | None, integ: IntegId | None) -> SkCipher:
    from mpa_ike.crypto.cipher import get_encr
    from mpa_ike.crypto.integ import get_integ

    encr_key = os.urandom(get_encr(encr).key_size(bits))
    integ_key = os.urandom(get_integ(integ).key_size) if integ else b""
    return SkCipher(encr, bits, integ, encr_key, integ_key)


def test_rfc7634_ikev2_example(known_answers: dict[str, Any]) -> None:
    case = known_answers["rfc7634_ikev2"]
    cipher = SkCipher(EncrId.CHACHA20_POLY1305, None, None, bytes.fromhex(case["key"]))
    aad, iv, inner = (bytes.fromhex(case[k]) for k in ("aad", "iv", "inner"))
    sealed = cipher.seal(aad, inner, iv=iv)
    assert sealed == iv + bytes.fromhex(case["sealed_after_iv"])
    assert cipher.sealed_length(len(inner)) == len(sealed)
    assert cipher.open(aad, sealed) == inner


@pytest.mark.parametrize(("encr", "bits", "integ"), SUITES)
@pytest.mark.parametrize("size", [0, 1, 14, 15, 16, 17, 100])
def test_round_trip(encr: EncrId, bits: int | None, integ: IntegId | None, size: int) -> None:
    cipher = _cipher(encr, bits, integ)
    plaintext = os.urandom(size)
    sealed = cipher.seal(ASSOCIATED, plaintext)
    assert len(sealed) == cipher.sealed_length(size)
    assert cipher.open(ASSOCIATED, sealed) == plaintext
    assert cipher.max_plaintext_length(len(sealed)) >= size


@pytest.mark.parametrize(("encr", "bits", "integ"), SUITES)
def test_every_flipped_byte_is_rejected(
    encr: EncrId, bits: int | None, integ: IntegId | None
) -> None:
    cipher = _cipher(encr, bits, integ)
    sealed = cipher.seal(ASSOCIATED, b"inner payloads here")
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(IntegrityError):
            cipher.open(ASSOCIATED, bytes(tampered))
    for index in range(len(ASSOCIATED)):
        associated = bytearray(ASSOCIATED)
        associated[index] ^= 0x80
        with pytest.raises(IntegrityError):
            cipher.open(bytes(associated), sealed)


@pytest.mark.parametrize(("encr", "bits", "integ"), SUITES)
def test_truncated_and_garbage_bodies(
    encr: EncrId, bits: int | None, integ: IntegId | None
) -> None:
    cipher = _cipher(encr, bits, integ)
    sealed = cipher.seal(ASSOCIATED, b"x" * 40)
    for length in range(len(sealed)):
        with pytest.raises(IntegrityError):
            cipher.open(ASSOCIATED, sealed[:length])
    with pytest.raises(IntegrityError):
        cipher.open(ASSOCIATED, sealed + b"\x00")
    with pytest.raises(IntegrityError):
        cipher.open(ASSOCIATED, os.urandom(len(sealed)))


def test_bad_pad_length_is_an_integrity_error() -> None:
    key = bytes(36)
    cipher = SkCipher(EncrId.AES_GCM_16, 256, None, key)
    # A correctly authenticated plaintext whose last byte claims too much padding.
    iv = bytes(8)
    body = iv + cipher._aead(cipher._aead_key).encrypt(cipher._salt + iv, b"ab\x05", ASSOCIATED)
    with pytest.raises(IntegrityError, match="pad length"):
        cipher.open(ASSOCIATED, body)


def test_cbc_padding_layout() -> None:
    cipher = _cipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)
    assert cipher.sealed_length(15) == 16 + 16 + 16
    assert cipher.sealed_length(16) == 16 + 32 + 16


def test_injected_iv_source_makes_sealing_deterministic() -> None:
    draws: list[int] = []

    def random(size: int) -> bytes:
        draws.append(size)
        return bytes(size)

    key = bytes(16)
    first = SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, key, bytes(20), random)
    second = SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, key, bytes(20), random)
    assert first.seal(ASSOCIATED, b"data") == second.seal(ASSOCIATED, b"data")
    assert draws == [16, 16]


def test_key_and_iv_checks() -> None:
    with pytest.raises(LocalProtocolError):
        SkCipher(EncrId.AES_CBC, 128, None, bytes(16))
    with pytest.raises(LocalProtocolError):
        SkCipher(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA1_96, bytes(20), bytes(20))
    with pytest.raises(LocalProtocolError):
        SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, bytes(15), bytes(20))
    cipher = _cipher(EncrId.CHACHA20_POLY1305, None, None)
    with pytest.raises(LocalProtocolError):
        cipher.seal(ASSOCIATED, b"", iv=bytes(7))


@pytest.mark.parametrize(
    "text",
    ["aes128-sha256-modp2048", "aes256gcm16-prfsha384-x25519", "chacha20poly1305-prfsha256-ecp256"],
)
def test_pair_from_suite(text: str) -> None:
    suite = IkeSuite.from_proposal(parse_proposal(text))
    keys = suite.derive_keys(b"n" * 32, b"N" * 32, b"i" * 8, b"r" * 8, b"g" * 32)
    initiator = sk_cipher_pair(suite, keys)
    responder = sk_cipher_pair(suite, keys)
    request = initiator.outbound(True).seal(ASSOCIATED, b"request")
    assert responder.inbound(False).open(ASSOCIATED, request) == b"request"
    response = responder.outbound(False).seal(ASSOCIATED, b"response")
    assert initiator.inbound(True).open(ASSOCIATED, response) == b"response"
    with pytest.raises(IntegrityError):
        initiator.inbound(True).open(ASSOCIATED, request)
