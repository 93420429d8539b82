"""Interface link state, and the moves of an address between interfaces.

:class:`LinkWatcher` reads rtnetlink's link group on the event loop, through a
non-blocking :class:`mpa_ike.io.netlink.NetlinkSocket` whose events
:func:`mpa_ike.io.rtnl.link_events` decodes: a handover starts on the event itself,
without polling, and without a thread or pyroute2 between the kernel and the loop. A
link counts as up when it is administratively up and has its carrier (``IFF_LOWER_UP``):
the kernel reports a carrier coming on at once, while the operational state may lag
(see ``deploy/testbed/README.md``).

:class:`AddressMover` puts an address on an interface without duplicate address
detection (the gateway allocated it: nobody else has it), routes the gateway through
that interface, and clears neighbour entries that failed while the link was down, which
the kernel would otherwise wait out for a second. Its netlink calls go through
:class:`mpa_ike.io.tun.Netlink`, all of them straight over rtnetlink
(:mod:`mpa_ike.io.rtnl`): addresses, routes and the neighbour table.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpa_ike.io.netlink import NETLINK_ROUTE, NetlinkSocket
from mpa_ike.io.rtnl import (
    IFF_RUNNING,
    IFF_UP,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    address_events,
    link_events,
)
from mpa_ike.io.tun import IFA_F_NODAD, MAIN_TABLE, Netlink

log = logging.getLogger(__name__)

SIOCGIFFLAGS = 0x8913
# Neighbour states not worth keeping when a link comes back (<linux/neighbour.h>).
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
QUICK_NEIGHBOUR_RETRY_MS = 100
ARP_ANNOUNCE_OWN = 2  # the best local address for the target, never the packet's

LinkListener = Callable[[str, bool], object]
"""``listener(interface_name, up)`` on every link change the kernel reports."""
AddressListener = Callable[[str, str, bool], object]
"""``listener(interface_name, address, added)`` on every address added or removed."""


def link_is_up(name: str) -> bool:
    """Administratively up with carrier, as the interface flags say now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode(), 0)
        try:
            flags: int = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        except OSError:
            return False
    return bool(flags & IFF_UP and flags & IFF_RUNNING)


