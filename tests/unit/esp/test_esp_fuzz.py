"""Property tests: no received bytes raise, forgeries never pass, the window is exact."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.esp import DropReason, EspTunnels, InboundSa, OutboundSa, make_transform, packet_keys

SPI = b"\xc0\x00\x00\x07"
SUITES = {
    "gcm": (EncrId.AES_GCM_16, 128, None, bytes(range(20)), b""),
    "chacha": (EncrId.CHACHA20_POLY1305, None, None, bytes(range(36)), b""),
    "cbc": (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(range(16)), bytes(32)),
}
suites = st.sampled_from(sorted(SUITES))


def pair(suite: str, esn: bool = False) -> tuple[OutboundSa, InboundSa]:
    encr, bits, integ, ek, ik = SUITES[suite]
    return (
        OutboundSa(SPI, make_transform(encr, bits, integ, ek, ik), esn=esn),
        InboundSa(SPI, make_transform(encr, bits, integ, ek, ik), esn=esn),
    )


def inner_v4(payload: bytes) -> bytes:
    total = (20 + len(payload)).to_bytes(2, "big")
    header = b"\x45\x00" + total + bytes(4) + b"\x40\x11\x00\x00"
    return header + bytes([10, 9, 0, 1, 10, 1, 0, 1]) + payload


def tunnels() -> EspTunnels:
    t = EspTunnels()
    encr, bits, integ, ek, ik = SUITES["gcm"]
    t.install(
        ChildSaParams(
            spi_in=SPI,
            spi_out=SPI,
            encr_id=encr,
            encr_key_bits=bits,
            integ_id=integ,
            encr_key_in=ek,
            integ_key_in=ik,
            encr_key_out=ek,
            integ_key_out=ik,
            esn=False,
            local=("192.0.2.1", 4500),
            remote=("192.0.2.2", 4500),
            encap=True,
            local_ts=(TsRange("10.9.0.1", "10.9.0.1"),),
            remote_ts=(TsRange("10.1.0.0", "10.1.0.255"),),
        )
    )
    return t


@settings(max_examples=300)
@given(suites, st.booleans(), st.binary(max_size=200))
def test_any_bytes_are_dropped_not_raised(suite: str, esn: bool, data: bytes) -> None:
    _, inb = pair(suite, esn)
    result = inb.decrypt(data)
    assert isinstance(result, DropReason)
    # With the right SPI prefixed, still a drop (a forgery would need the key).
    assert isinstance(inb.decrypt(SPI + data), DropReason)


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_tunnels_never_raise(data: bytes) -> None:
    t = tunnels()
    assert isinstance(t.inbound(data), DropReason)
    assert isinstance(t.inbound(SPI + data), DropReason)
    result = t.outbound(data)
    assert isinstance(result, DropReason) or result[1][:4] == SPI
    packet_keys(data)


@settings(max_examples=300)
@given(suites, st.binary(max_size=64), st.data())
def test_any_change_is_detected(suite: str, payload: bytes, data: st.DataObject) -> None:
    out, inb = pair(suite)
    packet = out.encrypt(inner_v4(payload))
    index = data.draw(st.integers(0, len(packet) - 1))
    flip = data.draw(st.integers(1, 255))
    forged = packet[:index] + bytes([packet[index] ^ flip]) + packet[index + 1 :]
    result = inb.decrypt(forged)
    expected = DropReason.UNKNOWN_SPI if index < 4 else DropReason.BAD_ICV
    if 4 <= index < 8 and int.from_bytes(forged[4:8], "big") == 0:
        expected = DropReason.REPLAY
    assert result is expected
    # Truncated or extended packets are dropped too.
    cut = data.draw(st.integers(0, len(packet) - 1))
    assert isinstance(inb.decrypt(packet[:cut]), DropReason)
    assert isinstance(inb.decrypt(packet + b"\0"), DropReason)
    assert inb.decrypt(packet) == inner_v4(payload)


@settings(max_examples=200)
@given(st.integers(0, 200), st.lists(st.integers(1, 400), max_size=80), st.booleans())
def test_replay_window_matches_a_model(window: int, seqs: list[int], esn: bool) -> None:
    out, _ = pair("gcm", esn)
    encr, bits, integ, ek, ik = SUITES["gcm"]
    inb = InboundSa(SPI, make_transform(encr, bits, integ, ek, ik), esn=esn, replay_window=window)
    packets = {}
    for seq in sorted(set(seqs)):
        out.seq = seq - 1
        packets[seq] = out.encrypt(inner_v4(b""))
    seen: set[int] = set()
    top = 0
    for seq in seqs:
        fresh = window == 0 or (seq > top or (top - seq < window and seq not in seen))
        result = inb.decrypt(packets[seq])
        assert isinstance(result, bytes) == fresh, (seq, top)
        if fresh:
            seen.add(seq)
            top = max(top, seq)
