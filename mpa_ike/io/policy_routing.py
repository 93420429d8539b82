"""Policy routing around the userspace datapath's TUN device.

A gateway that is also the access router of its network sends ESP to a mobile node's
nCoA, and after the MOBIKE move that outer address is also the inner address its
routes lead into the tunnel: the ESP itself would be routed back into the device. So
the gateway keeps the tunnel routes in their own table behind a rule, and marks its IKE
and ESP sockets (``SO_MARK``) so that a rule placed before it sends their packets by
``main``.

A mobile node keeps the routes of each pre-authentication tunnel in a table of its own,
reached only by traffic from that tunnel's nCoA (a ``from`` rule), so the tunnel
carries the nCoA's traffic while everything else still takes the current network.

With the kernel's XFRM there is no device to route into: the policies take what
matches, but only what is routed somewhere. :class:`XfrmRoutes` keeps the routes to the
peer's traffic selectors in the instance's table behind one rule, as charon does in its
table 220: out of the interface towards the peer (the next hop the kernel would take to
its outer address), preferring the CP address as source on a mobile node.

Each daemon instance has its own table, rule priority and mark (:class:`Routing`,
``routing:`` in its file, by default derived from its control socket), holds its table
while it runs (:class:`TableClaim`: a second instance with the same table refuses to
start) and removes only its own rules (matched by priority, table and mark) and the
routes of its own table: several instances share one host's kernel apart.

The rules are requests of :mod:`mpa_ike.io.rtnl` through :class:`mpa_ike.io.tun.Netlink`
(``call("rule", "add", ...)``, pyroute2's names), carried out in the caller's thread: a
handover adds and removes them while traffic is coming back.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mpa_ike.io.netlink import NLM_F_ACK, pull_attributes, push_attribute, push_u32
from mpa_ike.io.rtnl import (
    RT_SCOPE_UNIVERSE,
    RT_TABLE_COMPAT,
    RTA_DST,
    RTA_OIF,
    RTA_PREFSRC,
    RTA_TABLE,
    RTN_UNICAST,
    RTPROT_BOOT,
    Request,
    RtMsg,
    Rtnl,
    build,
)
from mpa_ike.io.tun import MAIN_TABLE

log = logging.getLogger(__name__)

FAMILIES = (socket.AF_INET, socket.AF_INET6)
RTM_GETROUTE = 26
#: Derived defaults (:meth:`Routing.derived`): instance slot n of SLOTS has table
#: TABLE_BASE + TABLE_STRIDE * n (and the PREAUTH_TABLES after it), rule priorities
#: PRIORITY_BASE + PRIORITY_STRIDE * n and the two before it, mark MARK_BASE + n. All
#: priorities stay before ``main``'s 32766 and after charon's 220.
SLOTS = 7680
TABLE_BASE, TABLE_STRIDE = 1024, 256
PRIORITY_BASE, PRIORITY_STRIDE = 1002, 4
MARK_BASE = 0x4D500000  # "MP"
PREAUTH_TABLES = TABLE_STRIDE - 1
#: A configured table, priority and mark keep clear of the kernel's own tables (0
#: unspecified, 252 compat, 253 default, 254 main, 255 local) and rules (0 local, 32766
#: main, 32767 default), with room for the tables after ``table`` and the rules before
#: ``priority``.
MIN_TABLE, MAX_TABLE = 256, 0xFFFFFFFF - PREAUTH_TABLES
MIN_PRIORITY, MAX_PRIORITY = 3, 32765
MAX_MARK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Routing:
    """One daemon instance's share of the policy routing.

    ``table`` holds the routes into the tunnels (the userspace gateway's device routes,
    the XFRM datapath's routes to the peers' selectors) behind a rule at ``priority``;
    the gateway's rule sending what carries ``mark`` by ``main`` sits just before it
    (:attr:`bypass_priority`), and a mobile node's ``from`` rules of its
    pre-authentication tunnels before that (:attr:`source_priority`), to the
    :attr:`preauth_tables` right after ``table``.
    """

    table: int
    priority: int
    mark: int

    @classmethod
    def derived(cls, instance: str) -> Routing:
        """The default of the instance named ``instance`` (its control socket): a slot
        from a CRC of the name, so that two instances of one host differ (and a second
        one with the same slot refuses to start, naming the key to set)."""
        n = zlib.crc32(instance.encode()) % SLOTS
        return cls(
            TABLE_BASE + TABLE_STRIDE * n, PRIORITY_BASE + PRIORITY_STRIDE * n, MARK_BASE + n
        )

    @property
    def bypass_priority(self) -> int:
        return self.priority - 1

    @property
    def source_priority(self) -> int:
        return self.priority - 2

    @property
    def preauth_tables(self) -> range:
        return range(self.table + 1, self.table + 1 + PREAUTH_TABLES)

    def __str__(self) -> str:
        return f"table {self.table}, priority {self.priority}, mark {self.mark:#x}"


class RoutingInUse(Exception):
    """Another running instance of this network namespace holds the table."""


class TableClaim:
    """This instance's hold on its routing table, an abstract UNIX socket
    ``@mpa-ike/routing/TABLE``: abstract names belong to the network namespace, as the
    tables do, and the kernel lets go of the name when the process ends, however it
    ends. Whatever carries the table, its priority and mark when the claim is taken was
    left by an earlier run of this instance, and is its own to reuse and remove."""

    PREFIX = b"\0mpa-ike/routing/"

    def __init__(self, table: int) -> None:
        self.table = table
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.bind(self.PREFIX + str(table).encode())
        except OSError as error:
            self._sock.close()
            self._sock = None
            if error.errno == errno.EADDRINUSE:
                raise RoutingInUse(
                    f"routing.table: table {table} is held by another running instance "
                    "in this network namespace (set routing: {table, priority, mark})"
                ) from None
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def held_tables(unix_sockets: Path = Path("/proc/net/unix")) -> set[int]:
    """The tables the running instances of this network namespace hold (their
    :class:`TableClaim` sockets, as the kernel lists the namespace's UNIX sockets)."""
    prefix = "@" + TableClaim.PREFIX[1:].decode()
    try:
        lines = unix_sockets.read_text().splitlines()[1:]
    except OSError:
        return set()
    found = set()
    for line in lines:
        name = line.split()[-1] if len(line.split()) >= 8 else ""
        number = name.removeprefix(prefix)
        if name.startswith(prefix) and number.isdigit():
            found.add(int(number))
    return found


RTA_SRC, RTA_GATEWAY, RTA_MARK = 2, 5, 16


class NetlinkCaller(Protocol):
    """:class:`mpa_ike.io.tun.Netlink`: ``call("rule", "add", ...)`` and the like."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


def mark_socket(sock: socket.socket, mark: int) -> None:
    """Route what ``sock`` sends by ``main`` (needs CAP_NET_ADMIN)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)


