"""Addresses, routes and rules over a plain rtnetlink socket, in the caller's thread.

The kernel carries out an rtnetlink request inside ``send()`` and has queued its
acknowledgement before ``send()`` returns, so a request and the read of its answer take
some tens of microseconds and never wait. pyroute2's ``IPRoute`` (through
:class:`mpa_ike.io.tun.Netlink`'s worker thread) costs about half a millisecond a call
and holds the event loop meanwhile: too slow for the handful of changes a handover
makes while traffic is coming back. Only the requests the datapath and the handover
make are built here (the argument names are pyroute2's, so callers need not care);
everything else stays with pyroute2.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

NLMSG_HEADER = struct.Struct("=IHHII")
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE = 32, 33
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")  # also fib_rule_hdr: same layout
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_PREFSRC, RTA_TABLE = 1, 4, 7, 15
FRA_SRC, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 2, 6, 10, 15, 16
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTN_UNICAST = 1
FR_ACT_TO_TBL = 1
RT_TABLE_COMPAT = 252  # what rtm_table says of a table number that needs 32 bits
ANSWER_TIMEOUT = 5.0

_FLAGS = {
    "add": NLM_F_CREATE | NLM_F_EXCL,
    "replace": NLM_F_CREATE | NLM_F_REPLACE,
    "del": 0,
}


class RtnlError(OSError):
    """The kernel refused a request; ``code`` is the errno (as pyroute2's error has)."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))
        self.code = code


class Unsupported(LookupError):
    """A request this module does not build (the caller goes to pyroute2)."""


def attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return attribute(kind, struct.pack("=I", value))


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def address_request(command: str, **kw: Any) -> tuple[int, int, bytes]:
    """``addr add|del``: index, address, prefixlen, flags."""
    ip = ipaddress.ip_address(kw.pop("address"))
    index, prefixlen = kw.pop("index"), kw.pop("prefixlen")
    flags = kw.pop("flags", 0)
    _no_more(kw)
    body = IFADDRMSG.pack(_family(ip), prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    body += attribute(IFA_LOCAL, ip.packed) + attribute(IFA_ADDRESS, ip.packed)
    kind = RTM_NEWADDR if command != "del" else RTM_DELADDR
    return kind, _FLAGS[command], body


def route_request(command: str, **kw: Any) -> tuple[int, int, bytes]:
    """``route add|replace|del``: dst (``net/len``), oif, table, prefsrc; a device
    route, as ``ip route add NET dev DEV`` makes it."""
    net = ipaddress.ip_network(kw.pop("dst"), strict=False)
    oif, table = kw.pop("oif"), kw.pop("table", 254)
    prefsrc = kw.pop("prefsrc", None)
    _no_more(kw)
    deleting = command == "del"
    if deleting:
        protocol, scope, kind = 0, RT_SCOPE_NOWHERE, 0
    else:
        protocol, kind = RTPROT_BOOT, RTN_UNICAST
        scope = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
    family = _family(net.network_address)
    body = RTMSG.pack(family, net.prefixlen, 0, 0, _short(table), protocol, scope, kind, 0)
    body += attribute(RTA_DST, net.network_address.packed) + _u32(RTA_OIF, oif)
    body += _u32(RTA_TABLE, table)
    if prefsrc is not None:
        body += attribute(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
    return (RTM_DELROUTE if deleting else RTM_NEWROUTE), _FLAGS[command], body


def rule_request(command: str, **kw: Any) -> tuple[int, int, bytes]:
    """``rule add|del``: family, priority, table, src/src_len, fwmark/fwmask."""
    family, table = kw.pop("family"), kw.pop("table")
    src, src_len = kw.pop("src", None), kw.pop("src_len", 0)
    priority = kw.pop("priority", None)
    fwmark, fwmask = kw.pop("fwmark", None), kw.pop("fwmask", None)
    _no_more(kw)
    body = RTMSG.pack(family, 0, src_len, 0, _short(table), 0, 0, FR_ACT_TO_TBL, 0)
    body += _u32(FRA_TABLE, table)
    if priority is not None:
        body += _u32(FRA_PRIORITY, priority)
    if src is not None:
        body += attribute(FRA_SRC, ipaddress.ip_address(src).packed)
    if fwmark is not None:
        body += _u32(FRA_FWMARK, fwmark)
    if fwmask is not None:
        body += _u32(FRA_FWMASK, fwmask)
    kind = RTM_NEWRULE if command != "del" else RTM_DELRULE
    return kind, _FLAGS[command], body


def _short(table: int) -> int:
    return table if table < 256 else RT_TABLE_COMPAT


def _no_more(kw: dict[str, Any]) -> None:
    if kw:
        raise Unsupported(f"arguments not built here: {sorted(kw)}")


BUILDERS = {"addr": address_request, "route": route_request, "rule": rule_request}


def build(method: str, command: str, kw: dict[str, Any]) -> tuple[int, int, bytes]:
    """(message type, flags, body) of ``method command **kw``, or :class:`Unsupported`."""
    builder = BUILDERS.get(method)
    if builder is None or command not in _FLAGS:
        raise Unsupported(f"{method} {command}")
    try:
        return builder(command, **dict(kw))
    except KeyError as missing:
        raise Unsupported(f"{method} {command} without {missing}") from None


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence, body offset, end) of each netlink message of a datagram, up to
    a broken header."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, seq, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            return
        yield kind, seq, offset + NLMSG_HEADER.size, min(offset + length, len(data))
        offset += (length + 3) & ~3


def parse_ack(data: bytes, sequence: int) -> int | None:
    """The errno (0: done) of the acknowledgement of ``sequence`` in a datagram."""
    for kind, seq, body, _ in messages(data):
        if kind == NLMSG_ERROR and seq == sequence:
            error: int = struct.unpack_from("=i", data, body)[0]
            return -error
    return None


def parse_attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def parse_addresses(data: bytes, sequence: int) -> tuple[list[tuple[int, str]], bool]:
    """(interface index, address) of each RTM_NEWADDR of a dump datagram; whether the
    dump ended with it."""
    found: list[tuple[int, str]] = []
    for kind, seq, body, end in messages(data):
        if seq != sequence:
            continue
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return found, True
        if kind == RTM_NEWADDR and body + IFADDRMSG.size <= end:
            index = IFADDRMSG.unpack_from(data, body)[4]
            attrs = parse_attributes(data, body + IFADDRMSG.size, end)
            raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if raw is not None and len(raw) in (4, 16):
                found.append((index, str(ipaddress.ip_address(raw))))
    return found, False


class Rtnl:
    """One rtnetlink socket; :meth:`request` returns when the kernel has answered."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(ANSWER_TIMEOUT)  # the kernel answers at once: never hang
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()

    def request(self, method: str, command: str, **kw: Any) -> None:
        """Carry out ``method command`` (pyroute2's names); :class:`RtnlError` if the
        kernel refuses, :class:`Unsupported` if not built here."""
        kind, flags, body = build(method, command, kw)
        with self._lock:
            sequence = self._send(kind, NLM_F_ACK | flags, body)
            code = None
            while code is None:  # skipping answers to requests given up on
                code = parse_ack(self.sock.recv(65536), sequence)
        if code:
            raise RtnlError(code)

    def addresses(self, index: int, family: int) -> list[str]:
        """The addresses of one family on interface ``index``, as the kernel lists them."""
        found: list[str] = []
        with self._lock:
            sequence = self._send(RTM_GETADDR, NLM_F_DUMP, IFADDRMSG.pack(family, 0, 0, 0, 0))
            done = False
            while not done:
                part, done = parse_addresses(self.sock.recv(65536), sequence)
                found += [address for at, address in part if at == index]
        return found

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        """Send one request; its sequence number."""
        sequence = next(self._sequence)
        size = NLMSG_HEADER.size + len(body)
        self.sock.send(NLMSG_HEADER.pack(size, kind, NLM_F_REQUEST | flags, sequence, 0) + body)
        return sequence

    def close(self) -> None:
        self.sock.close()
