"""EAP-MD5-Challenge (RFC 3748 §5.4, after CHAP, RFC 1994 §4.1).

Type-Data is Value-Size (1), Value, Name. The Response Value is
MD5(Identifier | secret | Challenge). The method derives no keys, so over
IKEv2 the AUTH payloads fall back to SK_pi/SK_pr (RFC 7296 §2.16).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from mpa_ike.errors import CodecError

CHALLENGE_LENGTH = 16


@dataclass(frozen=True)
class Md5Value:
    """The Value and optional Name of an EAP-MD5 Request or Response."""

    value: bytes
    name: bytes = b""

    def to_bytes(self) -> bytes:
        if not 1 <= len(self.value) <= 0xFF:
            raise ValueError("EAP-MD5 value must be 1..255 octets")
        return bytes([len(self.value)]) + self.value + self.name


def parse_md5(data: bytes) -> Md5Value:
    """Parse EAP-MD5 Type-Data; Value-Size 0 or beyond the data is malformed."""
    if not data:
        raise CodecError("EAP-MD5 without Value-Size")
    size = data[0]
    if size == 0 or 1 + size > len(data):
        raise CodecError(f"EAP-MD5 Value-Size {size} does not fit {len(data) - 1} octets")
    return Md5Value(bytes(data[1 : 1 + size]), bytes(data[1 + size :]))


def md5_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 §4.1 / RFC 3748 §5.4: MD5(Identifier | secret | Challenge)."""
    data = bytes([identifier]) + secret + challenge
    return hashlib.md5(data, usedforsecurity=False).digest()


def md5_response_matches(identifier: int, secret: bytes, challenge: bytes, value: bytes) -> bool:
    return hmac.compare_digest(md5_response(identifier, secret, challenge), value)
