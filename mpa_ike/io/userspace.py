"""The userspace ESP datapath: TUN device <-> :mod:`mpa_ike.esp` <-> UDP 4500.

Like strongSwan's kernel-libipsec, for kernels without XFRM ESP states. Inner
packets the kernel routes into the TUN device are matched to an SA by their
addresses (the peer's traffic selectors: on a gateway, each mobile node's CP
address), encrypted and sent in UDP to the SA's remote outer address through
the shared IKE socket. ESP received on that socket is decrypted, checked
against the SA's selectors and written to the TUN device, from where the kernel
delivers or forwards it. SAs without UDP encapsulation use a second sender,
plain ESP over a raw socket (:mod:`mpa_ike.io.raw_esp`), when one is given.

Installing an SA pair routes the peer's selectors into the device; routes are
reference counted and removed with the last SA needing them. They, the device's
addresses and its set-up are rtnetlink requests of :mod:`mpa_ike.io.rtnl` made in the
caller's thread (:class:`mpa_ike.io.tun.TunDevice`): a handover's route changes take
tens of microseconds and no thread or pyroute2 sits between the loop and the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from mpa_ike.config_payload import IPNetwork
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaCounters, ChildSaParams
from mpa_ike.errors import LocalProtocolError
from mpa_ike.esp import DEFAULT_REPLAY_WINDOW, DropReason, EspTunnels, Expiry, SaPair
from mpa_ike.io.tun import MAIN_TABLE, TunDevice

Sender = Callable[[bytes, Address, Address], object]
"""``sender(esp_packet, local, remote)``: put ESP in UDP on the wire from ``local``
(the shared IKE socket's address) to ``remote``, as the IKE transport's
``send_raw(payload, src, dst)`` does."""
MappingHandler = Callable[[bytes, bytes, Address], object]
"""``on_mapping(spi_in, spi_out, src)``: authenticated ESP came from ``src``, not the
SA's remote address."""
_READ_BATCH = 64


class PacketDevice(Protocol):
    """What the datapath needs of its TUN device (:class:`mpa_ike.io.tun.TunDevice`)."""

    @property
    def fd(self) -> int: ...

    def read(self) -> bytes: ...

    def write(self, packet: bytes) -> int: ...

    def add_route(self, network: str, src: str | None = None, table: int = MAIN_TABLE) -> None: ...

    def del_route(self, network: str, table: int = MAIN_TABLE) -> None: ...

    def add_address(self, cidr: str) -> None: ...

    def del_address(self, cidr: str) -> None: ...


class UserspaceDatapath:
    """A :class:`mpa_ike.datapath.Datapath` doing ESP in this process."""

    def __init__(
        self,
        tun: PacketDevice,
        send_esp: Sender,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        manage_routes: bool = True,
        send_plain: Sender | None = None,
        route_table: int = MAIN_TABLE,
    ) -> None:
        self.tun = tun
        self.send_esp = send_esp
        self.send_plain = send_plain
        """Sender for SAs without UDP encapsulation (:mod:`mpa_ike.io.raw_esp`)."""
        self.loop = loop
        self.tunnels = EspTunnels(replay_window)
        self.manage_routes = manage_routes
        self.route_table = route_table
        """Where the routes into the device go (a gateway keeps them out of ``main``,
        see :mod:`mpa_ike.io.policy_routing`)."""
        self.source_tables: dict[str, int] = {}
        """Routes preferring one of these sources go to its table instead (the mobile
        node's pre-authentication tunnels, reached by a ``from`` rule)."""
        self.subnets: dict[str, tuple[IPNetwork, ...]] = {}
        """Routes preferring one of these sources go only to these networks of the peer's
        selectors (CP's INTERNAL_IP4/6_SUBNET, RFC 7296 §3.15.2); set before the SAs."""
        self._routes: Counter[tuple[str, str | None]] = Counter()
        self._route_tables: dict[tuple[str, str | None], int] = {}
        self.tun_write_errors = 0
        self._reading = False
        self.last_inbound: dict[bytes, float] = {}
        """Loop time of the last authenticated packet per inbound SPI (for liveness checks)."""
        self.on_mapping: MappingHandler | None = None
        self.on_expire: Callable[[Expiry], object] | None = None
        """Called when an outbound SA needs rekeying (sequence numbers running out)."""
        self._mapped: dict[bytes, Address] = {}

    # --- lifecycle ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        send_esp: Sender,
        *,
        name: str = "mpa%d",
        mtu: int = 1400,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        send_plain: Sender | None = None,
        route_table: int = MAIN_TABLE,
    ) -> UserspaceDatapath:
        """Create a TUN device and start reading it on the running loop (needs root)."""
        tun = TunDevice.create(name, mtu=mtu)
        try:
            datapath = cls(
                tun,
                send_esp,
                replay_window=replay_window,
                send_plain=send_plain,
                route_table=route_table,
            )
            datapath.start()
        except BaseException:
            tun.close()
            raise
        return datapath

    def start(self) -> None:
        """Start reading the TUN device on the event loop."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.tun.fd, self._tun_readable)
        self._reading = True

    def stop(self) -> None:
        """Stop reading the device; SAs, routes and the device stay."""
        if self._reading and self.loop is not None:
            self.loop.remove_reader(self.tun.fd)
            self._reading = False

    def close(self) -> None:
        """Stop, forget every SA and close the device (its routes go with it)."""
        self.stop()
        self.tunnels = EspTunnels(self.tunnels.replay_window)
        self._routes.clear()
        self._route_tables.clear()
        close = getattr(self.tun, "close", None)
        if close is not None:
            close()

    # --- the Datapath protocol --------------------------------------------------

    def install_child_sa(self, params: ChildSaParams) -> None:
        self._check_encap(params.encap)
        pair = self.tunnels.install(params)
        if self.manage_routes:
            for route in self._routes_for(pair):
                self._add_route(route)

    def move_child_sa(
        self, spi_in: bytes, spi_out: bytes, local: Address, remote: Address, encap: bool
    ) -> None:
        """Move an SA pair (RFC 4555 §3.5): counters, sequence and replay state stay."""
        self._check_encap(encap)
        pair = self._pair(spi_in, spi_out)
        self.tunnels.move(pair.inbound.spi, local, remote, encap)
        self._mapped.pop(spi_in, None)

    def remove_child_sa(self, spi_in: bytes, spi_out: bytes) -> None:
        pair = self.tunnels.by_spi_in.get(spi_in)
        if pair is None or pair.outbound.spi != spi_out:
            return
        self.tunnels.remove(spi_in)
        self.last_inbound.pop(spi_in, None)
        self._mapped.pop(spi_in, None)
        if self.manage_routes:
            for route in self._routes_for(pair):
                self._del_route(route)

    def counters(self, spi_in: bytes) -> ChildSaCounters:
        return self.tunnels.counters(spi_in)

    def add_inner_address(self, address: str, prefix_length: int | None = None) -> None:
        """Put an inner address (the CP address) on the device, a host address unless
        ``prefix_length`` (CP's netmask) is given.

        Add it before installing the SA whose local selector it is, so that the
        routes to the peer's selectors can prefer it as their source.
        """
        ip = ipaddress.ip_address(address)
        self.tun.add_address(f"{ip}/{prefix_length or ip.max_prefixlen}")

    def del_inner_address(self, address: str, prefix_length: int | None = None) -> None:
        ip = ipaddress.ip_address(address)
        self.tun.del_address(f"{ip}/{prefix_length or ip.max_prefixlen}")

    def drops(self, spi_in: bytes | None = None) -> dict[str, int]:
        """Drop counts by reason: of one SA (both directions), or not tied to an SA."""
        if spi_in is None:
            counts = Counter(self.tunnels.drops)
        else:
            pair = self.tunnels.by_spi_in[spi_in]
            counts = pair.inbound.stats.drops + pair.outbound.stats.drops
        return {reason.value: n for reason, n in counts.items() if n}

    # --- packets ---------------------------------------------------------------

    def esp_received(self, packet: bytes, src: Address, local: Address | None = None) -> None:
        """The UDP 4500 socket's ESP handler: ``packet`` from the SPI on, from ``src``."""
        self.handle_esp(packet, src)

    def handle_esp(self, packet: bytes, src: Address | None = None) -> DropReason | None:
        """Decrypt and deliver one ESP packet; why it was dropped, if it was.

        An authenticated packet from another address than the SA's remote does
        not move the SA: NAT rebinding or a peer's move is the IKE glue's call
        (RFC 4555 §3.12: ESP from an unexpected address proves nothing about
        the path). It is reported once per new address to ``on_mapping``, like
        the kernel's XFRM_MSG_MAPPING.
        """
        result = self.tunnels.inbound(packet)
        if isinstance(result, DropReason):
            return result
        pair, inner = result
        spi_in = pair.inbound.spi
        self.last_inbound[spi_in] = self._now()
        if src is not None and _moved(src, pair.remote) and self._mapped.get(spi_in) != src:
            self._mapped[spi_in] = src
            if self.on_mapping is not None:
                self.on_mapping(spi_in, pair.outbound.spi, src)
        try:
            self.tun.write(inner)
        except OSError:
            self.tun_write_errors += 1
        return None

    def _report_expiries(self) -> None:
        expiries, self.tunnels.expiries = self.tunnels.expiries, []
        if self.on_expire is not None:
            for expiry in expiries:
                self.on_expire(expiry)

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else time.monotonic()

    def inner_packet(self, inner: bytes) -> DropReason | None:
        """An inner packet to protect (read from the TUN device)."""
        result = self.tunnels.outbound(inner)
        if isinstance(result, DropReason):
            if self.tunnels.expiries:
                self._report_expiries()
            return result
        pair, packet = result
        self._sender(pair)(packet, pair.local, pair.remote)
        if self.tunnels.expiries:
            self._report_expiries()
        return None

    def _tun_readable(self) -> None:
        read, outbound, sender = self.tun.read, self.tunnels.outbound, self._sender
        for _ in range(_READ_BATCH):
            try:
                inner = read()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            result = outbound(inner)
            if not isinstance(result, DropReason):
                pair = result[0]
                sender(pair)(result[1], pair.local, pair.remote)
            if self.tunnels.expiries:
                self._report_expiries()

    # --- helpers ---------------------------------------------------------------

    def _check_encap(self, encap: bool) -> None:
        if not encap and self.send_plain is None:
            raise LocalProtocolError("no plain ESP sender: this datapath does ESP in UDP only")

    def _sender(self, pair: SaPair) -> Sender:
        if pair.encap or self.send_plain is None:
            return self.send_esp
        return self.send_plain

    def _pair(self, spi_in: bytes, spi_out: bytes) -> SaPair:
        pair = self.tunnels.by_spi_in.get(spi_in)
        if pair is None or pair.outbound.spi != spi_out:
            raise LocalProtocolError(f"no SA pair {spi_in.hex()}/{spi_out.hex()}")
        return pair

    def _routes_for(self, pair: SaPair) -> list[tuple[str, str | None]]:
        """The networks of the peer's selectors, each with our single address as source.

        A network covering the peer's outer address is split around it: routing
        that address into the tunnel would loop the ESP packets themselves.
        """
        outer = ipaddress.ip_address(pair.remote[0])
        routes: list[tuple[str, str | None]] = []
        for sel in pair.remote_sel:
            src = next(
                (
                    str(ipaddress.ip_address(s.start))
                    for s in pair.local_sel
                    if s.version == sel.version and s.start == s.end
                ),
                None,
            )
            first, last = ipaddress.ip_address(sel.start), ipaddress.ip_address(sel.end)
            networks = ipaddress.summarize_address_range(first, last)
            for net in inside_subnets(networks, self.subnets.get(src or "", ())):
                if outer.version == net.version and outer in net:
                    # Route everything but the peer itself (RFC 4301 §4.4.1's
                    # bypass of IKE/ESP to the peer, done by routing).
                    routes.extend((str(n), src) for n in _exclude(net, outer))
                else:
                    routes.append((str(net), src))
        return routes

    def _add_route(self, route: tuple[str, str | None]) -> None:
        self._routes[route] += 1
        if self._routes[route] > 1:
            return
        net, src = route
        table = self.source_tables.get(src or "", self.route_table)
        self._route_tables[route] = table
        self._install_route(net, src, table)

    def _install_route(self, net: str, src: str | None, table: int) -> None:
        try:
            self.tun.add_route(net, src, table)
        except Exception:
            # The source address may not be on the device (yet): route without it.
            with contextlib.suppress(Exception):
                self.tun.add_route(net, None, table)

    def _del_route(self, route: tuple[str, str | None]) -> None:
        self._routes[route] -= 1
        if self._routes[route] > 0:
            return
        del self._routes[route]
        table = self._route_tables.pop(route, self.route_table)
        with contextlib.suppress(Exception):
            self.tun.del_route(route[0], table)

    def move_routes(self, src: str, table: int | None) -> None:
        """Put the routes preferring source ``src`` into ``table`` (None: the default
        table) from now on, those already installed included."""
        if table is None:
            self.source_tables.pop(src, None)
        else:
            self.source_tables[src] = table
        wanted = self.source_tables.get(src, self.route_table)
        for route in [r for r in self._routes if r[1] == src]:
            was = self._route_tables.get(route, self.route_table)
            if was == wanted:
                continue
            self._route_tables[route] = wanted
            self._install_route(route[0], src, wanted)  # before the old one goes: no gap
            with contextlib.suppress(Exception):
                self.tun.del_route(route[0], was)


def _moved(src: Address, remote: Address) -> bool:
    """ESP from elsewhere than the SA's remote (port 0: plain ESP, which has none)."""
    return src[0] != remote[0] or (src[1] != 0 and src[1] != remote[1])


def inside_subnets(
    networks: Iterable[IPNetwork], subnets: Sequence[IPNetwork]
) -> Iterator[IPNetwork]:
    """Of the peer's selectors' ``networks``, what lies in the ``subnets`` of their family
    (what the gateway said it protects), or all of them where it named none."""
    for net in networks:
        ours = [s for s in subnets if s.version == net.version]
        if not ours:
            yield net
        for subnet in ours:
            if subnet.subnet_of(net):  # type: ignore[arg-type]  # same version
                yield subnet
            elif net.subnet_of(subnet):  # type: ignore[arg-type]
                yield net


def _exclude(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    outer: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network]:
    """``net`` without the host ``outer`` (of the same version), as prefixes."""
    if isinstance(net, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Address):
        return list(net.address_exclude(ipaddress.IPv4Network(outer)))
    assert isinstance(net, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Address)
    return list(net.address_exclude(ipaddress.IPv6Network(outer)))
