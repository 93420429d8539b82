"""ESP SAs in memory: every transform round trips, the replay window, ESN, drops."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.errors import LocalProtocolError
from mpa_ike.esp import (
    NEXT_HEADER_NONE,
    DropReason,
    EspTransform,
    InboundSa,
    OutboundSa,
    ReplayWindow,
    SequenceExhausted,
    make_transform,
)

SPI = bytes.fromhex("c0ffee01")

# name: encr id, key bits, integ id, encr key bytes, integ key bytes, ICV bytes
SUITES: dict[str, tuple[int, int | None, int | None, int, int, int]] = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128, None, 20, 0, 16),
    "aes192gcm16": (EncrId.AES_GCM_16, 192, None, 28, 0, 16),
    "aes256gcm16": (EncrId.AES_GCM_16, 256, None, 36, 0, 16),
    "chacha20poly1305": (EncrId.CHACHA20_POLY1305, None, None, 36, 0, 16),
    "aes128-sha256": (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, 16, 32, 16),
    "aes256-sha256": (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, 32, 32, 16),
    "aes128-sha1": (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, 16, 20, 12),
    "aes256-sha384": (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192, 32, 48, 24),
    "aes256-sha512": (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256, 32, 64, 32),
}


def transform(suite: str, seed: int = 0) -> EspTransform:
    encr, bits, integ, ek, ik, _ = SUITES[suite]
    return make_transform(
        encr, bits, integ, bytes((seed + i) % 256 for i in range(ek)), bytes(range(7, 7 + ik))
    )


def sa_pair(suite: str, *, esn: bool = False, window: int = 64) -> tuple[OutboundSa, InboundSa]:
    return (
        OutboundSa(SPI, transform(suite), esn=esn),
        InboundSa(SPI, transform(suite), esn=esn, replay_window=window),
    )


def ipv4(payload: bytes = b"hello", total: int | None = None) -> bytes:
    length = total if total is not None else 20 + len(payload)
    header = bytes([0x45, 0]) + length.to_bytes(2, "big") + bytes(4) + bytes([64, 17, 0, 0])
    return header + bytes([10, 9, 0, 1, 10, 1, 0, 1]) + payload


def ipv6(payload: bytes = b"hello") -> bytes:
    header = bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([17, 64])
    return header + bytes(15) + b"\x01" + bytes(15) + b"\x02" + payload


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("esn", [False, True])
def test_round_trip(suite: str, esn: bool) -> None:
    out, inb = sa_pair(suite, esn=esn)
    for size in (0, 1, 2, 3, 15, 16, 17, 100, 1400):
        for inner in (ipv4(bytes(size)), ipv6(bytes(range(256)) * 6)[: 40 + size]):
            if inner[0] >> 4 == 6:
                inner = inner[:4] + size.to_bytes(2, "big") + inner[6:]
            packet = out.encrypt(inner)
            t = inb.transform
            body = len(packet) - 8 - t.iv_size - SUITES[suite][5]
            assert body % t.align == 0 and body >= len(inner) + 2
            assert inb.decrypt(packet) == inner
    assert out.stats.packets == inb.stats.packets == 18
    assert out.stats.bytes == inb.stats.bytes


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_padding_and_next_header(suite: str) -> None:
    """RFC 4303 §2.4-2.6: monotonic padding, pad length, next header 4 or 41."""
    t = transform(suite)
    out = OutboundSa(SPI, t)
    inner = ipv4(b"x" * 7)
    plaintext = InboundSa(SPI, transform(suite)).transform.open(out.encrypt(inner), b"")
    assert plaintext is not None
    pad_len, next_header = plaintext[-2], plaintext[-1]
    assert next_header == 4
    assert plaintext[len(inner) : len(inner) + pad_len] == bytes(range(1, pad_len + 1))
    six = InboundSa(SPI, transform(suite)).transform.open(out.encrypt(ipv6()), b"")
    assert six is not None and six[-1] == 41


def test_sequence_numbers_and_aead_iv() -> None:
    """The AEAD IV is the 64-bit sequence number (no RNG per packet), unique per packet."""
    out, _ = sa_pair("aes128gcm16")
    packets = [out.encrypt(ipv4()) for _ in range(3)]
    for n, packet in enumerate(packets, 1):
        assert packet[:4] == SPI
        assert int.from_bytes(packet[4:8], "big") == n
        assert packet[8:16] == n.to_bytes(8, "big")


def test_cbc_ivs_are_distinct_and_unpredictable() -> None:
    out, _ = sa_pair("aes128-sha256")
    ivs = {out.encrypt(ipv4())[8:24] for _ in range(50)}
    assert len(ivs) == 50
    assert bytes(16) not in ivs


def test_chacha20_poly1305_layout() -> None:
    """RFC 7634 §2-2.1: nonce = salt | IV, AAD = SPI | seq, no Key Length."""
    key, salt = bytes(range(32)), b"\xa0\xa1\xa2\xa3"
    out = OutboundSa(SPI, make_transform(EncrId.CHACHA20_POLY1305, None, None, key + salt, b""))
    inner = ipv4(b"chacha")
    packet = out.encrypt(inner)
    iv = packet[8:16]
    plaintext = ChaCha20Poly1305(key).decrypt(salt + iv, packet[16:], packet[:8])
    assert plaintext[: len(inner)] == inner and plaintext[-1] == 4
    # With ESN the AAD is SPI | seq high | seq low (RFC 7634 §2.1).
    esn = OutboundSa(
        SPI, make_transform(EncrId.CHACHA20_POLY1305, None, None, key + salt, b""), esn=True
    )
    esn.seq = (5 << 32) + 9
    packet = esn.encrypt(inner)
    aad = SPI + (5).to_bytes(4, "big") + packet[4:8]
    assert ChaCha20Poly1305(key).decrypt(salt + packet[8:16], packet[16:], aad)[-1] == 4


def test_replay_window() -> None:
    out, inb = sa_pair("aes128gcm16", window=64)
    packets = [out.encrypt(ipv4()) for _ in range(200)]
    # Out of order within the window is fine, once.
    order = [5, 3, 4, 1, 2, 70, 10, 69]
    for i in order:
        assert isinstance(inb.decrypt(packets[i - 1]), bytes), i
    for i in order:
        assert inb.decrypt(packets[i - 1]) is DropReason.REPLAY, i
    # 70 is the top: 7 (> 70 - 64) is still in the window, 6 is too old.
    assert isinstance(inb.decrypt(packets[6]), bytes)
    assert inb.decrypt(packets[5]) is DropReason.REPLAY
    # A jump larger than the window.
    assert isinstance(inb.decrypt(packets[199]), bytes)
    assert inb.decrypt(packets[135]) is DropReason.REPLAY
    assert isinstance(inb.decrypt(packets[136]), bytes)
    assert inb.stats.drops[DropReason.REPLAY] == len(order) + 2


def test_replay_window_sizes() -> None:
    for size in (64, 128, 1024):
        out, inb = sa_pair("aes128gcm16", window=size)
        packets = [out.encrypt(ipv4()) for _ in range(size + 2)]
        assert isinstance(inb.decrypt(packets[-1]), bytes)
        # top = size + 2: the window holds seq 3 .. size + 2.
        assert isinstance(inb.decrypt(packets[2]), bytes)
        assert inb.decrypt(packets[1]) is DropReason.REPLAY


def test_replay_window_disabled() -> None:
    out, inb = sa_pair("aes128gcm16", window=0)
    packet = out.encrypt(ipv4())
    assert isinstance(inb.decrypt(packet), bytes)
    assert isinstance(inb.decrypt(packet), bytes)


def test_tampered_packet_does_not_move_the_window() -> None:
    out, inb = sa_pair("aes128-sha256")
    good = [out.encrypt(ipv4()) for _ in range(3)]
    out.seq = 10_000
    forged = bytearray(out.encrypt(ipv4()))
    forged[30] ^= 1
    assert inb.decrypt(bytes(forged)) is DropReason.BAD_ICV
    assert all(isinstance(inb.decrypt(p), bytes) for p in good)
    assert inb.window.top == 3


def test_zero_sequence_number_is_never_accepted() -> None:
    out, inb = sa_pair("aes128gcm16")
    out.seq = -1  # forge seq 0
    assert inb.decrypt(out.encrypt(ipv4())) is DropReason.REPLAY


def test_sequence_exhausted() -> None:
    out, _ = sa_pair("aes128gcm16")
    out.seq = 0xFFFFFFFE
    out.encrypt(ipv4())
    with pytest.raises(SequenceExhausted):
        out.encrypt(ipv4())
    esn, _ = sa_pair("aes128gcm16", esn=True)
    esn.seq = 0xFFFFFFFE
    esn.encrypt(ipv4())
    esn.encrypt(ipv4())  # ESN goes on into the high half
    assert esn.seq == 1 << 32


def test_esn_wraps_into_the_high_half() -> None:
    out, inb = sa_pair("aes256-sha256", esn=True, window=64)
    out.seq = 0xFFFFFFF0
    inb.window.top = 0xFFFFFFF0
    packets = [out.encrypt(ipv4()) for _ in range(40)]
    # Delivered out of order across the 2^32 boundary.
    for i in (20, 5, 39, 14, 15, 16):
        assert isinstance(inb.decrypt(packets[i]), bytes), i
    assert inb.window.top == 0xFFFFFFF0 + 40
    assert inb.decrypt(packets[5]) is DropReason.REPLAY
    # Without the right high half the ICV fails: a non-ESN receiver cannot read them.
    plain = InboundSa(SPI, transform("aes256-sha256"), esn=False)
    assert plain.decrypt(packets[39]) is DropReason.BAD_ICV


def test_esn_inference_cases() -> None:
    """RFC 4303 Appendix A2.2, both cases, with a window of 64."""
    w = ReplayWindow(64)
    w.top = (3 << 32) + 1000  # case A: window inside one subspace
    assert w.infer_esn(990) == (3 << 32) + 990
    assert w.infer_esn(5000) == (3 << 32) + 5000
    assert w.infer_esn(900) == (4 << 32) + 900  # below the window: next subspace
    w.top = (3 << 32) + 10  # case B: window spans two subspaces
    assert w.infer_esn(0xFFFFFFF0) == (2 << 32) + 0xFFFFFFF0
    assert w.infer_esn(5) == (3 << 32) + 5
    assert w.infer_esn(100) == (3 << 32) + 100


@pytest.mark.parametrize("suite", ["aes128gcm16", "aes128-sha256"])
def test_drops(suite: str) -> None:
    out, inb = sa_pair(suite)
    packet = out.encrypt(ipv4())
    assert inb.decrypt(b"") is DropReason.MALFORMED
    assert inb.decrypt(packet[:20]) is DropReason.MALFORMED
    assert inb.decrypt(b"\x00\x00\x00\x01" + packet[4:]) is DropReason.UNKNOWN_SPI
    assert inb.decrypt(packet[:-1] + bytes([packet[-1] ^ 1])) is DropReason.BAD_ICV
    if suite.endswith("sha256"):
        assert inb.decrypt(packet[:-17] + packet[-16:]) is DropReason.MALFORMED  # not blocks
    dummy = out.encrypt_payload(b"tfc", NEXT_HEADER_NONE)
    assert inb.decrypt(dummy) is DropReason.DUMMY
    assert inb.decrypt(out.encrypt_payload(ipv4(), 17)) is DropReason.BAD_NEXT_HEADER
    assert inb.decrypt(out.encrypt_payload(ipv6(), 4)) is DropReason.MALFORMED
    assert inb.decrypt(out.encrypt_payload(ipv4(total=500), 4)) is DropReason.MALFORMED
    assert inb.stats.packets == 0
    assert sum(inb.stats.drops.values()) == (9 if suite.endswith("sha256") else 8)


def test_tfc_padding_is_removed() -> None:
    """RFC 4303 §2.7: bytes after the inner packet (within the payload) are dropped."""
    out, inb = sa_pair("aes128gcm16")
    inner = ipv4(b"tfc")
    assert inb.decrypt(out.encrypt_payload(inner + bytes(100), 4)) == inner


def test_bad_pad_length() -> None:
    t = transform("aes128gcm16")
    out = OutboundSa(SPI, t)
    # A plaintext whose pad length points before its start.
    header = SPI + (1).to_bytes(4, "big")
    packet = t.seal(header, 1, b"", b"\x05\xfe\x04\x04")
    assert InboundSa(SPI, transform("aes128gcm16")).decrypt(packet) is DropReason.BAD_PADDING
    assert out.seq == 0


def test_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        make_transform(EncrId.AES_GCM_16, 128, None, bytes(16), b"")  # no salt
    with pytest.raises(LocalProtocolError):
        make_transform(EncrId.AES_CBC, 128, None, bytes(16), b"")  # no integrity
    with pytest.raises(LocalProtocolError):
        make_transform(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA2_256_128, bytes(20), bytes(32))
    with pytest.raises(LocalProtocolError):
        make_transform(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(16), bytes(20))
    with pytest.raises(LocalProtocolError):
        OutboundSa(b"\x01", transform("aes128gcm16"))
    out, _ = sa_pair("aes128gcm16")
    with pytest.raises(LocalProtocolError):
        out.encrypt(b"\x10" * 40)
    with pytest.raises(LocalProtocolError):
        out.encrypt(b"")
    with pytest.raises(LocalProtocolError):
        ReplayWindow(-1)
