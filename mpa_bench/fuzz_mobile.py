"""The legitimate mobile nodes of ``mpa-bench fuzz``: our initiator core over real UDP
sockets in a namespace, kept alive while the campaign runs.

Each :class:`MobileNode` is an :class:`mpa_ike.endpoint.Endpoint` (initiator) with one
socket on its address for port 500 and one for 4500, opened inside the mobile nodes'
namespace. A :class:`Pump` thread drives all of them with the monotonic clock (timers,
retransmissions, the gateway's liveness checks) and, every ``interval`` seconds, has
each send an ICMP echo request from its leased address to a host behind the gateway
through its CHILD SA (ESP in UDP, :mod:`mpa_ike.esp`) and checks the echo reply that
comes back the same way, and an IKE liveness check (an empty INFORMATIONAL, RFC 7296
§1.4) through its IKE SA.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mpa_ike.datagram import Address, frame_for_socket, unframe_from_socket
from mpa_ike.endpoint import Endpoint
from mpa_ike.esp import SaPair
from mpa_ike.events import ChildSaEstablished, Event, IkeSaDeleted, IkeSaEstablished, IkeSaFailed
from mpa_ike.ike_config import InitiatorConfig

CLONE_NEWNET = 0x40000000
NAT_T = 4500
RAW_ESP = 0  # the "port" of the raw ESP socket in MobileNode.sockets
ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0
Outgoing = tuple[socket.socket, bytes, Address]  # a framed datagram, its socket, where to


@contextlib.contextmanager
def inside(ns_name: str) -> Iterator[None]:
    """Run this thread in the namespace ``ns_name``: sockets opened meanwhile stay
    there."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns_name}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns_name}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


@dataclass
class Echo:
    """The echo through one mobile node's CHILD SA: requests sent, replies seen."""

    sent: int = 0
    answered: int = 0
    last_answered_at: float | None = None


@dataclass
class MobileNode:
    """One initiator core with its sockets; ``sent`` keeps the IKE messages it sent
    (without marker), the fuzzer's seeds with real SPIs."""

    name: str
    address: str
    gateway: str
    config: InitiatorConfig
    endpoint: Endpoint = field(default_factory=lambda: Endpoint(random=os.urandom))
    sockets: dict[Address, socket.socket] = field(default_factory=dict)
    sent: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    spi: bytes = b""
    spi_pair: tuple[bytes, bytes] = (b"", b"")
    leased: str | None = None
    esp: SaPair | None = None
    echo: Echo = field(default_factory=Echo)
    liveness_checks: int = 0
    failures: list[str] = field(default_factory=list)

    def open(self, ns_name: str) -> None:
        """UDP 500 and 4500 on our address, and a raw socket for plain ESP (protocol
        50), which is what the CHILD SA carries when no NAT was detected."""
        with inside(ns_name):
            for port in (500, NAT_T):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((self.address, port))
                sock.setblocking(False)
                self.sockets[(self.address, port)] = sock
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
            raw.bind((self.address, 0))
            raw.setblocking(False)
            self.sockets[(self.address, RAW_ESP)] = raw

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()

    def start(self, now: float) -> None:
        sa = self.endpoint.initiate(self.config, (self.address, 500), (self.gateway, 500), now)
        self.spi, self.spi_pair = sa.local_spi, (sa.spi_i, sa.spi_r)

    @property
    def up(self) -> bool:
        return self.leased is not None and self.esp is not None and not self.failures

    def step(self, now: float) -> None:
        """Timers, then what to send, then the events."""
        self.transmit(self.prepare(now))

    def prepare(self, now: float) -> list[Outgoing]:
        """Timers and events; what there is to send, framed, not sent yet."""
        timer = self.endpoint.get_timer()
        if timer is not None and timer <= now:
            self.endpoint.handle_timer(now)
        outgoing = []
        for datagram in self.endpoint.datagrams_to_send(now):
            self.sent.append(datagram.data)
            outgoing.append((self.sockets[datagram.src], frame_for_socket(datagram), datagram.dst))
        while (event := self.endpoint.next_event()) is not None:
            self._on_event(event)
        return outgoing

    @staticmethod
    def transmit(outgoing: list[Outgoing]) -> None:
        for sock, payload, destination in outgoing:
            with contextlib.suppress(OSError):
                sock.sendto(payload, destination)

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, IkeSaEstablished):
            self.leased = str(event.assigned_addresses[0]) if event.assigned_addresses else None
            sa = self.endpoint.sas.get(self.spi)
            if sa is not None:
                self.spi_pair = (sa.spi_i, sa.spi_r)
        elif isinstance(event, ChildSaEstablished):
            self.esp = SaPair(event.params)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed) and event.ike_sa == self.spi:
            self.failures.append(f"{type(event).__name__}: {event}")

    def received(self, sock: socket.socket, now: float) -> None:
        local = next(a for a, s in self.sockets.items() if s is sock)
        try:
            payload, peer = sock.recvfrom(65535)
        except OSError:
            return
        if local[1] == RAW_ESP:  # an IPv4 packet, header included
            self._esp_received(payload[(payload[0] & 0x0F) * 4 :], now)
            return
        message = unframe_from_socket(payload, local[1])
        if message is None:
            self._esp_received(payload, now)
            return
        self.endpoint.receive_datagram(message, (str(peer[0]), int(peer[1])), local, now)

    def send_echo(self, target: str, now: float) -> None:
        """An ICMP echo request from the leased address to ``target``, in ESP in UDP."""
        if self.esp is None or self.leased is None:
            return
        self.echo.sent += 1
        packet = icmp_echo(self.leased, target, ident=os.getpid() & 0xFFFF, seq=self.echo.sent)
        port = NAT_T if self.esp.encap else RAW_ESP
        with contextlib.suppress(OSError):
            self.sockets[(self.address, port)].sendto(
                self.esp.outbound.encrypt(packet), (self.gateway, port)
            )

    def check_liveness(self, now: float) -> None:
        self.endpoint.check_liveness(self.spi, now)
        self.liveness_checks += 1

    def _esp_received(self, payload: bytes, now: float) -> None:
        if self.esp is None or payload[:4] != self.esp.inbound.spi:
            return
        inner = self.esp.inbound.decrypt(payload)
        if isinstance(inner, bytes) and is_echo_reply(inner):
            self.echo.answered += 1
            self.echo.last_answered_at = now


