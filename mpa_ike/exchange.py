"""The exchange engine of one IKE SA (RFC 7296 §2.1-§2.3), sans-I/O.

It numbers, protects, sends and retransmits our requests, matches their
responses, answers the peer's requests and keeps the last answer for the
peer's retransmissions. What a message means is the business of whoever
handed the request over (a callback) or the IKE SA's handler table.

Message IDs (§2.2): ``my_next_id`` for our requests, ``peer_next_id`` for the
peer's; window 1 each way (§2.3): a request asked for while ours is outstanding
waits in a queue, and a peer request is answered while ours is outstanding.
Only our own requests are retransmitted (§2.1); a retransmitted peer request
gets the stored response, all fragments of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mpa_ike.constants import ExchangeType, HeaderFlag
from mpa_ike.crypto.sk import SkCipherPair
from mpa_ike.datagram import Address, Datagram
from mpa_ike.errors import CodecError, IntegrityError
from mpa_ike.protection import Reassembler, seal_message
from mpa_ike.retransmit import RetransmitPolicy, Retransmitter, TimerAction
from mpa_ike.wire import (
    EncryptedFragmentPayload,
    EncryptedPayload,
    IkeHeader,
    Message,
    NotifyPayload,
    Payload,
    parse_message,
)

OnResponse = Callable[[Message, float], None]
OnGiveUp = Callable[[float], None]
RequestHandler = Callable[[Message, Address, Address, float], None]
InitResponseHandler = Callable[[Message, bytes, Address, Address, float], None]


class ExchangeOwner(Protocol):
    """What the engine reads of its IKE SA: the header fields and the path."""

    is_initiator: bool
    spi_i: bytes
    spi_r: bytes
    local: Address
    remote: Address
    counters: Counter[str]

    @property
    def closed(self) -> bool: ...

    def max_message_size(self) -> int | None: ...


@dataclass
class Outstanding:
    """Our request awaiting its response (window 1)."""

    exchange: ExchangeType
    message_id: int
    datagrams: list[bytes]
    retransmitter: Retransmitter
    on_response: OnResponse
    on_give_up: OnGiveUp


class Exchanges:
    """Requests and responses of one IKE SA; ``give_up`` is called when a request
    goes unanswered after its last retransmission (§2.4) and has no handler of its own."""

    def __init__(self, sa: ExchangeOwner, policy: RetransmitPolicy, give_up: OnGiveUp) -> None:
        self._sa = sa
        self._policy = policy
        self._give_up = give_up
        self._outbox: list[Datagram] = []
        self._my_next_id = 0
        self._peer_next_id = 0
        self._outstanding: Outstanding | None = None
        # A list, not a deque: it seldom holds more than one, and an empty deque takes
        # 760 bytes for every IKE SA held.
        self._queued: list[Callable[[float], None]] = []
        self._cached_response: tuple[int, list[bytes]] | None = None
        self._held: int | None = None  # a peer request whose answer comes later
        self._request_reassembler = Reassembler()
        self._response_reassembler = Reassembler()
        self._ciphers: SkCipherPair | None = None
        # Where the answer to the request being handled goes (§2.11: to its source).
        self._reply_path: tuple[Address, Address] | None = None
        self._response_path: tuple[Address, Address] = (sa.local, sa.remote)
        self.last_heard = 0.0  # when the peer's last authenticated message came

    # ------------------------------------------------------------------
    # State

    @property
    def policy(self) -> RetransmitPolicy:
        return self._policy

    @property
    def protected(self) -> bool:
        """True once the SK keys are in place."""
        return self._ciphers is not None

    def protect_with(self, ciphers: SkCipherPair) -> None:
        self._ciphers = ciphers

    @property
    def busy(self) -> bool:
        """A request of ours is outstanding."""
        return self._outstanding is not None

    @property
    def idle(self) -> bool:
        """Nothing outstanding and nothing queued."""
        return self._outstanding is None and not self._queued

    @property
    def outstanding_exchange(self) -> ExchangeType | None:
        return self._outstanding.exchange if self._outstanding is not None else None

    @property
    def outstanding_message_id(self) -> int | None:
        return self._outstanding.message_id if self._outstanding is not None else None

    @property
    def deadline(self) -> float | None:
        """When the outstanding request is due for retransmission (or given up)."""
        return self._outstanding.retransmitter.deadline if self._outstanding else None

    @property
    def last_response(self) -> tuple[int, list[bytes]] | None:
        """(Message ID, datagrams) of the last answer to a peer request, for §2.1 resends."""
        return self._cached_response

    @property
    def response_path(self) -> tuple[Address, Address]:
        """(source, destination) of the last authenticated response."""
        return self._response_path

    def answered(self, message_id: int) -> bool:
        """The peer's request ``message_id`` has had its answer."""
        return message_id < self._peer_next_id

    # ------------------------------------------------------------------
    # Output

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def send(self, datagrams: Sequence[bytes]) -> None:
        """To the peer over the IKE SA's present path."""
        self._outbox.extend(Datagram(d, self._sa.local, self._sa.remote) for d in datagrams)

    def send_to(self, datagram: bytes, local: Address, remote: Address) -> None:
        self._outbox.append(Datagram(datagram, local, remote))

    def header(self, exchange: ExchangeType, message_id: int, response: bool) -> IkeHeader:
        flags = HeaderFlag.INITIATOR if self._sa.is_initiator else 0
        if response:
            flags |= HeaderFlag.RESPONSE
        return IkeHeader(self._sa.spi_i, self._sa.spi_r, exchange, int(flags), message_id)

    def _seal(self, header: IkeHeader, payloads: Sequence[Payload]) -> list[bytes]:
        assert self._ciphers is not None
        cipher = self._ciphers.outbound(self._sa.is_initiator)
        return seal_message(header, payloads, cipher, max_message_size=self._sa.max_message_size())

    # ------------------------------------------------------------------
    # Our requests

    def request(
        self,
        exchange: ExchangeType,
        payloads: Sequence[Payload],
        on_response: OnResponse,
        now: float,
        on_give_up: OnGiveUp | None = None,
        retransmit: RetransmitPolicy | None = None,
    ) -> None:
        """Send a protected request now, or queue it behind the outstanding one (§2.3);
        ``retransmit``: a schedule other than the SA's."""
        if self._outstanding is not None:
            self._queued.append(
                lambda later: self.request(
                    exchange, payloads, on_response, later, on_give_up, retransmit
                )
            )
            return
        header = self.header(exchange, self._my_next_id, response=False)
        datagrams = self._seal(header, payloads)
        self.send_request(
            exchange, self._my_next_id, datagrams, on_response, now, on_give_up, retransmit
        )

    def seal_request(
        self, exchange: ExchangeType, payloads: Sequence[Payload]
    ) -> tuple[int, list[bytes]]:
        """A protected request with the next Message ID, built but not sent: (Message ID,
        datagrams) for :meth:`send_sealed` later."""
        message_id = self._my_next_id
        return message_id, self._seal(self.header(exchange, message_id, False), payloads)

    def send_sealed(
        self,
        exchange: ExchangeType,
        sealed: tuple[int, list[bytes]],
        on_response: OnResponse,
        now: float,
        retransmit: RetransmitPolicy | None = None,
    ) -> bool:
        """Send a request :meth:`seal_request` built, if its Message ID is still the next
        one and none is outstanding; False if not (it is stale: build it anew). A
        Message ID is only left unused after a request with it went out when the IKE
        SA gives up, so a request still numbered next never went out."""
        message_id, datagrams = sealed
        if self._outstanding is not None or message_id != self._my_next_id:
            return False
        self.send_request(exchange, message_id, datagrams, on_response, now, None, retransmit)
        return True

    def send_request(
        self,
        exchange: ExchangeType,
        message_id: int,
        datagrams: list[bytes],
        on_response: OnResponse,
        now: float,
        on_give_up: OnGiveUp | None = None,
        retransmit: RetransmitPolicy | None = None,
    ) -> None:
        """Send a request already built (IKE_SA_INIT's is not protected) and await it."""
        self._outstanding = Outstanding(
            exchange,
            message_id,
            datagrams,
            Retransmitter(retransmit or self._policy, now),
            on_response,
            on_give_up or self._give_up,
        )
        self.send(datagrams)

    def send_once(
        self,
        exchange: ExchangeType,
        payloads: Sequence[Payload],
        also_to: tuple[Address, Address] | None = None,
    ) -> None:
        """A protected request sent once, nothing awaited (a last word before closing);
        ``also_to``: a (local, remote) pair it goes over too."""
        if self._ciphers is not None and self._outstanding is None:
            header = self.header(exchange, self._my_next_id, response=False)
            datagrams = self._seal(header, payloads)
            self.send(datagrams)
            if also_to is not None and also_to != (self._sa.local, self._sa.remote):
                for datagram in datagrams:
                    self.send_to(datagram, *also_to)

    def defer(self, send: Callable[[float], None]) -> None:
        """Run ``send`` when the window opens (it decides then what to send, if anything)."""
        self._queued.append(send)

    def finish(self, now: float) -> None:
        """Our request got its answer: next Message ID, then the next queued request."""
        self.complete()
        self.run_queue(now)

    def complete(self) -> None:
        """Our request got its answer: next Message ID; the queue waits."""
        self._outstanding = None
        self._my_next_id += 1

    def abandon(self) -> None:
        """Stop waiting for the outstanding request (the SA is going or starts again)."""
        self._outstanding = None

    def clear(self) -> None:
        """Nothing outstanding, nothing queued (the SA closed or was rekeyed away)."""
        self._outstanding = None
        self._queued.clear()

    def clear_queue(self) -> None:
        self._queued.clear()

    def run_queue(self, now: float) -> None:
        """Send the next queued request; one that is no longer due passes the turn on."""
        if self._queued and not self._sa.closed and self._outstanding is None:
            self._queued.pop(0)(now)

    def resend_outstanding(self, policy: RetransmitPolicy, now: float) -> None:
        """Send the outstanding request again at once, on a fresh ``policy`` schedule
        (RFC 4555 §3.5: the path changed while it was in flight)."""
        outstanding = self._outstanding
        if outstanding is None:
            return
        outstanding.retransmitter = Retransmitter(policy, now)
        self._sa.counters["retransmitted"] += 1
        self.send(outstanding.datagrams)

    def handle_timer(self, now: float) -> None:
        """§2.1: retransmit the outstanding request, or give it up (§2.4)."""
        outstanding = self._outstanding
        if outstanding is None:
            return
        action = outstanding.retransmitter.on_timer(now)
        if action == TimerAction.RETRANSMIT:
            self._sa.counters["retransmitted"] += 1
            self.send(outstanding.datagrams)
        elif action == TimerAction.GIVE_UP:
            self._outstanding = None
            outstanding.on_give_up(now)

    # ------------------------------------------------------------------
    # The peer's requests

    def hold(self, request: IkeHeader) -> None:
        """The answer to the peer's request comes later (an external EAP authenticator
        decides it, §2.16): until :meth:`respond`, its retransmissions are absorbed,
        neither handled again nor answered with the previous response."""
        self._held = request.message_id

    def respond(self, request: IkeHeader, payloads: Sequence[Payload]) -> None:
        """Answer the peer's request and keep the answer for its retransmissions (§2.1)."""
        if self._held == request.message_id:
            self._held = None
        header = self.header(request.exchange_type, request.message_id, response=True)
        datagrams = self._seal(header, payloads)
        self._cached_response = (request.message_id, datagrams)
        self._peer_next_id = request.message_id + 1
        local, remote = self._reply_path or (self._sa.local, self._sa.remote)
        self._outbox.extend(Datagram(d, local, remote) for d in datagrams)

    def init_answered(self) -> None:
        """The responder answered IKE_SA_INIT (Message ID 0) outside the engine."""
        self._peer_next_id = 1

    # ------------------------------------------------------------------
    # Receiving

    def receive_response(
        self,
        data: bytes,
        header: IkeHeader,
        src: Address,
        dst: Address,
        now: float,
        on_init: InitResponseHandler,
    ) -> None:
        """A response: to the outstanding request, or dropped and counted."""
        outstanding = self._outstanding
        if (
            outstanding is None
            or header.message_id != outstanding.message_id
            or header.exchange_type != outstanding.exchange
        ):
            self._sa.counters["dropped_unexpected_response"] += 1
            return
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            on_init(parse_message(data), data, src, dst, now)
            return
        message = self._open(data, self._response_reassembler)
        if message is None:
            return
        self._response_path = (src, dst)
        self.last_heard = now
        outstanding.on_response(message, now)

    def _open(
        self, data: bytes, reassembler: Reassembler, outer: Message | None = None
    ) -> Message | None:
        if self._ciphers is None:
            raise IntegrityError("no keys yet")
        return reassembler.add(data, self._ciphers.inbound(self._sa.is_initiator), outer)

    def receive_request(
        self,
        data: bytes,
        header: IkeHeader,
        src: Address,
        dst: Address,
        now: float,
        handler_for: Callable[[Message], RequestHandler | None],
    ) -> None:
        """A request: resend the cached answer, or open it and hand it to its handler."""
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            self._sa.counters["dropped_unexpected_request"] += 1
            return
        if header.message_id == self._held:
            self._sa.counters["retransmissions_absorbed"] += 1
            return
        if header.message_id == self._peer_next_id - 1 and self._cached_response is not None:
            self._resend_cached(data, src, dst)
            return
        if header.message_id != self._peer_next_id:
            self._sa.counters["dropped_message_id"] += 1
            return
        outer = check_outer(data)
        try:
            message = self._open(data, self._request_reassembler, outer)
        except CodecError as error:
            # Authentic but malformed (§2.21.2): answer with the error.
            self.respond(header, [NotifyPayload(error.notify, data=error.data)])
            return
        if message is None:
            return
        self.last_heard = now
        handler = handler_for(message)
        if handler is None:
            self._sa.counters["dropped_no_handler"] += 1
            return
        self._handle(handler, message, src, dst, now)

    def _handle(
        self, handler: RequestHandler, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        self._reply_path = (dst, src)
        try:
            handler(message, src, dst, now)
        except CodecError as error:
            # §2.21.2: an authenticated request a handler finds malformed (a REKEY_SA
            # without SPI, a short COOKIE2) is answered with the error, once.
            if not self.answered(message.header.message_id) and not self._sa.closed:
                self.respond(message.header, [NotifyPayload(error.notify, data=error.data)])
        finally:
            self._reply_path = None

    def _resend_cached(self, data: bytes, src: Address, dst: Address) -> None:
        """§2.1: a retransmitted request gets the stored response, every fragment of it."""
        assert self._cached_response is not None
        message = parse_message(data)
        last = message.payloads[-1] if message.payloads else None
        if isinstance(last, EncryptedFragmentPayload) and last.fragment_number != 1:
            return  # answer a fragmented retransmission once, on its first fragment
        self._sa.counters["retransmissions_answered"] += 1
        self._outbox.extend(Datagram(d, dst, src) for d in self._cached_response[1])


def check_outer(data: bytes) -> Message:
    """Reject, before any ICV check, what would fail outside the SK payload; return
    the outer message (header, payloads before SK, the SK or SKF payload).

    Only a CodecError raised after the ICV was verified may be answered
    (§2.21.2); one about the unprotected part is the peer's or a forger's
    garbage and is dropped (raised as IntegrityError to be counted so).
    """
    try:
        outer = parse_message(data)
    except CodecError as error:
        raise IntegrityError(f"unprotected part malformed: {error}") from None
    last = outer.payloads[-1] if outer.payloads else None
    if not isinstance(last, EncryptedPayload | EncryptedFragmentPayload):
        raise IntegrityError("request without SK payload")
    return outer
