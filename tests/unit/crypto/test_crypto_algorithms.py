"""PRF, integrity and AEAD primitives against RFC 4868, RFC 8439 and GCM vectors."""

from __future__ import annotations

from typing import Any

import pytest

from mpa_ike.constants import EncrId, IntegId, PrfId
from mpa_ike.crypto.cipher import get_encr
from mpa_ike.crypto.errors import UnsupportedAlgorithm
from mpa_ike.crypto.integ import get_integ
from mpa_ike.crypto.prf import get_prf
from mpa_ike.crypto.sk import SkCipher
from mpa_ike.errors import ConfigError


def test_rfc4868_prf(known_answers: dict[str, Any]) -> None:
    for case in known_answers["rfc4868_prf"]["cases"]:
        prf = get_prf(case["prf"])
        out = prf(bytes.fromhex(case["key"]), bytes.fromhex(case["data"]))
        assert out.hex() == case["out"]


def test_rfc4868_integ(known_answers: dict[str, Any]) -> None:
    for case in known_answers["rfc4868_integ"]["cases"]:
        integ = get_integ(case["integ"])
        key = bytes.fromhex(case["key"])
        assert len(key) == integ.key_size
        assert integ(key, bytes.fromhex(case["data"])).hex() == case["icv"]


def test_sizes() -> None:
    assert get_prf(PrfId.HMAC_SHA2_384).key_size == 48
    assert get_integ(IntegId.HMAC_SHA1_96).icv_size == 12
    assert get_encr(EncrId.AES_GCM_16).key_size(256) == 36
    assert get_encr(EncrId.CHACHA20_POLY1305).key_size(None) == 36
    assert get_encr(EncrId.AES_CBC).key_size(192) == 24


@pytest.mark.parametrize(
    ("getter", "ident"),
    [(get_prf, PrfId.AES128_XCBC), (get_integ, IntegId.AES_XCBC_96), (get_encr, EncrId.AES_CTR)],
)
def test_unsupported_ids(getter: Any, ident: PrfId | IntegId | EncrId) -> None:
    with pytest.raises(UnsupportedAlgorithm, match=ident.name):
        getter(ident)
    assert issubclass(UnsupportedAlgorithm, ConfigError)


def test_bad_key_lengths() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        get_encr(EncrId.AES_CBC).key_size(None)
    with pytest.raises(UnsupportedAlgorithm):
        get_encr(EncrId.CHACHA20_POLY1305).key_size(128)


def _aead_encrypt(encr: EncrId, key_bits: int | None, case: dict[str, str]) -> bytes:
    # The raw AEAD, reached through SkCipher's key layout (key | salt, nonce salt | IV).
    cipher = SkCipher(encr, key_bits, None, bytes.fromhex(case["key"]))
    return cipher._aead(cipher._aead_key).encrypt(
        cipher._salt + bytes.fromhex(case["iv"]),
        bytes.fromhex(case["plaintext"]),
        bytes.fromhex(case["aad"]),
    )


def test_rfc8439_chacha20_poly1305(known_answers: dict[str, Any]) -> None:
    case = known_answers["rfc8439_aead"]
    assert _aead_encrypt(EncrId.CHACHA20_POLY1305, None, case).hex() == case["ciphertext"]


def test_gcm_spec_vectors(known_answers: dict[str, Any]) -> None:
    for case in known_answers["gcm"]["cases"]:
        out = _aead_encrypt(EncrId.AES_GCM_16, case["key_bits"], case)
        assert out.hex() == case["ciphertext"]
