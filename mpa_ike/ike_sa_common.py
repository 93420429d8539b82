"""What the IKE SA state machine (:mod:`mpa_ike.ike_sa`) and its parts
(:mod:`mpa_ike.exchange`, the handshakes, :mod:`mpa_ike.mobike`, :mod:`mpa_ike.rekey`,
:mod:`mpa_ike.child_negotiation`) share: SA states, sizes, small helpers."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from enum import Enum

from mpa_ike.child_sa import ChildSaState
from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.wire import IPAddress, Message, NotifyPayload
from mpa_ike.wire.notify import nat_detection_hash

Random = Callable[[int], bytes]
NONCE_SIZE = 32
ZERO_SPI = bytes(8)
IP_HEADER = {4: 20, 6: 40}
UDP_HEADER = 8
NON_ESP_MARKER_SIZE = 4
# Error notifies that fail the CHILD SA only, not the IKE SA (RFC 7296 §2.21.3, §2.19).
CHILD_ERRORS = frozenset(
    {
        NotifyType.NO_PROPOSAL_CHOSEN,
        NotifyType.TS_UNACCEPTABLE,
        NotifyType.INTERNAL_ADDRESS_FAILURE,
        NotifyType.FAILED_CP_REQUIRED,
        NotifyType.SINGLE_PAIR_REQUIRED,
        NotifyType.NO_ADDITIONAL_SAS,
        NotifyType.INVALID_SELECTORS,
    }
)


class IkeSaState(Enum):
    INITIAL = "initial"
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"  # initiator: first IKE_AUTH (no AUTH) out
    EAP_SENT = "eap-sent"  # initiator: an EAP round out
    AUTH_FINAL_SENT = "auth-final-sent"  # initiator: AUTH from the MSK out
    INIT_DONE = "init-done"  # responder: IKE_SA_INIT answered (half-open)
    EAP = "eap"  # responder: EAP under way
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA (§2.18), waiting for its DELETE
    DELETING = "deleting"
    CLOSED = "closed"


HALF_OPEN_STATES = frozenset({IkeSaState.INIT_DONE, IkeSaState.EAP})
# CHILD SA states whose keys are in the datapath (deleting them emits ChildSaDeleted).
CHILD_IN_DATAPATH = frozenset(
    {
        ChildSaState.INSTALLED,
        ChildSaState.REKEYING,
        ChildSaState.REKEYED,
        ChildSaState.DELETING,
    }
)
LIVE_STATES = frozenset({IkeSaState.ESTABLISHED, IkeSaState.DELETING})


def ip_of(address: Address) -> IPAddress:
    return _parsed_ip(address[0])


@functools.lru_cache(maxsize=4096)
def _parsed_ip(text: str) -> IPAddress:
    """Cached: every message sent parses its peer's address (the IP header's size),
    and a gateway talks to the same few thousand addresses again and again."""
    return ipaddress.ip_address(text)


def natd(spi_i: bytes, spi_r: bytes, address: Address) -> bytes:
    return nat_detection_hash(spi_i, spi_r, ip_of(address), address[1])


def protocol_error(notify: NotifyType, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, notify)


def error_notifies(message: Message) -> list[NotifyType]:
    return [
        p.notify_type
        for p in message.find_all(NotifyPayload)
        if p.notify_type.is_error and p.notify_type.known
    ]