class LinkWatcher:
    """Link up/down events of every interface, and its addresses coming and going (an
    address lost takes the path from it away as surely as a carrier lost), from one
    rtnetlink socket on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        self.netlink = NetlinkSocket(NETLINK_ROUTE, groups=groups, timeout=None)
        self.listeners: list[LinkListener] = []
        self.address_listeners: list[AddressListener] = []
        self._waiters: dict[int, list[asyncio.Future[float]]] = {}
        self._state: dict[int, bool] = {}
        self.up_since: dict[int, float] = {}
        """Loop time each interface last came up, as reported."""
        # What the interfaces are now (read after subscribing, so that nothing is
        # missed): a later message that repeats it is no change (the kernel sends
        # RTM_NEWLINK for much besides carrier and operstate).
        for index, name in socket.if_nameindex():
            self._state[index] = link_is_up(name)
        self.loop.add_reader(self.netlink.fileno(), self._readable)

    def read_anew(self) -> None:
        """Every interface's state as the flags say now, as if each had been reported:
        after events were lost, a change among them reaches the listeners and waiters."""
        now = self.loop.time()
        for index, name in socket.if_nameindex():
            self._changed(index, link_is_up(name), now)

    async def wait_up(self, name: str, timeout: float) -> float:
        """Return when ``name`` has link (at once if it has); the loop time it came up."""
        index = socket.if_nametoindex(name)
        waiter: asyncio.Future[float] = self.loop.create_future()
        self._waiters.setdefault(index, []).append(waiter)
        try:
            if link_is_up(name):
                # Up before we asked: when it came up, if we saw it, for the timeline.
                return self.up_since.get(index, self.loop.time())
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            with contextlib.suppress(ValueError, KeyError):
                self._waiters[index].remove(waiter)

    def _readable(self) -> None:
        while True:
            try:
                messages = self.netlink.receive()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # ENOBUFS: events lost
                log.warning("link events: %s; link states read anew", error.strerror)
                self.read_anew()
                return
            now = self.loop.time()
            for event in link_events(messages):
                self._changed(event.index, event.up, now)
            for change in address_events(messages):
                self._address(change.index, change.address, change.added)

    def _address(self, index: int, address: str, added: bool) -> None:
        if not self.address_listeners:
            return
        try:
            name = socket.if_indextoname(index)
        except OSError:
            return
        for listener in self.address_listeners:
            listener(name, address, added)

    def _changed(self, index: int, up: bool, now: float) -> None:
        if up:
            for waiter in self._waiters.get(index, []):
                if not waiter.done():
                    waiter.set_result(now)
        if self._state.get(index) == up:
            return
        self._state[index] = up
        if up:
            self.up_since[index] = now
        else:
            self.up_since.pop(index, None)
        try:
            name = socket.if_indextoname(index)
        except OSError:
            return
        for listener in self.listeners:
            listener(name, up)

    def close(self) -> None:
        self.loop.remove_reader(self.netlink.fileno())
        self.netlink.close()


class AddressMover:
    """Addresses and host routes on the mobile node's interfaces (blocking calls of some
    tens of microseconds, :mod:`mpa_ike.io.rtnl`)."""

    def __init__(self, netlink: Netlink) -> None:
        self.netlink = netlink

    def attach(
        self, interface: str, address: str, gateway: str, prefix_length: int | None = None
    ) -> None:
        """``address`` on ``interface``; ``gateway`` on-link through it from ``address``;
        failed neighbour entries of the interface cleared."""
        self.prepare(interface, address, prefix_length)
        self.route_gateway(interface, address, gateway)

    def prepare(self, interface: str, address: str, prefix_length: int | None = None) -> None:
        """What can be done before the link is up: the address (no DAD), a host address
        or, with ``prefix_length`` (CP's netmask, the target network's prefix), with the
        on-link route of its network, and no failed neighbour entries left to wait out."""
        index = self._index(interface)
        self.flush_failed_neighbours(index)
        ip = ipaddress.ip_address(address)
        extra: dict[str, Any] = {"flags": IFA_F_NODAD} if ip.version == 6 else {}
        length = prefix_length or ip.max_prefixlen
        self._call_tolerant("addr", "add", index=index, address=str(ip), prefixlen=length, **extra)

    def ignore_routes_while_down(self, interface: str) -> None:
        """Routes through ``interface`` count only while it has link (the kernel's
        ``ignore_routes_with_linkdown``), so a route laid ahead of the link takes effect
        the moment the carrier comes, and takes nothing from the current path before."""
        for version in ("ipv4", "ipv6"):
            knob = Path(f"/proc/sys/net/{version}/conf/{interface}/ignore_routes_with_linkdown")
            with contextlib.suppress(OSError):
                if knob.read_text().strip() != "1":
                    knob.write_text("1\n")

    def quick_neighbour_retries(self, interface: str) -> None:
        """ARP and neighbour solicitations on ``interface`` repeated after 100 ms, not a
        second: the gateway's link-layer address is resolved on the new link just as
        the update leaves, and on a lossy link a lost request should not cost a second
        (the kernel still gives up after ``mcast_solicit`` tries)."""
        for version in ("ipv4", "ipv6"):
            knob = Path(f"/proc/sys/net/{version}/neigh/{interface}/retrans_time_ms")
            with contextlib.suppress(OSError, ValueError):
                if int(knob.read_text()) > QUICK_NEIGHBOUR_RETRY_MS:
                    knob.write_text(f"{QUICK_NEIGHBOUR_RETRY_MS}\n")

    def ask_from_own_address(self, interface: str) -> None:
        """ARP requests on ``interface`` name an address of its own (``arp_announce``
        2), whatever packet set them off. The first packet out on the new link may be
        ESP still on the old path's addresses (the datapath's, routed over the new link
        the moment the gateway's route there counts): a request naming the old address
        would teach the gateway that one, and it would have to ask for the nCoA itself
        before its answer to the update could leave. IPv6 needs nothing: a solicitation
        names the packet's source only if it is an address of the interface."""
        knob = Path(f"/proc/sys/net/ipv4/conf/{interface}/arp_announce")
        with contextlib.suppress(OSError, ValueError):
            if int(knob.read_text()) < ARP_ANNOUNCE_OWN:
                knob.write_text(f"{ARP_ANNOUNCE_OWN}\n")

    def route_gateway(self, interface: str, address: str, gateway: str) -> None:
        """The gateway on-link through ``interface``, from ``address`` (once the link is
        up: before, this route would take the current path's packets to it)."""
        ip = ipaddress.ip_address(address)
        self._call_tolerant(
            "route",
            "replace",
            dst=f"{gateway}/{ip.max_prefixlen}",
            oif=self._index(interface),
            prefsrc=str(ip),
            table=MAIN_TABLE,
        )

    def detach(
        self,
        interface: str,
        address: str,
        gateway: str | None = None,
        prefix_length: int | None = None,
    ) -> None:
        """Undo :meth:`attach` (what is already gone is fine)."""
        if gateway is not None:
            self.unroute_gateway(interface, address, gateway)
        with contextlib.suppress(Exception):
            ip = ipaddress.ip_address(address)
            self.netlink.call(
                "addr",
                "del",
                index=self._index(interface),
                address=str(ip),
                prefixlen=prefix_length or ip.max_prefixlen,
            )

    def unroute_gateway(self, interface: str, address: str, gateway: str) -> None:
        """Undo :meth:`route_gateway` (what is already gone is fine)."""
        with contextlib.suppress(Exception):
            dst = f"{gateway}/{ipaddress.ip_address(address).max_prefixlen}"
            index = self._index(interface)
            self.netlink.call("route", "del", dst=dst, oif=index, table=MAIN_TABLE)

    def own_address(self, interface: str, version: int, exclude: set[str]) -> str | None:
        """A global address of ``interface`` of that family, other than ``exclude``."""
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        index = self._index(interface)
        for address in self.netlink.addresses(index, family):
            if address not in exclude and not ipaddress.ip_address(address).is_link_local:
                return address
        return None

    def global_addresses(self) -> list[tuple[str, str]]:
        """(interface, address) of every address that is not link-local or loopback,
        on interfaces that have link now."""
        found = []
        for index, name in socket.if_nameindex():
            if not link_is_up(name):
                continue
            for family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    for address in self.netlink.addresses(index, family):
                        ip = ipaddress.ip_address(address)
                        if not (ip.is_link_local or ip.is_loopback):
                            found.append((name, address))
        return found

    def interface_of(self, address: str) -> str | None:
        """The interface that holds ``address`` now, if any."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        for index, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                if str(ip) in self.netlink.addresses(index, family):
                    return name
        return None

    def flush_failed_neighbours(self, index: int) -> None:
        for entry in self.netlink.neighbours(index):
            if entry.state & (NUD_FAILED | NUD_INCOMPLETE) and entry.dst is not None:
                with contextlib.suppress(Exception):
                    self.netlink.call(
                        "neigh", "del", ifindex=index, dst=entry.dst, family=entry.family
                    )

    def _index(self, interface: str) -> int:
        return socket.if_nametoindex(interface)

    def _call_tolerant(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.netlink.call(*args, **kwargs)
        except Exception as error:
            if getattr(error, "code", None) != errno.EEXIST:  # already there
                raise
