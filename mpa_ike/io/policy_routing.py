"""Policy routing around the userspace datapath's TUN device.

A gateway that is also the access router of its network sends ESP to a mobile node's
nCoA, and after the MOBIKE move that outer address is also the inner address its
routes lead into the tunnel: the ESP itself would be routed back into the device. So
the gateway keeps the tunnel routes in their own table (``GATEWAY_TABLE``, 220 as
charon's) behind a rule, and marks its IKE and ESP sockets (``SO_MARK``) so that a
rule placed before it sends their packets by ``main``.

A mobile node keeps the routes of each pre-authentication tunnel in a table of its own,
reached only by traffic from that tunnel's nCoA (a ``from`` rule), so the tunnel
carries the nCoA's traffic while everything else still takes the current network.

With the kernel's XFRM there is no device to route into: the policies take what
matches, but only what is routed somewhere. :class:`XfrmRoutes` keeps the routes to the
peer's traffic selectors in ``XFRM_TABLE`` behind one rule, as charon does in its table
220: out of the interface towards the peer (the next hop the kernel would take to its
outer address), preferring the CP address as source on a mobile node.

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
from dataclasses import dataclass, field
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

GATEWAY_TABLE = 220
TUNNEL_PRIORITY = 220
BYPASS_PRIORITY = 219
BYPASS_MARK = 0x4D50  # "MP"
PREAUTH_PRIORITY = 210
PREAUTH_TABLE_BASE = 230
FAMILIES = (socket.AF_INET, socket.AF_INET6)
#: The XFRM datapath's routes to the peers' selectors: next to charon's 220, not in it,
#: so that both may run in one namespace.
XFRM_TABLE = 221
XFRM_PRIORITY = 221
RTM_GETROUTE = 26
RTA_SRC, RTA_GATEWAY, RTA_MARK = 2, 5, 16


class NetlinkCaller(Protocol):
    """:class:`mpa_ike.io.tun.Netlink`: ``call("rule", "add", ...)`` and the like."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


def mark_socket(sock: socket.socket, mark: int = BYPASS_MARK) -> None:
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


def gateway_rules(netlink: NetlinkCaller) -> Rules:
    """Marked packets by ``main``, then everything by the tunnel table, both families."""
    rules = Rules(netlink)
    for family in FAMILIES:
        rules.add(
            family=family,
            priority=BYPASS_PRIORITY,
            fwmark=BYPASS_MARK,
            fwmask=0xFFFFFFFF,
            table=MAIN_TABLE,
        )
        rules.add(family=family, priority=TUNNEL_PRIORITY, table=GATEWAY_TABLE)
    return rules


def source_rule(address: str) -> dict[str, Any]:
    """The rule sending traffic from ``address`` to ``table`` (filled in by the caller)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return {
        "family": family,
        "priority": PREAUTH_PRIORITY,
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
    """The routes to the peers' selectors of the XFRM datapath, in ``table`` behind one
    rule per family, counted (two CHILD SAs may cover one network) and kept per SA so
    that a move re-routes and a removal takes them away.

    A route goes out of the interface the kernel would take to the SA's remote (outer)
    address, through the same next hop, preferring ``src`` (the mobile node's CP
    address) when given; without it a route does not name a source.

    ``bypass_mark`` (the gateway, whose leased address may become the mobile node's
    outer address too, an nCoA): what carries the mark goes by ``main`` (a rule before
    the table's), the daemon's IKE sockets and the next-hop lookups, which must not
    find the table's own route to that address.
    """

    def __init__(
        self,
        rtnl: Rtnl,
        table: int = XFRM_TABLE,
        priority: int = XFRM_PRIORITY,
        bypass_mark: int | None = None,
    ):
        self.rtnl = rtnl
        self.table = table
        self.priority = priority
        self.bypass_mark = bypass_mark
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
            self._add_rule(
                family=family,
                priority=BYPASS_PRIORITY,
                fwmark=self.bypass_mark,
                fwmask=0xFFFFFFFF,
                table=MAIN_TABLE,
            )
        self._add_rule(family=family, priority=self.priority, table=self.table)

    def _add_rule(self, **rule: Any) -> None:
        try:
            self.rtnl.request("rule", "add", **rule)
        except Exception as error:
            if getattr(error, "code", None) != errno.EEXIST:  # left by a crashed run: reuse
                raise
        self.rules.append(rule)
