"""The netlink messages the XFRM backend builds, serialized by pyroute2 and decoded back.

Sizes and offsets are checked against include/uapi/linux/xfrm.h (64-bit layout):
xfrm_usersa_info 224, xfrm_userpolicy_info 168, xfrm_usersa_id 24,
xfrm_userpolicy_id 64, xfrm_user_tmpl 64, xfrm_encap_tmpl 24, xfrm_user_migrate 76,
xfrm_user_kmaddress 40.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from xfrm_samples import (
    CHACHA_IN,
    CHACHA_OUT,
    ENCR_IN_CBC,
    ENCR_OUT_CBC,
    GCM_IN,
    GCM_OUT,
    INTEG_IN_256,
    INTEG_OUT_256,
    attr,
    attr_names,
    params_cbc_sha256_v4,
    params_chacha_v4,
    params_gcm_v6,
    roundtrip,
)

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.io import xfrm
from mpa_ike.io.xfrm import (
    AF_INET,
    AF_INET6,
    IPPROTO_ESP,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    XFRM_MODE_TUNNEL,
    XFRM_MSG_MIGRATE,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_MSG_UPDPOLICY,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    XFRM_STATE_AF_UNSPEC,
    XFRM_STATE_ESN,
    Selector,
)

HEADER = 16


class Recorder:
    """A transport that answers every request with an ack and keeps the messages."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def request(self, msg: Any, what: str = "") -> list[Any]:
        self.sent.append(roundtrip(msg))
        return []

    def close(self) -> None:
        pass


def install(params: ChildSaParams, **kwargs: Any) -> tuple[xfrm.XfrmDatapath, list[Any]]:
    rec = Recorder()
    dp = xfrm.XfrmDatapath(rec, reqid_base=42, **kwargs)
    dp.install_child_sa(params)
    return dp, rec.sent


def addr(raw: bytes, family: int) -> str:
    return xfrm.unpack_addr(raw, family)


def test_struct_sizes() -> None:
    sizes: dict[Any, int] = {
        xfrm.xfrm_usersa_info: 224,
        xfrm.xfrm_userpolicy_info: 168,
        xfrm.xfrm_usersa_id: 24,
        xfrm.xfrm_userpolicy_id: 64,
    }
    for cls, size in sizes.items():
        fmt = "".join(f for _, f in cls.fields).replace(">", "")
        assert struct.calcsize("=" + fmt) == size, cls.__name__
    nested = {
        "xfrm_user_tmpl": 64,
        "xfrm_encap_tmpl": 24,
        "xfrm_user_migrate": 76,
        "xfrm_user_kmaddress": 40,
        "xfrm_replay_state": 12,
        "xfrm_userpolicy_type": 6,
    }
    for name, size in nested.items():
        nested_cls = getattr(xfrm.xfrm_usersa_info, name)
        fmt = "".join(f for _, f in nested_cls.fields).replace(">", "")
        assert struct.calcsize("=" + fmt) == size, name


def test_field_offsets_of_usersa_info() -> None:
    """Check raw bytes at the C offsets, not only our own decoder."""
    params = params_cbc_sha256_v4()
    _, sent = install(params)
    msg = sent[0]
    raw = bytes(msg.data)[HEADER:]
    assert raw[56:60] == bytes([192, 0, 2, 10])  # id.daddr: the inbound SA is ours
    assert raw[80:84] == bytes([198, 51, 100, 1])  # saddr
    spi = struct.unpack_from(">I", raw, 72)[0]
    assert spi == int.from_bytes(params.spi_in, "big")
    assert raw[76] == IPPROTO_ESP
    reqid, family, mode, window, flags = struct.unpack_from("=IHBBB", raw, 208)
    assert (reqid, family, mode) == (42, AF_INET, XFRM_MODE_TUNNEL)
    assert window == 0 and flags == 0  # the 64-packet window is in XFRMA_REPLAY_ESN_VAL


