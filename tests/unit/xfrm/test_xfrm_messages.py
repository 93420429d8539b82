"""The netlink messages the XFRM backend builds, serialized and decoded back byte for byte.

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
    params_cbc_sha256_v4,
    params_chacha_v4,
    params_gcm_v6,
    policy,
    roundtrip,
    sa,
)

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.io import netlink, xfrm
from mpa_ike.io.netlink import NetlinkCodecError
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
    XfrmMessage,
)
from mpa_ike.io.xfrm_messages import (
    XFRMA_ALG_AUTH,
    Algo,
    EncapTmpl,
    KmAddress,
    MigrateMessage,
    UserMigrate,
    UserpolicyId,
    UserpolicyInfo,
    UsersaId,
    UsersaInfo,
    UserTmpl,
)

HEADER = 16


class Recorder:
    """A transport that answers every request with an ack and keeps the messages."""

    def __init__(self) -> None:
        self.sent: list[XfrmMessage] = []

    def request(self, msg: XfrmMessage, what: str = "") -> list[XfrmMessage]:
        self.sent.append(roundtrip(msg))
        return []

    def close(self) -> None:
        pass


def install(params: ChildSaParams, **kwargs: Any) -> tuple[xfrm.XfrmDatapath, list[XfrmMessage]]:
    rec = Recorder()
    dp = xfrm.XfrmDatapath(rec, reqid_base=42, **kwargs)
    dp.install_child_sa(params)
    return dp, rec.sent


SELECTOR = Selector(
    AF_INET, ipaddress.ip_network("10.9.0.7/32"), ipaddress.ip_network("10.20.0.0/16")
)


def test_struct_sizes() -> None:
    sizes: list[tuple[bytes, int]] = [
        (UsersaInfo(SELECTOR, "192.0.2.1", 1, "192.0.2.2", AF_INET).push(), 224),
        (UserpolicyInfo(SELECTOR, XFRM_POLICY_OUT).push(), 168),
        (UsersaId("192.0.2.1", 1, AF_INET).push(), 24),
        (UserpolicyId(SELECTOR, XFRM_POLICY_OUT).push(), 64),
        (SELECTOR.push(), 56),
        (UserTmpl("192.0.2.1", "192.0.2.2", AF_INET, 1, XFRM_MODE_TUNNEL).push(), 64),
        (EncapTmpl(2, 4500, 4500).push(), 24),
        (UserMigrate("::1", "::2", "::3", "::4", 1, AF_INET6, AF_INET6).push(), 76),
        (KmAddress("192.0.2.1", "192.0.2.2", AF_INET).push(), 40),
    ]
    for raw, size in sizes:
        assert len(raw) == size


def test_field_offsets_of_usersa_info() -> None:
    """Check raw bytes at the C offsets, not only our own decoder."""
    params = params_cbc_sha256_v4()
    _, sent = install(params)
    raw = sent[0].push()[HEADER:]
    assert raw[56:60] == bytes([192, 0, 2, 10])  # id.daddr: the inbound SA is ours
    assert raw[80:84] == bytes([198, 51, 100, 1])  # saddr
    spi = struct.unpack_from(">I", raw, 72)[0]
    assert spi == int.from_bytes(params.spi_in, "big")
    assert raw[76] == IPPROTO_ESP
    reqid, family, mode, window, flags = struct.unpack_from("=IHBBB", raw, 208)
    assert (reqid, family, mode) == (42, AF_INET, XFRM_MODE_TUNNEL)
    assert window == 0 and flags == 0  # the 64-packet window is in XFRMA_REPLAY_ESN_VAL


def check_state(
    msg: XfrmMessage,
    *,
    src: str,
    dst: str,
    spi: bytes,
    family: int,
    reqid: int = 42,
) -> None:
    assert msg.kind == XFRM_MSG_NEWSA
    assert msg.flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    info = sa(msg).info
    assert (info.daddr, info.saddr) == (dst, src)
    assert info.spi == int.from_bytes(spi, "big")
    assert info.proto == IPPROTO_ESP
    assert info.family == family
    assert info.mode == XFRM_MODE_TUNNEL
    assert info.reqid == reqid
    assert info.lft.hard_byte_limit == xfrm.XFRM_INF  # IKE rekeys, not the kernel
    # A time of 0 is no limit; XFRM_INF would be a deadline already past for the kernel.
    lifetimes = info.lft
    assert lifetimes.soft_add_expires_seconds == lifetimes.hard_add_expires_seconds == 0
    assert lifetimes.soft_use_expires_seconds == lifetimes.hard_use_expires_seconds == 0


def algo(value: Algo | None) -> Algo:
    assert value is not None
    return value


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
        body = sa(msg)
        # XFRMA_ALG_AUTH would mean the kernel's 96-bit default.
        assert XFRMA_ALG_AUTH not in [kind for kind, _ in body.other]
        assert body.aead is None
        crypt = algo(body.crypt)
        assert (crypt.name, crypt.key_len, crypt.key) == ("cbc(aes)", 128, ekey)
        auth = algo(body.auth_trunc)
        assert (auth.name, auth.key_len, auth.extra, auth.key) == ("hmac(sha256)", 256, 128, ikey)
        esn = body.replay_esn
        assert esn is not None
        assert (esn.replay_window, esn.bmp_len, esn.bmp) == (64, 2, [0, 0])
        assert not body.info.flags & XFRM_STATE_ESN
        assert (body.encap is not None) == encap
    # One TS pair: the SA carries it as its selector.
    assert str(sa(sa_out).info.selector) == "10.9.0.7/32 -> 10.20.0.0/16"
    assert str(sa(sa_in).info.selector) == "10.20.0.0/16 -> 10.9.0.7/32"
    assert not sa(sa_out).info.flags & XFRM_STATE_AF_UNSPEC
    if encap:
        for msg in (sa_in, sa_out):
            enc = sa(msg).encap
            assert enc == EncapTmpl(xfrm.UDP_ENCAP_ESPINUDP, 4500, 4500, bytes(16))
        # Ports are written big-endian, as the kernel reads __be16.
        assert struct.pack(">HH", 4500, 4500) in sa_out.push()


def test_encap_ports_follow_the_ike_sa() -> None:
    """Behind a NAT the peer's port is not 4500: in and out SAs use the two ports crosswise."""
    from dataclasses import replace

    params = replace(params_cbc_sha256_v4(True), remote=("198.51.100.1", 61000))
    _, sent = install(params)
    enc_in, enc_out = sa(sent[0]).encap, sa(sent[1]).encap
    assert enc_in is not None and enc_out is not None
    assert (enc_in.sport, enc_in.dport) == (61000, 4500)
    assert (enc_out.sport, enc_out.dport) == (4500, 61000)


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
    auth = algo(sa(sent[0]).auth_trunc)
    assert (auth.name, auth.key_len, auth.extra) == (name, key_bytes * 8, trunc)
    assert auth.key == b"\x01" * key_bytes
    assert algo(sa(sent[0]).crypt).key_len == 256


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
        body = sa(msg)
        assert body.crypt is None and body.auth_trunc is None
        aead = algo(body.aead)
        assert aead.name == "rfc4106(gcm(aes))"
        assert aead.key_len == 160  # 128-bit key and the 32-bit salt
        assert aead.extra == 128  # the ICV
        assert aead.key == key
        assert (body.encap is not None) == encap
    assert str(sa(sa_out).info.selector) == "2001:db8:9::7/128 -> 2001:db8:20::/48"


