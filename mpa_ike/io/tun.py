"""A TUN device for the userspace datapath: inner IP packets in and out.

Created through ``/dev/net/tun`` (``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI``, so
every read and write is exactly one IP packet) and configured over rtnetlink
with pyroute2. The device is not persistent: closing the descriptor deletes it,
with its addresses and routes.

pyroute2 0.9's synchronous ``IPRoute`` runs its own asyncio loop and refuses to
work inside a running one, so its calls go to one worker thread and are waited
for (the callers, the Datapath protocol, are synchronous). Addresses, routes and
rules, which a handover changes while traffic flows, skip it: :mod:`mpa_ike.io.rtnl`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]

from mpa_ike.io.rtnl import Rtnl, Unsupported

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFA_F_NODAD = 0x02
MAIN_TABLE = 254
MAX_PACKET = 65535


class Netlink:
    """An ``IPRoute`` living in its own thread (see the module docstring); addresses,
    routes and rules go the fast way, in the caller's thread (:mod:`mpa_ike.io.rtnl`)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mpa-netlink")
        self._ipr: Any = self._pool.submit(IPRoute).result()
        self._rtnl = Rtnl()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1:
            with contextlib.suppress(Unsupported):
                return self._rtnl.request(method, args[0], **kwargs)
        fn: Callable[..., Any] = getattr(self._ipr, method)
        return self._pool.submit(fn, *args, **kwargs).result()

    def addresses(self, index: int, family: int) -> list[str]:
        """The addresses of ``family`` on interface ``index`` (a quick dump)."""
        return self._rtnl.addresses(index, family)

    def close(self) -> None:
        self._rtnl.close()
        self._pool.submit(self._ipr.close).result()
        self._pool.shutdown()


class TunDevice:
    """An open, non-blocking TUN device."""

    def __init__(self, fd: int, name: str, netlink: Netlink) -> None:
        self.fd = fd
        self.name = name
        self._nl = netlink
        self.index: int = netlink.call("link_lookup", ifname=name)[0]

    @classmethod
    def create(
        cls, name: str = "mpa%d", *, mtu: int = 1400, txqlen: int = 4096, up: bool = True
    ) -> TunDevice:
        """Create a TUN device (``%d`` in ``name`` lets the kernel number it).

        ``txqlen`` is the queue of packets the kernel routed into the device and
        this process has not read yet: the default of 500 overflows in bursts.
        """
        if len(name.encode()) > 15:
            raise ValueError(f"interface name too long: {name}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
            result = fcntl.ioctl(fd, TUNSETIFF, ifr)
            real_name = struct.unpack("16sH", result[:18])[0].rstrip(b"\0").decode()
            dev = cls(fd, real_name, Netlink())
        except BaseException:
            os.close(fd)
            raise
        try:
            dev.set_mtu(mtu)
            dev._nl.call("link", "set", index=dev.index, txqlen=txqlen)
            if up:
                dev.up()
        except BaseException:
            dev.close()
            raise
        return dev

    def up(self) -> None:
        self._nl.call("link", "set", index=self.index, state="up")

    def set_mtu(self, mtu: int) -> None:
        self._nl.call("link", "set", index=self.index, mtu=mtu)

    def add_address(self, cidr: str) -> None:
        """Add an address (``10.3.0.1/32``); IPv6 without duplicate address detection."""
        iface = ipaddress.ip_interface(cidr)
        extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
        self._nl.call(
            "addr",
            "add",
            index=self.index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            **extra,
        )

    def del_address(self, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        self._nl.call(
            "addr",
            "del",
            index=self.index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )

    def add_route(self, network: str, src: str | None = None, table: int = MAIN_TABLE) -> None:
        """Route ``network`` into the device, preferring source ``src`` if given."""
        net = ipaddress.ip_network(network)
        extra: dict[str, Any] = {"prefsrc": src} if src else {}
        self._nl.call("route", "add", dst=str(net), oif=self.index, table=table, **extra)

    def del_route(self, network: str, table: int = MAIN_TABLE) -> None:
        net = str(ipaddress.ip_network(network))
        self._nl.call("route", "del", dst=net, oif=self.index, table=table)

    @property
    def netlink(self) -> Netlink:
        """The device's rtnetlink worker, for the policy routing that goes with it."""
        return self._nl

    def read(self) -> bytes:
        """One IP packet; raises BlockingIOError when none is waiting."""
        return os.read(self.fd, MAX_PACKET)

    def write(self, packet: bytes) -> int:
        return os.write(self.fd, packet)

    def close(self) -> None:
        """Delete the device (routes and addresses go with it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._nl.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