@dataclass
class Rules:
    """Routing rules added through one netlink worker; :meth:`close` removes them."""

    netlink: NetlinkCaller
    added: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **rule: Any) -> None:
        try:
            self.netlink.call("rule", "add", **rule)
        except Exception as error:
            if getattr(error, "code", None) != errno.EEXIST:  # left by a crashed run: reuse
                raise
        self.added.append(rule)

    def remove(self, **rule: Any) -> None:
        if rule in self.added:
            self.added.remove(rule)
        with contextlib.suppress(Exception):
            self.netlink.call("rule", "del", **rule)

    def close(self) -> None:
        for rule in reversed(self.added):
            with contextlib.suppress(Exception):
                self.netlink.call("rule", "del", **rule)
        self.added.clear()


def bypass_rule(family: int, routing: Routing) -> dict[str, Any]:
    """What carries the instance's mark goes by ``main``."""
    return {
        "family": family,
        "priority": routing.bypass_priority,
        "fwmark": routing.mark,
        "fwmask": 0xFFFFFFFF,
        "table": MAIN_TABLE,
    }


def table_rule(family: int, routing: Routing) -> dict[str, Any]:
    """Everything by the instance's table (what it has no route for goes on)."""
    return {"family": family, "priority": routing.priority, "table": routing.table}