def check_state(
    msg: Any,
    *,
    src: str,
    dst: str,
    spi: bytes,
    family: int,
    reqid: int = 42,
) -> None:
    assert msg["header"]["type"] == XFRM_MSG_NEWSA
    flags = msg["header"]["flags"]
    assert flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert addr(msg["id_daddr"], family) == dst
    assert addr(msg["saddr"], family) == src
    assert msg["id_spi"] == int.from_bytes(spi, "big")
    assert msg["id_proto"] == IPPROTO_ESP
    assert msg["family"] == family
    assert msg["mode"] == XFRM_MODE_TUNNEL
    assert msg["reqid"] == reqid
    assert msg["hard_byte_limit"] == xfrm.XFRM_INF  # IKE rekeys, not the kernel


@pytest.mark.parametrize("encap", [False, True])
def test_cbc_sha256_ipv4_states(encap: bool) -> None:
    params = params_cbc_sha256_v4(encap)
    _, sent = install(params)
    sa_in, sa_out = sent[0], sent[1]
    check_state(sa_in, src="198.51.100.1", dst="192.0.2.10", spi=params.spi_in, family=AF_INET)
    check_state(sa_out, src="192.0.2.10", dst="198.51.100.1", spi=params.spi_out, family=AF_INET)
    for msg, ekey, ikey in (
        (sa_in, ENCR_IN_CBC, INTEG_IN_256),
        (sa_out, ENCR_OUT_CBC, INTEG_OUT_256),
    ):
        names = attr_names(msg)
        assert "XFRMA_ALG_AUTH" not in names  # would mean the kernel's 96-bit default
        assert "XFRMA_ALG_AEAD" not in names
        crypt = attr(msg, "XFRMA_ALG_CRYPT")
        assert crypt["alg_name"] == "cbc(aes)"
        assert crypt["alg_key_len"] == 128
        assert crypt["alg_key"] == ekey
        auth = attr(msg, "XFRMA_ALG_AUTH_TRUNC")
        assert auth["alg_name"] == "hmac(sha256)"
        assert auth["alg_key_len"] == 256
        assert auth["alg_trunc_len"] == 128
        assert auth["alg_key"] == ikey
        esn = attr(msg, "XFRMA_REPLAY_ESN_VAL")
        assert esn["replay_window"] == 64
        assert esn["bmp_len"] == 2
        assert esn["bmp"] == [0, 0]
        assert not msg["flags"] & XFRM_STATE_ESN
        assert ("XFRMA_ENCAP" in names) == encap
    # One TS pair: the SA carries it as its selector.
    assert str(Selector.from_message(sa_out)) == "10.9.0.7/32 -> 10.20.0.0/16"
    assert str(Selector.from_message(sa_in)) == "10.20.0.0/16 -> 10.9.0.7/32"
    assert not sa_out["flags"] & XFRM_STATE_AF_UNSPEC
    if encap:
        enc_in = attr(sa_in, "XFRMA_ENCAP")
        enc_out = attr(sa_out, "XFRMA_ENCAP")
        for enc in (enc_in, enc_out):
            assert enc["encap_type"] == xfrm.UDP_ENCAP_ESPINUDP
            assert (enc["encap_sport"], enc["encap_dport"]) == (4500, 4500)
            assert enc["encap_oa"] == b"\0" * 16
        # Ports are written big-endian, as the kernel reads __be16.
        raw = bytes(sa_out.data)
        assert struct.pack(">HH", 4500, 4500) in raw


def test_encap_ports_follow_the_ike_sa() -> None:
    """Behind a NAT the peer's port is not 4500: in and out SAs use the two ports crosswise."""
    from dataclasses import replace

    params = replace(params_cbc_sha256_v4(True), remote=("198.51.100.1", 61000))
    _, sent = install(params)
    enc_in = attr(sent[0], "XFRMA_ENCAP")
    enc_out = attr(sent[1], "XFRMA_ENCAP")
    assert (enc_in["encap_sport"], enc_in["encap_dport"]) == (61000, 4500)
    assert (enc_out["encap_sport"], enc_out["encap_dport"]) == (4500, 61000)


