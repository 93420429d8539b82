"""MD4 message digest (RFC 1320), pure Python.

MS-CHAPv2 needs MD4 for NtPasswordHash, but OpenSSL 3 moved MD4 to its legacy
provider, so ``hashlib.new("md4")`` is often unavailable. MD4 is broken as a
general hash; it is used here only because RFC 2759 requires it.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)

# RFC 1320 §3.4: the order in which each round reads the block's words, and
# the shift applied at each step (the shifts repeat every four steps).
_ORDER1 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
_ORDER2 = (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
_ORDER3 = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
_SHIFTS1 = (3, 7, 11, 19)
_SHIFTS2 = (3, 5, 9, 13)
_SHIFTS3 = (3, 9, 11, 15)


def _rotl(value: int, shift: int) -> int:
    value &= _MASK
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def _f(x: int, y: int, z: int) -> int:
    return (x & y) | (~x & z)


def _g(x: int, y: int, z: int) -> int:
    return (x & y) | (x & z) | (y & z)


def _h(x: int, y: int, z: int) -> int:
    return x ^ y ^ z


def _pad(data: bytes) -> bytes:
    """RFC 1320 §3.1-3.2: a 1 bit, zeros to 448 mod 512, then the bit length (LE)."""
    bit_length = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    padding = b"\x80" + b"\x00" * ((55 - len(data)) % 64)
    return data + padding + struct.pack("<Q", bit_length)


def _compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """RFC 1320 §3.4: process one 16-word block."""
    x = struct.unpack("<16I", block)
    regs = list(state)
    rounds = (
        (_f, 0, _ORDER1, _SHIFTS1),
        (_g, 0x5A827999, _ORDER2, _SHIFTS2),
        (_h, 0x6ED9EBA1, _ORDER3, _SHIFTS3),
    )
    for func, constant, order, shifts in rounds:
        for step, k in enumerate(order):
            shift = shifts[step % 4]
            # Registers rotate a, d, c, b: step i updates regs[-i % 4].
            a_i = -step % 4
            a, b, c, d = regs[a_i], regs[(a_i + 1) % 4], regs[(a_i + 2) % 4], regs[(a_i + 3) % 4]
            regs[a_i] = _rotl(a + func(b, c, d) + x[k] + constant, shift)
    return (
        (state[0] + regs[0]) & _MASK,
        (state[1] + regs[1]) & _MASK,
        (state[2] + regs[2]) & _MASK,
        (state[3] + regs[3]) & _MASK,
    )


def md4(data: bytes) -> bytes:
    """Return the 16-octet MD4 digest of ``data`` (RFC 1320)."""
    state = _INIT
    padded = _pad(data)
    for offset in range(0, len(padded), 64):
        state = _compress(state, padded[offset : offset + 64])
    return struct.pack("<4I", *state)
