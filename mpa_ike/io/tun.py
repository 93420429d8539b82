"""A TUN device for the userspace datapath: inner IP packets in and out, and the
rtnetlink access that goes with it (:class:`Netlink`).

Created through ``/dev/net/tun`` (``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI``, so
every read and write is exactly one IP packet) and configured over rtnetlink: MTU,
queue length, state, addresses and routes are requests of :mod:`mpa_ike.io.rtnl`,
carried out in the caller's thread in tens of microseconds (the callers, the Datapath
protocol and the handover, are synchronous and run on the event loop). The device is
not persistent: closing the descriptor deletes it, with its addresses and routes.

What :mod:`mpa_ike.io.rtnl` does not build goes to pyroute2, imported only then (it
costs about 170 ms to import): outside an event loop its ``IPRoute``, inside one its
``AsyncIPRoute`` through :meth:`Netlink.acall` (pyroute2 0.9's ``IPRoute`` runs a loop
of its own and refuses to work inside a running one). Nothing the daemons do takes that
path; it is there for diagnostics and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import inspect
import ipaddress
import os
import socket
import struct
from types import TracebackType
from typing import Any

from mpa_ike.io.rtnl import MAIN_TABLE, Neighbour, Rtnl, Unsupported

__all__ = ["IFA_F_NODAD", "IFA_F_NOPREFIXROUTE", "MAIN_TABLE", "Netlink", "TunDevice"]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
MAX_PACKET = 65535


class Netlink:
    """rtnetlink in pyroute2's terms: :meth:`call` (``call("route", "add", dst=...,
    oif=...)``) goes the fast way when :mod:`mpa_ike.io.rtnl` builds the request, as
    everything the daemons ask for is; anything else goes to pyroute2 (see the module
    docstring)."""

    def __init__(self) -> None:
        self.rtnl = Rtnl()
        self.pyroute2: Any = None
        """pyroute2's ``IPRoute``, opened on the first call that needs it."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``IPRoute.method(*args, **kwargs)``; outside an event loop only when it is not
        built here (inside one, :class:`Unsupported`: use :meth:`acall`)."""
        with contextlib.suppress(Unsupported):
            return self._fast(method, *args, **kwargs)
        if _loop_running():
            raise Unsupported(f"{method} {args}: not built here; acall it inside the loop")
        if self.pyroute2 is None:
            self.pyroute2 = importlib.import_module("pyroute2").IPRoute()
        return getattr(self.pyroute2, method)(*args, **kwargs)

    async def acall(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call` inside the event loop: what is not built here goes to a
        short-lived ``AsyncIPRoute`` (a dump comes back as a list)."""
        with contextlib.suppress(Unsupported):
            return self._fast(method, *args, **kwargs)
        async with importlib.import_module("pyroute2").AsyncIPRoute() as ipr:
            result = getattr(ipr, method)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if inspect.isasyncgen(result):
                result = [item async for item in result]
            return result

    def _fast(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "link_lookup" and not args and list(kwargs) == ["ifname"]:
            try:
                return [socket.if_nametoindex(kwargs["ifname"])]
            except OSError:
                return []
        if len(args) != 1:
            raise Unsupported(method)
        return self.rtnl.request(method, args[0], **kwargs)

    def addresses(self, index: int, family: int) -> list[str]:
        """The addresses of ``family`` on interface ``index`` (a quick dump)."""
        return self.rtnl.addresses(index, family)

    def neighbours(self, index: int) -> list[Neighbour]:
        """The neighbour entries of interface ``index`` (a quick dump)."""
        return self.rtnl.neighbours(index)

    def close(self) -> None:
        self.rtnl.close()
        if self.pyroute2 is not None:
            self.pyroute2.close()
            self.pyroute2 = None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class TunDevice:
    """An open, non-blocking TUN device."""

    def __init__(self, fd: int, name: str, netlink: Netlink) -> None:
        self.fd = fd
        self.name = name
        self.netlink = netlink
        """The device's rtnetlink access, for the policy routing that goes with it."""
        self.index = socket.if_nametoindex(name)

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
            dev.set_txqlen(txqlen)
            if up:
                dev.up()
        except BaseException:
            dev.close()
            raise
        return dev

    def up(self) -> None:
        self.netlink.call("link", "set", index=self.index, state="up")

    def set_mtu(self, mtu: int) -> None:
        self.netlink.call("link", "set", index=self.index, mtu=mtu)

    def set_txqlen(self, txqlen: int) -> None:
        self.netlink.call("link", "set", index=self.index, txqlen=txqlen)

    def add_address(self, cidr: str) -> None:
        """Add an address (``10.3.0.1/32``); IPv6 without duplicate address detection.
        A shorter prefix (CP's netmask) gets no prefix route: what goes into the device
        is the tunnel's routes' to decide."""
        iface = ipaddress.ip_interface(cidr)
        flags = IFA_F_NODAD if iface.version == 6 else 0
        if iface.network.prefixlen < iface.max_prefixlen:
            flags |= IFA_F_NOPREFIXROUTE
        extra = {"flags": flags} if flags else {}
        self.netlink.call(
            "addr",
            "add",
            index=self.index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            **extra,
        )

    def del_address(self, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        self.netlink.call(
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
        self.netlink.call("route", "add", dst=str(net), oif=self.index, table=table, **extra)

    def del_route(self, network: str, table: int = MAIN_TABLE) -> None:
        net = str(ipaddress.ip_network(network))
        self.netlink.call("route", "del", dst=net, oif=self.index, table=table)

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
            self.netlink.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
