"""EAP packet codec (RFC 3748 §4).

An EAP packet is Code (1), Identifier (1), Length (2) and, for Requests and
Responses, a Type (1) followed by Type-Data. :func:`parse_packet` raises
:class:`~mpa_ike.errors.CodecError` for every malformed input and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mpa_ike.constants import OpenIntEnum
from mpa_ike.errors import CodecError

HEADER_LENGTH = 4
MAX_LENGTH = 0xFFFF


class EapCode(OpenIntEnum):
    """RFC 3748 §4 codes (5 and 6 are RFC 6696's Initiate/Finish, unsupported)."""

    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(OpenIntEnum):
    """RFC 3748 §5 method types and the IANA value of EAP-MSCHAPv2."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4
    OTP = 5
    GTC = 6
    MSCHAPV2 = 26
    EXPANDED = 254
    EXPERIMENTAL = 255


@dataclass(frozen=True)
class EapPacket:
    """One EAP packet. ``type`` is None exactly for Success and Failure."""

    code: EapCode
    identifier: int
    type: EapType | None = None
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.identifier <= 0xFF:
            raise ValueError(f"EAP identifier out of range: {self.identifier}")
        carries_type = self.code in (EapCode.REQUEST, EapCode.RESPONSE)
        if carries_type != (self.type is not None):
            raise ValueError(f"EAP {self.code.name} {'needs' if carries_type else 'has no'} type")
        if self.type is None and self.data:
            raise ValueError("EAP Success/Failure carry no data")

    def to_bytes(self) -> bytes:
        """Serialize (RFC 3748 §4)."""
        body = b"" if self.type is None else bytes([self.type]) + self.data
        length = HEADER_LENGTH + len(body)
        if length > MAX_LENGTH:
            raise ValueError("EAP packet longer than 65535 octets")
        return struct.pack("!BBH", self.code, self.identifier, length) + body


def request(identifier: int, eap_type: EapType, data: bytes = b"") -> EapPacket:
    return EapPacket(EapCode.REQUEST, identifier, eap_type, data)


def response(identifier: int, eap_type: EapType, data: bytes = b"") -> EapPacket:
    return EapPacket(EapCode.RESPONSE, identifier, eap_type, data)


def success(identifier: int) -> EapPacket:
    return EapPacket(EapCode.SUCCESS, identifier)


def failure(identifier: int) -> EapPacket:
    return EapPacket(EapCode.FAILURE, identifier)


def parse_packet(raw: bytes) -> EapPacket:
    """Parse one EAP packet (RFC 3748 §4).

    Octets beyond Length are link-layer padding and ignored (§4); a Length
    larger than the input, an unknown Code, a Request/Response without a Type
    or a Success/Failure with data raise CodecError.
    """
    if len(raw) < HEADER_LENGTH:
        raise CodecError("EAP packet shorter than its header")
    code_value, identifier, length = struct.unpack_from("!BBH", raw)
    if length < HEADER_LENGTH or length > len(raw):
        raise CodecError(f"EAP length {length} does not fit {len(raw)} octets")
    code = EapCode.of(code_value)
    if not code.known:
        raise CodecError(f"unknown EAP code {code_value}")
    body = raw[HEADER_LENGTH:length]
    if code in (EapCode.SUCCESS, EapCode.FAILURE):
        return _parse_result(code, identifier, body)
    if not body:
        raise CodecError(f"EAP {code.name} without a type")
    return EapPacket(code, identifier, EapType.of(body[0]), bytes(body[1:]))


def _parse_result(code: EapCode, identifier: int, body: bytes) -> EapPacket:
    # RFC 3748 §4.2: Success and Failure are exactly four octets long.
    if body:
        raise CodecError(f"EAP {code.name} with {len(body)} octets of data")
    return EapPacket(code, identifier)


def build_nak(identifier: int, acceptable: tuple[EapType, ...]) -> EapPacket:
    """Legacy Nak response (RFC 3748 §5.3.1); type 0 means no alternative."""
    data = bytes(acceptable) if acceptable else b"\x00"
    return response(identifier, EapType.NAK, data)


def parse_nak(packet: EapPacket) -> tuple[EapType, ...]:
    """The types a Nak proposes, in the peer's order of preference (§5.3.1)."""
    return tuple(EapType.of(value) for value in packet.data if value != 0)