def test_chacha20_poly1305_state() -> None:
    params = params_chacha_v4()
    _, sent = install(params)
    for msg, key in ((sent[0], CHACHA_IN), (sent[1], CHACHA_OUT)):
        aead = algo(sa(msg).aead)
        assert (aead.name, aead.key_len, aead.extra, aead.key) == (
            "rfc7539esp(chacha20,poly1305)",
            288,
            128,
            key,
        )


def test_esn_and_small_window() -> None:
    from dataclasses import replace

    _, sent = install(replace(params_cbc_sha256_v4(), esn=True), replay_window=128)
    esn = sa(sent[0]).replay_esn
    assert esn is not None
    assert sa(sent[0]).info.flags & XFRM_STATE_ESN
    assert (esn.replay_window, esn.bmp_len) == (128, 4)
    _, sent = install(params_cbc_sha256_v4(), replay_window=32)
    assert sa(sent[0]).info.replay_window == 32
    assert sa(sent[0]).replay_esn is None


def test_unsupported_transforms_are_refused() -> None:
    from dataclasses import replace

    with pytest.raises(xfrm.XfrmUsageError):
        install(replace(params_cbc_sha256_v4(), integ_id=IntegId.AES_XCBC_96))
    with pytest.raises(xfrm.XfrmUsageError):
        install(replace(params_cbc_sha256_v4(), encr_id=EncrId.TRIPLE_DES))
    with pytest.raises(xfrm.XfrmUsageError):
        install(replace(params_gcm_v6(), integ_id=IntegId.HMAC_SHA2_256_128))


