"""Many IKE SAs behind one pair of UDP ports: dispatch, half-open SAs, COOKIE.

:class:`Endpoint` is what the gateway and mobile glue drive, aioquic style:
``receive_datagram(data, src, dst, now)`` with the IKE message (non-ESP marker
already stripped, see :mod:`mpa_ike.datagram`), ``handle_timer(now)``,
commands (``initiate``, ``delete``, ``delete_child_sa``, ``check_liveness``,
``rekey_child_sa``, ``rekey_ike_sa``, ``create_child_sa``, ``update_addresses``,
``send_additional_addresses``, and ``eap_answer`` for a gateway whose EAP
authenticator is external);
out come ``datagrams_to_send(now)``, ``get_timer()`` and ``next_event()``.

Dispatch: a message is filed by the SPI this side chose (SPIr in messages
from original initiators, SPIi in those from original responders). A new
IKE_SA_INIT request (SPIr zero) goes through:

- retransmission detection (RFC 7296 §2.1): the same datagram, or the same
  (address, SPIi, Ni) as a half-open SA, gets that SA's stored response and
  creates nothing;
- the per-source rate limit (``ResponderConfig.limits``, a token bucket per source
  address, :mod:`mpa_ike.admission`): beyond it the request is dropped and counted;
  under load (COOKIEs demanded) only a request that returns a valid COOKIE takes a
  token, so that a spoofed flood, answered without state, never fills the table;
- the hard cap: with ``limits.half_open_limit`` half-open SAs, a new request is
  dropped and counted;
- the COOKIE check (§2.6): with ``half_open_threshold`` or more half-open SAs,
  a request without a valid COOKIE gets one, statelessly; the secret changes every
  ``limits.cookie_lifetime`` seconds, the previous one good for ``cookie_grace``;
- malformed requests are answered with the notify of the codec error where
  §2.5/§2.21 say so (INVALID_MAJOR_VERSION, INVALID_SYNTAX,
  UNSUPPORTED_CRITICAL_PAYLOAD).

A request for an unknown SPI is answered with an unprotected N(INVALID_IKE_SPI)
(§2.21.4: SPIs, exchange type and Message ID copied, to where it came from), at most
``invalid_spi_rate`` a second per source address, so that a peer learns at once that
we restarted; anything else for an unknown SPI is dropped and counted. Nothing raises
out of ``receive_datagram``, whatever the bytes.

A responder IKE SA whose peer authenticated is checked against the older IKE SAs of
that identity (INITIAL_CONTACT and ``ResponderConfig.unique``, :mod:`mpa_ike.uniqueness`)
before it leases an address, and refused (AUTHENTICATION_FAILED) if that identity
already has ``limits.ike_sas_per_identity`` IKE SAs. An initiator IKE SA says
INITIAL_CONTACT when no other IKE SA of ours goes to that peer; one started with
``replaces=spi`` closes that older IKE SA (IkeSaReplaced) the moment it is up, its
events before the new one's, so that a datapath drops the old pair before it installs
the new (make before break). One started
with ``reauthenticates=spi`` (RFC 4478) does the same without INITIAL_CONTACT, asks for
the old IKE SA's addresses, and tells the peer with a DELETE of the old IKE SA.

The glue around it (one loop, one timer; sockets bound to UDP 500 and 4500)::

    endpoint.initiate(config, (local_ip, 500), (gateway_ip, 500), loop.time())
    # on every input, then:
    for datagram in endpoint.datagrams_to_send(now):
        sockets[datagram.src[1]].sendto(frame_for_socket(datagram), datagram.dst)
    while (event := endpoint.next_event()) is not None:
        ...  # ChildSaEstablished -> datapath.install_child_sa(event.params), etc.
    rearm(endpoint.get_timer())  # then endpoint.handle_timer(now) when it fires
    # on a received UDP payload on local port p:
    message = unframe_from_socket(payload, p)  # None: ESP or keepalive, not IKE
    if message is not None:
        endpoint.receive_datagram(message, peer_address, (local_ip, p), now)
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from mpa_ike.admission import (
    CookieSecrets,
    IdentityIndex,
    InitScan,
    SourceRateLimiter,
    cookie_response,
    read_new_init_request,
    scan_init_request,
)
from mpa_ike.constants import (
    IKE_MAJOR_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
)
from mpa_ike.datagram import Address, Datagram
from mpa_ike.eap import EapAnswer
from mpa_ike.errors import CodecError, IkeError
from mpa_ike.events import Event, IkeSaEstablished, IkeSaFailed, IkeSaRekeyed
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.ike_sa import HALF_OPEN_STATES, ZERO_SPI, IkeSa, IkeSaState, Random
from mpa_ike.records import quick_init
from mpa_ike.uniqueness import admit
from mpa_ike.wire import (
    HEADER_LENGTH,
    EncryptedFragmentPayload,
    IkeHeader,
    IPAddress,
    Message,
    NoncePayload,
    NotifyPayload,
    parse_header,
    parse_message,
    serialize_message,
)

# strongSwan's charon.cookie_threshold.
DEFAULT_HALF_OPEN_THRESHOLD = 30
# INVALID_IKE_SPI answers a second to one source address (§2.21.4 asks for a limit).
DEFAULT_INVALID_SPI_RATE = 5


@quick_init
@dataclass(frozen=True, slots=True)
class _Tombstone:
    """The last response of a closed SA, resent to retransmissions until ``until``."""

    message_id: int
    datagrams: list[bytes]
    until: float


class Endpoint:
    """The IKE SAs of one program: initiator SAs it starts, responder SAs it accepts.

    ``responder`` is the gateway's policy; without it IKE_SA_INIT requests are
    ignored (the mobile node). ``random`` supplies SPIs, nonces, DH private
    keys, IVs and the COOKIE secret.
    """

    def __init__(
        self,
        *,
        random: Random = os.urandom,
        responder: ResponderConfig | None = None,
        half_open_threshold: int = DEFAULT_HALF_OPEN_THRESHOLD,
        invalid_spi_rate: int = DEFAULT_INVALID_SPI_RATE,
    ) -> None:
        self._random = random
        self.responder = responder
        self.half_open_threshold = half_open_threshold
        self.invalid_spi_rate = invalid_spi_rate
        # source address -> (the second counted, answers sent in it)
        self._invalid_spi_sent: dict[str, tuple[int, int]] = {}
        self._replacing: dict[bytes, bytes] = {}  # new initiator IKE SA -> the old one
        self._reauthenticating: set[bytes] = set()  # new IKE SAs of _replacing that say so
        self._cookies = CookieSecrets(random)
        self._init_rate = SourceRateLimiter()
        self._half_open: dict[int, IkeSa] = {}  # responder SAs in HALF_OPEN_STATES
        self._identities: IdentityIndex[IkeSa] = IdentityIndex()
        self._sas: dict[bytes, IkeSa] = {}
        self._init_packets: dict[bytes, IkeSa] = {}
        self._init_nonces: dict[tuple[str, bytes, bytes], IkeSa] = {}
        self._events: deque[Event] = deque()
        self._outbox: list[Datagram] = []
        self._tombstones: dict[bytes, _Tombstone] = {}
        self._closed_sa_counters: Counter[str] = Counter()
        self._renamed: dict[bytes, bytes] = {}  # rekeyed IKE SA -> its successor (§2.18)
        # What keeps a datagram from costing work in proportion to the number of SAs:
        # the SAs touched since the last drain (the only ones that can have something to
        # send, a new timer, or have closed), and a heap of timers checked lazily.
        self._touched: dict[int, IkeSa] = {}
        # The heap holds (deadline, id(sa)) only, so that a stale entry keeps no closed
        # SA alive until its deadline; _armed maps id(sa) to the current one and the SA.
        self._timers: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[float, IkeSa]] = {}
        self._next_prune = 0.0
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------
    # Outputs

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        touched, self._touched = self._touched, {}
        for sa in touched.values():
            out.extend(sa.datagrams_to_send(now))
            self._arm(sa)
        self._forget_closed(now, touched.values())
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        for sa in self._touched.values():
            self._arm(sa)
        while self._timers:
            deadline, key = self._timers[0]
            armed = self._armed.get(key)
            current = armed is not None and armed[0] == deadline
            if armed is not None and current and not armed[1].closed:
                return deadline
            heapq.heappop(self._timers)
            if current:
                del self._armed[key]
        return None

    def _arm(self, sa: IkeSa) -> None:
        """Put ``sa``'s timer on the heap if it changed (older entries go stale)."""
        deadline = None if sa.closed else sa.get_timer()
        if deadline is None:
            self._armed.pop(id(sa), None)
            return
        armed = self._armed.get(id(sa))
        if armed is None or armed[0] != deadline:
            self._armed[id(sa)] = (deadline, sa)
            heapq.heappush(self._timers, (deadline, id(sa)))

    # ------------------------------------------------------------------
    # SAs and status

    @property
    def sas(self) -> dict[bytes, IkeSa]:
        return dict(self._sas)

    def __iter__(self) -> Iterator[IkeSa]:
        return iter(list(self._sas.values()))

    def find(self, name: str) -> list[IkeSa]:
        return [sa for sa in self._sas.values() if sa.name == name]

    def half_open_count(self) -> int:
        """Half-open responder IKE SAs, in constant time (only SAs touched since the last
        drain can have left those states)."""
        for sa in self._touched.values():
            self._settle_half_open(sa)
        return len(self._half_open)

    def _settle_half_open(self, sa: IkeSa) -> None:
        if id(sa) in self._half_open and not _half_open(sa):
            del self._half_open[id(sa)]

    def statistics(self) -> Counter[str]:
        """Endpoint counters plus those of every SA, live or gone (drops, retransmissions)."""
        total = Counter(self.counters)
        total.update(self._closed_sa_counters)
        for sa in self._sas.values():
            total.update(sa.counters)
        return total

    def snapshot(self) -> list[dict[str, object]]:
        return [sa.snapshot() for sa in self._sas.values() if not sa.closed]

    # ------------------------------------------------------------------
    # Commands

    def initiate(
        self,
        config: InitiatorConfig,
        local: Address,
        remote: Address,
        now: float,
        *,
        replaces: bytes | None = None,
        reauthenticates: bytes | None = None,
    ) -> IkeSa:
        """Start an IKE SA to ``remote`` (normally port 500) from ``local``.

        It says INITIAL_CONTACT (RFC 7296 §2.4) if no other IKE SA of this connection
        (``config.name``) is live, or if it ``replaces`` one: that IKE SA (the peer
        answered it with INVALID_IKE_SPI) is closed once this one is up. One that
        ``reauthenticates`` an IKE SA (RFC 4478) asks for its addresses and closes it
        once up, with a DELETE to the peer."""
        others = [other for other in self.find(config.name) if not other.closed]
        sa = IkeSa.initiator(config, local, remote, self._random)
        while sa.local_spi in self._sas:
            sa = IkeSa.initiator(config, local, remote, self._random)
        sa.initial_contact = not others or (
            replaces is not None and all(o.local_spi == self.resolve(replaces) for o in others)
        )
        if replaces is not None:
            self._replacing[sa.local_spi] = replaces
        old = self._sas.get(self.resolve(reauthenticates)) if reauthenticates else None
        if old is not None and not old.closed:
            sa.requested_addresses = old.assigned_addresses
            self._replacing[sa.local_spi] = old.local_spi
            self._reauthenticating.add(sa.local_spi)
        self._sas[sa.local_spi] = sa
        sa.start(now)
        self._collect(sa)
        return sa

    def delete(self, spi: bytes, now: float) -> None:
        self._command(spi, lambda sa: sa.delete(now))

    def delete_child_sa(self, spi: bytes, spi_in: bytes, now: float) -> None:
        self._command(spi, lambda sa: sa.delete_child_sa(spi_in, now))

    def check_liveness(self, spi: bytes, now: float) -> None:
        self._command(spi, lambda sa: sa.check_liveness(now))

    def rekey_child_sa(self, spi: bytes, spi_in: bytes, now: float) -> None:
        """Rekey one CHILD SA (RFC 7296 §2.8); ChildSaEstablished, ChildSaRekeyed, then
        ChildSaDeleted of the old pair follow."""
        self._command(spi, lambda sa: sa.rekey_child_sa(spi_in, now))

    def rekey_ike_sa(self, spi: bytes, now: float) -> None:
        """Rekey an IKE SA (§2.18); IkeSaRekeyed names the new SPI."""
        self._command(spi, lambda sa: sa.rekey_ike_sa(now))

    def create_child_sa(self, spi: bytes, now: float) -> None:
        """One more CHILD SA with the configured proposals and selectors (§1.3.1)."""
        self._command(spi, lambda sa: sa.create_child_sa(now))

    def update_addresses(
        self, spi: bytes, new_local: Address, now: float, new_remote: Address | None = None
    ) -> None:
        """MOBIKE (RFC 4555 §3.5), mobile node: move the IKE SA and its CHILD SAs to
        ``new_local`` (and ``new_remote``) and send UPDATE_SA_ADDRESSES from there."""
        self._command(spi, lambda sa: sa.update_addresses(new_local, now, new_remote))

    def prepare_update(
        self, spi: bytes, new_local: Address, new_remote: Address | None = None
    ) -> None:
        """MOBIKE, mobile node: build the UPDATE_SA_ADDRESSES of a move to ``new_local``
        (and ``new_remote``) ahead of it, so that :meth:`update_addresses` to there sends
        it without building it (the link it goes over is not up yet)."""
        self._command(spi, lambda sa: sa.prepare_update(new_local, new_remote))

    def nat_mapping(self, spi: bytes, new_remote: Address, now: float) -> None:
        """The datapath saw the peer's authenticated ESP in UDP come from ``new_remote``
        (a NAT's new mapping): the IKE SA and its CHILD SAs follow where RFC 7296 §2.23
        lets them (IkeSaAddressesUpdated, ChildSaAddressesUpdated)."""

        def follow(sa: IkeSa) -> None:
            sa.follow_nat_mapping(new_remote)

        self._command(spi, follow)

    def send_additional_addresses(
        self, spi: bytes, addresses: Sequence[IPAddress], now: float
    ) -> None:
        """MOBIKE (RFC 4555 §3.6): announce our other addresses (empty: none)."""
        self._command(spi, lambda sa: sa.send_additional_addresses(addresses, now))

    def eap_answer(self, spi: bytes, answer: EapAnswer, now: float) -> None:
        """The external EAP authenticator's answer to the
        :class:`mpa_ike.events.EapRequestForAaa` of the IKE SA ``spi``
        (``ResponderConfig(eap_authenticator="external")``): its IKE_AUTH response goes
        out now. An SA that has gone meanwhile is ignored."""
        self._command(spi, lambda sa: sa.eap_answer(answer, now))

    def delete_all(self, now: float) -> None:
        """Shutdown: DELETE every IKE SA (SIGTERM in the gateway)."""
        for spi in list(self._sas):
            self.delete(spi, now)

    def resolve(self, spi: bytes) -> bytes:
        """The SPI the IKE SA once filed under ``spi`` goes by now: commands given an
        SPI that an IKE SA rekey (IkeSaRekeyed) replaced reach the new IKE SA."""
        for _ in range(len(self._renamed) + 1):
            sa = self._sas.get(spi)
            if (sa is not None and sa.state != IkeSaState.REKEYED and not sa.closed) or (
                spi not in self._renamed
            ):
                return spi
            spi = self._renamed[spi]
        return spi

    def _command(self, spi: bytes, action: Callable[[IkeSa], None]) -> None:
        sa = self._sas.get(self.resolve(spi))
        if sa is None:
            return
        action(sa)
        self._collect(sa)

    # ------------------------------------------------------------------
    # Inputs

    def handle_timer(self, now: float) -> None:
        for sa in self._touched.values():
            self._arm(sa)
        due = []
        while self._timers and self._timers[0][0] <= now:
            deadline, key = heapq.heappop(self._timers)
            armed = self._armed.get(key)
            if armed is not None and armed[0] == deadline:
                del self._armed[key]
                due.append(armed[1])
        for sa in due:
            timer = None if sa.closed else sa.get_timer()
            if timer is not None and timer <= now:
                sa.handle_timer(now)
            self._collect(sa)

    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        """One received IKE message. Never raises."""
        try:
            self._receive(bytes(data), src, dst, now)
        except Exception:  # a bug must not take the daemon down with every SA
            self.counters["internal_errors"] += 1

    def _receive(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        if len(data) < HEADER_LENGTH:
            self.counters["dropped_short"] += 1
            return
        if self._answered_with_cookie(data, src, dst, now):
            return
        header = parse_header(data)
        if self._is_new_init_request(header):
            self._on_init_request(data, header, src, dst, now)
            return
        local_spi = header.spi_r if header.is_initiator else header.spi_i
        sa = self._sas.get(local_spi)
        if sa is None and self._answer_from_tombstone(local_spi, data, header, src, dst):
            return
        if sa is None or sa.is_initiator == header.is_initiator:
            self.counters["dropped_unknown_spi"] += 1
            if sa is None and not header.is_response:
                self._answer_invalid_ike_spi(header, src, dst, now)
            return
        sa.receive(data, header, src, dst, now)
        self._collect(sa)

    @staticmethod
    def _is_new_init_request(header: IkeHeader) -> bool:
        return (
            header.exchange_type == ExchangeType.IKE_SA_INIT
            and header.is_initiator
            and not header.is_response
            and header.spi_r == ZERO_SPI
        )

    def _collect(self, sa: IkeSa) -> None:
        self._touched[id(sa)] = sa
        while (event := sa.next_event()) is not None:
            if isinstance(event, IkeSaEstablished):
                self._retire_replaced(sa)
            elif isinstance(event, IkeSaFailed):
                self._replacing.pop(sa.local_spi, None)
                self._reauthenticating.discard(sa.local_spi)
            if isinstance(event, IkeSaRekeyed):
                for old, new in list(self._renamed.items()):
                    if new == event.ike_sa:
                        self._renamed[old] = event.new_ike_sa
                self._renamed[event.ike_sa] = event.new_ike_sa
            self._events.append(event)
        for successor in sa.take_successors():
            # §2.18: an IKE SA made by rekeying, under the SPI this side chose for it.
            self._sas[successor.local_spi] = successor
            self._identities.inherit(sa, successor)
            self._collect(successor)

    def _retire_replaced(self, new: IkeSa) -> None:
        """``new`` is up: the IKE SA it replaces goes now, its events first."""
        old_spi = self._replacing.pop(new.local_spi, None)
        old = self._sas.get(self.resolve(old_spi)) if old_spi is not None else None
        reauthenticated = new.local_spi in self._reauthenticating
        self._reauthenticating.discard(new.local_spi)
        if old is None or old.closed:
            return
        if reauthenticated:
            # RFC 4478: the peer learns it from our DELETE (sent once: it may have
            # closed the old IKE SA itself by its uniqueness policy already).
            reason = "re-authenticated by a new IKE SA (RFC 4478)"
            old.replace(new.local_spi, reason, 0.0, tell=True)
        else:
            reason = "replaced by a new IKE SA (the peer had answered INVALID_IKE_SPI)"
            old.replace(new.local_spi, reason, 0.0, tell=False)
        self._collect(old)

    def _admit(self, sa: IkeSa, now: float) -> str | None:
        """A responder IKE SA authenticated its peer: :mod:`mpa_ike.uniqueness` against
        the older IKE SAs of its identity, then the cap of IKE SAs per identity."""
        assert self.responder is not None
        same_identity = self._identities.of(sa.unique_identity)
        allowed, replaced = admit(sa, same_identity, self.responder.unique, now)
        # Its answer goes out before the DELETEs of the IKE SAs it replaces: a peer that
        # re-authenticates (RFC 4478) installs the new CHILD SAs before the old go.
        self._touched.setdefault(id(sa), sa)
        for old in replaced:
            self.counters["ike_sas_replaced"] += 1
            self._collect(old)
        if not allowed:
            self.counters["refused_by_uniqueness"] += 1
            return "uniqueness policy keep: already connected"
        cap = self.responder.limits.ike_sas_per_identity
        live = sum(1 for other in same_identity if _counted(other) and other not in replaced)
        if cap and live >= cap:
            self.counters["refused_by_identity_limit"] += 1
            return f"{live} IKE SAs of this identity already (ike_sas_per_identity)"
        self._identities.add(sa.unique_identity, sa)
        return None

    def _answer_invalid_ike_spi(
        self, header: IkeHeader, src: Address, dst: Address, now: float
    ) -> None:
        """§2.21.4, §1.5: an unprotected response with N(INVALID_IKE_SPI), the SPIs,
        exchange type and Message ID copied, rate limited per source address."""
        second = int(now)
        counted, sent = self._invalid_spi_sent.get(src[0], (second, 0))
        if counted != second:
            sent = 0
        if sent >= self.invalid_spi_rate:
            self.counters["invalid_ike_spi_rate_limited"] += 1
            return
        if len(self._invalid_spi_sent) > 4096:  # forget the old seconds now and then
            self._invalid_spi_sent = {
                k: v for k, v in self._invalid_spi_sent.items() if v[0] == second
            }
        self._invalid_spi_sent[src[0]] = (second, sent + 1)
        flags = HeaderFlag.RESPONSE | (0 if header.is_initiator else HeaderFlag.INITIATOR)
        response = IkeHeader(
            header.spi_i, header.spi_r, header.exchange_type, int(flags), header.message_id
        )
        notify = NotifyPayload(NotifyType.INVALID_IKE_SPI)
        try:
            data = serialize_message(Message(response, (notify,)))
        except IkeError:
            return
        self.counters["invalid_ike_spi_sent"] += 1
        self._outbox.append(Datagram(data, dst, src))

    def _forget_closed(self, now: float, touched: Iterable[IkeSa]) -> None:
        """Only touched SAs can have closed or left the half-open states."""
        for sa in touched:
            self._settle_half_open(sa)
            if sa.closed:
                self._identities.remove(sa)
            if sa.closed and self._sas.get(sa.local_spi) is sa:
                del self._sas[sa.local_spi]
                self._keep_last_response(sa, now)
                self._closed_sa_counters.update(sa.counters)
                sa.release()
        if now >= self._next_prune:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget what refers to SAs gone or no longer half-open: at most once a second,
        so that the cost (a sweep over every tombstone, thousands at a high set-up rate)
        comes with neither every datagram nor every closed SA."""
        self._next_prune = now + 1.0
        self._tombstones = {k: t for k, t in self._tombstones.items() if t.until > now}
        self._renamed = {old: new for old, new in self._renamed.items() if new in self._sas}
        self._replacing = {new: old for new, old in self._replacing.items() if new in self._sas}
        self._reauthenticating &= set(self._replacing)
        self._init_packets = {k: sa for k, sa in self._init_packets.items() if _half_open(sa)}
        self._init_nonces = {k: sa for k, sa in self._init_nonces.items() if _half_open(sa)}
        second = int(now)
        self._invalid_spi_sent = {k: v for k, v in self._invalid_spi_sent.items() if v[0] == second}
        if self.responder is not None:
            self._init_rate.forget_full(now, self.responder.limits)

    def _keep_last_response(self, sa: IkeSa, now: float) -> None:
        """§2.1: the answer that closed an SA (to DELETE, to a failed AUTH) may be lost;
        keep it for the peer's retransmissions as long as the peer would retransmit."""
        if sa.last_response is None:
            return
        message_id, datagrams = sa.last_response
        until = now + sa.retransmit_policy.total()
        self._tombstones[sa.local_spi] = _Tombstone(message_id, datagrams, until)

    def _answer_from_tombstone(
        self, local_spi: bytes, data: bytes, header: IkeHeader, src: Address, dst: Address
    ) -> bool:
        tombstone = self._tombstones.get(local_spi)
        if tombstone is None or header.is_response or header.message_id != tombstone.message_id:
            return False
        last = parse_message(data).payloads[-1:]
        if last and isinstance(last[0], EncryptedFragmentPayload) and last[0].fragment_number != 1:
            return True
        self.counters["retransmissions_answered_after_close"] += 1
        self._outbox.extend(Datagram(d, dst, src) for d in tombstone.datagrams)
        return True

    # ------------------------------------------------------------------
    # IKE_SA_INIT requests (§1.2, §2.1, §2.5, §2.6)

    def _on_init_request(
        self, data: bytes, header: IkeHeader, src: Address, dst: Address, now: float
    ) -> None:
        if self.responder is None:
            self.counters["dropped_not_responder"] += 1
            return
        if not self._demanding_cookies() and not self._within_rate(src, now):
            return
        digest = hashlib.sha256(data).digest()
        known = self._init_packets.get(digest)
        if known is not None and not known.closed:
            known.resend_init_response(src, dst)
            self._touched[id(known)] = known
            return
        if header.message_id != 0:
            self.counters["dropped_invalid"] += 1
            return
        # Under a flood, most requests end at the COOKIE: decided on the payload chain's
        # generic headers, before the parser (what does not add up goes to the parser).
        scan = scan_init_request(data)
        if scan is not None and not self._admit_init(header, scan, src, dst, now):
            return
        try:
            message = parse_message(data)
        except CodecError as error:
            self._answer_malformed(header, error, src, dst)
            return
        nonce = message.find(NoncePayload)
        if scan is None:  # the chain walk and the parser disagree: the parser's view
            first = message.payloads[0] if message.payloads else None
            cookie = None
            if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE:
                cookie = first.data
            scan = InitScan(cookie, nonce.data if nonce else b"")
            if not self._admit_init(header, scan, src, dst, now):
                return
        nonce_key = (src[0], header.spi_i, scan.nonce)
        self._create_responder_sa(message, data, digest, nonce_key, src, dst, now)

    def _admit_init(
        self, header: IkeHeader, scan: InitScan, src: Address, dst: Address, now: float
    ) -> bool:
        """A retransmission with the nonce of a half-open SA gets its response (§2.1);
        beyond the half-open cap the request is dropped; under load it must bring a
        valid COOKIE (§2.6)."""
        assert self.responder is not None
        same_nonce = self._init_nonces.get((src[0], header.spi_i, scan.nonce))
        if same_nonce is not None and not same_nonce.closed:
            same_nonce.resend_init_response(src, dst)
            self._touched[id(same_nonce)] = same_nonce
            return False
        if self.half_open_count() >= self.responder.limits.half_open_limit:
            self.counters["dropped_half_open_limit"] += 1
            return False
        return self._cookie_ok(header, scan, src, dst, now)

    def _create_responder_sa(
        self,
        message: Message,
        data: bytes,
        digest: bytes,
        nonce_key: tuple[str, bytes, bytes],
        src: Address,
        dst: Address,
        now: float,
    ) -> None:
        assert self.responder is not None
        sa = IkeSa.responder(self.responder, dst, src, self._random)
        sa.admission = self._admit
        sa.receive_init_request(message, data, now)
        if not sa.closed and sa.local_spi in self._sas:
            # An SPI collision (2^-64): forget this one unanswered; the initiator's
            # retransmission gets a fresh SPI.
            self.counters["spi_collisions"] += 1
            return
        self._collect(sa)
        if sa.state != IkeSaState.INIT_DONE:
            self._outbox.extend(sa.datagrams_to_send(now))
            self._drop_events_of_refused(sa)
            self._touched.pop(id(sa), None)
            sa.release()
            return
        self._sas[sa.local_spi] = sa
        self._half_open[id(sa)] = sa
        self._init_packets[digest] = sa
        self._init_nonces[nonce_key] = sa

    def _drop_events_of_refused(self, sa: IkeSa) -> None:
        """A refused IKE_SA_INIT never became an SA: its failure is not news."""
        self._events = deque(e for e in self._events if e.ike_sa != sa.local_spi)
        self.counters["init_refused"] += 1

    def _answer_malformed(
        self, header: IkeHeader, error: CodecError, src: Address, dst: Address
    ) -> None:
        """§2.5, §2.21.1: answer an unparseable IKE_SA_INIT with the codec's notify."""
        self.counters["init_malformed"] += 1
        response = IkeHeader(
            header.spi_i,
            ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            int(HeaderFlag.RESPONSE),
            header.message_id,
            major_version=IKE_MAJOR_VERSION,
        )
        notify = NotifyPayload(error.notify, data=error.data)
        try:
            data = serialize_message(Message(response, (notify,)))
        except IkeError:
            return
        self._outbox.append(Datagram(data, dst, src))

    # ------------------------------------------------------------------
    # COOKIE (§2.6)

    def _cookie_ok(
        self, header: IkeHeader, scan: InitScan, src: Address, dst: Address, now: float
    ) -> bool:
        """Under load, demand a COOKIE as the first payload; answer one statelessly:
        ``<VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)`` (§2.6); a request
        that returns a valid one takes a token of its source's bucket."""
        if not self._demanding_cookies():
            return True
        assert self.responder is not None
        limits = self.responder.limits
        # IPi as the address's text: one spelling per peer (what the sockets give).
        material = scan.nonce + src[0].encode() + header.spi_i
        if scan.cookie is not None:
            if self._cookies.check(scan.cookie, material, now, limits):
                return self._within_rate(src, now)
            self.counters["cookies_refused"] += 1
        self._send_cookie(header.spi_i, material, src, dst, now)
        return False

    def _demanding_cookies(self) -> bool:
        return self.half_open_count() >= self.half_open_threshold

    def _within_rate(self, src: Address, now: float) -> bool:
        assert self.responder is not None
        if self._init_rate.allow(src[0], now, self.responder.limits):
            return True
        self.counters["dropped_init_rate"] += 1
        return False

    def _send_cookie(
        self, spi_i: bytes, material: bytes, src: Address, dst: Address, now: float
    ) -> None:
        assert self.responder is not None
        self.counters["cookies_sent"] += 1
        cookie = self._cookies.make(material, now, self.responder.limits)
        self._outbox.append(Datagram(cookie_response(spi_i, cookie), dst, src))

    def _answered_with_cookie(self, data: bytes, src: Address, dst: Address, now: float) -> bool:
        """Under load, a new IKE_SA_INIT request without a COOKIE is answered from its
        octets: the checks of :meth:`_on_init_request` in its order, on what
        :func:`read_new_init_request` reads, without the header's dataclass or the
        parser, for a flood's answer costs what the intake costs (§2.6). False, having
        changed nothing, for what the full intake must decide."""
        if self.responder is None:
            return False
        request = read_new_init_request(data)
        if request is None or request.scan.cookie is not None:
            return False
        limits = self.responder.limits
        half_open = self.half_open_count()
        if half_open < self.half_open_threshold or half_open >= limits.half_open_limit:
            return False
        known = self._init_packets.get(hashlib.sha256(data).digest())
        if known is None or known.closed:
            spi_i, nonce = request.spi_i, request.scan.nonce
            known = self._init_nonces.get((src[0], spi_i, nonce))
            if known is None or known.closed:
                self._send_cookie(spi_i, nonce + src[0].encode() + spi_i, src, dst, now)
                return True
        known.resend_init_response(src, dst)
        self._touched[id(known)] = known
        return True


def _half_open(sa: IkeSa) -> bool:
    return not sa.closed and sa.state in HALF_OPEN_STATES


def _counted(sa: IkeSa) -> bool:
    """An IKE SA that counts against its identity's cap (one being rekeyed counts once)."""
    return not sa.closed and sa.state not in (IkeSaState.REKEYED, IkeSaState.DELETING)
