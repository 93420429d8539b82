"""A stand-alone NAT-T port for the ESP tests: IKE, ESP in UDP and NAT keepalives on
UDP 4500 (RFC 3948), without the daemons' transport (:mod:`mpa_ike.node.transport`).

One socket per address family carries all three (RFC 3948 §2): IKE messages
start with the 4-byte zero non-ESP marker, a single 0xFF octet is a NAT
keepalive, anything else is ESP (whose SPI is never zero). The IKE glue and the
datapath share a :class:`Udp4500Demux`: the glue gives it the IKE handler, the
datapath its ESP handler, and both send through it.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from collections.abc import Callable
from typing import Any

from mpa_ike.constants import NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER
from mpa_ike.datagram import Address

SOCKET_BUFFER = 4 << 20
Handler = Callable[[bytes, Address], object]
"""Called with a payload and the peer address; any return value is ignored."""


class Udp4500Kind(enum.Enum):
    IKE = "ike"
    ESP = "esp"
    KEEPALIVE = "keepalive"
    INVALID = "invalid"


def classify_udp4500(data: bytes) -> Udp4500Kind:
    """What a UDP payload received on port 4500 carries (RFC 3948 §2.1-2.3)."""
    if data == NAT_KEEPALIVE:
        return Udp4500Kind.KEEPALIVE
    if data[:4] == NON_ESP_MARKER:
        return Udp4500Kind.IKE if len(data) > 4 else Udp4500Kind.INVALID
    # ESP: SPI and sequence number at least; SPIs 1-255 are reserved (RFC 4303 §2.1).
    if len(data) >= 8 and data[:3] != b"\x00\x00\x00":
        return Udp4500Kind.ESP
    return Udp4500Kind.INVALID


def _plain(addr: Any) -> Address:
    return (str(addr[0]), int(addr[1]))


class Udp4500Demux:
    """Dispatches received payloads and frames outgoing ones; owns no socket.

    ``sender(payload, addr)`` puts a UDP payload on the wire. Received IKE is
    handed on without its marker, as :mod:`mpa_ike.datagram` expects.
    """

    def __init__(
        self,
        sender: Handler,
        on_ike: Handler | None = None,
        on_esp: Handler | None = None,
        on_keepalive: Handler | None = None,
    ) -> None:
        self.sender = sender
        self.on_ike = on_ike
        self.on_esp = on_esp
        self.on_keepalive = on_keepalive
        self.counts: dict[Udp4500Kind, int] = dict.fromkeys(Udp4500Kind, 0)

    def receive(self, data: bytes, addr: Address) -> Udp4500Kind:
        kind = classify_udp4500(data)
        self.counts[kind] += 1
        if kind is Udp4500Kind.ESP:
            if self.on_esp is not None:
                self.on_esp(data, addr)
        elif kind is Udp4500Kind.IKE:
            if self.on_ike is not None:
                self.on_ike(data[4:], addr)
        elif kind is Udp4500Kind.KEEPALIVE and self.on_keepalive is not None:
            self.on_keepalive(data, addr)
        return kind

    def send_esp(self, packet: bytes, local: Address, remote: Address) -> None:
        """The datapath's sender; the source is whatever ``sender`` sends from."""
        self.sender(packet, remote)

    def send_ike(self, message: bytes, addr: Address) -> None:
        self.sender(NON_ESP_MARKER + message, addr)

    def send_keepalive(self, addr: Address) -> None:
        self.sender(NAT_KEEPALIVE, addr)


class Udp4500Sockets:
    """Non-blocking UDP sockets on port 4500 (one per family) feeding a demux.

    Sending is a direct ``sendto`` (no asyncio transport buffering): a datagram
    the kernel cannot take at once is dropped, as a router would.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, binds: list[str], port: int = NAT_T_PORT
    ) -> None:
        self.loop = loop
        self.socks: dict[int, socket.socket] = {}
        self.send_errors = 0
        self.demux = Udp4500Demux(self.sendto)
        for host in binds:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # ESP arrives in bursts; the default buffer (about 200 KB) overflows.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                sock.bind((host, port))
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self.socks[family] = sock
            loop.add_reader(sock.fileno(), self._readable, sock)

    def local_port(self) -> int:
        return int(next(iter(self.socks.values())).getsockname()[1])

    def _readable(self, sock: socket.socket) -> None:
        receive = self.demux.receive
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors surface here (ECONNREFUSED and the like); keep reading.
                continue
            receive(data, _plain(addr))

    def sendto(self, payload: bytes, addr: Address) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = self.socks.get(family)
        if sock is None:
            self.send_errors += 1
            return
        try:
            sock.sendto(payload, addr)
        except OSError:
            self.send_errors += 1

    def close(self) -> None:
        for sock in self.socks.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.socks.clear()
