"""The IKE SA state machine, initiator and responder, sans-I/O (RFC 7296).

Inputs: :meth:`IkeSa.receive` (one datagram already matched to this SA by
:class:`mpa_ike.endpoint.Endpoint`), :meth:`IkeSa.handle_timer` and the
commands :meth:`IkeSa.start`, :meth:`IkeSa.delete`, :meth:`IkeSa.delete_child_sa`,
:meth:`IkeSa.check_liveness`, :meth:`IkeSa.rekey_child_sa`,
:meth:`IkeSa.create_child_sa`, :meth:`IkeSa.rekey_ike_sa`,
:meth:`IkeSa.update_addresses` and :meth:`IkeSa.send_additional_addresses`.
Outputs: :meth:`datagrams_to_send`, :meth:`get_timer` and :meth:`next_event`.
Nothing here reads a clock, opens a socket or draws randomness except through
the injected ``random``.

The set-up (RFC 7296 §1.2, §2.16 with EAP; the gateway authenticates first) is
the business of a handshake object that the IkeSa owns until the SA is up:
:class:`mpa_ike.handshake_initiator.InitiatorHandshake` or
:class:`mpa_ike.handshake_responder.ResponderHandshake`. It holds the nonces,
the IKE_SA_INIT messages, the EAP conversation and the first CHILD SA's offer,
and sees the IKE SA through :class:`mpa_ike.handshake_common.HandshakeHost`
(``use_keys``, ``lease_addresses``, ``establish``, ``fail`` and the like)::

    initiator                                  responder
    HDR, SA, KE, Ni, N(NAT-D)x2, N(FRAG), N(SHA)  -->
                      <--  HDR, SA, KE, Nr, N(NAT-D)x2, N(FRAG), N(SHA)
    HDR, SK{IDi, [CERTREQ], IDr, CP, SA, TSi, TSr, N(MOBIKE)}  -->   (port 4500)
                      <--  HDR, SK{IDr, CERT, AUTH, EAP}
    HDR, SK{EAP}  -->  ...  <--  HDR, SK{EAP(Success)}
    HDR, SK{AUTH}  -->
                      <--  HDR, SK{AUTH, CP, SA, TSi, TSr, N(MOBIKE)}

Once established (:class:`mpa_ike.mobike.Mobike` and :class:`mpa_ike.rekey.Rekey`
hold these exchanges, objects of their own that the IkeSa owns; they see it only
through their Protocols ``MobikeHost`` and ``RekeyHost``, which the public methods
``emit``, ``natd_notifies``, ``detect_nat``, ``install_child``, ``successor``,
``hand_over`` and the like implement)::

    HDR, SK{N(UPDATE_SA_ADDRESSES), N(NAT-D)x2, [N(NO_NATS_ALLOWED)], N(COOKIE2)}  -->
                      <--  HDR, SK{N(NAT-D)x2, N(COOKIE2)}  (or N(UNACCEPTABLE_ADDRESSES))
    HDR, SK{[N(REKEY_SA)], SA, Ni, [KEi], TSi, TSr}  -->       (either side)
                      <--  HDR, SK{SA, Nr, [KEr], TSi, TSr}
    HDR, SK{SA(IKE, new SPI), Ni, KEi}  -->                   (either side)
                      <--  HDR, SK{SA(IKE, new SPI), Nr, KEr}

A rekeyed IKE SA hands its CHILD SAs and lease to a new :class:`IkeSa`
(:meth:`IkeSa.take_successors`, filed by the endpoint) and ends quietly.

Which handler takes a message is decided by the table ``HANDLERS``
(role, state, exchange) -> :class:`RequestKind`, h11 style; a message with no
entry is dropped and counted. Message IDs, the window, retransmission and the
response cache are :class:`mpa_ike.exchange.Exchanges`'.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from ipaddress import IPv4Address

from mpa_ike.address_policy import IkeSaInfo
from mpa_ike.child_negotiation import Selectors, initiator_local_selectors
from mpa_ike.child_sa import ChildSa, ChildSaState, child_sa_params
from mpa_ike.config_payload import AddressAllocator, Family, IPNetwork, LeaseRequest
from mpa_ike.constants import (
    IKE_PORT,
    ExchangeType,
    HashAlgorithm,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from mpa_ike.crypto.keys import IkeKeyExport, IkeKeys
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.crypto.sk import sk_cipher_pair
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.datagram import Address, Datagram
from mpa_ike.eap import EapAnswer
from mpa_ike.errors import IkeError, IntegrityError, LocalProtocolError
from mpa_ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeSaReplaced,
    LeaseReleased,
    ReauthenticationDue,
)
from mpa_ike.exchange import Exchanges, RequestHandler
from mpa_ike.handshake_common import answer_informational_during_setup
from mpa_ike.handshake_initiator import InitiatorHandshake
from mpa_ike.handshake_responder import ResponderHandshake
from mpa_ike.identity import Identity
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.ike_sa_common import (
    CHILD_IN_DATAPATH,
    HALF_OPEN_STATES,
    IP_HEADER,
    LIVE_STATES,
    NON_ESP_MARKER_SIZE,
    UDP_HEADER,
    ZERO_SPI,
    IkeSaState,
    Random,
    ip_of,
    natd,
)
from mpa_ike.liveness import Liveness, is_invalid_ike_spi_answer
from mpa_ike.mobike import Mobike, cookie2_echo
from mpa_ike.rekey import REKEYED_IKE_SA_GRACE, Rekey, Successor
from mpa_ike.retransmit import RetransmitPolicy
from mpa_ike.traffic_selectors import selector_for_address, selectors_for_networks
from mpa_ike.wire import (
    DeletePayload,
    IkeHeader,
    IPAddress,
    Message,
    NotifyPayload,
    Payload,
    TrafficSelector,
    parse_message,
)

__all__ = ["HALF_OPEN_STATES", "ZERO_SPI", "IkeSa", "IkeSaState", "Random"]

IkeConfig = InitiatorConfig | ResponderConfig
# The endpoint's check of a responder IKE SA whose peer just authenticated, against the
# older IKE SAs of that identity (mpa_ike.uniqueness) and the gateway's limits: a
# reason refuses it, None admits it.
Admission = Callable[["IkeSa", float], str | None]


class RequestKind(Enum):
    """Which handler takes a peer's request (see ``HANDLERS``)."""

    FIRST_AUTH = "first IKE_AUTH"  # responder: IDi, CP, SA, TS (§1.2)
    EAP = "EAP round or final AUTH"  # responder (§2.16)
    INFORMATIONAL = "INFORMATIONAL"  # DELETE, liveness, MOBIKE (§1.4, RFC 4555)
    INFORMATIONAL_DURING_SETUP = "INFORMATIONAL before the SA is up"
    CREATE_CHILD_SA = "CREATE_CHILD_SA"  # §1.3


