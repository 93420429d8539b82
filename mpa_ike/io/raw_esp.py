"""Plain ESP (IP protocol 50, RFC 4303 without UDP encapsulation) over raw sockets.

For peers that do not encapsulate. A raw socket of protocol 50 receives a copy of
every ESP packet the host gets (IPv4 with its IP header, IPv6 without) even when
the kernel has no ESP states of its own, and sends an ESP packet with the IP
header built by the kernel. Needs CAP_NET_RAW.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from mpa_ike.datagram import Address
from mpa_ike.io.policy_routing import mark_socket

IPPROTO_ESP = 50
IP_PKTINFO = 8  # <linux/in.h>; not in every build of Python's socket module
EspHandler = Callable[[bytes, Address, Address | None], object]
"""``handler(esp_packet, src, local)``: the datapath's ``esp_received``."""


class RawEspSockets:
    """One raw protocol-50 socket per address family, read on the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_esp: EspHandler | None = None,
        families: tuple[socket.AddressFamily, ...] = (socket.AF_INET, socket.AF_INET6),
    ) -> None:
        self.loop = loop
        self.on_esp = on_esp
        self.socks: dict[int, socket.socket] = {}
        self.send_errors = 0
        self.malformed = 0
        for family in families:
            sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_ESP)
            sock.setblocking(False)
            self.socks[family] = sock
            loop.add_reader(sock.fileno(), self._readable, sock)

    def mark_sockets(self, mark: int) -> None:
        """Mark what is sent (see :mod:`mpa_ike.io.policy_routing`)."""
        for sock in self.socks.values():
            mark_socket(sock, mark)

    def _readable(self, sock: socket.socket) -> None:
        v4 = sock.family == socket.AF_INET
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if v4:
                # IPv4 raw sockets hand over the IP header too.
                header_len = (data[0] & 0x0F) * 4 if data else 0
                if header_len < 20 or len(data) < header_len:
                    self.malformed += 1
                    continue
                data = data[header_len:]
            if self.on_esp is not None:
                self.on_esp(data, (str(addr[0]), 0), None)

    def send(self, packet: bytes, local: Address, remote: Address) -> None:
        """The datapath's plain-ESP sender, from the SA's local address (``IP_PKTINFO``:
        a gateway with several addresses must answer from the one the peer knows)."""
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        sock = self.socks.get(family)
        if sock is None:
            self.send_errors += 1
            return
        try:
            sock.sendmsg([packet], [_source(family, local[0])], 0, (remote[0], 0))
        except OSError:
            self.send_errors += 1

    def close(self) -> None:
        for sock in self.socks.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.socks.clear()


def _source(family: int, address: str) -> tuple[int, int, bytes]:
    """The ancillary item choosing the source address (interface left to routing)."""
    packed = socket.inet_pton(family, address)
    if family == socket.AF_INET6:
        return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, packed + bytes(4))
    return (socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + packed + bytes(4))
