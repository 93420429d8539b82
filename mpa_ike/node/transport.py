"""The asyncio glue between UDP sockets and the sans-I/O :class:`~mpa_ike.endpoint.Endpoint`.

Shared by mpa-gateway and mpa-mobile, in the manner of aioquic's ``asyncio/protocol.py``:
received datagrams go into ``Endpoint.receive_datagram`` with the loop's time, and after
every input or command :meth:`IkeTransport.process` drains ``datagrams_to_send``, re-arms
the single timer from ``get_timer`` and hands every event to ``on_event``.

One socket per local address and port, never a wildcard: the core must know the local
address a datagram arrived on (it goes into NAT detection and is where answers leave
from), and a socket bound to that address gives it without IP_PKTINFO. The gateway binds
its ``listen`` addresses with IP_FREEBIND, so it may start before they are configured.

Port 4500 carries IKE behind the non-ESP marker, NAT keepalives (one 0xFF octet, ignored)
and ESP in UDP (RFC 3948), which goes to ``esp_handler`` for the datapath;
:meth:`IkeTransport.send_raw` sends the datapath's ESP from the same socket.

A responder's endpoint faces IKE_SA_INIT from anyone: each of its addresses and ports
gets two receive queues (:mod:`mpa_ike.node.lanes`), and every wake-up reads the
priority lane (messages of handshakes under way, ESP) before the bulk lane's batch, so
that under a flood only the first message of a handshake waits in the flood's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from mpa_ike.constants import IKE_PORT, NAT_KEEPALIVE, NAT_T_PORT
from mpa_ike.datagram import Address, Datagram, frame_for_socket, unframe_from_socket
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import Event
from mpa_ike.io.policy_routing import mark_socket
from mpa_ike.node.lanes import open_lanes

log = logging.getLogger(__name__)

IKE_PORTS = (IKE_PORT, NAT_T_PORT)
# Never spin on a deadline the core did not move after handle_timer.
STUCK_TIMER_DELAY = 0.05
# Linux <linux/in.h> and <linux/in6.h>; Python's socket module lacks them.
IP_FREEBIND = 15
IPV6_FREEBIND = 78
# <linux/udp.h>: the kernel's XFRM takes ESP in UDP off a socket so marked (RFC 3948).
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
# asyncio reads one datagram per turn of the loop; under a flood that turn costs more
# than the datagram (measured: 13 000 against 40 000 datagrams/s read on a loaded core):
# each wake-up reads up to this many more, as long as the socket has them.
DRAIN_BATCH = 63
RECEIVE_SIZE = 65535

EventHandler = Callable[[Event], None]
# (ESP packet without UDP header, source, local address) -> None
EspHandler = Callable[[bytes, Address, Address], None]


class TransportError(Exception):
    """A socket could not be opened (one line, naming the address)."""


def normalize(address: Address) -> Address:
    """The canonical text of an address, so sockets are found whatever the spelling."""
    return (str(ipaddress.ip_address(address[0].split("%", 1)[0])), address[1])


def source_address_for(remote: str, port: int = IKE_PORT) -> str:
    """The address the kernel would send from to reach ``remote`` (a route lookup).

    A connected UDP socket makes the kernel pick the source as for real traffic;
    ``connect`` on a datagram socket sends nothing.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(remote).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote, port))
        except OSError as error:
            raise TransportError(f"no route to {remote}: {error.strerror}") from None
        local: str = probe.getsockname()[0]
    return normalize((local, 0))[0]


class _IkeProtocol(asyncio.DatagramProtocol):
    """One bound UDP socket: hands what arrives to the transport, with its local address."""

    def __init__(self, owner: IkeTransport, local: Address, sock: socket.socket) -> None:
        self.owner = owner
        self.local = local
        self.sock = sock
        self.transport: asyncio.DatagramTransport | None = None
        self.priority: _IkeProtocol | None = None  # the lane read before this one

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        with self.owner.batch():
            if self.priority is not None:
                self.priority.drain()
            self.owner.datagram_received(data, _peer(addr), self.local)
            self.drain()

    def drain(self) -> None:
        """Read what the socket holds, up to DRAIN_BATCH datagrams, into one buffer (a
        receive of its own allocates RECEIVE_SIZE octets for every datagram and shrinks
        them: 2.4 against 2.0 us a datagram)."""
        received, local = self.owner.datagram_received, self.local
        buffer, view = self.owner.receive_buffer
        for _ in range(DRAIN_BATCH):
            if self.transport is None or self.transport.is_closing():
                return
            try:
                size, addr = self.sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.error_received(error)
                return
            received(bytes(view[:size]), _peer(addr), local)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: IKE retransmits, nothing to do here.
        log.debug("socket %s: %s", self.local, exc)