@pytest.mark.parametrize(
    ("integ", "name", "key_bytes", "trunc"),
    [
        (IntegId.HMAC_SHA2_256_128, "hmac(sha256)", 32, 128),
        (IntegId.HMAC_SHA2_384_192, "hmac(sha384)", 48, 192),
        (IntegId.HMAC_SHA2_512_256, "hmac(sha512)", 64, 256),
        (IntegId.HMAC_SHA1_96, "hmac(sha1)", 20, 96),
    ],
)
def test_truncation_lengths(integ: IntegId, name: str, key_bytes: int, trunc: int) -> None:
    from dataclasses import replace

    params = replace(
        params_cbc_sha256_v4(),
        integ_id=integ,
        encr_key_bits=256,
        encr_key_in=bytes(32),
        encr_key_out=bytes(32),
        integ_key_in=b"\x01" * key_bytes,
        integ_key_out=b"\x02" * key_bytes,
    )
    _, sent = install(params)
    auth = attr(sent[0], "XFRMA_ALG_AUTH_TRUNC")
    assert (auth["alg_name"], auth["alg_key_len"], auth["alg_trunc_len"]) == (
        name,
        key_bytes * 8,
        trunc,
    )
    assert auth["alg_key"] == b"\x01" * key_bytes
    assert attr(sent[0], "XFRMA_ALG_CRYPT")["alg_key_len"] == 256


@pytest.mark.parametrize("encap", [False, True])
def test_gcm_ipv6_states(encap: bool) -> None:
    params = params_gcm_v6(encap)
    _, sent = install(params)
    sa_in, sa_out = sent[0], sent[1]
    check_state(
        sa_in, src="2001:db8:2::1", dst="2001:db8:1::10", spi=params.spi_in, family=AF_INET6
    )
    check_state(
        sa_out, src="2001:db8:1::10", dst="2001:db8:2::1", spi=params.spi_out, family=AF_INET6
    )
    for msg, key in ((sa_in, GCM_IN), (sa_out, GCM_OUT)):
        names = attr_names(msg)
        assert "XFRMA_ALG_CRYPT" not in names and "XFRMA_ALG_AUTH_TRUNC" not in names
        aead = attr(msg, "XFRMA_ALG_AEAD")
        assert aead["alg_name"] == "rfc4106(gcm(aes))"
        assert aead["alg_key_len"] == 160  # 128-bit key and the 32-bit salt
        assert aead["alg_icv_len"] == 128
        assert aead["alg_key"] == key
        assert ("XFRMA_ENCAP" in names) == encap
    assert str(Selector.from_message(sa_out)) == "2001:db8:9::7/128 -> 2001:db8:20::/48"


def test_chacha20_poly1305_state() -> None:
    params = params_chacha_v4()
    _, sent = install(params)
    for msg, key in ((sent[0], CHACHA_IN), (sent[1], CHACHA_OUT)):
        aead = attr(msg, "XFRMA_ALG_AEAD")
        assert aead["alg_name"] == "rfc7539esp(chacha20,poly1305)"
        assert aead["alg_key_len"] == 288
        assert aead["alg_icv_len"] == 128
        assert aead["alg_key"] == key


def test_esn_and_small_window() -> None:
    from dataclasses import replace

    _, sent = install(replace(params_cbc_sha256_v4(), esn=True), replay_window=128)
    esn = attr(sent[0], "XFRMA_REPLAY_ESN_VAL")
    assert sent[0]["flags"] & XFRM_STATE_ESN
    assert (esn["replay_window"], esn["bmp_len"]) == (128, 4)
    _, sent = install(params_cbc_sha256_v4(), replay_window=32)
    assert sent[0]["replay_window"] == 32
    assert "XFRMA_REPLAY_ESN_VAL" not in attr_names(sent[0])


def test_unsupported_transforms_are_refused() -> None:
    from dataclasses import replace

    with pytest.raises(xfrm.XfrmUsageError):
        install(replace(params_cbc_sha256_v4(), integ_id=IntegId.AES_XCBC_96))
    with pytest.raises(xfrm.XfrmUsageError):
        install(replace(params_cbc_sha256_v4(), encr_id=EncrId.TRIPLE_DES))
    with pytest.raises(xfrm.XfrmUsageError):
        install(replace(params_gcm_v6(), integ_id=IntegId.HMAC_SHA2_256_128))


