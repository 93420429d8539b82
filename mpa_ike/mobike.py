"""MOBIKE (RFC 4555) pieces that are not state: the responder's address policy,
the NO_NATS_ALLOWED check, COOKIE2 and the additional-address lists.

The state machine side lives in :mod:`mpa_ike.ike_sa`: the initiator's
``update_addresses`` and the responder's ``_on_update_sa_addresses``.

The address policy is this project's own (issue 5): RFC 4555 §3.5 lets the
responder refuse a new address pair by local policy with
UNACCEPTABLE_ADDRESSES; no open IKEv2 implementation checks the new address
against the CP lease. Under ``allocated`` the new remote address must be one
the gateway leased to this very IKE SA (the MPA nCoA).

§3.12: ESP arriving from an unexpected address is no proof that the peer moved
or lives there; the core never moves an SA on ESP (it does not see ESP at all).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address
from mpa_ike.datapath import IPNetwork
from mpa_ike.wire import IPAddress, NotifyPayload
from mpa_ike.wire.notify import additional_address_notify, read_no_nats_allowed

COOKIE2_SIZE = 16  # §3.7: 8 to 64 octets


@dataclass(frozen=True, slots=True)
class IkeSaInfo:
    """What an address policy may look at of the IKE SA being moved."""

    name: str
    ike_sa: bytes
    peer_identity: str
    assigned_addresses: tuple[IPAddress, ...]
    local: Address
    remote: Address


AddressCheck = Callable[[IkeSaInfo, IPAddress], bool]


class AddressPolicyMode(Enum):
    ALLOCATED = "allocated"  # only an address leased to this IKE SA by CP (MPA)
    ANY = "any"  # strongSwan's behaviour
    PREFIXES = "prefixes"  # any address inside ``prefixes``


@dataclass(frozen=True)
class AddressPolicy:
    """The gateway's MOBIKE address policy; callable as an :data:`AddressCheck`."""

    mode: AddressPolicyMode = AddressPolicyMode.ALLOCATED
    prefixes: tuple[IPNetwork, ...] = ()

    def __call__(self, sa: IkeSaInfo, address: IPAddress) -> bool:
        if self.mode == AddressPolicyMode.ANY:
            return True
        if self.mode == AddressPolicyMode.PREFIXES:
            return any(address in prefix for prefix in self.prefixes)
        return address in sa.assigned_addresses


def no_nats_mismatch(notify: NotifyPayload, src: Address, dst: Address) -> bool:
    """§3.9: NO_NATS_ALLOWED names the sender's view of the IP header; True if it differs."""
    claimed = read_no_nats_allowed(notify)
    seen = (ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0]), src[1], dst[1])
    return (claimed.src_addr, claimed.dst_addr, claimed.src_port, claimed.dst_port) != seen


def additional_address_notifies(addresses: Sequence[IPAddress]) -> list[NotifyPayload]:
    """§3.4/§3.6: the whole list, or NO_ADDITIONAL_ADDRESSES when there is none."""
    if not addresses:
        return [NotifyPayload(NotifyType.NO_ADDITIONAL_ADDRESSES)]
    return [additional_address_notify(a) for a in addresses]


ADDRESS_LIST_NOTIFIES = frozenset(
    {
        NotifyType.ADDITIONAL_IP4_ADDRESS,
        NotifyType.ADDITIONAL_IP6_ADDRESS,
        NotifyType.NO_ADDITIONAL_ADDRESSES,
    }
)
