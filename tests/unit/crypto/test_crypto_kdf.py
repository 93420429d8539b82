"""IKEv2 KDF (RFC 7296 §2.13-2.18) against NIST CAVP SP 800-135 vectors."""

from __future__ import annotations

from typing import Any

import pytest

from mpa_ike.constants import PrfId
from mpa_ike.crypto.keys import (
    derive_child_keys,
    derive_ike_keys,
    prf_plus,
    rekey_skeyseed,
    skeyseed,
)
from mpa_ike.crypto.prf import get_prf
from mpa_ike.errors import LocalProtocolError


def _cases(known_answers: dict[str, Any]) -> list[dict[str, str | int]]:
    cases: list[dict[str, str | int]] = known_answers["ikev2_kdf"]["cases"]
    return cases


def _b(case: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(case[name])


def test_skeyseed(known_answers: dict[str, Any]) -> None:
    for case in _cases(known_answers):
        prf = get_prf(int(case["prf"]))
        seed = skeyseed(prf, _b(case, "ni"), _b(case, "nr"), _b(case, "gir"))
        assert seed.hex() == case["skeyseed"]


def test_dkm_is_prf_plus_over_nonces_and_spis(known_answers: dict[str, Any]) -> None:
    for case in _cases(known_answers):
        prf = get_prf(int(case["prf"]))
        text = _b(case, "ni") + _b(case, "nr") + _b(case, "spi_i") + _b(case, "spi_r")
        dkm = prf_plus(prf, _b(case, "skeyseed"), text, int(case["dkm_length"]))
        assert dkm.hex() == case["dkm"]


def test_ike_keys_split_the_dkm_in_rfc_order(known_answers: dict[str, Any]) -> None:
    for case in _cases(known_answers):
        prf = get_prf(int(case["prf"]))
        # 132 bytes = 3 * 20 (SK_d, SK_pi, SK_pr) + 2 * 20 (integ) + 2 * 16 (AES-128).
        keys = derive_ike_keys(
            prf,
            _b(case, "skeyseed"),
            _b(case, "ni"),
            _b(case, "nr"),
            _b(case, "spi_i"),
            _b(case, "spi_r"),
            encr_key_size=16,
            integ_key_size=20,
        )
        joined = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er
        joined += keys.sk_pi + keys.sk_pr
        assert joined.hex() == case["dkm"]
        assert len(keys.sk_d) == len(keys.sk_pr) == prf.output_size


def _sk_d(case: dict[str, Any]) -> bytes:
    return _b(case, "dkm")[: get_prf(int(case["prf"])).output_size]


def test_child_keymat(known_answers: dict[str, Any]) -> None:
    for case in _cases(known_answers):
        prf = get_prf(int(case["prf"]))
        size = int(case["dkm_length"])
        keymat = prf_plus(prf, _sk_d(case), _b(case, "ni") + _b(case, "nr"), size)
        assert keymat.hex() == case["dkm_child"]


def test_child_keymat_with_pfs(known_answers: dict[str, Any]) -> None:
    for case in _cases(known_answers):
        prf = get_prf(int(case["prf"]))
        # 132 = 2 * (32 encr + 34 integ) exercises the split without padding.
        keys = derive_child_keys(
            prf, _sk_d(case), _b(case, "ni"), _b(case, "nr"), 32, 34, _b(case, "gir_new")
        )
        joined = keys.encr_i + keys.integ_i + keys.encr_r + keys.integ_r
        assert joined.hex() == case["dkm_child_dh"]
        assert keys.outbound(True) == (keys.encr_i, keys.integ_i)
        assert keys.inbound(True) == (keys.encr_r, keys.integ_r)
        assert keys.outbound(False) == keys.inbound(True)


def test_rekey_skeyseed(known_answers: dict[str, Any]) -> None:
    for case in _cases(known_answers):
        prf = get_prf(int(case["prf"]))
        seed = rekey_skeyseed(prf, _sk_d(case), _b(case, "gir_new"), _b(case, "ni"), _b(case, "nr"))
        assert seed.hex() == case["skeyseed_rekey"]


def test_prf_plus_counter_limit() -> None:
    prf = get_prf(PrfId.HMAC_SHA1)
    assert len(prf_plus(prf, b"k", b"s", 255 * 20)) == 255 * 20
    with pytest.raises(LocalProtocolError):
        prf_plus(prf, b"k", b"s", 255 * 20 + 1)