# (role, state, exchange) -> handler of a peer's request. A missing entry drops it.
HANDLERS: dict[tuple[str, IkeSaState, ExchangeType], RequestKind] = {
    ("r", IkeSaState.INIT_DONE, ExchangeType.IKE_AUTH): RequestKind.FIRST_AUTH,
    ("r", IkeSaState.EAP, ExchangeType.IKE_AUTH): RequestKind.EAP,
}
for _role in ("i", "r"):
    for _state in (IkeSaState.ESTABLISHED, IkeSaState.REKEYED, IkeSaState.DELETING):
        HANDLERS[(_role, _state, ExchangeType.INFORMATIONAL)] = RequestKind.INFORMATIONAL
        HANDLERS[(_role, _state, ExchangeType.CREATE_CHILD_SA)] = RequestKind.CREATE_CHILD_SA
for _state in (IkeSaState.EAP, IkeSaState.AUTH_SENT, IkeSaState.EAP_SENT):
    _role = "r" if _state == IkeSaState.EAP else "i"
    HANDLERS[(_role, _state, ExchangeType.INFORMATIONAL)] = RequestKind.INFORMATIONAL_DURING_SETUP
# A peer may ask while its last IKE_AUTH answer to us is still in flight (§2.3).
HANDLERS[("i", IkeSaState.AUTH_FINAL_SENT, ExchangeType.INFORMATIONAL)] = RequestKind.INFORMATIONAL


def new_ike_spi(random: Random) -> bytes:
    spi = random(8)
    return spi if spi != ZERO_SPI else b"\x00" * 7 + b"\x01"