def check_policy(
    msg: XfrmMessage, direction: int, sel: str, tmpl_src: str, tmpl_dst: str, family: int
) -> None:
    assert msg.kind == XFRM_MSG_NEWPOLICY
    info = policy(msg).info
    assert info.dir == direction
    assert info.action == xfrm.XFRM_POLICY_ALLOW
    assert str(info.selector) == sel
    (tmpl,) = policy(msg).templates
    assert (tmpl.saddr, tmpl.daddr, tmpl.family) == (tmpl_src, tmpl_dst, family)
    assert tmpl.proto == IPPROTO_ESP
    assert tmpl.mode == XFRM_MODE_TUNNEL
    assert tmpl.reqid == 42
    assert tmpl.spi == 0
    assert tmpl.ealgos == tmpl.aalgos == 0xFFFFFFFF


def test_policies_ipv4() -> None:
    _, sent = install(params_cbc_sha256_v4())
    pol = sent[2:]
    assert [policy(m).info.dir for m in pol] == [XFRM_POLICY_OUT, XFRM_POLICY_IN, XFRM_POLICY_FWD]
    local, remote = "192.0.2.10", "198.51.100.1"
    check_policy(pol[0], XFRM_POLICY_OUT, "10.9.0.7/32 -> 10.20.0.0/16", local, remote, AF_INET)
    check_policy(pol[1], XFRM_POLICY_IN, "10.20.0.0/16 -> 10.9.0.7/32", remote, local, AF_INET)
    check_policy(pol[2], XFRM_POLICY_FWD, "10.20.0.0/16 -> 10.9.0.7/32", remote, local, AF_INET)
    # strongSwan-like: below the 400000 base, more specific selectors lower (preferred).
    assert policy(pol[0]).info.priority == 400_000 - (32 + 16) * 512
    assert len({policy(m).info.priority for m in pol}) == 1


def test_policies_ipv6_without_fwd() -> None:
    _, sent = install(params_gcm_v6(), install_fwd=False)
    pol = sent[2:]
    assert [policy(m).info.dir for m in pol] == [XFRM_POLICY_OUT, XFRM_POLICY_IN]
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
    key = xfrm.PolicyKey(SELECTOR, XFRM_POLICY_OUT)
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
    assert msg.kind == XFRM_MSG_MIGRATE
    body = msg.body
    assert isinstance(body, MigrateMessage)
    assert body.id.dir == XFRM_POLICY_OUT
    assert str(body.id.selector) == "10.9.0.7/32 -> 10.20.0.0/16"
    (mig,) = body.migrations
    assert (mig.old_saddr, mig.new_saddr) == ("192.0.2.10", "203.0.113.5")
    assert mig.old_daddr == mig.new_daddr == "198.51.100.1"
    assert (mig.proto, mig.mode, mig.reqid) == (IPPROTO_ESP, XFRM_MODE_TUNNEL, 42)
    assert (mig.old_family, mig.new_family) == (AF_INET, AF_INET)
    assert body.kmaddress == KmAddress("203.0.113.5", "198.51.100.1", AF_INET)
    assert body.encap is not None and body.encap.dport == 4500


