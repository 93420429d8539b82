"""EAP for IKEv2 (RFC 3748, RFC 7296 §2.16): peer and server, sans-I/O.

Methods: EAP-Identity, EAP-MD5-Challenge (no MSK) and EAP-MSCHAPv2 (64-octet
MSK as strongSwan derives it). Neither method is mutual and key-generating in
RFC 5998's sense, so they must not be used for EAP-only authentication.
"""

from mpa_ike.eap.authenticator import (
    EapAnswer,
    EapAuthenticator,
    ExternalEapAuthenticator,
    LocalEapAuthenticator,
)
from mpa_ike.eap.packet import EapCode, EapPacket, EapType, parse_packet
from mpa_ike.eap.peer import EapPeer
from mpa_ike.eap.result import EapResult
from mpa_ike.eap.server import EapServer

__all__ = [
    "EapAnswer",
    "EapAuthenticator",
    "EapCode",
    "EapPacket",
    "EapPeer",
    "EapResult",
    "EapServer",
    "EapType",
    "ExternalEapAuthenticator",
    "LocalEapAuthenticator",
    "parse_packet",
]
