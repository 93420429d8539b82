"""The Configuration payload (RFC 7296 §2.19, §3.15): CFG_REQUEST and CFG_REPLY.

The initiator asks for an internal address of each family it wants (an empty
INTERNAL_IP4_ADDRESS / INTERNAL_IP6_ADDRESS attribute, or one holding the
address it would like) and for DNS servers. The responder leases addresses
through an injected :class:`AddressAllocator`, keyed by the IKE SA; the lease
lasts until the IKE SA ends (§2.19), when the responder releases it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Interface
from typing import Literal, Protocol

from mpa_ike.constants import CfgAttrType, CfgType
from mpa_ike.wire import CfgAttribute, ConfigurationPayload, IPAddress

Family = Literal[4, 6]
IP6_PREFIX_LENGTH = 128


class AddressAllocator(Protocol):
    """What the responder needs of an address pool (gateway.pool.AddressPool fits)."""

    def acquire(
        self,
        owner: Hashable,
        family: Family,
        requested: IPAddress | None = None,
        *,
        identity: str | None = None,
    ) -> IPAddress | None:
        """A lease for the IKE SA ``owner`` of the peer ``identity`` (the identity EAP
        authenticated, else IDi): its earlier address again where it can be."""
        ...

    def release(self, owner: Hashable) -> tuple[IPAddress, ...]: ...


@dataclass(frozen=True, slots=True)
class CfgRequest:
    """What a CFG_REQUEST asks for: families with an optional wanted address."""

    addresses: dict[int, IPAddress | None]
    dns: bool


@dataclass(frozen=True, slots=True)
class CfgReply:
    addresses: tuple[IPAddress, ...]
    dns: tuple[IPAddress, ...]


def build_request(
    families: Sequence[int], wanted: Sequence[IPAddress] = ()
) -> ConfigurationPayload:
    """CFG_REQUEST for one address per family and the DNS servers of each; ``wanted``:
    the addresses asked for by value (§3.15.1: the ones a re-authenticated IKE SA had)."""
    attributes: list[CfgAttribute] = []
    for family in families:
        asked = next((a for a in wanted if a.version == family), None)
        if isinstance(asked, IPv4Address):
            attributes.append(CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, asked))
        elif family == 4:
            attributes.append(CfgAttribute(CfgAttrType.INTERNAL_IP4_ADDRESS))
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
    addresses: Sequence[IPAddress], dns: Sequence[IPAddress], families: Sequence[int]
) -> ConfigurationPayload:
    """CFG_REPLY with the leased addresses and the DNS servers of the asked families."""
    attributes: list[CfgAttribute] = []
    for address in addresses:
        if isinstance(address, IPv4Address):
            attributes.append(CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, address))
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
    return ConfigurationPayload(CfgType.CFG_REPLY, tuple(attributes))


def parse_reply(payload: ConfigurationPayload) -> CfgReply:
    """Addresses and DNS servers of a CFG_REPLY; malformed attributes are skipped."""
    addresses: list[IPAddress] = []
    dns: list[IPAddress] = []
    for attribute in payload.attributes:
        value = _reply_value(attribute)
        if value is None:
            continue
        if attribute.attr_type in (
            CfgAttrType.INTERNAL_IP4_ADDRESS,
            CfgAttrType.INTERNAL_IP6_ADDRESS,
        ):
            addresses.append(value)
        else:
            dns.append(value)
    return CfgReply(tuple(addresses), tuple(dns))


def _reply_value(attribute: CfgAttribute) -> IPAddress | None:
    kind = attribute.attr_type
    try:
        if kind in (CfgAttrType.INTERNAL_IP4_ADDRESS, CfgAttrType.INTERNAL_IP4_DNS):
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