def test_migrate_across_families() -> None:
    """The C layout holds old and new families apart: each address reads back in its own."""
    key = xfrm.PolicyKey(SELECTOR, XFRM_POLICY_OUT)
    built = xfrm.build_migrate(key, ("2001:db8::1", "2001:db8::2"), ("192.0.2.1", "192.0.2.2"), 7)
    body = roundtrip(built).body
    assert isinstance(body, MigrateMessage)
    (mig,) = body.migrations
    assert (mig.old_saddr, mig.old_daddr) == ("2001:db8::1", "2001:db8::2")
    assert (mig.new_saddr, mig.new_daddr) == ("192.0.2.1", "192.0.2.2")
    assert body.kmaddress is None and body.encap is None


def test_newsa_restores_replay_state() -> None:
    dp, _ = install(params_cbc_sha256_v4())
    spec = dp._children[params_cbc_sha256_v4().spi_in].outbound
    replay = xfrm.ReplayState(oseq=1000, seq=7, bitmap=(0xF0F0F0F0, 0x1), bytes=5, packets=2)
    body = sa(roundtrip(xfrm.build_newsa(spec, replay)))
    esn = body.replay_esn
    assert esn is not None
    assert (esn.oseq, esn.seq, esn.bmp) == (1000, 7, [0xF0F0F0F0, 0x1])
    assert (body.info.curlft.bytes, body.info.curlft.packets) == (5, 2)
    assert body.lifetime is not None
    assert (body.lifetime.bytes, body.lifetime.packets) == (5, 2)
    assert xfrm.replay_from_answer(body) == replay


def test_update_policy_flags() -> None:
    dp, _ = install(params_cbc_sha256_v4())
    spec = dp._policies[dp.installed_policies[0]].spec
    msg = roundtrip(xfrm.build_newpolicy(spec, update=True))
    assert msg.kind == XFRM_MSG_UPDPOLICY
    assert not msg.flags & NLM_F_EXCL


def test_unknown_attributes_are_kept() -> None:
    """What the kernel adds to an answer (here XFRMA_SRCADDR and a mark) reads back and
    pushes the same bytes."""
    _, sent = install(params_cbc_sha256_v4())
    extra = ((13, bytes(16)), (21, struct.pack("=II", 1, 0xFF)))
    body = sa(sent[0])
    body.other = extra
    again = sa(roundtrip(XfrmMessage(XFRM_MSG_NEWSA, 0, body)))
    assert again.other == extra and again.crypt == body.crypt


def test_truncated_messages_are_codec_errors() -> None:
    data = xfrm.build_newsa(
        xfrm.StateSpec(
            "192.0.2.1", "192.0.2.2", 0x100, 1, xfrm.kernel_algorithms(12, 12), bytes(16), bytes(32)
        )
    ).push()
    for cut in (10, 20, 100, 239):
        with pytest.raises(NetlinkCodecError):
            XfrmMessage.pull(data[:cut])


def test_error_names_the_failed_message() -> None:
    err = xfrm.XfrmError(38, XFRM_MSG_NEWSA, "Requested AEAD algorithm not found", "probe")
    assert err.errno == err.code == 38
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
    (msg,) = netlink.pull_messages(data)
    assert netlink.pull_error(msg) == (38, "Requested AEAD algorithm not found")
