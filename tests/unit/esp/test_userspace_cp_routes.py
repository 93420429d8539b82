"""The mobile node's datapath glue honouring CP's netmask and subnets (RFC 7296 §3.15.1,
§3.15.2): the inner address with the netmask's prefix, only the subnets of the peer's
selectors routed into the TUN device (or, with XFRM, into the instance's table), and all
of it gone with the IKE SA. A fake TUN device, no root."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from mpa_ike.datapath import TsRange
from mpa_ike.events import ChildSaEstablished, IkeSaDeleted, IkeSaEstablished
from mpa_ike.io.rtnl import IFA_FLAGS, IfAddrMsg, address_request
from mpa_ike.io.tun import IFA_F_NODAD, IFA_F_NOPREFIXROUTE
from mpa_ike.io.userspace import UserspaceDatapath, inside_subnets
from mpa_ike.node.datapath import DatapathGlue, selector_routes
from tests.unit.esp.test_userspace_memory import GW_OUTER, MN_OUTER, FakeTun, params

CP = "10.3.0.7"
SA = b"\x01" * 8
SUBNET = IPv4Network("10.1.0.0/25")
ANYWHERE = (TsRange("0.0.0.0", "255.255.255.255"),)


def established(
    netmask: str | None, subnets: tuple[IPv4Network | IPv6Network, ...]
) -> IkeSaEstablished:
    mask = IPv4Address(netmask) if netmask is not None else None
    cp = (IPv4Address(CP),)
    return IkeSaEstablished(SA, "gw", MN_OUTER, GW_OUTER, "gw", cp, (), True, True, mask, subnets)


def glue_over(tun: FakeTun) -> DatapathGlue:
    userspace = UserspaceDatapath(tun, lambda *args: None)
    return DatapathGlue(userspace, "userspace", userspace=userspace, inner_addresses=True)


def connect(
    glue: DatapathGlue,
    netmask: str | None,
    subnets: tuple[IPv4Network | IPv6Network, ...],
    remote_ts: tuple[TsRange, ...] | None = None,
) -> None:
    glue.on_event(established(netmask, subnets))
    child = params(0, "mn", CP, remote_ts)
    glue.on_event(ChildSaEstablished(SA, "gw", child))


def test_netmask_and_subnet_on_the_device() -> None:
    tun = FakeTun()
    glue = glue_over(tun)
    connect(glue, "255.255.255.0", (SUBNET, IPv6Network("fd01::/64")))
    assert tun.addresses == [f"{CP}/24"]
    assert tun.routes == {"10.1.0.0/25": CP}  # the LAN's /24 narrowed to the subnet
    glue.on_event(IkeSaDeleted(SA, "gw", by_peer=True))
    assert tun.addresses == [] and tun.routes == {}
    assert glue.prefixes == {} and glue.subnets == {} and glue.userspace is not None
    assert glue.userspace.subnets == {}
    assert glue.errors == 0


def test_without_them_as_before() -> None:
    tun = FakeTun()
    connect(glue_over(tun), None, ())
    assert tun.addresses == [f"{CP}/32"]
    assert tun.routes == {"10.1.0.0/24": CP}


def test_a_full_tunnel_narrowed_to_the_subnets_around_the_peer() -> None:
    tun = FakeTun()
    wide = IPv4Network("192.0.0.0/8")  # holds the gateway's own address, 192.0.2.2
    connect(glue_over(tun), None, (SUBNET, wide), ANYWHERE)
    assert "10.1.0.0/25" in tun.routes and "0.0.0.0/1" not in tun.routes
    assert "192.0.2.2/32" not in tun.routes and "192.0.2.3/32" in tun.routes
    assert all(IPv4Network(net).subnet_of(wide) for net in tun.routes if net != "10.1.0.0/25")


def test_inside_subnets() -> None:
    lan = [IPv4Network("10.1.0.0/24")]
    assert list(inside_subnets(lan, ())) == lan
    assert list(inside_subnets(lan, (IPv6Network("fd01::/64"),))) == lan  # none of IPv4
    assert list(inside_subnets(lan, (SUBNET, IPv4Network("10.2.0.0/16")))) == [SUBNET]
    assert list(inside_subnets(lan, (IPv4Network("10.0.0.0/8"),))) == lan  # all of it


def test_xfrm_routes_follow_the_subnets_of_their_source() -> None:
    child = params(0, "mn", CP)
    assert selector_routes(child, with_source=True, subnets={CP: (SUBNET,)}) == [
        ("10.1.0.0/25", CP)
    ]
    assert selector_routes(child, with_source=True, subnets={"10.3.0.8": (SUBNET,)}) == [
        ("10.1.0.0/24", CP)
    ]


def test_no_prefix_route_goes_in_the_32_bit_flags() -> None:
    """IFA_F_NOPREFIXROUTE does not fit ifaddrmsg's 8-bit flags: IFA_FLAGS carries it."""
    flags = IFA_F_NOPREFIXROUTE | IFA_F_NODAD
    request = address_request("add", index=1, address="10.3.0.7", prefixlen=24, flags=flags)
    header = IfAddrMsg.LAYOUT.unpack_from(request.body)
    assert header[1:3] == (24, IFA_F_NODAD)
    assert request.attributes(IfAddrMsg.LAYOUT.size).get(IFA_FLAGS) == struct.pack("=I", flags)
    host = address_request("add", index=1, address="10.3.0.7", prefixlen=32)
    assert host.attributes(IfAddrMsg.LAYOUT.size).get(IFA_FLAGS) is None
