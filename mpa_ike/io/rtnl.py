"""rtnetlink on :mod:`mpa_ike.io.netlink`: addresses, routes, rules, links, neighbours.

A request is carried out in the caller's thread in some tens of microseconds (see
:mod:`mpa_ike.io.netlink`); pyroute2's ``IPRoute`` costs about half a millisecond a
call and cannot run inside the event loop at all, too slow for the handful of changes a
handover makes while traffic is coming back. So everything the datapath, the handover
and the TUN device's set-up ask for is built here, as typed messages: the fixed parts
(``ifaddrmsg``, ``rtmsg``, ``fib_rule_hdr``, ``ifinfomsg``, ``ndmsg``) are dataclasses
with ``pull`` / ``push``, the attributes go through the netlink attribute codec. The
argument names of :func:`build` are pyroute2's, so that :class:`mpa_ike.io.tun.Netlink`
can hand what is not built here to pyroute2 unchanged (:class:`Unsupported`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from mpa_ike.io.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    Attributes,
    Message,
    NetlinkCodecError,
    NetlinkError,
    NetlinkSocket,
    pull_attributes,
    pull_struct,
    push_attribute,
    push_u32,
)
from mpa_ike.records import quick_init

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE = 32, 33
MSG_NAMES = {
    RTM_NEWLINK: "RTM_NEWLINK",
    RTM_NEWADDR: "RTM_NEWADDR",
    RTM_DELADDR: "RTM_DELADDR",
    RTM_GETADDR: "RTM_GETADDR",
    RTM_NEWROUTE: "RTM_NEWROUTE",
    RTM_DELROUTE: "RTM_DELROUTE",
    RTM_GETNEIGH: "RTM_GETNEIGH",
    RTM_DELNEIGH: "RTM_DELNEIGH",
    RTM_NEWRULE: "RTM_NEWRULE",
    RTM_DELRULE: "RTM_DELRULE",
}

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_PREFSRC, RTA_TABLE = 1, 4, 7, 15
FRA_SRC, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 2, 6, 10, 15, 16
IFLA_MTU, IFLA_TXQLEN = 4, 13
NDA_DST = 1
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
IFF_DORMANT = 0x20000
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTN_UNICAST = 1
FR_ACT_TO_TBL = 1
RT_TABLE_COMPAT = 252  # what rtm_table says of a table number that needs 32 bits
MAIN_TABLE = 254

_FLAGS = {
    "add": NLM_F_CREATE | NLM_F_EXCL,
    "replace": NLM_F_CREATE | NLM_F_REPLACE,
    "del": 0,
    "set": 0,
}


class RtnlError(NetlinkError):
    """The kernel refused an rtnetlink request; ``code`` is the errno."""

    names = MSG_NAMES


class Unsupported(LookupError):
    """A request this module does not build (the caller goes to pyroute2)."""


# --- fixed parts -------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class IfAddrMsg:
    """``struct ifaddrmsg``."""

    LAYOUT: ClassVar = struct.Struct("=BBBBI")
    family: int
    prefixlen: int
    flags: int
    scope: int
    index: int

    def push(self) -> bytes:
        return self.LAYOUT.pack(self.family, self.prefixlen, self.flags, self.scope, self.index)

    @classmethod
    def pull(cls, data: bytes) -> IfAddrMsg:
        return cls(*pull_struct(cls.LAYOUT, data))


@quick_init
@dataclass(frozen=True, slots=True)
class RtMsg:
    """``struct rtmsg``, and ``struct fib_rule_hdr`` which has the same layout (dst_len,
    src_len, tos, table, then res1, res2, action in place of protocol, scope, type)."""

    LAYOUT: ClassVar = struct.Struct("=BBBBBBBBI")
    family: int
    dst_len: int = 0
    src_len: int = 0
    tos: int = 0
    table: int = 0
    protocol: int = 0
    scope: int = 0
    type: int = 0
    flags: int = 0

    def push(self) -> bytes:
        return self.LAYOUT.pack(
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            self.protocol,
            self.scope,
            self.type,
            self.flags,
        )

    @classmethod
    def pull(cls, data: bytes) -> RtMsg:
        return cls(*pull_struct(cls.LAYOUT, data))


@quick_init
@dataclass(frozen=True, slots=True)
class IfInfoMsg:
    """``struct ifinfomsg``."""

    LAYOUT: ClassVar = struct.Struct("=BxHiII")
    family: int = socket.AF_UNSPEC
    type: int = 0
    index: int = 0
    flags: int = 0
    change: int = 0

    def push(self) -> bytes:
        return self.LAYOUT.pack(self.family, self.type, self.index, self.flags, self.change)

    @classmethod
    def pull(cls, data: bytes) -> IfInfoMsg:
        return cls(*pull_struct(cls.LAYOUT, data))

    @property
    def has_link(self) -> bool:
        """Administratively up with carrier (``IFF_LOWER_UP``: the operational state
        may lag behind the carrier) and not dormant (``IFF_DORMANT``: a wireless link
        whose 802.1X or WPA handshake is not done yet carries no traffic)."""
        flags = self.flags
        return bool(flags & IFF_UP and flags & IFF_LOWER_UP and not flags & IFF_DORMANT)


@quick_init
@dataclass(frozen=True, slots=True)
class NdMsg:
    """``struct ndmsg``."""

    LAYOUT: ClassVar = struct.Struct("=BxxxiHBB")
    family: int
    index: int
    state: int = 0
    flags: int = 0
    type: int = 0

    def push(self) -> bytes:
        return self.LAYOUT.pack(self.family, self.index, self.state, self.flags, self.type)

    @classmethod
    def pull(cls, data: bytes) -> NdMsg:
        return cls(*pull_struct(cls.LAYOUT, data))


# --- what the kernel tells ---------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class AddressEntry:
    """One address of a dump (RTM_NEWADDR)."""

    index: int
    family: int
    prefixlen: int
    address: str

    @classmethod
    def pull(cls, body: bytes) -> AddressEntry | None:
        """The entry, or None when it carries no address of its family's size."""
        head = IfAddrMsg.pull(body)
        attrs = pull_attributes(body, IfAddrMsg.LAYOUT.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is None or len(raw) not in (4, 16):
            return None
        return cls(head.index, head.family, head.prefixlen, str(ipaddress.ip_address(raw)))


@quick_init
@dataclass(frozen=True, slots=True)
class Neighbour:
    """One neighbour table entry (RTM_NEWNEIGH of a dump)."""

    index: int
    family: int
    state: int
    dst: str | None

    @classmethod
    def pull(cls, body: bytes) -> Neighbour:
        head = NdMsg.pull(body)
        raw = pull_attributes(body, NdMsg.LAYOUT.size).get(NDA_DST)
        dst = str(ipaddress.ip_address(raw)) if raw is not None and len(raw) in (4, 16) else None
        return cls(head.index, head.family, head.state, dst)


@quick_init
@dataclass(frozen=True, slots=True)
class LinkEvent:
    """An RTM_NEWLINK (an event of the link group, or an answer)."""

    index: int
    up: bool

    @classmethod
    def pull(cls, body: bytes) -> LinkEvent:
        head = IfInfoMsg.pull(body)
        return cls(head.index, head.has_link)


def link_events(messages: list[Message]) -> list[LinkEvent]:
    """The link changes among a datagram's messages (others, and broken ones, skipped)."""
    found = []
    for msg in messages:
        if msg.kind == RTM_NEWLINK:
            try:
                found.append(LinkEvent.pull(msg.body))
            except NetlinkCodecError:
                continue
    return found


@quick_init
@dataclass(frozen=True, slots=True)
class AddressEvent:
    """An RTM_NEWADDR or RTM_DELADDR of the address groups: ``address`` came or went
    on interface ``index``."""

    index: int
    address: str
    added: bool


def address_events(messages: list[Message]) -> list[AddressEvent]:
    """The address changes among a datagram's messages (others, and broken ones, skipped)."""
    found = []
    for msg in messages:
        if msg.kind not in (RTM_NEWADDR, RTM_DELADDR):
            continue
        try:
            entry = AddressEntry.pull(msg.body)
        except NetlinkCodecError:
            continue
        if entry is not None:
            found.append(AddressEvent(entry.index, entry.address, msg.kind == RTM_NEWADDR))
    return found


# --- requests ----------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class Request:
    """An rtnetlink request: message type, flags beyond NLM_F_REQUEST, body."""

    kind: int
    flags: int
    body: bytes

    def attributes(self, fixed: int) -> Attributes:
        """The attributes after a ``fixed``-byte header (for tests and diagnostics)."""
        return pull_attributes(self.body, fixed)


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def address_request(command: str, **kw: Any) -> Request:
    """``addr add|del``: index, address, prefixlen, flags."""
    ip = ipaddress.ip_address(kw.pop("address"))
    index, prefixlen = kw.pop("index"), kw.pop("prefixlen")
    flags = kw.pop("flags", 0)
    _no_more(kw)
    body = IfAddrMsg(_family(ip), prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index).push()
    body += push_attribute(IFA_LOCAL, ip.packed) + push_attribute(IFA_ADDRESS, ip.packed)
    if flags > 0xFF:  # IFA_F_NOPREFIXROUTE and beyond fit only the 32-bit attribute
        body += push_attribute(IFA_FLAGS, struct.pack("=I", flags))
    return Request(RTM_DELADDR if command == "del" else RTM_NEWADDR, _FLAGS[command], body)


def route_request(command: str, **kw: Any) -> Request:
    """``route add|replace|del``: dst (``net/len``), oif, table, prefsrc; a device
    route, as ``ip route add NET dev DEV`` makes it."""
    net = ipaddress.ip_network(kw.pop("dst"), strict=False)
    oif, table = kw.pop("oif"), kw.pop("table", MAIN_TABLE)
    prefsrc = kw.pop("prefsrc", None)
    _no_more(kw)
    deleting = command == "del"
    if deleting:
        protocol, scope, kind = 0, RT_SCOPE_NOWHERE, 0
    else:
        protocol, kind = RTPROT_BOOT, RTN_UNICAST
        scope = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
    family = _family(net.network_address)
    body = RtMsg(family, net.prefixlen, 0, 0, _short(table), protocol, scope, kind).push()
    body += push_attribute(RTA_DST, net.network_address.packed) + push_u32(RTA_OIF, oif)
    body += push_u32(RTA_TABLE, table)
    if prefsrc is not None:
        body += push_attribute(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
    return Request(RTM_DELROUTE if deleting else RTM_NEWROUTE, _FLAGS[command], body)


def rule_request(command: str, **kw: Any) -> Request:
    """``rule add|del``: family, priority, table, src/src_len, fwmark/fwmask."""
    family, table = kw.pop("family"), kw.pop("table")
    src, src_len = kw.pop("src", None), kw.pop("src_len", 0)
    priority = kw.pop("priority", None)
    fwmark, fwmask = kw.pop("fwmark", None), kw.pop("fwmask", None)
    _no_more(kw)
    body = RtMsg(family, 0, src_len, 0, _short(table), type=FR_ACT_TO_TBL).push()
    body += push_u32(FRA_TABLE, table)
    if priority is not None:
        body += push_u32(FRA_PRIORITY, priority)
    if src is not None:
        body += push_attribute(FRA_SRC, ipaddress.ip_address(src).packed)
    if fwmark is not None:
        body += push_u32(FRA_FWMARK, fwmark)
    if fwmask is not None:
        body += push_u32(FRA_FWMASK, fwmask)
    return Request(RTM_DELRULE if command == "del" else RTM_NEWRULE, _FLAGS[command], body)


def link_request(command: str, **kw: Any) -> Request:
    """``link set``: index, and any of mtu, txqlen, state ("up" or "down")."""
    if command != "set":
        raise Unsupported(f"link {command}")
    index = kw.pop("index")
    mtu, txqlen, state = kw.pop("mtu", None), kw.pop("txqlen", None), kw.pop("state", None)
    _no_more(kw)
    if state not in (None, "up", "down"):
        raise Unsupported(f"link state {state}")
    change = IFF_UP if state is not None else 0
    body = IfInfoMsg(index=index, flags=IFF_UP if state == "up" else 0, change=change).push()
    if mtu is not None:
        body += push_u32(IFLA_MTU, mtu)
    if txqlen is not None:
        body += push_u32(IFLA_TXQLEN, txqlen)
    return Request(RTM_NEWLINK, 0, body)


def neighbour_request(command: str, **kw: Any) -> Request:
    """``neigh del``: ifindex, dst, family."""
    if command != "del":
        raise Unsupported(f"neigh {command}")
    index, dst = kw.pop("ifindex"), ipaddress.ip_address(kw.pop("dst"))
    family = kw.pop("family", _family(dst))
    _no_more(kw)
    body = NdMsg(family, index).push() + push_attribute(NDA_DST, dst.packed)
    return Request(RTM_DELNEIGH, 0, body)


def _short(table: int) -> int:
    return table if table < 256 else RT_TABLE_COMPAT


def _no_more(kw: dict[str, Any]) -> None:
    if kw:
        raise Unsupported(f"arguments not built here: {sorted(kw)}")


BUILDERS: dict[str, Callable[..., Request]] = {
    "addr": address_request,
    "route": route_request,
    "rule": rule_request,
    "link": link_request,
    "neigh": neighbour_request,
}


def build(method: str, command: str, kw: dict[str, Any]) -> Request:
    """The request ``method command **kw`` (pyroute2's names), or :class:`Unsupported`."""
    builder = BUILDERS.get(method)
    if builder is None or command not in _FLAGS:
        raise Unsupported(f"{method} {command}")
    try:
        return builder(command, **dict(kw))
    except KeyError as missing:
        raise Unsupported(f"{method} {command} without {missing}") from None


# --- the socket --------------------------------------------------------------------------


class Rtnl:
    """One rtnetlink socket; every call returns when the kernel has answered."""

    def __init__(self) -> None:
        self.netlink = NetlinkSocket(NETLINK_ROUTE, error=RtnlError)

    def request(self, method: str, command: str, **kw: Any) -> None:
        """Carry out ``method command`` (pyroute2's names); :class:`RtnlError` if the
        kernel refuses, :class:`Unsupported` if not built here."""
        self.send(build(method, command, kw))

    def send(self, request: Request, what: str = "") -> list[Message]:
        return self.netlink.request(request.kind, NLM_F_ACK | request.flags, request.body, what)

    def addresses(self, index: int, family: int) -> list[str]:
        """The addresses of one family on interface ``index``, as the kernel lists them."""
        body = IfAddrMsg(family, 0, 0, 0, 0).push()
        found = []
        for msg in self.netlink.request(RTM_GETADDR, NLM_F_DUMP, body):
            if msg.kind != RTM_NEWADDR:
                continue
            entry = AddressEntry.pull(msg.body)
            if entry is not None and entry.index == index:
                found.append(entry.address)
        return found

    def neighbours(self, index: int) -> list[Neighbour]:
        """The neighbour entries (both families) of interface ``index``."""
        body = NdMsg(socket.AF_UNSPEC, 0).push()
        found = []
        for msg in self.netlink.request(RTM_GETNEIGH, NLM_F_DUMP, body):
            if msg.kind == RTM_NEWNEIGH:
                entry = Neighbour.pull(msg.body)
                if entry.index == index:
                    found.append(entry)
        return found

    def close(self) -> None:
        self.netlink.close()
