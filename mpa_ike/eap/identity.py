"""EAP Identity (RFC 3748 §5.1).

The Request may carry a displayable prompt; the Response carries the peer's
identity, not NUL terminated. An empty Response identity means the peer
leaves the identity to the lower layer (in IKEv2, its IDi).
"""

from __future__ import annotations

from mpa_ike.eap.packet import EapPacket, EapType, request, response


def build_identity_request(identifier: int, prompt: bytes = b"") -> EapPacket:
    return request(identifier, EapType.IDENTITY, prompt)


def build_identity_response(identifier: int, identity: bytes) -> EapPacket:
    return response(identifier, EapType.IDENTITY, identity)


def identity_of(packet: EapPacket) -> bytes:
    """The identity a Response carries (RFC 3748 §5.1: no terminator)."""
    return packet.data
