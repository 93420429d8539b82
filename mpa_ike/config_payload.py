"""The Configuration payload (RFC 7296 §2.19, §3.15): CFG_REQUEST and CFG_REPLY.

The initiator asks for an internal address of each family it wants (an empty
INTERNAL_IP4_ADDRESS / INTERNAL_IP6_ADDRESS attribute, or one holding the
address it would like), for the IPv4 address's INTERNAL_IP4_NETMASK and for DNS
servers. The responder leases addresses through an injected
:class:`AddressAllocator`, keyed by the IKE SA; the lease lasts until the IKE SA
ends (§2.19), when the responder releases it. The netmask is that of the pool
network the address lies in; the protected subnets (INTERNAL_IP4_SUBNET,
INTERNAL_IP6_SUBNET, §3.15.2) go in every reply, asked for or not (§3.15.1: "the
responder MAY respond with zero or more sub-network attributes").
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Literal, Protocol

from mpa_ike.constants import CfgAttrType, CfgType
from mpa_ike.records import quick_init
from mpa_ike.wire import CfgAttribute, ConfigurationPayload, IPAddress

Family = Literal[4, 6]
IPNetwork = IPv4Network | IPv6Network
IP6_PREFIX_LENGTH = 128
SUBNET_TYPES = {4: CfgAttrType.INTERNAL_IP4_SUBNET, 6: CfgAttrType.INTERNAL_IP6_SUBNET}


@quick_init
@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """An address of ``family`` for the IKE SA ``owner`` of the peer ``identity`` (the
    identity EAP authenticated, else IDi; its earlier address again where it can be),
    ``requested`` the one the peer asked for (§3.15.1), if any."""

    owner: Hashable
    family: Family
    requested: IPAddress | None = None
    identity: str | None = None


class AddressAllocator(Protocol):
    """What the responder needs of an address pool (gateway.pool.AddressPool fits)."""

    def lease(self, request: LeaseRequest) -> IPAddress | None: ...

    def release(self, owner: Hashable) -> tuple[IPAddress, ...]: ...

    def network_of(self, address: IPAddress) -> IPNetwork | None:
        """The pool network ``address`` lies in (its INTERNAL_IP4_NETMASK), or None."""
        ...


@quick_init
@dataclass(frozen=True, slots=True)
class CfgRequest:
    """What a CFG_REQUEST asks for: families with an optional wanted address."""

    addresses: dict[int, IPAddress | None]
    dns: bool


@quick_init
@dataclass(frozen=True, slots=True)
class CfgReply:
    """What a CFG_REPLY gives: the internal addresses, DNS servers, the IPv4 address's
    netmask (§3.15.1: one at most, only with INTERNAL_IP4_ADDRESS) and the subnets
    behind the responder (§3.15.2)."""

    addresses: tuple[IPAddress, ...]
    dns: tuple[IPAddress, ...]
    netmask: IPv4Address | None = None
    subnets: tuple[IPNetwork, ...] = ()

    def prefix_length(self, address: IPAddress) -> int:
        return prefix_length(address, self.netmask)


def prefix_length(address: IPAddress, netmask: IPv4Address | None) -> int:
    """The prefix length ``address`` goes on its interface with: the netmask's for the
    IPv4 address, else a host address."""
    if isinstance(address, IPv4Address) and netmask is not None:
        return IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    return address.max_prefixlen


def build_request(
    families: Sequence[int], wanted: Sequence[IPAddress] = ()
) -> ConfigurationPayload:
    """CFG_REQUEST for one address per family and the DNS servers of each; ``wanted``:
    the addresses asked for by value (§3.15.1: the ones a re-authenticated IKE SA had).
    An IPv4 address comes with an empty INTERNAL_IP4_NETMASK, as §3.15.1 pairs them."""
    attributes: list[CfgAttribute] = []
    for family in families:
        asked = next((a for a in wanted if a.version == family), None)
        if isinstance(asked, IPv4Address):
            attributes.append(CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, asked))
        elif family == 4:
            attributes.append(CfgAttribute(CfgAttrType.INTERNAL_IP4_ADDRESS))
        if family == 4:
            attributes.append(CfgAttribute(CfgAttrType.INTERNAL_IP4_NETMASK))
        elif isinstance(asked, IPv6Address):
            interface = IPv6Interface((asked, IP6_PREFIX_LENGTH))
            attributes.append(
                CfgAttribute.ipv6_prefixed(CfgAttrType.INTERNAL_IP6_ADDRESS, interface)
            )
        else:
            attributes.append(CfgAttribute(CfgAttrType.INTERNAL_IP6_ADDRESS))
        dns = CfgAttrType.INTERNAL_IP4_DNS if family == 4 else CfgAttrType.INTERNAL_IP6_DNS
        attributes.append(CfgAttribute(dns))
    return ConfigurationPayload(CfgType.CFG_REQUEST, tuple(attributes))


def _wanted(attribute: CfgAttribute) -> IPAddress | None:
    """The address an initiator asks for, or None; malformed values are ignored."""
    try:
        if attribute.attr_type == CfgAttrType.INTERNAL_IP4_ADDRESS:
            address: IPAddress | None = attribute.as_ipv4()
        else:
            interface = attribute.as_ipv6_prefixed()
            address = interface.ip if interface is not None else None
    except Exception:
        return None
    if address is not None and (address.is_unspecified or address.is_multicast):
        return None
    return address


def parse_request(payload: ConfigurationPayload) -> CfgRequest:
    addresses: dict[int, IPAddress | None] = {}
    dns = False
    for attribute in payload.attributes:
        if attribute.attr_type == CfgAttrType.INTERNAL_IP4_ADDRESS:
            addresses.setdefault(4, _wanted(attribute))
        elif attribute.attr_type == CfgAttrType.INTERNAL_IP6_ADDRESS:
            addresses.setdefault(6, _wanted(attribute))
        elif attribute.attr_type in (CfgAttrType.INTERNAL_IP4_DNS, CfgAttrType.INTERNAL_IP6_DNS):
            dns = True
    return CfgRequest(addresses, dns)


def build_reply(
    addresses: Sequence[IPAddress],
    dns: Sequence[IPAddress],
    families: Sequence[int],
    *,
    netmask: IPv4Address | None = None,
    subnets: Sequence[IPNetwork] = (),
) -> ConfigurationPayload:
    """CFG_REPLY with the leased addresses (the IPv4 one with ``netmask``, that of its
    pool network), and the DNS servers and protected subnets of the asked families."""
    attributes: list[CfgAttribute] = []
    for address in addresses:
        if isinstance(address, IPv4Address):
            attributes.append(CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, address))
            if netmask is not None:
                attributes.append(CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_NETMASK, netmask))
        else:
            interface = IPv6Interface((address, IP6_PREFIX_LENGTH))
            attributes.append(
                CfgAttribute.ipv6_prefixed(CfgAttrType.INTERNAL_IP6_ADDRESS, interface)
            )
    for server in dns:
        if server.version not in families:
            continue
        if isinstance(server, IPv4Address):
            attributes.append(CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_DNS, server))
        else:
            attributes.append(CfgAttribute.ipv6(CfgAttrType.INTERNAL_IP6_DNS, server))
    attributes.extend(_subnet(s) for s in subnets if s.version in families)
    return ConfigurationPayload(CfgType.CFG_REPLY, tuple(attributes))


def _subnet(network: IPNetwork) -> CfgAttribute:
    """§3.15.2: IPv4 address and netmask, or IPv6 address and prefix length."""
    kind = SUBNET_TYPES[network.version]
    if isinstance(network, IPv4Network):
        return CfgAttribute(kind, network.network_address.packed + network.netmask.packed)
    return CfgAttribute.ipv6_prefixed(kind, IPv6Interface(network))


def parse_reply(payload: ConfigurationPayload) -> CfgReply:
    """Addresses, DNS servers, netmask and subnets of a CFG_REPLY; malformed attributes
    (and a netmask that is no netmask) are skipped, the first netmask counts."""
    addresses: list[IPAddress] = []
    dns: list[IPAddress] = []
    subnets: list[IPNetwork] = []
    netmask: IPv4Address | None = None
    for attribute in payload.attributes:
        kind = attribute.attr_type
        if kind in SUBNET_TYPES.values():
            subnet = _subnet_value(attribute)
            if subnet is not None and subnet not in subnets:
                subnets.append(subnet)
            continue
        value = _reply_value(attribute)
        if value is None:
            continue
        if kind in (CfgAttrType.INTERNAL_IP4_ADDRESS, CfgAttrType.INTERNAL_IP6_ADDRESS):
            addresses.append(value)
        elif kind == CfgAttrType.INTERNAL_IP4_NETMASK:
            if netmask is None and isinstance(value, IPv4Address) and _is_netmask(value):
                netmask = value
        else:
            dns.append(value)
    if not any(isinstance(a, IPv4Address) for a in addresses):
        netmask = None  # §3.15.1: only with an INTERNAL_IP4_ADDRESS
    return CfgReply(tuple(addresses), tuple(dns), netmask, tuple(subnets))


def _is_netmask(value: IPv4Address) -> bool:
    """Contiguous ones, then zeros (0.0.0.0, a prefix of 0, means nothing here)."""
    bits = int(value)
    inverted = ~bits & 0xFFFFFFFF
    return bits != 0 and inverted & (inverted + 1) == 0


def _subnet_value(attribute: CfgAttribute) -> IPNetwork | None:
    """A subnet attribute's network, host bits cleared; None if malformed or empty."""
    try:
        if attribute.attr_type == CfgAttrType.INTERNAL_IP4_SUBNET:
            return attribute.as_ipv4_subnet()
        interface = attribute.as_ipv6_prefixed()
    except Exception:
        return None
    return interface.network if interface is not None else None


def _reply_value(attribute: CfgAttribute) -> IPAddress | None:
    kind = attribute.attr_type
    try:
        if kind in (
            CfgAttrType.INTERNAL_IP4_ADDRESS,
            CfgAttrType.INTERNAL_IP4_DNS,
            CfgAttrType.INTERNAL_IP4_NETMASK,
        ):
            return attribute.as_ipv4()
        if kind == CfgAttrType.INTERNAL_IP6_ADDRESS:
            interface = attribute.as_ipv6_prefixed()
            return interface.ip if interface is not None else None
        if kind == CfgAttrType.INTERNAL_IP6_DNS:
            value: IPv6Address | None = attribute.as_ipv6()
            return value
    except Exception:
        return None
    return None
