"""The charon recordings in tests/vectors/charon/ are self-consistent.

Recomputes, with hashlib/hmac only (no project code, no cipher), what RFC 7296 says
follows from the recorded inputs: SKEYSEED (2.14, 2.18), the prf+ key expansion of
SK_* and of CHILD_SA KEYMAT (2.13, 2.17), the AUTH octets and values (2.15), the
integrity checksums of encrypted IKE messages and of ESP packets (CBC+HMAC
scenarios). This proves the field names and layout documented in the README are the
ones charon actually used, before any project code is tested against them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import pytest

DIR = Path(__file__).resolve().parents[2] / "vectors" / "charon"
FILES = sorted(DIR.glob("*.json"))
PRF_HASH = {
    "PRF_HMAC_SHA1": "sha1",
    "PRF_HMAC_SHA2_256": "sha256",
    "PRF_HMAC_SHA2_384": "sha384",
    "PRF_HMAC_SHA2_512": "sha512",
}
INTEG = {"HMAC_SHA1_96": ("sha1", 12), "HMAC_SHA2_256_128": ("sha256", 16)}
INTEG.update({"HMAC_SHA2_384_192": ("sha384", 24), "HMAC_SHA2_512_256": ("sha512", 32)})
KEY_PAD = b"Key Pad for IKEv2"
IKE_KEYS = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
CHILD_KEYS = ("encr_i", "integ_i", "encr_r", "integ_r")


def h(value: str | None) -> bytes:
    return bytes.fromhex(value) if value else b""


def prf(rec: dict[str, Any], key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, PRF_HASH[rec["negotiated_ike"]["prf"]]).digest()


def prf_plus(rec: dict[str, Any], key: bytes, seed: bytes, length: int) -> bytes:
    out, block, n = b"", b"", 1
    while len(out) < length:
        block = prf(rec, key, block + seed + bytes([n]))
        out += block
        n += 1
    return out[:length]


@pytest.fixture(params=FILES, ids=[f.stem for f in FILES])
def rec(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads(request.param.read_text())  # type: ignore[no-any-return]


def test_recordings_exist() -> None:
    assert len(FILES) >= 3
    assert (DIR / "README.md").exists()


def test_skeyseed_and_sk_keys(rec: dict[str, Any]) -> None:
    for sa in rec["ike_sas"]:
        n_i, n_r, g_ir = h(sa["nonce_i"]), h(sa["nonce_r"]), h(sa["dh_shared_secret"])
        if sa["rekeyed_from"] is None:
            skeyseed = prf(rec, n_i + n_r, g_ir)  # RFC 7296 2.14
        else:
            old = rec["ike_sas"][sa["rekeyed_from"]]
            skeyseed = prf(rec, h(old["sk_d"]), g_ir + n_i + n_r)  # RFC 7296 2.18
        assert skeyseed.hex() == sa["skeyseed"]
        keys = b"".join(h(sa[k]) for k in IKE_KEYS)
        seed = n_i + n_r + h(sa["spi_i"]) + h(sa["spi_r"])
        assert prf_plus(rec, skeyseed, seed, len(keys)) == keys


def test_ike_sa_init_carries_spis_and_nonces(rec: dict[str, Any]) -> None:
    req, resp = rec["messages"][0], rec["messages"][1]
    sa = rec["ike_sas"][0]
    assert req["exchange"] == resp["exchange"] == "IKE_SA_INIT"
    assert h(req["data"])[:8].hex() == sa["spi_i"]
    assert h(resp["data"])[8:16].hex() == sa["spi_r"]
    assert sa["nonce_i"] in req["data"] and sa["nonce_r"] in resp["data"]
    assert req["direction"] == "i->r" and resp["direction"] == "r->i"


def test_child_keymat(rec: dict[str, Any]) -> None:
    for child in rec["child_sas"]:
        seed = h(child["dh_shared_secret"]) + h(child["nonce_i"]) + h(child["nonce_r"])
        assert seed.hex() == child["keymat_seed"]
        sk_d = h(rec["ike_sas"][child["sk_d_ike_sa_index"]]["sk_d"])
        keymat = b"".join(h(child[k]) for k in CHILD_KEYS)
        assert prf_plus(rec, sk_d, seed, len(keymat)) == keymat  # RFC 7296 2.17


def test_auth_octets_and_values(rec: dict[str, Any]) -> None:
    """RFC 7296 2.15: octets = RealMessage | Nonce | prf(SK_p, IDx'); AUTH = prf(prf(..))."""
    sa0 = rec["ike_sas"][0]
    msgs = rec["messages"]
    for auth in rec["auth_computations"]:
        octets = h(auth["octets"])
        mac_id = prf(rec, h(auth["sk_p"]), h(auth["id_payload_body"]))
        if auth["auth_of"] == "initiator":
            assert octets == h(msgs[0]["data"]) + h(sa0["nonce_r"]) + mac_id
        else:
            assert auth["auth_of"] == "responder"
            assert octets == h(msgs[1]["data"]) + h(sa0["nonce_i"]) + mac_id
        if "auth_data" in auth:
            inner = prf(rec, h(auth["secret"]), KEY_PAD)
            assert inner.hex() == auth["prf_secret_keypad"]
            assert prf(rec, inner, octets).hex() == auth["auth_data"]
    if rec["eap_msk"]:
        assert any(a.get("secret") == rec["eap_msk"] for a in rec["auth_computations"])
    if rec["identities"]["psk"]:
        psk = h(rec["identities"]["psk"].removeprefix("0x"))
        assert any(h(a.get("secret")) == psk for a in rec["auth_computations"])


def test_encrypted_ike_message_icvs(rec: dict[str, Any]) -> None:
    integ = rec["negotiated_ike"]["integ"]
    if integ is None:
        return  # AEAD IKE SA: its ICV cannot be checked without the cipher
    name, icv_len = INTEG[integ]
    checked = 0
    for msg in rec["messages"]:
        if msg["plaintext"] is None:
            continue
        sa = rec["ike_sas"][msg["ike_sa_index"]]
        key = h(sa["sk_ai"] if msg["from_original_initiator"] else sa["sk_ar"])
        data = h(msg["data"])
        assert hmac.new(key, data[:-icv_len], name).digest()[:icv_len] == data[-icv_len:]
        checked += 1
    assert checked >= 2


def test_messages_headers(rec: dict[str, Any]) -> None:
    for msg in rec["messages"]:
        data = h(msg["data"])
        assert struct.unpack_from("!I", data, 24)[0] == len(data)
        assert struct.unpack_from("!I", data, 20)[0] == msg["message_id"]
        assert bool(data[19] & 0x20) == msg["response"]
        assert msg["non_esp_marker_stripped"] == (4500 in (msg["sport"], msg["dport"]))
        sa = rec["ike_sas"][msg["ike_sa_index"]]
        assert data[:8].hex() == sa["spi_i"]


def test_esp_packets(rec: dict[str, Any]) -> None:
    assert rec["esp_packets"], "no ESP recorded"
    integ = rec["negotiated_esp"]["integ-alg"]
    for pkt in rec["esp_packets"]:
        child = rec["child_sas"][pkt["child_sa_index"]]
        data = h(pkt["data"])
        # The i->r direction uses the SPI the responder chose (spi_r) and the initiator keys.
        i_to_r = pkt["direction"] == "i->r"
        assert pkt["spi"] == (child["spi_r"] if i_to_r else child["spi_i"])
        assert struct.unpack_from("!I", data, 4)[0] == pkt["seq"]
        if integ is None:
            continue
        name, icv_len = INTEG[integ]
        key = h(child["integ_i"] if i_to_r else child["integ_r"])
        assert hmac.new(key, data[:-icv_len], name).digest()[:icv_len] == data[-icv_len:]


def test_digest_names_are_known(rec: dict[str, Any]) -> None:
    assert rec["negotiated_ike"]["prf"] in PRF_HASH
    hashlib.new(PRF_HASH[rec["negotiated_ike"]["prf"]])
