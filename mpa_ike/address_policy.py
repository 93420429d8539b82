"""The gateway's MOBIKE address policy (RFC 4555 §3.5): which new address an
UPDATE_SA_ADDRESSES may move an IKE SA to.

The policy is this project's own: RFC 4555 §3.5 lets the responder refuse a new
address pair by local policy with UNACCEPTABLE_ADDRESSES; no open IKEv2
implementation checks the new address against the CP lease. Under
``allocated`` the new remote address must be one the gateway leased to this
very IKE SA (the MPA nCoA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mpa_ike.datagram import Address
from mpa_ike.datapath import IPNetwork
from mpa_ike.records import quick_init
from mpa_ike.wire import IPAddress


@quick_init
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