def gateway_rules(netlink: NetlinkCaller, routing: Routing) -> Rules:
    """Marked packets by ``main``, then everything by the tunnel table, both families."""
    rules = Rules(netlink)
    for family in FAMILIES:
        rules.add(**bypass_rule(family, routing))
        rules.add(**table_rule(family, routing))
    return rules


def source_rule(address: str, priority: int) -> dict[str, Any]:
    """The rule sending traffic from ``address`` to ``table`` (filled in by the caller)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return {
        "family": family,
        "priority": priority,
        "src": str(ip),
        "src_len": ip.max_prefixlen,
    }


# --- routes of the XFRM datapath -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where the kernel sends a packet: interface index and gateway (None: on link)."""

    oif: int
    gateway: str | None = None


def next_hop_request(dst: str, src: str | None = None, mark: int | None = None) -> Request:
    """``ip route get DST [from SRC] [mark MARK]``."""
    ip = ipaddress.ip_address(dst)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    src_len = ip.max_prefixlen if src is not None else 0
    body = RtMsg(family, ip.max_prefixlen, src_len).push() + push_attribute(RTA_DST, ip.packed)
    if src is not None:
        body += push_attribute(RTA_SRC, ipaddress.ip_address(src).packed)
    if mark is not None:
        body += push_u32(RTA_MARK, mark)
    return Request(RTM_GETROUTE, 0, body)


def pull_next_hop(body: bytes) -> NextHop:
    """The interface and gateway of an RTM_NEWROUTE answering :func:`next_hop_request`."""
    attributes = pull_attributes(body, RtMsg.LAYOUT.size)
    oif = attributes.get(RTA_OIF)
    gateway = attributes.get(RTA_GATEWAY)
    return NextHop(
        int.from_bytes(oif or bytes(4), "little"),
        str(ipaddress.ip_address(gateway)) if gateway else None,
    )


