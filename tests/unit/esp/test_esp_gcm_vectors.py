"""AES-GCM ESP known answers from draft-mcgrew-gcm-test-01 (test cases for RFC 4106).

Each case gives the key, the 4-byte salt and 8-byte IV (the nonce), the AAD
(SPI | sequence number, 32 or 64 bits: the ESN cases) and the ESP payload with
its trailer. The draft's payloads end in Next Header 1, not tunnel mode, so our
inbound SA authenticates and decrypts them and then refuses them with
``BAD_NEXT_HEADER``, after moving its replay window: that only happens once the
ICV has verified. The padded plaintext itself is checked through the transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mpa_ike.constants import EncrId
from mpa_ike.esp import DropReason, InboundSa, make_transform


@dataclass(frozen=True)
class Case:
    name: str
    key: str
    nonce: str
    aad: str
    plaintext: str
    ciphertext_and_tag: str


CASES = [
    Case(
        "1: AES-128, 64-bit ESN",
        "4c80cdefbb5d10da906ac73c3613a634",
        "2e443b684956ed7e3b244cfe",
        "000043218765432100000000",
        "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000"
        "00000000045f736970045f756470037369700963796265726369747902646b00"
        "0021000101020201",
        "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34"
        "cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce"
        "61bc17d768fd9732459018148f6cbe722fd04796562dfdb4",
    ),
    Case(
        "2: AES-128",
        "feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "0000a5f80000000a",
        "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d00100"
        "0001000000000000037369700963796265726369747902646b00000100010001",
        "deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c"
        "3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1"
        "83b70d3aa8bc6ee4c309e9d85a41ad4a",
    ),
    Case(
        "3: AES-256",
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
        "112233440102030405060708",
        "4a2cbfe300000002",
        "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000"
        "7002400020bf0000020405b40101040201020201",
        "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763"
        "748a637985771d347f0545659f14e99def842d8eb335f4eecfdbf831824b4c49"
        "15956c96",
    ),
    Case(
        "7: AES-192",
        "feffe9928665731c6d6a8f9467308308feffe9928665731c",
        "cafebabefacedbaddecaf888",
        "0000a5f80000000a",
        "45000028a4ad4000400678800a01038f0a010612802306b8cb712602dd6bb03e501016d075680001",
        "a5b1f8066029aea40e598b8122de02420938b3ab33f828e687b8858b5bfbdbd0"
        "315b27452144cc7795457b9652037f5318027b5b4cd7a636",
    ),
    Case(
        "8: AES-128, ESN",
        "abbccddef00112233445566778899aab",
        "decaf888cafedebaceface74",
        "000001000000000000000001",
        "4500004933ba00007f119106c3fb1d10c2b1d326c02831ce0035dd7b800302d5"
        "00004e20001e8c18d75b81dc91baa0476b91b924b280389d92c963bac046ec95"
        "9b6266c04722b14923010101",
        "18a6fd42f72cbf4ab2a2ea901f73d814e3e7f243d95412e1c349c1d2fbec168f"
        "9190feebaf2cb01984e65863965d7472b79da345e0e780191f0d2f0e0f496c22"
        "6f2127b27db35724e7845d68651f57e65f354f75ff17015769623436",
    ),
    Case(
        "14: AES-256, ESN at its maximum",
        "6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961",
        "7475726e333021696765746d",
        "796b6963ffffffffffffffff",
        "45000030da3a00008001df3bc0a80005c0a800010800c6cd0200070061626364"
        "65666768696a6b6c6d6e6f707172737401020201",
        "f97ab2aa356d8edce17644ac8c78e25dd24dedbb29ebf1b64a274b39b49c3a86"
        "4cd3d78ca4ae68a32b42458fb57dbe821dcc63b9d0937ba2945f669368661a32"
        "9fb4c053",
    ),
]


def parts(case: Case) -> tuple[bytes, bool, int, bytes, bytes]:
    """Key material (key | salt), ESN, the full sequence number, the packet, plaintext."""
    nonce, aad = bytes.fromhex(case.nonce), bytes.fromhex(case.aad)
    spi, esn = aad[:4], len(aad) == 12
    seq = int.from_bytes(aad[4:], "big")
    seq_low = (seq & 0xFFFFFFFF).to_bytes(4, "big")
    packet = spi + seq_low + nonce[4:] + bytes.fromhex(case.ciphertext_and_tag)
    return (
        bytes.fromhex(case.key) + nonce[:4],
        esn,
        seq,
        packet,
        bytes.fromhex(case.plaintext),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gcm_vectors(case: Case) -> None:
    keymat, esn, seq, packet, plaintext = parts(case)
    bits = (len(keymat) - 4) * 8
    transform = make_transform(EncrId.AES_GCM_16, bits, None, keymat, b"")
    seq_hi = (seq >> 32).to_bytes(4, "big") if esn else b""
    assert transform.open(packet, seq_hi) == plaintext
    # Without the high half of the ESN the AAD differs and the ICV fails.
    if esn:
        assert transform.open(packet, b"") is None

    sa = InboundSa(packet[:4], transform, esn=esn, replay_window=64)
    sa.window.top = seq - 1
    assert sa.decrypt(packet) is DropReason.BAD_NEXT_HEADER
    assert sa.window.top == seq  # authenticated before the next header was refused
    tampered = packet[:-1] + bytes([packet[-1] ^ 1])
    assert sa.decrypt(tampered) is DropReason.REPLAY  # same sequence number now
    fresh = InboundSa(packet[:4], transform, esn=esn, replay_window=64)
    fresh.window.top = seq - 1
    assert fresh.decrypt(tampered) is DropReason.BAD_ICV