class IkeSa:
    """One IKE SA. Build with :meth:`initiator` or :meth:`responder`.

    Until it is up, its handshake (:class:`InitiatorHandshake` or
    :class:`ResponderHandshake`) holds the set-up's state and drives it through the
    methods of :class:`mpa_ike.handshake_common.HandshakeHost`; an IKE SA made by a
    rekey (:meth:`successor`) has none.
    """

    # One per IKE SA held, with some forty fields: slots rather than a dictionary each.
    __slots__ = (
        "__weakref__",
        "_config",
        "_deadline",
        "_events",
        "_exchanges",
        "_handlers",
        "_initiator_handshake",
        "_keys",
        "_lease_owner",
        "_liveness",
        "_mobike",
        "_random",
        "_rekey",
        "_responder_handshake",
        "_successors",
        "_suite",
        "_superseded",
        "admission",
        "assigned_addresses",
        "children",
        "counters",
        "dns",
        "eap_identity",
        "initial_contact",
        "is_initiator",
        "local",
        "mobike",
        "name",
        "nat_local",
        "nat_remote",
        "netmask",
        "peer_fragmentation",
        "peer_hash_algorithms",
        "peer_identity",
        "peer_mobike",
        "reauth_at",
        "reauth_deadline",
        "remote",
        "requested_addresses",
        "session_end",
        "spi_i",
        "spi_r",
        "state",
        "subnets",
    )

    def __init__(
        self,
        config: IkeConfig,
        local: Address,
        remote: Address,
        random: Random,
        *,
        initiator: bool,
        name: str,
        spi_i: bytes = b"",
        spi_r: bytes = ZERO_SPI,
        handshake: bool = True,
    ) -> None:
        self.is_initiator = initiator
        self.name = name
        self.local = local
        self.remote = remote
        self._config = config
        self._random = random
        self.state = IkeSaState.INITIAL
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.counters: Counter[str] = Counter()
        self.children: dict[bytes, ChildSa] = {}
        self.assigned_addresses: tuple[IPAddress, ...] = ()
        self.dns: tuple[IPAddress, ...] = ()
        self.netmask: IPv4Address | None = None
        self.subnets: tuple[IPNetwork, ...] = ()
        self.peer_identity: Identity | None = None
        # Responder: the identity EAP authenticated (the gateway's EAP server's, or the
        # User-Name the AAA accepted), if EAP ran.
        self.eap_identity: str | None = None
        self.nat_local = False
        self.nat_remote = False
        self.peer_fragmentation = False
        # What the peer's SIGNATURE_HASH_ALGORITHMS announced (RFC 7427 §4).
        self.peer_hash_algorithms: tuple[HashAlgorithm, ...] = ()
        self.peer_mobike = False
        self.mobike = False
        # When the AAA's Session-Timeout ends the established SA (RFC 2865 §5.27).
        self.session_end: float | None = None
        # Initiator: when to re-authenticate (RFC 4478: a margin before the gateway's
        # AUTH_LIFETIME runs out, or our reauth_time); ReauthenticationDue then.
        self.reauth_at: float | None = None
        self.reauth_deadline: float | None = None
        # Initiator: the addresses its CP request asks for (those of the IKE SA it
        # re-authenticates, RFC 7296 §3.15.1), none for a fresh one.
        self.requested_addresses: tuple[IPAddress, ...] = ()
        # A list, not a deque: it holds an event or two between the endpoint's reads, and
        # an empty deque takes 760 bytes for every IKE SA held.
        self._events: list[Event] = []
        self._exchanges = Exchanges(self, config.retransmit, self._give_up)
        self._mobike = Mobike(self, self._exchanges, random)
        self._rekey = Rekey(self, self._exchanges, random)
        self._liveness = Liveness(self, self._exchanges)
        # RFC 7296 §2.4: our first IKE_AUTH says INITIAL_CONTACT (the endpoint decides:
        # no other IKE SA to this peer); on a responder, whether the peer's said so.
        self.initial_contact = False
        # The gateway's check of a newly authenticated peer against its older IKE SAs
        # (strongSwan's unique, mpa_ike.uniqueness); set by the endpoint.
        self.admission: Admission | None = None
        self._suite: IkeSuite | None = None
        self._keys: IkeKeys | None = None
        self._deadline: float | None = None  # half-open set-up, or a rekeyed SA's grace
        self._lease_owner: bytes | None = None
        self._successors: list[IkeSa] = []
        self._superseded = False
        self._initiator_handshake: InitiatorHandshake | None = None
        self._responder_handshake: ResponderHandshake | None = None
        if handshake:
            self._start_handshake(config)
        self._handlers: dict[RequestKind, RequestHandler] = {
            RequestKind.FIRST_AUTH: self._on_first_auth_request,
            RequestKind.EAP: self._on_eap_request,
            RequestKind.INFORMATIONAL: self._on_informational_request,
            RequestKind.INFORMATIONAL_DURING_SETUP: self._on_informational_during_setup,
            RequestKind.CREATE_CHILD_SA: self._on_create_child_request,
        }

    def _start_handshake(self, config: IkeConfig) -> None:
        if isinstance(config, InitiatorConfig) and self.is_initiator:
            self._initiator_handshake = InitiatorHandshake(
                self, self._exchanges, config, self._random
            )
        elif isinstance(config, ResponderConfig) and not self.is_initiator:
            self._responder_handshake = ResponderHandshake(
                self, self._exchanges, config, self._random, self.child_selectors
            )
        else:
            raise LocalProtocolError("an initiator takes an InitiatorConfig, a responder not")

    # ------------------------------------------------------------------
    # Construction

    @classmethod
    def initiator(
        cls, config: InitiatorConfig, local: Address, remote: Address, random: Random
    ) -> IkeSa:
        spi_i = new_ike_spi(random)
        return cls(config, local, remote, random, initiator=True, name=config.name, spi_i=spi_i)

    @classmethod
    def responder(
        cls, config: ResponderConfig, local: Address, remote: Address, random: Random
    ) -> IkeSa:
        return cls(config, local, remote, random, initiator=False, name=f"{remote[0]}")

    def new_ike_spi(self) -> bytes:
        return new_ike_spi(self._random)

    @property
    def config(self) -> IkeConfig:
        return self._config

    @property
    def local_spi(self) -> bytes:
        """This side's SPI: the key the endpoint files the SA under."""
        return self.spi_i if self.is_initiator else self.spi_r

    @property
    def last_response(self) -> tuple[int, list[bytes]] | None:
        """(Message ID, datagrams) of the last answer to a peer request, for §2.1 resends."""
        return self._exchanges.last_response

    @property
    def retransmit_policy(self) -> RetransmitPolicy:
        return self._exchanges.policy

    @property
    def closed(self) -> bool:
        return self.state == IkeSaState.CLOSED

    @property
    def established(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def unique_identity(self) -> str | None:
        """Who the peer is for uniqueness, INITIAL_CONTACT and its lease: the identity EAP
        authenticated where EAP ran (charon's get_other_eap_id), else its IDi."""
        if self.eap_identity is not None:
            return self.eap_identity
        return str(self.peer_identity) if self.peer_identity is not None else None

    @property
    def encap(self) -> bool:
        """ESP in UDP: a NAT on the path, either side (§2.23)."""
        return self.nat_local or self.nat_remote

    @property
    def peer_additional_addresses(self) -> tuple[IPAddress, ...]:
        """The peer's other addresses, as last announced (RFC 4555 §3.4, §3.6)."""
        return self._mobike.peer_addresses

    @property
    def dh_group(self) -> int:
        """The key exchange group of the IKE SA's suite."""
        assert self._suite is not None
        return int(self._suite.dh_group)

    # ------------------------------------------------------------------
    # Outputs (aioquic style)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out = self._exchanges.datagrams_to_send()
        if out:
            self._liveness.sent(now)
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        deadlines = [self._deadline, self._exchanges.deadline]
        if self.state == IkeSaState.ESTABLISHED:
            deadlines += self._rekey.deadlines()
            deadlines += [*self._liveness.deadlines(), self.session_end, self.reauth_at]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def snapshot(self) -> dict[str, object]:
        """Status for ``mpa-gateway status`` / ``mpa-mobile status``."""
        return {
            "name": self.name,
            "state": self.state.value,
            "role": "initiator" if self.is_initiator else "responder",
            "local": f"{self.local[0]}[{self.local[1]}]",
            "remote": f"{self.remote[0]}[{self.remote[1]}]",
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "peer_id": self._peer_name() or None,
            "address": str(self.assigned_addresses[0]) if self.assigned_addresses else None,
            "addresses": [str(a) for a in self.assigned_addresses],
            "netmask": str(self.netmask) if self.netmask is not None else None,
            "subnets": [str(s) for s in self.subnets],
            "mobike": self.mobike,
            "nat": self.encap,
            "peer_addresses": [str(a) for a in self.peer_additional_addresses],
            "child_sas": [child.snapshot() for child in self.children.values()],
        }

    def emit(self, event: Event) -> None:
        self._events.append(event)

    # ------------------------------------------------------------------
    # Timers

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            # §2.4 half-open limit (a set-up waiting for its peer, or for an external
            # EAP authenticator), or the end of a rekeyed SA's grace.
            self._close_failed("half-open IKE SA timed out", None, now)
            return
        if self._session_over(now):
            return
        self._reauthentication_due(now)
        self._rekey.handle_timer(now)
        self._liveness.handle_timer(now)
        self._exchanges.handle_timer(now)

    def _session_over(self, now: float) -> bool:
        """The AAA's Session-Timeout has come: DELETE the IKE SA (RFC 2865 §5.27)."""
        if self.session_end is None or now < self.session_end:
            return False
        if self.state != IkeSaState.ESTABLISHED:
            return False
        self.session_end = None
        self.counters["session_timeouts"] += 1
        self.delete(now)
        return True

    def _reauthentication_due(self, now: float) -> None:
        """RFC 4478 §2: the initiator authenticates again before the gateway's limit;
        the daemon does it with a new IKE SA (ReauthenticationDue, told once)."""
        if self.reauth_at is None or now < self.reauth_at or self.state != IkeSaState.ESTABLISHED:
            return
        self.reauth_at = None
        self.counters["reauthentications_due"] += 1
        self.emit(ReauthenticationDue(self.local_spi, self.name, self.reauth_deadline))

    def max_message_size(self) -> int | None:
        """RFC 7383 §2.5.1: fragment only when both sides announced support."""
        config = self._config
        if not (config.fragmentation and self.peer_fragmentation):
            return None
        overhead = IP_HEADER[ip_of(self.remote).version] + UDP_HEADER
        if self.local[1] != IKE_PORT:
            overhead += NON_ESP_MARKER_SIZE
        return config.fragment_size - overhead

    def _give_up(self, now: float) -> None:
        """RFC 7296 §2.4: no answer after the last retransmission: the SA is dead."""
        self._close_failed("peer not responding (retransmissions exhausted)", None, now)

    # ------------------------------------------------------------------
    # Receiving

    def receive(
        self, data: bytes, header: IkeHeader, src: Address, dst: Address, now: float
    ) -> None:
        """One datagram for this SA (the endpoint matched its SPI). Never raises."""
        if self.closed:
            return
        if header.is_initiator == self.is_initiator:
            self.counters["dropped_wrong_role"] += 1
            return
        try:
            if header.is_response and self._unprotected_answer(data, header, now):
                return
            if header.is_response:
                self._exchanges.receive_response(
                    data, header, src, dst, now, self._on_init_response
                )
            else:
                self._exchanges.receive_request(data, header, src, dst, now, self._handler_for)
        except IntegrityError:
            self.counters["dropped_integrity"] += 1  # §2.21.1: drop silently
        except IkeError:
            self.counters["dropped_invalid"] += 1

    def _unprotected_answer(self, data: bytes, header: IkeHeader, now: float) -> bool:
        """An unprotected response to an encrypted exchange: the peer's INVALID_IKE_SPI
        (RFC 7296 §2.21.4) is a hint for :mod:`mpa_ike.liveness`; anything else goes on
        to the engine, which drops it."""
        if header.exchange_type == ExchangeType.IKE_SA_INIT or header.next_payload in (
            PayloadType.SK,
            PayloadType.SKF,
        ):
            return False
        message = parse_message(data)
        if not is_invalid_ike_spi_answer(message):
            return False
        self._liveness.on_invalid_ike_spi(message, now)
        return True

    def _handler_for(self, message: Message) -> RequestHandler | None:
        role = "i" if self.is_initiator else "r"
        kind = HANDLERS.get((role, self.state, message.header.exchange_type))
        return self._handlers[kind] if kind is not None else None

    def resend_init_response(self, src: Address, dst: Address) -> None:
        """The endpoint saw a retransmitted IKE_SA_INIT request (§2.1)."""
        if self._responder_handshake is not None and not self.closed:
            self._responder_handshake.resend_init_response(src, dst)

    # ------------------------------------------------------------------
    # Closing

    def release(self) -> None:
        """Let go of this closed IKE SA's parts once the endpoint has forgotten it.

        The parts (the exchanges, MOBIKE, rekey, liveness, the handshake) refer back to
        the SA, so that without this a closed SA and all it holds (keys, messages, the
        peer's payloads) waits for Python's cycle collector; under a flood of
        IKE_SA_INIT that is thousands of them, and the process's memory stays grown.
        What remains answers ``state``, ``closed``, ``counters`` and events only."""
        if not self.closed:
            raise LocalProtocolError("only a closed IKE SA lets go of its parts")
        self._handlers.clear()
        self._initiator_handshake = self._responder_handshake = None
        del self._exchanges, self._mobike, self._rekey, self._liveness

    def _close(self, final: Event, by_peer: bool) -> None:
        for child in self.children.values():
            if child.state in CHILD_IN_DATAPATH:
                child.state = ChildSaState.DELETED
                self.emit(
                    ChildSaDeleted(self.local_spi, self.name, child.spi_in, child.spi_out, by_peer)
                )
        self._release_lease()
        if not self._superseded:  # a rekeyed IKE SA lives on as its successor (§2.18)
            self.emit(final)
        self.state = IkeSaState.CLOSED
        self._exchanges.clear()
        self._deadline = None

    def replace(self, new_ike_sa: bytes, reason: str, now: float, *, tell: bool) -> None:
        """Close for the new IKE SA ``new_ike_sa`` of the same peer (IkeSaReplaced):
        INITIAL_CONTACT, the uniqueness policy, or the peer's INVALID_IKE_SPI answered by
        a new IKE SA; ``tell``: a DELETE sent once, no answer awaited (§1.4.1)."""
        if self.closed:
            return
        if tell:
            self._exchanges.send_once(ExchangeType.INFORMATIONAL, [DeletePayload.for_ike_sa()])
        self.counters["replaced"] += 1
        event = IkeSaReplaced(self.local_spi, self.name, reason, None, new_ike_sa=new_ike_sa)
        self._close(event, by_peer=False)

    def abandon(
        self, reason: str, now: float, also_to: tuple[Address, Address] | None = None
    ) -> None:
        """Give the IKE SA up by policy: a DELETE sent once (also over ``also_to``, the
        (local, remote) pair the peer really uses), then closed (IkeSaFailed)."""
        if self.closed:
            return
        payloads = [DeletePayload.for_ike_sa()]
        self._exchanges.send_once(ExchangeType.INFORMATIONAL, payloads, also_to)
        self._close_failed(reason, None, now)

    def admit(self, now: float) -> str | None:
        """Responder: the peer authenticated; may this IKE SA go on beside the older ones
        of its identity (:mod:`mpa_ike.uniqueness`)? None, or why not."""
        return None if self.admission is None else self.admission(self, now)

    def tell_and_fail(self, reason: str, notify: NotifyType) -> None:
        """§2.21.2: tell the peer why (an INFORMATIONAL sent once, as strongSwan does), close."""
        self._exchanges.send_once(ExchangeType.INFORMATIONAL, [NotifyPayload(notify)])
        self._close_failed(reason, notify, 0.0)

    def _close_failed(
        self, reason: str, notify: NotifyType | None, now: float, retry: bool = False
    ) -> None:
        failed = IkeSaFailed(self.local_spi, self.name, reason, notify, retry)
        self._close(failed, by_peer=False)

    def fail(
        self, reason: str, now: float, notify: NotifyType | None = None, retry: bool = False
    ) -> None:
        """The IKE SA has failed (a part of it found the peer misbehaving, or refused it);
        ``notify``: the error notify received or sent; ``retry``: see IkeSaFailed."""
        self._close_failed(reason, notify, now, retry)

    def _release_lease(self) -> None:
        allocator = self._allocator
        if self._lease_owner is None or allocator is None:
            return
        released = allocator.release(self._lease_owner)
        self._lease_owner = None
        if released:
            self.emit(LeaseReleased(self.local_spi, self.name, tuple(released)))

    @property
    def _allocator(self) -> AddressAllocator | None:
        config = self._config
        return config.allocator if isinstance(config, ResponderConfig) else None

    # ------------------------------------------------------------------
    # Key material and lease, as the handshake leaves them

    def use_keys(self, suite: IkeSuite, keys: IkeKeys) -> None:
        """The suite and keys of IKE_SA_INIT (§2.14): SK payloads from now on."""
        self._suite, self._keys = suite, keys
        self._exchanges.protect_with(sk_cipher_pair(suite, keys, self._random))

    def exported_keys(self) -> IkeKeyExport | None:
        """This IKE SA's SPIs, transforms and SK_e/SK_a keys, for a key log that lets a
        capture be decrypted; None before IKE_SA_INIT derived them."""
        suite, keys = self._suite, self._keys
        if suite is None or keys is None:
            return None
        return IkeKeyExport(
            self.spi_i,
            self.spi_r,
            int(suite.encr.id),
            suite.encr_key_bits,
            int(suite.integ.id) if suite.integ is not None else None,
            keys.sk_ei,
            keys.sk_er,
            keys.sk_ai,
            keys.sk_ar,
        )

    def expire_at(self, deadline: float | None) -> None:
        """The SA fails at ``deadline`` unless it is established first (§2.4 half-open)."""
        self._deadline = deadline

    def lease_addresses(self, wanted: Mapping[int, IPAddress | None]) -> tuple[IPAddress, ...]:
        """§2.19: lease an address of each family in ``wanted`` (with the one the peer
        asked for, if any); the lease is this IKE SA's until it ends."""
        allocator = self._allocator
        if allocator is None:
            return ()
        self._lease_owner = self.local_spi
        leased: list[IPAddress] = []
        for family, address in sorted(wanted.items()):
            asked: Family = 4 if family == 4 else 6
            got = allocator.lease(
                LeaseRequest(self._lease_owner, asked, address, self.unique_identity)
            )
            if got is not None:
                leased.append(got)
        return tuple(leased)

    def establish(self, now: float) -> None:
        """The handshake is over: the SA is up (IkeSaEstablished), its lifetime starts."""
        self.state = IkeSaState.ESTABLISHED
        self._deadline = None
        self._start_lifetime(now)
        self._emit_established()

    def read_address_list(self, message: Message) -> None:
        """RFC 4555 §3.4: the peer's additional addresses, if the message lists them."""
        self._mobike.read_address_list(message)

    # ------------------------------------------------------------------
    # NAT detection (§2.23) and fragmentation / hash notifies

    @property
    def _force_encap(self) -> bool:
        return isinstance(self._config, InitiatorConfig) and self._config.force_encap

    def natd_notifies(self, path: tuple[Address, Address] | None = None) -> list[NotifyPayload]:
        """§2.23: NAT_DETECTION_SOURCE_IP and _DESTINATION_IP for the present path, or
        for ``path`` (local, remote)."""
        local, remote = path if path is not None else (self.local, self.remote)
        spi_r = self.spi_r
        source = natd(self.spi_i, spi_r, local)
        if self._force_encap:
            # strongSwan's encap=yes: a source hash that cannot match claims a NAT.
            source = self._random(len(source))
        return [
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=source),
            NotifyPayload(
                NotifyType.NAT_DETECTION_DESTINATION_IP, data=natd(self.spi_i, spi_r, remote)
            ),
        ]

    def detect_nat(
        self, message: Message, src: Address, dst: Address, spi_r: bytes | None = None
    ) -> None:
        """§2.23 (and RFC 4555 §3.5 on an update): compare the peer's NAT-D hashes with
        the addresses the datagram really had (``spi_r``: the SPIr the peer hashed, zero
        in an IKE_SA_INIT request)."""
        spi_r = self.spi_r if spi_r is None else spi_r
        sources = [
            p.data
            for p in message.find_all(NotifyPayload)
            if p.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
        ]
        destination = message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if not sources or destination is None:
            return  # the peer does not do NAT-T
        self.nat_remote = natd(self.spi_i, spi_r, src) not in sources
        self.nat_local = destination.data != natd(self.spi_i, spi_r, dst)
        if self._force_encap:
            self.nat_local = True

    # ------------------------------------------------------------------
    # The handshake (mpa_ike.handshake_initiator, mpa_ike.handshake_responder)

    def start(self, now: float) -> None:
        """Command (initiator): send IKE_SA_INIT (§1.2)."""
        if self._initiator_handshake is None or self.state != IkeSaState.INITIAL:
            raise LocalProtocolError("only a new initiator IKE SA starts")
        self._initiator_handshake.start(now)

    def receive_init_request(self, message: Message, data: bytes, now: float) -> None:
        """Responder: answer a new IKE_SA_INIT request (the endpoint checked COOKIE)."""
        if self._responder_handshake is None or self.state != IkeSaState.INITIAL:
            raise LocalProtocolError("only a new responder IKE SA takes IKE_SA_INIT")
        self._responder_handshake.receive_init_request(message, data, now)

    def eap_answer(self, answer: EapAnswer, now: float) -> None:
        """Command (gateway with an external EAP authenticator): the answer to the last
        :class:`mpa_ike.events.EapRequestForAaa`; the IKE_AUTH response held for it
        goes out (RFC 7296 §2.16). Ignored once the SA has closed (its half-open
        timeout came first); LocalProtocolError if no answer is awaited."""
        if self.closed:
            return
        if self._responder_handshake is None or self.state != IkeSaState.EAP:
            raise LocalProtocolError("no EAP answer is awaited")
        self._responder_handshake.eap_answer(answer, now)

    def _on_init_response(
        self, message: Message, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        if self._initiator_handshake is not None:
            self._initiator_handshake.on_init_response(message, data, src, dst, now)

    def _on_first_auth_request(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        assert self._responder_handshake is not None
        self._responder_handshake.on_first_auth_request(message, src, dst, now)

    def _on_eap_request(self, message: Message, src: Address, dst: Address, now: float) -> None:
        assert self._responder_handshake is not None
        self._responder_handshake.on_eap_request(message, src, dst, now)

    def _on_create_child_request(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        """CREATE_CHILD_SA (:mod:`mpa_ike.rekey`), unless it comes from an address whose
        update we refused: a peer that ignored UNACCEPTABLE_ADDRESSES (charon does) and
        rekeys from there loses the IKE SA (RFC 4555 §3.5 leaves the policy to us)."""
        if src != self.remote and self._mobike.refused(src):
            self.counters["deleted_refused_address"] += 1
            reason = f"rekey request from {src[0]}, an address we refused (RFC 4555 §3.5)"
            self.abandon(reason, now, also_to=(dst, src))
            return
        self._rekey.on_create_child_request(message, src, dst, now)

    def _on_informational_during_setup(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        answer_informational_during_setup(self, self._exchanges, message, now)

    # ------------------------------------------------------------------
    # CHILD SAs

    def new_child_spi(self) -> bytes:
        while True:
            spi = self._random(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self.children:
                return spi  # SPIs 1-255 are reserved (RFC 4303 §2.1)

    def _peer_name(self) -> str:
        """The peer's identity as configured (initiator) or as received (responder)."""
        if isinstance(self._config, InitiatorConfig):
            return self._config.remote_id
        return str(self.peer_identity) if self.peer_identity else ""

    def _emit_established(self) -> None:
        self.emit(
            IkeSaEstablished(
                self.local_spi,
                self.name,
                self.local,
                self.remote,
                self._peer_name(),
                self.assigned_addresses,
                self.dns,
                self.mobike,
                self.encap,
                self.netmask,
                self.subnets,
            )
        )

    def install_child(
        self,
        child: ChildSa,
        spec: ProposalSpec,
        *,
        initiator: bool,
        now: float,
        nonces: tuple[bytes, bytes],
        shared_secret: bytes | None = None,
    ) -> None:
        """KEYMAT from the nonces of the creating exchange (IKE_AUTH's or
        CREATE_CHILD_SA's) and its KE, if any (§2.17)."""
        assert self._suite is not None and self._keys is not None
        child.params = child_sa_params(
            child,
            spec,
            self._suite.prf,
            self._keys.sk_d,
            nonces,
            initiator,
            (self.local, self.remote),
            self.encap,
            shared_secret,
        )
        child.spec = spec
        child.state = ChildSaState.INSTALLED
        child.rekey_at = self._rekey.child_rekey_at(now)
        child.expire_at = self._rekey.child_expire_at(now)
        limits = self._rekey.child_limits(child, now)
        child.params = dataclasses.replace(child.params, limits=limits)
        self.emit(ChildSaEstablished(self.local_spi, self.name, child.params))

    def child_selectors(self) -> tuple[Selectors, Selectors]:
        """(ours, theirs): the selectors this side proposes, or narrows an offer to,
        for a CHILD SA (TSi, TSr when it asks; TSr, TSi when it answers)."""
        if isinstance(self._config, InitiatorConfig):
            if self.assigned_addresses:
                local = tuple(selector_for_address(a) for a in self.assigned_addresses)
            else:
                local = initiator_local_selectors(self._config)
            return local, selectors_for_networks(self._config.child.remote_ts)
        return selectors_for_networks(self._config.child.local_ts), self._allowed_remote_ts()

    def _allowed_remote_ts(self) -> tuple[TrafficSelector, ...]:
        """TSi: the CP-assigned addresses; else the configured remote_ts; else the peer."""
        if self.assigned_addresses:
            return tuple(selector_for_address(a) for a in self.assigned_addresses)
        remote_ts = self._config.child.remote_ts
        if remote_ts:
            return selectors_for_networks(remote_ts)
        return (selector_for_address(ip_of(self.remote)),)

    # ==================================================================
    # INFORMATIONAL, both roles (§1.4): DELETE and liveness

    def _on_informational_request(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        """INFORMATIONAL from the peer (§1.4): DELETE, liveness probes (also MOBIKE path
        probes from another address, answered there), address lists and updates."""
        deletes = message.find_all(DeletePayload)
        if any(d.protocol_id == ProtocolId.IKE for d in deletes):
            # §1.4.1: answer with an empty INFORMATIONAL, then the SA is gone.
            self._exchanges.respond(message.header, [])
            self._close(IkeSaDeleted(self.local_spi, self.name, by_peer=True), by_peer=True)
            return
        self._mobike.read_address_list(message)
        if message.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None:
            self._mobike.on_update_sa_addresses(message, src, dst, now)
            return
        answer_payloads: list[Payload] = []
        for delete in deletes:
            if delete.protocol_id == ProtocolId.ESP:
                answer_payloads += self._peer_deletes_children(delete.spis)
        self._exchanges.respond(message.header, answer_payloads + cookie2_echo(message))

    def _peer_deletes_children(self, spis: Sequence[bytes]) -> list[Payload]:
        """§1.4.1: delete the pairs whose outbound SPI the peer named; list our inbound SPIs."""
        ours: list[bytes] = []
        for child in list(self.children.values()):
            if child.spi_out in spis and child.state != ChildSaState.DELETED:
                if child.state != ChildSaState.DELETING:
                    # §1.4.1: one we are deleting ourselves is not listed (simultaneous
                    # DELETE, §2.25.1); it goes all the same.
                    ours.append(child.spi_in)
                self._child_gone(child, by_peer=True)
        return [DeletePayload.for_child_sas(tuple(ours))] if ours else []

    def _child_gone(self, child: ChildSa, by_peer: bool) -> None:
        installed = child.state in CHILD_IN_DATAPATH
        child.state = ChildSaState.DELETED
        self.children.pop(child.spi_in, None)
        if installed:
            self.emit(
                ChildSaDeleted(self.local_spi, self.name, child.spi_in, child.spi_out, by_peer)
            )

    def delete(self, now: float) -> None:
        """Command: delete the IKE SA and its CHILD SAs (§1.4.1)."""
        if self.state == IkeSaState.ESTABLISHED:
            self.state = IkeSaState.DELETING
            self._exchanges.request(
                ExchangeType.INFORMATIONAL,
                [DeletePayload.for_ike_sa()],
                self._on_delete_response,
                now,
                self._on_delete_response_lost,
            )
        elif not self.closed and self.state != IkeSaState.DELETING:
            self._close_failed("deleted before it was established", None, now)

    def _on_delete_response(self, message: Message, now: float) -> None:
        self._exchanges.abandon()
        self._close(IkeSaDeleted(self.local_spi, self.name, by_peer=False), by_peer=False)

    def _on_delete_response_lost(self, now: float) -> None:
        self._close(IkeSaDeleted(self.local_spi, self.name, by_peer=False), by_peer=False)

    def delete_child_sa(self, spi_in: bytes, now: float) -> None:
        """Command: delete one CHILD SA (§1.4.1)."""
        child = self.children.get(spi_in)
        if child is None or child.state != ChildSaState.INSTALLED or not self.established:
            return
        self.delete_child(child, now)

    def delete_child(self, child: ChildSa, now: float) -> None:
        """DELETE of the CHILD SA ``child`` (§1.4.1), ours to send."""
        child.state = ChildSaState.DELETING
        spi_in = child.spi_in
        self._exchanges.request(
            ExchangeType.INFORMATIONAL,
            [DeletePayload.for_child_sas((spi_in,))],
            lambda message, later: self._on_child_delete_response(child, later),
            now,
        )

    def _on_child_delete_response(self, child: ChildSa, now: float) -> None:
        self._exchanges.finish(now)
        self._child_gone(child, by_peer=False)

    def check_liveness(self, now: float) -> None:
        """Command: an empty INFORMATIONAL; no answer means the peer is dead (§1.4, §2.4),
        see :meth:`mpa_ike.liveness.Liveness.check`."""
        self._liveness.check(now)

    # ------------------------------------------------------------------
    # Commands of MOBIKE (mpa_ike.mobike) and CREATE_CHILD_SA (mpa_ike.rekey)

    def update_addresses(
        self, new_local: Address, now: float, new_remote: Address | None = None
    ) -> None:
        """Command (mobile node): UPDATE_SA_ADDRESSES from our new address (RFC 4555
        §3.5), see :meth:`mpa_ike.mobike.Mobike.move_to`."""
        self._mobike.move_to(new_local, now, new_remote)

    def prepare_update(self, new_local: Address, new_remote: Address | None = None) -> None:
        """Command (mobile node): the UPDATE_SA_ADDRESSES of a coming move, built ahead,
        see :meth:`mpa_ike.mobike.Mobike.prepare_update`."""
        self._mobike.prepare_update(new_local, new_remote)

    def follow_nat_mapping(self, new_remote: Address) -> bool:
        """The datapath saw the peer's ESP in UDP from ``new_remote``: see
        :meth:`mpa_ike.mobike.Mobike.follow_nat_mapping`."""
        return self._mobike.follow_nat_mapping(new_remote)

    def send_additional_addresses(self, addresses: Sequence[IPAddress], now: float) -> None:
        """Command: RFC 4555 §3.6, see :meth:`mpa_ike.mobike.Mobike.send_additional_addresses`."""
        self._mobike.send_additional_addresses(addresses, now)

    def create_child_sa(self, now: float) -> None:
        """Command: one more CHILD SA (RFC 7296 §1.3.1)."""
        self._rekey.create_child_sa(now)

    def rekey_child_sa(self, spi_in: bytes, now: float) -> None:
        """Command: rekey the CHILD SA ``spi_in`` (RFC 7296 §1.3.3, §2.8)."""
        self._rekey.rekey_child_sa(spi_in, now)

    def rekey_ike_sa(self, now: float) -> None:
        """Command: rekey this IKE SA (RFC 7296 §1.3.2, §2.18)."""
        self._rekey.rekey_ike_sa(now)

    def info(self) -> IkeSaInfo:
        """What an address policy sees of this IKE SA."""
        return IkeSaInfo(
            self.name,
            self.local_spi,
            self._peer_name(),
            self.assigned_addresses,
            self.local,
            self.remote,
        )

    def take_successors(self) -> list[IkeSa]:
        """New IKE SAs made by rekeying this one, for the endpoint to file."""
        out, self._successors = self._successors, []
        return out

    # ------------------------------------------------------------------
    # IKE SA rekey (RFC 7296 §2.18): the old SA's part and the new SA's

    def _start_lifetime(self, now: float) -> None:
        self._liveness.start(now)
        self._rekey.start_ike_lifetime(now)

    def successor(
        self,
        spi_i: bytes,
        spi_r: bytes,
        we_initiated: bool,
        spec: ProposalSpec,
        nonces: tuple[bytes, bytes],
        shared_secret: bytes,
        now: float,
    ) -> IkeSa:
        """The new IKE SA (§2.18): the rekey initiator is its original initiator,
        SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), Message IDs from 0."""
        assert self._suite is not None and self._keys is not None
        suite = IkeSuite.from_proposal(spec)
        keys = suite.derive_rekeyed_keys(
            self._suite.prf, self._keys.sk_d, nonces[0], nonces[1], spi_i, spi_r, shared_secret
        )
        new = IkeSa(
            self._config,
            self.local,
            self.remote,
            self._random,
            initiator=we_initiated,
            name=self.name,
            spi_i=spi_i,
            spi_r=spi_r,
            handshake=False,
        )
        new.continue_from(self, suite, keys, now)
        self._successors.append(new)
        return new

    def continue_from(self, old: IkeSa, suite: IkeSuite, keys: IkeKeys, now: float) -> None:
        """This new IKE SA takes over what ``old`` negotiated (§2.18), with its own keys."""
        self.use_keys(suite, keys)
        self.state = IkeSaState.ESTABLISHED
        self.peer_identity, self.assigned_addresses = old.peer_identity, old.assigned_addresses
        self.eap_identity = old.eap_identity
        self.dns, self.nat_local, self.nat_remote = old.dns, old.nat_local, old.nat_remote
        self.netmask, self.subnets = old.netmask, old.subnets
        self.peer_fragmentation, self.peer_mobike = old.peer_fragmentation, old.peer_mobike
        self.mobike, self.session_end = old.mobike, old.session_end
        self.reauth_at, self.reauth_deadline = old.reauth_at, old.reauth_deadline
        self.peer_hash_algorithms = old.peer_hash_algorithms
        self._mobike.peer_addresses = old.peer_additional_addresses
        self._start_lifetime(now)

    def hand_over(self, new: Successor, now: float) -> None:
        """Move the CHILD SAs and the lease to ``new``; this SA waits for its DELETE."""
        for child in self.children.values():
            if child.state in (ChildSaState.REKEYING, ChildSaState.CREATING):
                child.state = ChildSaState.INSTALLED if child.params else ChildSaState.FAILED
                child.rekey_at = now  # its exchange died with this IKE SA: again, on the new
        children = {k: c for k, c in self.children.items() if c.params is not None}
        self.children = {}
        # A MOBIKE update queued or in flight here is told again on the new IKE SA, so
        # that the peer's new SA has our present addresses (RFC 4555 §3.5).
        update_pending = self._mobike.update_pending
        self._rekey.forget()
        self._exchanges.clear_queue()
        self._mobike.drop_queued()
        new.adopt(children, self._give_lease_away())
        self.await_peer_delete(now)
        self.counters["ike_rekeys"] += 1
        self.emit(IkeSaRekeyed(self.local_spi, self.name, new.local_spi))
        if update_pending:
            new.resume_address_update(now)

    def _give_lease_away(self) -> tuple[IPAddress, ...] | None:
        """The lease, released for a successor to take (None: there is none)."""
        allocator = self._allocator
        if self._lease_owner is None or allocator is None:
            return None
        released = allocator.release(self._lease_owner)
        self._lease_owner = None
        return released

    def adopt(self, children: dict[bytes, ChildSa], lease: Sequence[IPAddress] | None) -> None:
        """The CHILD SAs and the lease of the IKE SA this one replaces (§2.18, §2.19:
        the lease belongs to the IKE SA, so it is filed under the new SPI)."""
        self.children = children
        allocator = self._allocator
        if lease is None or allocator is None:
            return
        self._lease_owner = self.local_spi
        for address in lease:
            family: Family = 4 if address.version == 4 else 6
            allocator.lease(LeaseRequest(self.local_spi, family, address, self.unique_identity))

    def resume_address_update(self, now: float) -> None:
        """A MOBIKE update pending on the replaced IKE SA is sent on this one."""
        if self.mobike and isinstance(self._config, InitiatorConfig):
            self._mobike.send_update(now)

    def mark_superseded(self) -> None:
        """Another IKE SA replaces this one: it ends without IkeSaDeleted."""
        self._superseded = True

    def await_peer_delete(self, now: float) -> None:
        """Rekeyed away (§2.18): wait a while for the peer's DELETE, then go quietly."""
        self._superseded = True
        self.state = IkeSaState.REKEYED
        self._deadline = now + REKEYED_IKE_SA_GRACE