def via_route_request(
    command: str, dst: str, hop: NextHop, table: int, prefsrc: str | None = None
) -> Request:
    """``ip route add|replace|del DST [via GW] dev OIF [src PREFSRC] table T``."""
    if hop.gateway is None:
        extra = {"prefsrc": prefsrc} if prefsrc and command != "del" else {}
        return build("route", command, {"dst": dst, "oif": hop.oif, "table": table, **extra})
    net = ipaddress.ip_network(dst, strict=False)
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    short = table if table < 256 else RT_TABLE_COMPAT
    if command == "del":
        fixed = RtMsg(family, net.prefixlen, 0, 0, short)
    else:
        fixed = RtMsg(
            family, net.prefixlen, 0, 0, short, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST
        )
    body = fixed.push() + push_attribute(RTA_DST, net.network_address.packed)
    body += push_u32(RTA_OIF, hop.oif) + push_u32(RTA_TABLE, table)
    body += push_attribute(RTA_GATEWAY, ipaddress.ip_address(hop.gateway).packed)
    if prefsrc is not None and command != "del":
        body += push_attribute(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
    template = build("route", command, {"dst": dst, "oif": hop.oif, "table": table})
    return Request(template.kind, template.flags, body)


class XfrmRoutes:
    """The routes to the peers' selectors of the XFRM datapath, in the instance's table
    behind one rule per family, counted (two CHILD SAs may cover one network) and kept
    per SA so that a move re-routes and a removal takes them away.

    A route goes out of the interface the kernel would take to the SA's remote (outer)
    address, through the same next hop, preferring ``src`` (the mobile node's CP
    address) when given; without it a route does not name a source.

    ``bypass`` (the gateway, whose leased address may become the mobile node's outer
    address too, an nCoA): what carries the instance's mark goes by ``main`` (a rule
    before the table's), the daemon's IKE sockets and the next-hop lookups, which must
    not find the table's own route to that address.
    """

    def __init__(self, rtnl: Rtnl, routing: Routing, *, bypass: bool = False):
        self.rtnl = rtnl
        self.routing = routing
        self.table = routing.table
        self.bypass_mark = routing.mark if bypass else None
        self.rules: list[dict[str, Any]] = []
        self.installed: dict[tuple[str, str | None], NextHop] = {}
        self._count: dict[tuple[str, str | None], int] = {}
        self._of: dict[bytes, list[tuple[str, str | None]]] = {}

    def next_hop(self, remote: str, local: str | None = None) -> NextHop:
        """The kernel's way to ``remote`` from ``local`` (from anywhere if ``local`` is not
        an address of ours, as an nCoA not yet on its interface)."""
        try:
            return self._get(remote, local)
        except OSError:
            if local is None:
                raise
            return self._get(remote, None)

    def _get(self, remote: str, local: str | None) -> NextHop:
        request = next_hop_request(remote, local, self.bypass_mark)
        msgs = self.rtnl.netlink.request(
            RTM_GETROUTE, NLM_F_ACK, request.body, f"route get {remote}"
        )
        return pull_next_hop(msgs[0].body)

    def add(self, key: bytes, routes: list[tuple[str, str | None]], hop: NextHop) -> None:
        """Install ``routes`` (network, preferred source) for SA ``key`` through ``hop``."""
        for route in routes:
            self._rule(route[0])
            self._count[route] = self._count.get(route, 0) + 1
            if self._count[route] == 1 or self.installed.get(route) != hop:
                self._install(route, hop)
        self._of.setdefault(key, []).extend(routes)

    def move(self, key: bytes, hop: NextHop) -> None:
        """Send the routes of SA ``key`` through ``hop`` (replaced in place: no gap)."""
        for route in self._of.get(key, []):
            if self.installed.get(route) != hop:
                self._install(route, hop)

    def remove(self, key: bytes) -> None:
        for route in self._of.pop(key, []):
            self._count[route] -= 1
            if self._count[route] > 0:
                continue
            del self._count[route]
            hop = self.installed.pop(route, None)
            if hop is not None:
                if hop.gateway is not None and (":" in hop.gateway) != (":" in route[0]):
                    hop = NextHop(hop.oif)
                with contextlib.suppress(Exception):  # gone with its interface or address
                    self.rtnl.send(via_route_request("del", route[0], hop, self.table))

    def close(self) -> None:
        for key in list(self._of):
            self.remove(key)
        for rule in reversed(self.rules):
            with contextlib.suppress(Exception):
                self.rtnl.request("rule", "del", **rule)
        self.rules.clear()

    def _install(self, route: tuple[str, str | None], hop: NextHop) -> None:
        net, src = route
        via = hop
        if hop.gateway is not None and (":" in hop.gateway) != (":" in net):
            via = NextHop(hop.oif)  # the peer reached over the other family: on the link
        try:
            self.rtnl.send(via_route_request("replace", net, via, self.table, src))
        except Exception:
            if src is None:
                raise
            # The source address is not (yet, or any more) ours: route without it.
            self.rtnl.send(via_route_request("replace", net, via, self.table))
        self.installed[route] = hop

    def _rule(self, network: str) -> None:
        version = ipaddress.ip_network(network).version
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        if any(rule["family"] == family for rule in self.rules):
            return
        if self.bypass_mark is not None:
            self._add_rule(**bypass_rule(family, self.routing))
        self._add_rule(**table_rule(family, self.routing))

    def _add_rule(self, **rule: Any) -> None:
        try:
            self.rtnl.request("rule", "add", **rule)
        except Exception as error:
            if getattr(error, "code", None) != errno.EEXIST:  # left by a crashed run: reuse
                raise
        self.rules.append(rule)