class Pump(threading.Thread):
    """Drives ``nodes`` until :meth:`stop`; every ``interval`` seconds an echo and a
    liveness check through each."""

    def __init__(self, nodes: list[MobileNode], target: str, interval: float) -> None:
        super().__init__(name="mobile-nodes", daemon=True)
        self.nodes = nodes
        self.target = target
        self.interval = interval
        self.lock = threading.Lock()
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            next_round = time.monotonic() + self.interval
            while not self._stop_event.is_set():
                now = time.monotonic()
                with self.lock:
                    if now >= next_round:
                        for node in self.nodes:
                            node.send_echo(self.target, now)
                            node.check_liveness(now)
                        next_round = now + self.interval
                    pump_once(self.nodes, 0.02)
        except BaseException as error:  # reported by the campaign, not lost in a thread
            self.error = error

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def pump_once(nodes: list[MobileNode], wait: float) -> None:
    """One round: step every node, then read what arrived within ``wait`` seconds."""
    now = time.monotonic()
    for node in nodes:
        node.step(now)
    owners = {sock: node for node in nodes for sock in node.sockets.values()}
    ready, _, _ = select.select(list(owners), [], [], wait)
    now = time.monotonic()
    for sock in ready:
        owners[sock].received(sock, now)
    for node in nodes:
        node.step(now)


def pump_until(nodes: list[MobileNode], done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"mobile nodes not ready within {timeout} s")
        pump_once(nodes, 0.02)


# --------------------------------------------------------------------------- ICMP


def icmp_echo(src: str, dst: str, *, ident: int, seq: int) -> bytes:
    """An IPv4 ICMP echo request (RFC 792) with a 32-byte payload."""
    body = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq & 0xFFFF) + bytes(range(32))
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        seq & 0xFFFF,
        0,
        64,
        socket.IPPROTO_ICMP,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


def is_echo_reply(packet: bytes) -> bool:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_ICMP:
        return False
    return packet[(packet[0] & 0x0F) * 4] == ICMP_ECHO_REPLY


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