class IkeTransport:
    """UDP sockets for one :class:`Endpoint`; call :meth:`process` after every command."""

    def __init__(
        self,
        endpoint: Endpoint,
        on_event: EventHandler,
        *,
        esp_handler: EspHandler | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.on_event = on_event
        self.esp_handler = esp_handler
        self._loop = asyncio.get_running_loop()
        self._sockets: dict[Address, _IkeProtocol] = {}  # the bulk lane's, or the only
        self._priority: dict[Address, _IkeProtocol] = {}
        self._binding = asyncio.Lock()  # two binds of one address must not both open it
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._fired_at: float | None = None
        self._kernel_esp = False
        self._batching = False  # process() once after a batch of datagrams
        self._deferred = False
        self._mark: int | None = None
        buffer = bytearray(RECEIVE_SIZE)
        self.receive_buffer = (buffer, memoryview(buffer))  # shared: one loop, one reader
        self.counters: dict[str, int] = {
            "esp_dropped": 0,
            "esp_handler_errors": 0,
            "keepalives": 0,
            "unroutable": 0,
        }

    # ------------------------------------------------------------------
    # Sockets

    def now(self) -> float:
        return self._loop.time()

    @property
    def local_addresses(self) -> list[Address]:
        return list(self._sockets)

    def is_bound(self, local: Address) -> bool:
        return normalize(local) in self._sockets

    async def bind(
        self, address: str, ports: Iterable[int] = IKE_PORTS, *, freebind: bool = False
    ) -> None:
        """Open a socket on ``address`` for each of ``ports`` (already bound ones are kept;
        binds run one at a time, so that several set-ups from one address at once, such
        as pre-authentications with several candidates, open each socket once)."""
        async with self._binding:
            for port in ports:
                local = normalize((address, port))
                if local in self._sockets:
                    continue
                bulk, priority = self._open(local, freebind)
                self._sockets[local] = await self._serve(local, bulk)
                if priority is not None:
                    self._priority[local] = await self._serve(local, priority)
                    self._sockets[local].priority = self._priority[local]
                log.debug("listening on %s", _text(local))

    def _open(self, local: Address, freebind: bool) -> tuple[socket.socket, socket.socket | None]:
        """A responder's two lanes, anything else's one socket."""
        prepare = functools.partial(_prepare, local, freebind)
        if self.endpoint.responder is None:
            sock = socket.socket(_family(local), socket.SOCK_DGRAM)
            return _bound(sock, local, prepare), None
        try:
            lanes = open_lanes(local, _family(local), prepare)
        except OSError as error:
            raise TransportError(f"cannot listen on {_text(local)}: {error.strerror}") from None
        return lanes.bulk, lanes.priority

    async def _serve(self, local: Address, sock: socket.socket) -> _IkeProtocol:
        sock.setblocking(False)
        if self._mark is not None:
            mark_socket(sock, self._mark)
        if self._kernel_esp and local[1] == NAT_T_PORT:
            _hand_esp_to_kernel(sock)
        _, protocol = await self._loop.create_datagram_endpoint(
            functools.partial(_IkeProtocol, self, local, sock), sock=sock
        )
        return protocol

    def mark_sockets(self, mark: int) -> None:
        """Mark what every socket, present and future, sends (policy routing by mark:
        see :mod:`mpa_ike.io.policy_routing`)."""
        self._mark = mark
        for protocol in self._protocols():
            if protocol.transport is not None:
                mark_socket(protocol.transport.get_extra_info("socket"), mark)

    def hand_esp_to_kernel(self) -> None:
        """The XFRM datapath: ESP in UDP on our 4500 sockets goes to the kernel's SAs,
        as charon sets UDP_ENCAP on its socket; IKE behind the marker still comes here."""
        self._kernel_esp = True
        for protocol in self._protocols():
            if protocol.local[1] == NAT_T_PORT and protocol.transport is not None:
                _hand_esp_to_kernel(protocol.transport.get_extra_info("socket"))

    def _protocols(self) -> list[_IkeProtocol]:
        return [*self._sockets.values(), *self._priority.values()]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for protocol in self._protocols():
            if protocol.transport is not None:
                protocol.transport.close()
        self._sockets.clear()
        self._priority.clear()

    # ------------------------------------------------------------------
    # Input

    def datagram_received(self, payload: bytes, src: Address, local: Address) -> None:
        message = unframe_from_socket(payload, local[1])
        if message is None:  # not IKE: a NAT keepalive or ESP in UDP (RFC 3948 §2.2)
            if payload == NAT_KEEPALIVE:
                self.counters["keepalives"] += 1
            else:
                self._esp_received(payload, src, local)
            return
        counters = self.endpoint.counters
        errors = counters.get("internal_errors", 0)
        self.endpoint.receive_datagram(message, src, local, self._loop.time())
        failures = counters.get("internal_errors", 0)
        if failures != errors and _worth_logging(failures):
            log.error(
                "the IKE core failed on a datagram from %s (dropped; %d so far)",
                _text(src),
                failures,
            )
        self.process()

    def _esp_received(self, payload: bytes, src: Address, local: Address) -> None:
        if self.esp_handler is None:
            self.counters["esp_dropped"] += 1
            return
        try:
            self.esp_handler(payload, src, local)
        except Exception:
            self.counters["esp_handler_errors"] += 1
            if _worth_logging(self.counters["esp_handler_errors"]):
                log.exception("ESP handler failed on a packet from %s", _text(src))

    def _on_timer(self) -> None:
        self._timer = None
        self._fired_at, self._timer_at = self._timer_at, None
        self.endpoint.handle_timer(self.now())
        self.process()

    # ------------------------------------------------------------------
    # Output

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Datagrams read in one wake-up: what they make the endpoint send, its timer and
        its events are handled once, after the last (in their order)."""
        if self._batching:
            yield
            return
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            if self._deferred:
                self._deferred = False
                self.process()

    def process(self) -> None:
        """Dispatch the endpoint's events, send what it has to send, re-arm the timer.

        Events first: a CHILD SA the core established or moved along with its answer is
        in the datapath before the answer leaves, so the peer's first packets on it,
        sent the moment the answer arrives, find it (as a kernel's SAD would have it)."""
        if self._batching:
            self._deferred = True
            return
        while (event := self.endpoint.next_event()) is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("event handler failed on %r", event)
        for datagram in self.endpoint.datagrams_to_send(self.now()):
            self._send(datagram)
        self._arm_timer()

    def send_raw(self, payload: bytes, src: Address, dst: Address) -> bool:
        """Send ``payload`` as is from our socket ``src`` (the datapath's ESP in UDP)."""
        # Per ESP packet: the datapath passes addresses already in canonical form, so
        # parse the spelling only when the direct lookup misses.
        protocol = self._sockets.get(src) or self._sockets.get(normalize(src))
        if protocol is None or protocol.transport is None:
            self.counters["unroutable"] += 1
            return False
        protocol.transport.sendto(payload, dst)
        return True

    def _send(self, datagram: Datagram) -> None:
        if not self.send_raw(frame_for_socket(datagram), datagram.src, datagram.dst):
            log.warning("no socket on %s to send to %s", _text(datagram.src), _text(datagram.dst))

    def _arm_timer(self) -> None:
        deadline = self.endpoint.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is None:
            return
        when = deadline
        if self._fired_at is not None and deadline <= self._fired_at:
            when = self.now() + STUCK_TIMER_DELAY  # the core kept a deadline it just handled
        self._timer = self._loop.call_at(when, self._on_timer)


def _family(local: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET


def _prepare(local: Address, freebind: bool, sock: socket.socket) -> None:
    """A socket's options before its bind."""
    if _family(local) == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if freebind:
        level, option = (
            (socket.IPPROTO_IPV6, IPV6_FREEBIND)
            if _family(local) == socket.AF_INET6
            else (socket.IPPROTO_IP, IP_FREEBIND)
        )
        with contextlib.suppress(OSError):  # an old kernel: bind fails clearly below
            sock.setsockopt(level, option, 1)


def _bound(
    sock: socket.socket, local: Address, prepare: Callable[[socket.socket], None]
) -> socket.socket:
    try:
        prepare(sock)
        sock.bind(local)
    except OSError as error:
        sock.close()
        raise TransportError(f"cannot listen on {_text(local)}: {error.strerror}") from None
    return sock


def _peer(addr: tuple[Any, ...]) -> Address:
    """The sender as the core names addresses: an IPv6 one without flow and scope ids."""
    return addr if len(addr) == 2 else (addr[0], addr[1])


def _hand_esp_to_kernel(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
    except OSError as error:  # a kernel without XFRM: its SAs could not be installed either
        log.warning("ESP in UDP stays in userspace: %s", error.strerror)


def _text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worth_logging(count: int) -> bool:
    """The 1st, 2nd, 4th, 8th... time: a peer repeating what fails cannot fill the log,
    and the counter in ``status`` says how often it happened."""
    return count & (count - 1) == 0