def check_policy(
    msg: Any, direction: int, sel: str, tmpl_src: str, tmpl_dst: str, family: int
) -> None:
    assert msg["header"]["type"] == XFRM_MSG_NEWPOLICY
    assert msg["dir"] == direction
    assert msg["action"] == xfrm.XFRM_POLICY_ALLOW
    assert str(Selector.from_message(msg)) == sel
    tmpl = attr(msg, "XFRMA_TMPL")
    assert addr(tmpl["saddr"], family) == tmpl_src
    assert addr(tmpl["daddr"], family) == tmpl_dst
    assert tmpl["family"] == family
    assert tmpl["proto"] == IPPROTO_ESP
    assert tmpl["mode"] == XFRM_MODE_TUNNEL
    assert tmpl["reqid"] == 42
    assert tmpl["spi"] == 0
    assert tmpl["ealgos"] == tmpl["aalgos"] == 0xFFFFFFFF


def test_policies_ipv4() -> None:
    _, sent = install(params_cbc_sha256_v4())
    pol = sent[2:]
    assert [m["dir"] for m in pol] == [XFRM_POLICY_OUT, XFRM_POLICY_IN, XFRM_POLICY_FWD]
    local, remote = "192.0.2.10", "198.51.100.1"
    check_policy(pol[0], XFRM_POLICY_OUT, "10.9.0.7/32 -> 10.20.0.0/16", local, remote, AF_INET)
    check_policy(pol[1], XFRM_POLICY_IN, "10.20.0.0/16 -> 10.9.0.7/32", remote, local, AF_INET)
    check_policy(pol[2], XFRM_POLICY_FWD, "10.20.0.0/16 -> 10.9.0.7/32", remote, local, AF_INET)
    # strongSwan-like: below the 400000 base, more specific selectors lower (preferred).
    assert pol[0]["priority"] == 400_000 - (32 + 16) * 512
    assert len({m["priority"] for m in pol}) == 1


def test_policies_ipv6_without_fwd() -> None:
    _, sent = install(params_gcm_v6(), install_fwd=False)
    pol = sent[2:]
    assert [m["dir"] for m in pol] == [XFRM_POLICY_OUT, XFRM_POLICY_IN]
    local, remote = "2001:db8:1::10", "2001:db8:2::1"
    check_policy(
        pol[0], XFRM_POLICY_OUT, "2001:db8:9::7/128 -> 2001:db8:20::/48", local, remote, AF_INET6
    )
    check_policy(
        pol[1], XFRM_POLICY_IN, "2001:db8:20::/48 -> 2001:db8:9::7/128", remote, local, AF_INET6
    )


def test_selectors_from_ranges_ports_and_families() -> None:
    sels = xfrm.selectors_for(
        (TsRange("10.0.0.1", "10.0.0.6", 17, 1000, 1003), TsRange("2001:db8::1", "2001:db8::1")),
        (TsRange("10.1.0.0", "10.1.0.255", 17, 53, 53), TsRange("2001:db8::", "2001:db8::ffff")),
    )
    v4 = [s for s in sels if s.family == AF_INET]
    v6 = [s for s in sels if s.family == AF_INET6]
    # 10.0.0.1-6 is /32, /31, /31, /32 -> 4 prefixes; 1000-1003 is one /14-bit block.
    assert [str(s.src) for s in v4] == ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
    assert {(s.sport, s.sport_mask, s.dport, s.dport_mask, s.proto) for s in v4} == {
        (1000, 0xFFFC, 53, 0xFFFF, 17)
    }
    assert len(v6) == 1 and str(v6[0].dst) == "2001:db8::/112"
    assert xfrm.port_blocks(0, 0xFFFF) == [(0, 0)]
    assert xfrm.port_blocks(1, 4) == [(1, 0xFFFF), (2, 0xFFFE), (4, 0xFFFF)]
    covered = set()
    for value, mask in xfrm.port_blocks(1000, 2000):
        covered |= {p for p in range(65536) if p & mask == value}
    assert covered == set(range(1000, 2001))


