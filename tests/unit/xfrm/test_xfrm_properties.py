"""Property tests: every state and policy message decodes back to what was asked for."""

from __future__ import annotations

import contextlib
import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from xfrm_samples import policy, roundtrip, sa

from mpa_ike.datapath import TsRange
from mpa_ike.io import netlink, xfrm, xfrm_messages

v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
address_pair = st.one_of(st.tuples(v4, v4), st.tuples(v6, v6))
algorithms = st.sampled_from(
    [
        (xfrm.KernelAlgorithms(aead="rfc4106(gcm(aes))", icv_bits=128), (20, 28, 36), (0,)),
        (xfrm.KernelAlgorithms(aead="rfc7539esp(chacha20,poly1305)", icv_bits=128), (36,), (0,)),
        (xfrm.kernel_algorithms(12, 12), (16, 24, 32), (32,)),
        (xfrm.kernel_algorithms(12, 13), (16, 32), (48,)),
        (xfrm.kernel_algorithms(12, 14), (16, 32), (64,)),
    ]
)


@st.composite
def state_specs(draw: st.DrawFn) -> tuple[xfrm.StateSpec, xfrm.ReplayState | None]:
    src, dst = draw(address_pair)
    algs, encr_sizes, integ_sizes = draw(algorithms)
    encr_size = draw(st.sampled_from(encr_sizes))
    encr_key = draw(st.binary(min_size=encr_size, max_size=encr_size))
    integ_key = draw(st.binary(min_size=integ_sizes[0], max_size=integ_sizes[0]))
    window = draw(st.sampled_from([0, 16, 32, 64, 128, 1024]))
    spec = xfrm.StateSpec(
        src=src,
        dst=dst,
        spi=draw(st.integers(0x100, 0xFFFF_FFFF)),
        reqid=draw(st.integers(0, 0xFFFF_FFFF)),
        algorithms=algs,
        encr_key=encr_key,
        integ_key=integ_key if algs.auth else b"",
        encap=draw(st.none() | st.tuples(st.integers(1, 65535), st.integers(1, 65535))),
        replay_window=window,
        esn=draw(st.booleans()),
    )
    replay = draw(
        st.none()
        | st.builds(
            xfrm.ReplayState,
            oseq=st.integers(0, 0xFFFF_FFFF),
            seq=st.integers(0, 0xFFFF_FFFF),
            bytes=st.integers(0, 1 << 60),
            packets=st.integers(0, 1 << 40),
        )
    )
    return spec, replay


@given(state_specs())
def test_state_round_trip(case: tuple[xfrm.StateSpec, xfrm.ReplayState | None]) -> None:
    spec, replay = case
    msg = sa(roundtrip(xfrm.build_newsa(spec, replay)))
    assert msg.info.daddr == str(ipaddress.ip_address(spec.dst))
    assert msg.info.saddr == str(ipaddress.ip_address(spec.src))
    assert (msg.info.spi, msg.info.reqid) == (spec.spi, spec.reqid)
    if spec.algorithms.aead:
        assert msg.aead is not None
        assert msg.aead.key == spec.encr_key
        assert msg.aead.key_len == 8 * len(spec.encr_key)
    else:
        assert msg.crypt is not None and msg.auth_trunc is not None
        assert msg.crypt.key == spec.encr_key
        assert msg.auth_trunc.key == spec.integ_key
        assert msg.auth_trunc.extra == spec.algorithms.trunc_bits
    if spec.encap:
        assert msg.encap is not None
        assert (msg.encap.sport, msg.encap.dport) == spec.encap
    if spec.esn or spec.replay_window > 32:
        assert msg.info.replay_window == 0
        assert msg.replay_esn is not None
        assert msg.replay_esn.replay_window == spec.replay_window
    else:
        assert msg.info.replay_window == spec.replay_window
    if replay is not None:
        got = xfrm.replay_from_answer(msg)
        assert (got.oseq, got.seq, got.bytes, got.packets) == (
            replay.oseq,
            replay.seq,
            replay.bytes,
            replay.packets,
        )


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_port_blocks_cover_exactly(a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    blocks = xfrm.port_blocks(start, end)
    size = 0
    for value, mask in blocks:
        assert value & mask == value
        block = 0x10000 - mask if mask else 0x10000
        assert start <= value and value + block - 1 <= end
        size += block
    assert size == end - start + 1


@given(v4, v4, v4, v4)
def test_policy_selectors_round_trip(a: str, b: str, c: str, d: str) -> None:
    lo1, hi1 = sorted((a, b), key=ipaddress.IPv4Address)
    lo2, hi2 = sorted((c, d), key=ipaddress.IPv4Address)
    sels = xfrm.selectors_for((TsRange(lo1, hi1),), (TsRange(lo2, hi2),))
    assert sels
    for sel in sels[:8]:
        spec = xfrm.PolicySpec(sel, xfrm.XFRM_POLICY_OUT, "192.0.2.1", "192.0.2.2", 1, 1)
        assert policy(roundtrip(xfrm.build_newpolicy(spec))).info.selector == sel


@given(st.binary(max_size=400), st.sampled_from(sorted(xfrm_messages.BODY_CLASSES)))
def test_any_bytes_parse_or_raise_the_codec_error(data: bytes, kind: int) -> None:
    """A body from the kernel either reads back or is a NetlinkCodecError, never more."""
    message = netlink.Message(kind, 0, 1, 0, data)
    with contextlib.suppress(netlink.NetlinkCodecError):
        xfrm.XfrmMessage.from_netlink(message)
