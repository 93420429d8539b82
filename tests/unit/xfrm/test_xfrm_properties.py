"""Property tests: every state and policy message decodes back to what was asked for."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from xfrm_samples import attr, roundtrip

from mpa_ike.datapath import TsRange
from mpa_ike.io import xfrm

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
    msg = roundtrip(xfrm.build_newsa(spec, replay))
    fam = msg["family"]
    assert xfrm.unpack_addr(msg["id_daddr"], fam) == str(ipaddress.ip_address(spec.dst))
    assert xfrm.unpack_addr(msg["saddr"], fam) == str(ipaddress.ip_address(spec.src))
    assert (msg["id_spi"], msg["reqid"]) == (spec.spi, spec.reqid)
    if spec.algorithms.aead:
        aead = attr(msg, "XFRMA_ALG_AEAD")
        assert aead["alg_key"] == spec.encr_key
        assert aead["alg_key_len"] == 8 * len(spec.encr_key)
    else:
        assert attr(msg, "XFRMA_ALG_CRYPT")["alg_key"] == spec.encr_key
        auth = attr(msg, "XFRMA_ALG_AUTH_TRUNC")
        assert auth["alg_key"] == spec.integ_key
        assert auth["alg_trunc_len"] == spec.algorithms.trunc_bits
    if spec.encap:
        enc = attr(msg, "XFRMA_ENCAP")
        assert (enc["encap_sport"], enc["encap_dport"]) == spec.encap
    if spec.esn or spec.replay_window > 32:
        assert msg["replay_window"] == 0
        assert attr(msg, "XFRMA_REPLAY_ESN_VAL")["replay_window"] == spec.replay_window
    else:
        assert msg["replay_window"] == spec.replay_window
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
        msg = roundtrip(xfrm.build_newpolicy(spec))
        assert xfrm.Selector.from_message(msg) == sel