def test_migrate_message() -> None:
    key = xfrm.PolicyKey(
        Selector(
            AF_INET, ipaddress.ip_network("10.9.0.7/32"), ipaddress.ip_network("10.20.0.0/16")
        ),
        XFRM_POLICY_OUT,
    )
    msg = roundtrip(
        xfrm.build_migrate(
            key,
            ("192.0.2.10", "198.51.100.1"),
            ("203.0.113.5", "198.51.100.1"),
            42,
            ("203.0.113.5", "198.51.100.1"),
            (4500, 4500),
        )
    )
    assert msg["header"]["type"] == XFRM_MSG_MIGRATE
    assert msg["dir"] == XFRM_POLICY_OUT
    assert str(Selector.from_message(msg)) == "10.9.0.7/32 -> 10.20.0.0/16"
    mig = attr(msg, "XFRMA_MIGRATE")
    assert addr(mig["old_saddr"], AF_INET) == "192.0.2.10"
    assert addr(mig["new_saddr"], AF_INET) == "203.0.113.5"
    assert addr(mig["old_daddr"], AF_INET) == addr(mig["new_daddr"], AF_INET) == "198.51.100.1"
    assert (mig["proto"], mig["mode"], mig["reqid"]) == (IPPROTO_ESP, XFRM_MODE_TUNNEL, 42)
    assert (mig["old_family"], mig["new_family"]) == (AF_INET, AF_INET)
    km = attr(msg, "XFRMA_KMADDRESS")
    assert addr(km["local"], AF_INET) == "203.0.113.5"
    assert addr(km["remote"], AF_INET) == "198.51.100.1"
    assert km["family"] == AF_INET
    assert attr(msg, "XFRMA_ENCAP")["encap_dport"] == 4500


def test_newsa_restores_replay_state() -> None:
    dp, _ = install(params_cbc_sha256_v4())
    spec = dp._children[params_cbc_sha256_v4().spi_in].outbound
    replay = xfrm.ReplayState(oseq=1000, seq=7, bitmap=(0xF0F0F0F0, 0x1), bytes=5, packets=2)
    msg = roundtrip(xfrm.build_newsa(spec, replay))
    esn = attr(msg, "XFRMA_REPLAY_ESN_VAL")
    assert (esn["oseq"], esn["seq"], esn["bmp"]) == (1000, 7, [0xF0F0F0F0, 0x1])
    assert (msg["cur_bytes"], msg["cur_packets"]) == (5, 2)
    ltime = attr(msg, "XFRMA_LTIME_VAL")
    assert (ltime["cur_bytes"], ltime["cur_packets"]) == (5, 2)
    assert xfrm.replay_from_answer(msg) == replay


def test_update_policy_flags() -> None:
    dp, _ = install(params_cbc_sha256_v4())
    spec = dp._policies[dp.installed_policies[0]].spec
    msg = roundtrip(xfrm.build_newpolicy(spec, update=True))
    assert msg["header"]["type"] == XFRM_MSG_UPDPOLICY
    assert not msg["header"]["flags"] & NLM_F_EXCL


def test_error_names_the_failed_message() -> None:
    err = xfrm.XfrmError(38, XFRM_MSG_NEWSA, "Requested AEAD algorithm not found", "probe")
    assert err.errno == 38
    assert err.msg_name == "XFRM_MSG_NEWSA"
    assert "XFRM_MSG_NEWSA failed" in str(err) and "AEAD" in str(err)


def test_error_answer_parsing() -> None:
    """An NLMSG_ERROR with extended ack (NLM_F_CAPPED | NLM_F_ACK_TLVS) as the kernel sends it."""
    text = b"Requested AEAD algorithm not found\0"
    tlv = struct.pack("=HH", 4 + len(text), 1) + text
    tlv += b"\0" * (-len(tlv) % 4)
    orig = struct.pack("=IHHII", 400, XFRM_MSG_NEWSA, 0x605, 9, 0)
    body = struct.pack("=i", -38) + orig + tlv
    data = struct.pack("=IHHII", 16 + len(body), 2, 0x100 | 0x200, 9, 0) + body
    assert xfrm._parse_error(data, 0, len(data)) == (38, "Requested AEAD algorithm not found")
