"""CP netmask and protected subnets (RFC 7296 §3.15.1, §3.15.2): the codec, and a
gateway telling them to a mobile node, both endpoints in memory."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded
from core_pki import Pki
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pool import AddressPool
from mpa_ike.config_payload import CfgReply, build_reply, build_request, parse_reply
from mpa_ike.constants import CfgAttrType, CfgType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import IkeSaEstablished
from mpa_ike.wire import CfgAttribute, ConfigurationPayload
from mpa_ike.wire.message import parse_payload_chain, serialize_payload_chain

V4_POOL = IPv4Network("10.10.0.0/28")
V6_POOL = IPv6Network("2001:db8:b::/112")
SUBNETS = (IPv4Network("10.1.0.0/16"), IPv6Network("2001:db8:1::/48"))


def on_the_wire(payload: ConfigurationPayload) -> ConfigurationPayload:
    """The payload serialized and parsed again, as a peer receives it."""
    first, data = serialize_payload_chain([payload])
    (parsed,) = parse_payload_chain(first, data)
    assert isinstance(parsed, ConfigurationPayload)
    return parsed


def reply_of(*attributes: CfgAttribute) -> CfgReply:
    return parse_reply(on_the_wire(ConfigurationPayload(CfgType.CFG_REPLY, attributes)))


ADDRESS = CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, IPv4Address("10.10.0.5"))


def test_the_request_asks_for_the_netmask_with_the_ipv4_address() -> None:
    kinds = [a.attr_type for a in on_the_wire(build_request([4, 6])).attributes]
    assert kinds == [
        CfgAttrType.INTERNAL_IP4_ADDRESS,
        CfgAttrType.INTERNAL_IP4_NETMASK,
        CfgAttrType.INTERNAL_IP4_DNS,
        CfgAttrType.INTERNAL_IP6_ADDRESS,
        CfgAttrType.INTERNAL_IP6_DNS,
    ]
    v6_only = [a.attr_type for a in build_request([6]).attributes]
    assert CfgAttrType.INTERNAL_IP4_NETMASK not in v6_only


def test_netmask_and_subnets_round_trip() -> None:
    payload = build_reply(
        [IPv4Address("10.10.0.5"), IPv6Address("2001:db8:b::5")],
        [IPv4Address("10.10.0.14")],
        [4, 6],
        netmask=IPv4Address("255.255.255.240"),
        subnets=SUBNETS,
    )
    kinds = [a.attr_type for a in payload.attributes]
    assert kinds.index(CfgAttrType.INTERNAL_IP4_NETMASK) == 1  # right after the address
    subnet = next(a for a in payload.attributes if a.attr_type == CfgAttrType.INTERNAL_IP4_SUBNET)
    assert subnet.value == bytes([10, 1, 0, 0, 255, 255, 0, 0])  # address and netmask
    reply = parse_reply(on_the_wire(payload))
    assert reply.netmask == IPv4Address("255.255.255.240")
    assert reply.subnets == SUBNETS
    assert reply.prefix_length(IPv4Address("10.10.0.5")) == 28
    assert reply.prefix_length(IPv6Address("2001:db8:b::5")) == 128


def test_subnets_only_of_the_families_asked() -> None:
    payload = build_reply([IPv4Address("10.10.0.5")], [], [4], subnets=SUBNETS)
    assert parse_reply(payload).subnets == SUBNETS[:1]


def test_without_netmask_or_subnets_as_before() -> None:
    reply = reply_of(ADDRESS)
    assert reply.addresses == (IPv4Address("10.10.0.5"),)
    assert (reply.netmask, reply.subnets) == (None, ())
    assert reply.prefix_length(IPv4Address("10.10.0.5")) == 32


def test_subnet_host_bits_are_cleared() -> None:
    host_bits = CfgAttribute(CfgAttrType.INTERNAL_IP4_SUBNET, bytes([10, 1, 2, 3, 255, 255, 0, 0]))
    v6 = CfgAttribute.ipv6_prefixed(CfgAttrType.INTERNAL_IP6_SUBNET)
    v6 = CfgAttribute(v6.attr_type, IPv6Address("2001:db8:1::9").packed + bytes([48]))
    assert reply_of(ADDRESS, host_bits, v6, host_bits).subnets == SUBNETS


@pytest.mark.parametrize(
    "attribute",
    [
        CfgAttribute(CfgAttrType.INTERNAL_IP4_NETMASK, b"\xff\xff\xff"),  # 3 octets
        CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_NETMASK, IPv4Address("255.0.255.0")),
        CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_NETMASK, IPv4Address("0.0.0.0")),
        CfgAttribute(CfgAttrType.INTERNAL_IP4_SUBNET, bytes(7)),
        CfgAttribute(CfgAttrType.INTERNAL_IP4_SUBNET, bytes([10, 0, 0, 0, 255, 0, 255, 0])),
        CfgAttribute(CfgAttrType.INTERNAL_IP6_SUBNET, bytes(16) + bytes([129])),
        CfgAttribute(CfgAttrType.INTERNAL_IP6_SUBNET, bytes(16)),
        CfgAttribute(CfgAttrType(0x3FF0), b"private use"),
    ],
)
def test_malformed_attributes_are_skipped(attribute: CfgAttribute) -> None:
    reply = reply_of(ADDRESS, attribute)
    assert reply == CfgReply((IPv4Address("10.10.0.5"),), ())


def test_the_first_netmask_counts_and_only_with_an_ipv4_address() -> None:
    mask = CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_NETMASK, IPv4Address("255.255.255.0"))
    other = CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_NETMASK, IPv4Address("255.255.0.0"))
    assert reply_of(ADDRESS, mask, other).netmask == IPv4Address("255.255.255.0")
    v6 = CfgAttribute.ipv6_prefixed(CfgAttrType.INTERNAL_IP6_ADDRESS)
    v6 = CfgAttribute(v6.attr_type, IPv6Address("2001:db8:b::5").packed + bytes([128]))
    assert reply_of(v6, mask).netmask is None


# ---------------------------------------------------------------------- end to end


def run(pki: Pki, families: tuple[int, ...], **gateway_options: Any) -> Link:
    pool: AddressPool[Any] = AddressPool([V4_POOL, V6_POOL])
    config = responder_config(pool, credential=pki.rsa, **gateway_options)
    link = Link(Endpoint(random=seeded(1)), Endpoint(random=seeded(2), responder=config))
    mobile = initiator_config(ca=pki.ca.cert, virtual_ip_families=families)
    link.mobile.initiate(mobile, MOBILE, GATEWAY, 0.0)
    link.run()
    return link


def established(link: Link, side: str) -> IkeSaEstablished:
    (event,) = link.of_type(IkeSaEstablished, side)
    assert isinstance(event, IkeSaEstablished)
    return event


def test_the_gateway_tells_the_pools_netmask_and_its_subnets(pki: Pki) -> None:
    link = run(pki, (4, 6), subnets=SUBNETS)
    mobile = established(link, "mobile")
    assert mobile.assigned_addresses == (IPv4Address("10.10.0.1"), IPv6Address("2001:db8:b::1"))
    assert mobile.netmask == V4_POOL.netmask
    assert mobile.subnets == SUBNETS
    gateway = established(link, "gateway")
    assert (gateway.netmask, gateway.subnets) == (mobile.netmask, mobile.subnets)
    (sa,) = link.mobile.sas.values()
    assert sa.snapshot()["netmask"] == "255.255.255.240"
    assert sa.snapshot()["subnets"] == ["10.1.0.0/16", "2001:db8:1::/48"]


def test_an_ipv6_only_node_gets_no_netmask_and_ipv6_subnets(pki: Pki) -> None:
    mobile = established(run(pki, (6,), subnets=SUBNETS), "mobile")
    assert mobile.assigned_addresses == (IPv6Address("2001:db8:b::1"),)
    assert (mobile.netmask, mobile.subnets) == (None, SUBNETS[1:])


def test_no_subnets_configured_none_sent(pki: Pki) -> None:
    mobile = established(run(pki, (4,)), "mobile")
    assert (mobile.netmask, mobile.subnets) == (V4_POOL.netmask, ())


def test_a_rekeyed_ike_sa_keeps_them(pki: Pki) -> None:
    link = run(pki, (4,), subnets=SUBNETS)
    (sa,) = link.mobile.sas.values()
    link.mobile.rekey_ike_sa(sa.local_spi, link.now)
    link.run(until=link.now + 10)
    (new,) = [s for s in link.mobile.sas.values() if not s.closed]
    assert new.local_spi != sa.local_spi
    assert (new.netmask, new.subnets) == (V4_POOL.netmask, SUBNETS[:1])


ATTRIBUTE_TYPES = st.sampled_from(
    [
        CfgAttrType.INTERNAL_IP4_ADDRESS,
        CfgAttrType.INTERNAL_IP4_NETMASK,
        CfgAttrType.INTERNAL_IP4_DNS,
        CfgAttrType.INTERNAL_IP4_SUBNET,
        CfgAttrType.INTERNAL_IP6_ADDRESS,
        CfgAttrType.INTERNAL_IP6_DNS,
        CfgAttrType.INTERNAL_IP6_SUBNET,
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ATTRIBUTE_TYPES, st.binary(max_size=20)), max_size=8))
def test_any_reply_parses(attributes: list[tuple[CfgAttrType, bytes]]) -> None:
    """Whatever a CFG_REPLY holds, parse_reply skips what it cannot read."""
    reply = reply_of(*(CfgAttribute(kind, value) for kind, value in attributes))
    if reply.netmask is not None:
        assert any(isinstance(a, IPv4Address) for a in reply.addresses)
        assert 0 < reply.prefix_length(IPv4Address("10.0.0.1")) <= 32
    assert len(set(reply.subnets)) == len(reply.subnets)
