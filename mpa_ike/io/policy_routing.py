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

from mpa_ike.io.tun import MAIN_TABLE

log = logging.getLogger(__name__)

GATEWAY_TABLE = 220
TUNNEL_PRIORITY = 220
BYPASS_PRIORITY = 219
BYPASS_MARK = 0x4D50  # "MP"
PREAUTH_PRIORITY = 210
PREAUTH_TABLE_BASE = 230
FAMILIES = (socket.AF_INET, socket.AF_INET6)


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
