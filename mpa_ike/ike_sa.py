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

Exchanges (RFC 7296 §1.2, §2.16 with EAP; the gateway authenticates first)::

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

import ipaddress
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from mpa_ike.address_policy import IkeSaInfo
from mpa_ike.certificates import certreq_payload, signature_method, verify_peer_certificate
from mpa_ike.child_negotiation import Selectors, accept_child
from mpa_ike.child_sa import ChildSa, ChildSaState, child_sa_params, without_key_exchange
from mpa_ike.config_payload import (
    AddressAllocator,
    build_reply,
    build_request,
    parse_reply,
    parse_request,
)
from mpa_ike.constants import (
    IKE_PORT,
    NAT_T_PORT,
    AuthMethod,
    CfgType,
    DhGroup,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    NotifyType,
    ProtocolId,
    TransformType,
)
from mpa_ike.crypto.auth import (
    SUPPORTED_HASH_ALGORITHMS,
    auth_octets,
    eap_auth,
    psk_auth,
    sign_auth,
    verify_auth,
    verify_shared_key_auth,
)
from mpa_ike.crypto.dh import KeyExchange, generate_key_exchange
from mpa_ike.crypto.keys import IkeKeys
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.crypto.sk import sk_cipher_pair
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.datagram import Address, Datagram
from mpa_ike.eap import EapPeer, EapResult, EapServer
from mpa_ike.errors import IkeError, IntegrityError, RemoteProtocolError
from mpa_ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    LeaseReleased,
    LivenessConfirmed,
)
from mpa_ike.exchange import Exchanges, RequestHandler
from mpa_ike.identity import Identity, identity_of, parse_identity
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.ike_sa_common import (
    CHILD_ERRORS,
    CHILD_IN_DATAPATH,
    HALF_OPEN_STATES,
    IP_HEADER,
    LIVE_STATES,
    NON_ESP_MARKER_SIZE,
    NONCE_SIZE,
    UDP_HEADER,
    ZERO_SPI,
    IkeSaState,
    Random,
    error_notifies,
    ip_of,
    natd,
    protocol_error,
)
from mpa_ike.mobike import Mobike, additional_address_notifies, cookie2_echo
from mpa_ike.rekey import REKEYED_IKE_SA_GRACE, Rekey, Successor
from mpa_ike.retransmit import RetransmitPolicy
from mpa_ike.sa_payload import answer, check_answer, sa_payload, select
from mpa_ike.traffic_selectors import (
    acceptable_answer,
    selector_for_address,
    selectors_for_networks,
)
from mpa_ike.wire import (
    AuthPayload,
    CertPayload,
    ConfigurationPayload,
    DeletePayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    IkeHeader,
    IPAddress,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
    serialize_message,
)
from mpa_ike.wire.notify import (
    cookie_notify,
    invalid_ke_notify,
    read_invalid_ke_group,
    read_signature_hash_algorithms,
    signature_hash_algorithms_notify,
)

__all__ = ["HALF_OPEN_STATES", "ZERO_SPI", "IkeSa", "IkeSaState", "Random"]

IkeConfig = InitiatorConfig | ResponderConfig


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


@dataclass
class _AuthRequest:
    """What the responder keeps of the first IKE_AUTH request for its last answer."""

    idi: IdiPayload
    cp: ConfigurationPayload | None
    sa: SaPayload | None
    tsi: TsiPayload | None
    tsr: TsrPayload | None
    mobike: bool
    message: Message  # for its ADDITIONAL_*_ADDRESS list (RFC 4555 §3.4)


class IkeSa:
    """One IKE SA. Build with :meth:`initiator` or :meth:`responder`."""

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
        nonce_i: bytes = b"",
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
        self.peer_identity: Identity | None = None
        self.nat_local = False
        self.nat_remote = False
        self.peer_fragmentation = False
        self.peer_mobike = False
        self.mobike = False
        self._events: deque[Event] = deque()
        self._exchanges = Exchanges(self, config.retransmit, self._give_up)
        self._mobike = Mobike(self, self._exchanges, random)
        self._rekey = Rekey(self, self._exchanges, random)
        self._nonce_i = nonce_i
        self._nonce_r = b""
        self._dh: KeyExchange | None = None
        self._suite: IkeSuite | None = None
        self._keys: IkeKeys | None = None
        self._init_request = b""
        self._init_response = b""
        self._peer_hashes: tuple[HashAlgorithm, ...] = ()
        self._half_open_deadline: float | None = None
        self._eap_peer: EapPeer | None = None
        self._eap_server: EapServer | None = None
        self._auth_request: _AuthRequest | None = None
        self._offered_ts: tuple[Selectors, Selectors] = ((), ())
        self._init_retries = 0
        self._cookie: bytes | None = None
        self._lease_owner: bytes | None = None
        self._idi: IdiPayload | None = None
        self._successors: list[IkeSa] = []
        self._superseded = False
        self._handlers: dict[RequestKind, RequestHandler] = {
            RequestKind.FIRST_AUTH: self._on_first_auth_request,
            RequestKind.EAP: self._on_eap_request,
            RequestKind.INFORMATIONAL: self._on_informational_request,
            RequestKind.INFORMATIONAL_DURING_SETUP: self._on_informational_during_setup,
            RequestKind.CREATE_CHILD_SA: self._rekey.on_create_child_request,
        }

    # ------------------------------------------------------------------
    # Construction

    @classmethod
    def initiator(
        cls, config: InitiatorConfig, local: Address, remote: Address, random: Random
    ) -> IkeSa:
        spi_i = new_ike_spi(random)
        nonce_i = random(NONCE_SIZE)
        return cls(
            config,
            local,
            remote,
            random,
            initiator=True,
            name=config.name,
            spi_i=spi_i,
            nonce_i=nonce_i,
        )

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
    def encap(self) -> bool:
        """ESP in UDP: a NAT on the path, either side (§2.23)."""
        return self.nat_local or self.nat_remote

    @property
    def peer_additional_addresses(self) -> tuple[IPAddress, ...]:
        """The peer's other addresses, as last announced (RFC 4555 §3.4, §3.6)."""
        return self._mobike.peer_addresses

    @property
    def peer_hash_algorithms(self) -> tuple[HashAlgorithm, ...]:
        """What the peer's SIGNATURE_HASH_ALGORITHMS announced (RFC 7427 §4)."""
        return self._peer_hashes

    @property
    def dh_group(self) -> int:
        """The key exchange group of the IKE SA's suite."""
        assert self._suite is not None
        return int(self._suite.dh_group)

    # ------------------------------------------------------------------
    # Outputs (aioquic style)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return self._exchanges.datagrams_to_send()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadlines = [self._half_open_deadline, self._exchanges.deadline]
        if self.state == IkeSaState.ESTABLISHED:
            deadlines += self._rekey.deadlines()
            deadlines.append(self._liveness_deadline())
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def _liveness_deadline(self) -> float | None:
        """When to check the quiet peer's liveness (Lifetimes.liveness_interval)."""
        interval = self._config.lifetimes.liveness_interval
        if interval is None or not self._exchanges.idle:
            return None
        return self._exchanges.last_heard + interval

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
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._close_failed("half-open IKE SA timed out", None, now)
            return
        self._rekey.handle_timer(now)
        liveness = self._liveness_deadline()
        if liveness is not None and now >= liveness and self.state == IkeSaState.ESTABLISHED:
            self.counters["liveness_checks"] += 1
            self.check_liveness(now)
        self._exchanges.handle_timer(now)

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

    def _handler_for(self, message: Message) -> RequestHandler | None:
        role = "i" if self.is_initiator else "r"
        kind = HANDLERS.get((role, self.state, message.header.exchange_type))
        return self._handlers[kind] if kind is not None else None

    def resend_init_response(self, src: Address, dst: Address) -> None:
        """The endpoint saw a retransmitted IKE_SA_INIT request (§2.1)."""
        if self._init_response and not self.closed:
            self.counters["retransmissions_answered"] += 1
            self._exchanges.send_to(self._init_response, dst, src)

    # ------------------------------------------------------------------
    # Closing

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
        self._half_open_deadline = None

    def _tell_and_close(self, reason: str, notify: NotifyType) -> None:
        """§2.21.2: tell the peer why (an INFORMATIONAL sent once, as strongSwan does), close."""
        self._exchanges.send_once(ExchangeType.INFORMATIONAL, [NotifyPayload(notify)])
        self._close_failed(reason, notify, 0.0)

    def _close_failed(self, reason: str, notify: NotifyType | None, now: float) -> None:
        self._close(IkeSaFailed(self.local_spi, self.name, reason, notify), by_peer=False)

    def fail(self, reason: str, now: float) -> None:
        """The IKE SA has failed (a part of it found the peer misbehaving)."""
        self._close_failed(reason, None, now)

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
    # Key material

    def _derive_keys(self, shared_secret: bytes) -> None:
        """SKEYSEED and the seven keys (§2.14), then the SK ciphers."""
        assert self._suite is not None
        self._keys = self._suite.derive_keys(
            self._nonce_i, self._nonce_r, self.spi_i, self.spi_r, shared_secret
        )
        self._exchanges.protect_with(sk_cipher_pair(self._suite, self._keys, self._random))

    def _octets(self, initiator_side: bool, id_body: bytes) -> bytes:
        """InitiatorSignedOctets / ResponderSignedOctets (§2.15)."""
        assert self._suite is not None and self._keys is not None
        prf = self._suite.prf
        if initiator_side:
            return auth_octets(self._init_request, self._nonce_r, prf, self._keys.sk_pi, id_body)
        return auth_octets(self._init_response, self._nonce_i, prf, self._keys.sk_pr, id_body)

    # ------------------------------------------------------------------
    # NAT detection (§2.23) and fragmentation / hash notifies (RFC 7383, RFC 7427)

    @property
    def _force_encap(self) -> bool:
        return isinstance(self._config, InitiatorConfig) and self._config.force_encap

    def natd_notifies(self) -> list[NotifyPayload]:
        """§2.23: NAT_DETECTION_SOURCE_IP and _DESTINATION_IP for the present path."""
        spi_r = self.spi_r
        source = natd(self.spi_i, spi_r, self.local)
        if self._force_encap:
            # strongSwan's encap=yes: a source hash that cannot match claims a NAT.
            source = self._random(len(source))
        return [
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=source),
            NotifyPayload(
                NotifyType.NAT_DETECTION_DESTINATION_IP, data=natd(self.spi_i, spi_r, self.remote)
            ),
        ]

    def _capability_notifies(self) -> list[NotifyPayload]:
        config = self._config
        notifies: list[NotifyPayload] = []
        if config.fragmentation:
            notifies.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if not isinstance(config, InitiatorConfig) or config.signature_hash_algorithms:
            notifies.append(signature_hash_algorithms_notify(SUPPORTED_HASH_ALGORITHMS))
        return notifies

    def _read_capabilities(self, message: Message) -> None:
        self.peer_fragmentation = (
            message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        )
        hashes = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        self._peer_hashes = read_signature_hash_algorithms(hashes) if hashes else ()

    def detect_nat(self, message: Message, src: Address, dst: Address) -> None:
        """§2.23 (and RFC 4555 §3.5 on an update): NAT detection for this message."""
        self._detect_nat(message, self.spi_r, src, dst)

    def _detect_nat(self, message: Message, spi_r: bytes, src: Address, dst: Address) -> None:
        """Compare the peer's NAT-D hashes with the addresses the datagram really had."""
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

    # ==================================================================
    # Initiator: IKE_SA_INIT (§1.2, §2.6)

    def start(self, now: float) -> None:
        """Initiator: send IKE_SA_INIT with the first proposal's first group."""
        config = self._initiator_config
        first_group = config.ike_proposals[0].first(TransformType.DH)
        assert first_group is not None
        self._dh = generate_key_exchange(first_group.id, self._random)
        self._send_init(now)

    @property
    def _initiator_config(self) -> InitiatorConfig:
        assert isinstance(self._config, InitiatorConfig)
        return self._config

    @property
    def _responder_config(self) -> ResponderConfig:
        assert isinstance(self._config, ResponderConfig)
        return self._config

    def _send_init(self, now: float) -> None:
        config = self._initiator_config
        assert self._dh is not None
        payloads: list[Payload] = []
        if self._cookie is not None:
            payloads.append(cookie_notify(self._cookie))  # §2.6: COOKIE first
        payloads += [
            sa_payload(config.ike_proposals),
            KePayload(self._dh.group, self._dh.public_bytes),
            NoncePayload(self._nonce_i),
            *self.natd_notifies(),
            *self._capability_notifies(),
        ]
        header = self._exchanges.header(ExchangeType.IKE_SA_INIT, 0, response=False)
        self._init_request = serialize_message(Message(header, tuple(payloads)))
        self.state = IkeSaState.INIT_SENT
        self._exchanges.send_request(
            ExchangeType.IKE_SA_INIT, 0, [self._init_request], self._unused_handler, now
        )

    def _unused_handler(self, message: Message, now: float) -> None:
        raise AssertionError("IKE_SA_INIT responses go to _on_init_response")

    def _on_init_response(
        self, message: Message, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        if self.state != IkeSaState.INIT_SENT:
            return
        cookie = message.notify(NotifyType.COOKIE)
        invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        if cookie is not None:
            self._retry_init(now, cookie=cookie.data)
        elif invalid_ke is not None:
            self._retry_with_group(read_invalid_ke_group(invalid_ke), now)
        elif error_notifies(message):
            notify = error_notifies(message)[0]
            self._close_failed(f"IKE_SA_INIT refused: {notify.name}", notify, now)
        else:
            self._accept_init_response(message, data, src, dst, now)

    def _retry_init(self, now: float, cookie: bytes | None = None) -> None:
        self._init_retries += 1
        if self._init_retries > self._initiator_config.max_init_retries:
            self._close_failed("too many IKE_SA_INIT retries", None, now)
            return
        if cookie is not None:
            self._cookie = cookie
        self._exchanges.abandon()
        self._send_init(now)

    def _retry_with_group(self, group: int, now: float) -> None:
        """§1.3/§2.6: retry with the group the responder wants, if we proposed it."""
        proposed = {
            t.id for p in self._initiator_config.ike_proposals for t in p.of_type(TransformType.DH)
        }
        assert self._dh is not None
        if group not in proposed or group == self._dh.group:
            self._close_failed(
                f"INVALID_KE_PAYLOAD asks for group {group}, which we did not propose",
                NotifyType.INVALID_KE_PAYLOAD,
                now,
            )
            return
        self._dh = generate_key_exchange(group, self._random)
        self._retry_init(now)

    def _accept_init_response(
        self, message: Message, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        try:
            spec = self._check_init_response(message)
        except RemoteProtocolError as error:
            self._close_failed(f"bad IKE_SA_INIT response: {error}", error.notify, now)
            return
        self.spi_r = message.header.spi_r
        self._init_response = data
        self._suite = IkeSuite.from_proposal(spec)
        ke = message.find(KePayload)
        nonce = message.find(NoncePayload)
        assert ke is not None and nonce is not None and self._dh is not None
        self._nonce_r = nonce.data
        try:
            shared = self._dh.shared_secret(ke.data)
        except RemoteProtocolError as error:
            self._close_failed(f"bad KE from the responder: {error}", error.notify, now)
            return
        self._derive_keys(shared)
        self._read_capabilities(message)
        self.detect_nat(message, src, dst)
        self._exchanges.complete()  # IKE_SA_INIT was Message ID 0
        self._float_to_nat_t()
        self._send_first_auth(now)

    def _check_init_response(self, message: Message) -> ProposalSpec:
        sa, ke, nonce = message.find(SaPayload), message.find(KePayload), message.find(NoncePayload)
        if sa is None or ke is None or nonce is None or message.header.spi_r == ZERO_SPI:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, KE and Nr are required")
        _, spec = check_answer(self._initiator_config.ike_proposals, sa, ProtocolId.IKE)
        group = spec.first(TransformType.DH)
        assert self._dh is not None
        if group is None or group.id != self._dh.group or ke.group != self._dh.group:
            raise protocol_error(NotifyType.INVALID_KE_PAYLOAD, "the responder's group is not ours")
        return spec

    def _float_to_nat_t(self) -> None:
        """RFC 7296 §2.23 behind a NAT, RFC 4555 §3.3 with MOBIKE: IKE_AUTH goes to 4500."""
        if not (self.encap or self._initiator_config.mobike):
            return
        if self.local[1] == IKE_PORT:
            self.local = (self.local[0], NAT_T_PORT)
        if self.remote[1] == IKE_PORT:
            self.remote = (self.remote[0], NAT_T_PORT)

    # ==================================================================
    # Initiator: IKE_AUTH with EAP (§2.16)

    def _dynamic_local_ts(self) -> tuple[TrafficSelector, ...]:
        config = self._initiator_config
        if config.child.local_ts:
            return selectors_for_networks(config.child.local_ts)
        networks = [
            ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
            for family in config.virtual_ip_families
        ]
        return selectors_for_networks(networks)

    def _send_first_auth(self, now: float) -> None:
        config = self._initiator_config
        identity = parse_identity(config.identity)
        eap_identity = config.eap_identity.encode() if config.eap_identity else identity.data
        self._eap_peer = EapPeer(
            eap_identity, config.eap_password, config.eap_methods, self._random
        )
        child = ChildSa(spi_in=self.new_child_spi())
        self.children[child.spi_in] = child
        tsi = self._dynamic_local_ts()
        tsr = selectors_for_networks(config.child.remote_ts)
        self._offered_ts = (tsi, tsr)
        payloads: list[Payload] = [identity.idi()]
        if config.ca:
            payloads.append(certreq_payload(config.ca))
        payloads += [
            parse_identity(config.remote_id).idr(),
            build_request(config.virtual_ip_families),
            sa_payload(without_key_exchange(config.child.esp_proposals), child.spi_in),
            TsiPayload(tsi),
            TsrPayload(tsr),
        ]
        if config.mobike:
            payloads.append(NotifyPayload(NotifyType.MOBIKE_SUPPORTED))
        self._idi = identity.idi()
        self.state = IkeSaState.AUTH_SENT
        self._exchanges.request(ExchangeType.IKE_AUTH, payloads, self._on_first_auth_response, now)

    def new_child_spi(self) -> bytes:
        while True:
            spi = self._random(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self.children:
                return spi  # SPIs 1-255 are reserved (RFC 4303 §2.1)

    def _auth_failure_in(self, message: Message) -> NotifyType | None:
        errors = [n for n in error_notifies(message) if n not in CHILD_ERRORS]
        return errors[0] if errors else None

    def _on_first_auth_response(self, message: Message, now: float) -> None:
        """The gateway's IDr, [CERT], AUTH and first EAP Request."""
        self._exchanges.finish(now)
        error = self._auth_failure_in(message)
        if error is not None:
            self._close_failed(f"IKE_AUTH refused: {error.name}", error, now)
            return
        try:
            self._verify_responder(message)
        except RemoteProtocolError as failure:
            self._tell_and_close(f"gateway authentication failed: {failure}", failure.notify)
            return
        self._continue_eap(message, now)

    def _verify_responder(self, message: Message) -> None:
        """§2.15: check IDr against the configured id, then AUTH (certificate or PSK)."""
        config = self._initiator_config
        idr, auth = message.find(IdrPayload), message.find(AuthPayload)
        if idr is None or auth is None:
            raise protocol_error(NotifyType.AUTHENTICATION_FAILED, "IDr and AUTH are required")
        expected = parse_identity(config.remote_id)
        if identity_of(idr) != expected:
            raise protocol_error(
                NotifyType.AUTHENTICATION_FAILED, f"gateway is not {config.remote_id}"
            )
        octets = self._octets(False, idr.rest_of_id_payload())
        assert self._suite is not None
        if config.psk is not None:
            if auth.method != AuthMethod.PSK:
                raise protocol_error(
                    NotifyType.AUTHENTICATION_FAILED, "expected PSK authentication"
                )
            verify_shared_key_auth(self._suite.prf, config.psk, octets, auth.data)
        else:
            assert config.wall_clock is not None
            key = verify_peer_certificate(
                message.find_all(CertPayload), config.ca, expected, config.wall_clock()
            )
            verify_auth(auth.method, key, octets, auth.data)
        self.peer_identity = expected

    def _continue_eap(self, message: Message, now: float) -> None:
        """Feed the EAP payload to the peer; answer, or send AUTH after EAP-Success."""
        peer = self._eap_peer
        eap = message.find(EapPayload)
        assert peer is not None
        if eap is None:
            self._close_failed(
                "IKE_AUTH response without EAP", NotifyType.AUTHENTICATION_FAILED, now
            )
            return
        reply = peer.handle(eap.data)
        if peer.result == EapResult.SUCCESS:
            self._send_final_auth(now)
        elif reply is not None:
            # Also after a method failure: MSCHAPv2 acknowledges its Failure
            # Request, and the server then ends with EAP-Failure.
            self.state = IkeSaState.EAP_SENT
            self._exchanges.request(
                ExchangeType.IKE_AUTH, [EapPayload(reply)], self._on_eap_response, now
            )
        elif peer.result == EapResult.FAILURE:
            self._close_failed("EAP authentication failed", NotifyType.AUTHENTICATION_FAILED, now)
        else:
            self._tell_and_close("unusable EAP request", NotifyType.AUTHENTICATION_FAILED)

    def _on_eap_response(self, message: Message, now: float) -> None:
        self._exchanges.finish(now)
        error = self._auth_failure_in(message)
        if error is not None:
            self._close_failed(f"IKE_AUTH refused: {error.name}", error, now)
            return
        self._continue_eap(message, now)

    def _send_final_auth(self, now: float) -> None:
        """§2.16: AUTH keyed by the MSK, or SK_pi when the method has none (EAP-MD5)."""
        assert self._suite is not None and self._keys is not None and self._eap_peer is not None
        assert self._idi is not None
        octets = self._octets(True, self._idi.rest_of_id_payload())
        data = eap_auth(self._suite.prf, self._eap_peer.msk, self._keys.sk_pi, octets)
        self.state = IkeSaState.AUTH_FINAL_SENT
        self._exchanges.request(
            ExchangeType.IKE_AUTH,
            [AuthPayload(AuthMethod.PSK, data)],
            self._on_final_auth_response,
            now,
        )

    def _on_final_auth_response(self, message: Message, now: float) -> None:
        self._exchanges.finish(now)
        error = self._auth_failure_in(message)
        if error is not None:
            self._close_failed(f"IKE_AUTH refused: {error.name}", error, now)
            return
        auth = message.find(AuthPayload)
        assert self._suite is not None and self._keys is not None and self._eap_peer is not None
        idr_body = parse_identity(self._initiator_config.remote_id).idr().rest_of_id_payload()
        try:
            if auth is None:
                raise protocol_error(NotifyType.AUTHENTICATION_FAILED, "no AUTH after EAP")
            key = self._eap_peer.msk or self._keys.sk_pr
            verify_shared_key_auth(self._suite.prf, key, self._octets(False, idr_body), auth.data)
        except RemoteProtocolError as failure:
            self._tell_and_close(f"gateway AUTH after EAP: {failure}", failure.notify)
            return
        self._establish_initiator(message, now)

    def _establish_initiator(self, message: Message, now: float) -> None:
        cp = message.find(ConfigurationPayload)
        if cp is not None and cp.cfg_type == CfgType.CFG_REPLY:
            reply = parse_reply(cp)
            self.assigned_addresses, self.dns = reply.addresses, reply.dns
        self.peer_mobike = message.notify(NotifyType.MOBIKE_SUPPORTED) is not None
        self.mobike = self._initiator_config.mobike and self.peer_mobike
        self.state = IkeSaState.ESTABLISHED
        self._start_lifetime(now)
        self._emit_established()
        # RFC 4555 §3.4: the gateway's other addresses, if it lists them.
        self._mobike.read_address_list(message)
        self._initiator_child_result(message, now)

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
            )
        )

    def _initiator_child_result(self, message: Message, now: float) -> None:
        """§2.21.3: a refused CHILD SA leaves the IKE SA up."""
        child = next(iter(self.children.values()))
        errors = [n for n in error_notifies(message) if n in CHILD_ERRORS]
        sa, tsi, tsr = message.find(SaPayload), message.find(TsiPayload), message.find(TsrPayload)
        if errors or sa is None or tsi is None or tsr is None:
            notify = errors[0] if errors else NotifyType.NO_PROPOSAL_CHOSEN
            self._fail_child(child, notify, "CHILD SA refused by the gateway")
            return
        try:
            proposal, spec = check_answer(
                without_key_exchange(self._initiator_config.child.esp_proposals),
                sa,
                ProtocolId.ESP,
            )
            if len(proposal.spi) != 4:
                raise protocol_error(NotifyType.INVALID_SYNTAX, "ESP SPI must be 4 octets")
            self._check_ts_answer(tsi, tsr)
        except RemoteProtocolError as error:
            self._fail_child(child, error.notify, f"unacceptable CHILD SA answer: {error}")
            return
        child.spi_out = proposal.spi
        child.local_ts = tuple(t for t in tsi.selectors if isinstance(t, TrafficSelector))
        child.remote_ts = tuple(t for t in tsr.selectors if isinstance(t, TrafficSelector))
        self.install_child(child, spec, initiator=True, now=now)

    def _check_ts_answer(self, tsi: TsiPayload, tsr: TsrPayload) -> None:
        offered_i, offered_r = self._offered_ts
        if not acceptable_answer(tsi.selectors, offered_i) or not acceptable_answer(
            tsr.selectors, offered_r
        ):
            raise protocol_error(NotifyType.TS_UNACCEPTABLE, "selectors not within those proposed")

    def _fail_child(self, child: ChildSa, notify: NotifyType, reason: str) -> None:
        child.state = ChildSaState.FAILED
        self.children.pop(child.spi_in, None)
        self.emit(ChildSaFailed(self.local_spi, self.name, notify, reason))

    def install_child(
        self,
        child: ChildSa,
        spec: ProposalSpec,
        *,
        initiator: bool,
        now: float,
        nonces: tuple[bytes, bytes] | None = None,
        shared_secret: bytes | None = None,
    ) -> None:
        """KEYMAT from the nonces of the creating exchange (IKE_AUTH's by default, §2.17)."""
        assert self._suite is not None and self._keys is not None
        child.params = child_sa_params(
            child,
            spec,
            self._suite.prf,
            self._keys.sk_d,
            nonces or (self._nonce_i, self._nonce_r),
            initiator,
            (self.local, self.remote),
            self.encap,
            shared_secret,
        )
        child.spec = spec
        child.state = ChildSaState.INSTALLED
        child.rekey_at = self._rekey.child_rekey_at(now)
        self.emit(ChildSaEstablished(self.local_spi, self.name, child.params))

    # ==================================================================
    # Responder: IKE_SA_INIT (§1.2, §2.6)

    def receive_init_request(self, message: Message, data: bytes, now: float) -> None:
        """Responder: answer a new IKE_SA_INIT request (the endpoint checked COOKIE)."""
        self.spi_i = message.header.spi_i
        try:
            spec, ke = self._select_ike(message)
        except RemoteProtocolError as error:
            self._refuse_init(message.header, error)
            return
        nonce = message.find(NoncePayload)
        assert nonce is not None
        self._nonce_i, self._init_request = nonce.data, data
        self.spi_r = self.new_ike_spi()
        self._nonce_r = self._random(NONCE_SIZE)
        self._suite = IkeSuite.from_proposal(spec)
        self._dh = generate_key_exchange(self._suite.dh_group, self._random)
        try:
            shared = self._dh.shared_secret(ke.data)
        except RemoteProtocolError as error:
            self._refuse_init(message.header, error)
            return
        self._read_capabilities(message)
        self._detect_nat(message, ZERO_SPI, self.remote, self.local)
        self._answer_init(message, spec)
        self._derive_keys(shared)
        self.state = IkeSaState.INIT_DONE
        self._exchanges.init_answered()
        self._half_open_deadline = now + self._responder_config.half_open_timeout

    def _select_ike(self, message: Message) -> tuple[ProposalSpec, KePayload]:
        sa, ke, nonce = message.find(SaPayload), message.find(KePayload), message.find(NoncePayload)
        if sa is None or ke is None or nonce is None:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, KE and Ni are required")
        _, spec = select(self._responder_config.ike_proposals, sa, ProtocolId.IKE)
        group = spec.first(TransformType.DH)
        assert group is not None
        if ke.group != group.id:
            # §1.3: tell the initiator which of its groups we want.
            raise RemoteProtocolError(
                "KE of another group",
                NotifyType.INVALID_KE_PAYLOAD,
                invalid_ke_notify(DhGroup(group.id)).data,
            )
        return spec, ke

    def _refuse_init(self, request: IkeHeader, error: RemoteProtocolError) -> None:
        """Stateless error answer to IKE_SA_INIT; the SA is dropped by the endpoint."""
        header = IkeHeader(
            request.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, int(HeaderFlag.RESPONSE), 0
        )
        notify = NotifyPayload(error.notify, data=error.data)
        self._exchanges.send([serialize_message(Message(header, (notify,)))])
        self._close_failed(f"IKE_SA_INIT refused: {error}", error.notify, 0.0)

    def _answer_init(self, request: Message, spec: ProposalSpec) -> None:
        assert self._dh is not None
        sa = request.find(SaPayload)
        assert sa is not None
        received, _ = select(self._responder_config.ike_proposals, sa, ProtocolId.IKE)
        payloads: list[Payload] = [
            answer(received, spec, b""),
            KePayload(self._dh.group, self._dh.public_bytes),
            NoncePayload(self._nonce_r),
        ]
        if request.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None:
            payloads += self.natd_notifies()
        payloads += self._capability_notifies()
        header = self._exchanges.header(ExchangeType.IKE_SA_INIT, 0, response=True)
        self._init_response = serialize_message(Message(header, tuple(payloads)))
        self._exchanges.send([self._init_response])

    # ==================================================================
    # Responder: IKE_AUTH with EAP (§2.16)

    def _follow_peer(self, src: Address, dst: Address) -> None:
        """§2.23: answer where the authenticated request came from (the float to 4500)."""
        self.remote, self.local = src, dst

    def _on_first_auth_request(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        self._follow_peer(src, dst)
        idi = message.find(IdiPayload)
        if idi is None or message.find(AuthPayload) is not None:
            # Only EAP initiators are configured: one that sends AUTH is refused.
            self._refuse_auth(message.header, "IDi without AUTH (EAP) is required", now)
            return
        self.peer_identity = identity_of(idi)
        self.name = str(self.peer_identity)
        self._auth_request = _AuthRequest(
            idi,
            message.find(ConfigurationPayload),
            message.find(SaPayload),
            message.find(TsiPayload),
            message.find(TsrPayload),
            message.notify(NotifyType.MOBIKE_SUPPORTED) is not None,
            message,
        )
        config = self._responder_config
        self._eap_server = EapServer(
            config.eap_methods,
            config.eap_users,
            self._random,
            ask_identity=config.ask_eap_identity,
            identity=idi.data,
        )
        payloads: list[Payload] = [parse_identity(config.identity).idr()]
        payloads += self._responder_auth_payloads()
        payloads.append(EapPayload(self._eap_server.start()))
        self.state = IkeSaState.EAP
        self._exchanges.respond(message.header, payloads)

    def _responder_auth_payloads(self) -> list[Payload]:
        """CERT chain and AUTH (RFC 7427 method 14 if the peer announced hashes), or PSK."""
        config = self._responder_config
        assert self._suite is not None
        idr_body = parse_identity(config.identity).idr().rest_of_id_payload()
        octets = self._octets(False, idr_body)
        if config.psk is not None:
            return [AuthPayload(AuthMethod.PSK, psk_auth(self._suite.prf, config.psk, octets))]
        credential = config.credential
        assert credential is not None
        method = signature_method(credential.key, self._peer_hashes)
        signature = sign_auth(method, credential.key, octets)
        return [*credential.cert_payloads(), AuthPayload(method, signature)]

    def _refuse_auth(self, request: IkeHeader, reason: str, now: float) -> None:
        self._exchanges.respond(request, [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
        self._close_failed(reason, NotifyType.AUTHENTICATION_FAILED, now)

    def _on_eap_request(self, message: Message, src: Address, dst: Address, now: float) -> None:
        self._follow_peer(src, dst)
        server = self._eap_server
        assert server is not None
        auth, eap = message.find(AuthPayload), message.find(EapPayload)
        if auth is not None and server.result == EapResult.SUCCESS:
            self._on_final_auth_request(message, auth, now)
            return
        reply = server.handle(eap.data) if eap is not None else None
        if reply is None:
            self._refuse_auth(message.header, "IKE_AUTH without a usable EAP message", now)
        elif server.result == EapResult.FAILURE:
            self._exchanges.respond(
                message.header,
                [EapPayload(reply), NotifyPayload(NotifyType.AUTHENTICATION_FAILED)],
            )
            self._close_failed("EAP authentication failed", NotifyType.AUTHENTICATION_FAILED, now)
        else:
            self._exchanges.respond(message.header, [EapPayload(reply)])

    def _on_final_auth_request(self, message: Message, auth: AuthPayload, now: float) -> None:
        """§2.16: the initiator's AUTH from the MSK (SK_pi without one), then ours and the SA."""
        assert self._suite is not None and self._keys is not None
        assert self._eap_server is not None and self._auth_request is not None
        prf, msk = self._suite.prf, self._eap_server.msk
        idi_body = self._auth_request.idi.rest_of_id_payload()
        try:
            verify_shared_key_auth(
                prf, msk or self._keys.sk_pi, self._octets(True, idi_body), auth.data
            )
        except RemoteProtocolError:
            self._refuse_auth(message.header, "initiator AUTH after EAP does not verify", now)
            return
        idr_body = parse_identity(self._responder_config.identity).idr().rest_of_id_payload()
        octets = self._octets(False, idr_body)
        payloads: list[Payload] = [
            AuthPayload(AuthMethod.PSK, eap_auth(prf, msk, self._keys.sk_pr, octets))
        ]
        self._half_open_deadline = None
        self.state = IkeSaState.ESTABLISHED
        self.peer_mobike = self._auth_request.mobike
        self.mobike = self.peer_mobike and self._responder_config.mobike
        self._start_lifetime(now)
        child_payloads, child_result = self._responder_child(self._auth_request, now)
        payloads += child_payloads
        if self.mobike:
            payloads.append(NotifyPayload(NotifyType.MOBIKE_SUPPORTED))
            payloads += self._own_additional_addresses()
        self._exchanges.respond(message.header, payloads)
        self._emit_established()
        self._mobike.read_address_list(self._auth_request.message)  # §3.4
        child_result()

    def _own_additional_addresses(self) -> list[Payload]:
        """§3.4: the configured addresses other than the one this IKE SA uses."""
        ours = ip_of(self.local)
        others = [a for a in self._responder_config.additional_addresses if a != ours]
        return list(additional_address_notifies(others)) if others else []

    # ------------------------------------------------------------------
    # Responder: CP and the first CHILD SA (§2.19, §2.9, §2.17)

    def _lease(self, request: ConfigurationPayload | None) -> ConfigurationPayload | None:
        allocator = self._responder_config.allocator
        if request is None or request.cfg_type != CfgType.CFG_REQUEST or allocator is None:
            return None
        wanted = parse_request(request)
        self._lease_owner = self.local_spi
        leased: list[IPAddress] = []
        for family, address in sorted(wanted.addresses.items()):
            got = allocator.acquire(self._lease_owner, 4 if family == 4 else 6, address)
            if got is not None:
                leased.append(got)
        self.assigned_addresses = tuple(leased)
        if not leased:
            return None
        dns = self._responder_config.dns if wanted.dns else ()
        return build_reply(leased, dns, sorted(wanted.addresses))

    def _responder_child(
        self, request: _AuthRequest, now: float
    ) -> tuple[list[Payload], Callable[[], None]]:
        """Payloads for the CHILD SA part of the last IKE_AUTH response, and its event."""
        reply = self._lease(request.cp)
        payloads: list[Payload] = [reply] if reply is not None else []
        if request.sa is None or request.tsi is None or request.tsr is None:
            return payloads, lambda: None  # childless (RFC 6023 style): nothing to set up
        if request.cp is not None and reply is None and self._responder_config.allocator:
            failure = NotifyType.INTERNAL_ADDRESS_FAILURE
            return [*payloads, NotifyPayload(failure)], lambda: self._child_refused(failure)
        try:
            assert request.sa is not None and request.tsi is not None
            assert request.tsr is not None
            child, spec, sa_answer = accept_child(
                without_key_exchange(self._responder_config.child.esp_proposals),
                request.sa,
                request.tsi,
                request.tsr,
                self.child_selectors(),
                self.new_child_spi,
            )
            self.children[child.spi_in] = child
        except RemoteProtocolError as error:
            notify = error.notify
            return [*payloads, NotifyPayload(notify)], lambda: self._child_refused(notify)
        payloads += [sa_answer, TsiPayload(child.remote_ts), TsrPayload(child.local_ts)]
        return payloads, lambda: self.install_child(child, spec, initiator=False, now=now)

    def _child_refused(self, notify: NotifyType) -> None:
        self.emit(ChildSaFailed(self.local_spi, self.name, notify, "CHILD SA refused"))

    def child_selectors(self) -> tuple[Selectors, Selectors]:
        """(ours, theirs): the selectors this side proposes, or narrows an offer to,
        for a CHILD SA (TSi, TSr when it asks; TSr, TSi when it answers)."""
        if isinstance(self._config, InitiatorConfig):
            if self.assigned_addresses:
                local = tuple(selector_for_address(a) for a in self.assigned_addresses)
            else:
                local = self._dynamic_local_ts()
            return local, selectors_for_networks(self._config.child.remote_ts)
        return selectors_for_networks(self._config.child.local_ts), self._allowed_remote_ts()

    def _allowed_remote_ts(self) -> tuple[TrafficSelector, ...]:
        """TSi: the CP-assigned addresses; else the configured remote_ts; else the peer."""
        if self.assigned_addresses:
            return tuple(selector_for_address(a) for a in self.assigned_addresses)
        remote_ts = self._responder_config.child.remote_ts
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

    def _on_informational_during_setup(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        """An INFORMATIONAL before the SA is up: strongSwan reports a failed
        authentication this way (N(AUTHENTICATION_FAILED) instead of the EAP
        acknowledgement, §2.21.2). Answer it, and end the SA on an error notify."""
        self._exchanges.respond(message.header, [])
        errors = error_notifies(message)
        if errors:
            self._close_failed(f"peer reported {errors[0].name}", errors[0], now)

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
        """Command: an empty INFORMATIONAL; no answer means the peer is dead (§1.4, §2.4)."""
        if self.state != IkeSaState.ESTABLISHED:
            return
        self._exchanges.request(ExchangeType.INFORMATIONAL, [], self._on_liveness_response, now)

    def _on_liveness_response(self, message: Message, now: float) -> None:
        self._exchanges.finish(now)
        self.emit(LivenessConfirmed(self.local_spi, self.name))

    # ------------------------------------------------------------------
    # Commands of MOBIKE (mpa_ike.mobike) and CREATE_CHILD_SA (mpa_ike.rekey)

    def update_addresses(
        self, new_local: Address, now: float, new_remote: Address | None = None
    ) -> None:
        """Command (mobile node): UPDATE_SA_ADDRESSES from our new address (RFC 4555
        §3.5), see :meth:`mpa_ike.mobike.Mobike.move_to`."""
        self._mobike.move_to(new_local, now, new_remote)

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
        self._exchanges.last_heard = now
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
            nonce_i=nonces[0],
        )
        new.continue_from(self, suite, keys, nonces[1], now)
        self._successors.append(new)
        return new

    def continue_from(
        self, old: IkeSa, suite: IkeSuite, keys: IkeKeys, nonce_r: bytes, now: float
    ) -> None:
        """This new IKE SA takes over what ``old`` negotiated (§2.18), with its own keys."""
        self._nonce_r = nonce_r
        self._suite, self._keys = suite, keys
        self._exchanges.protect_with(sk_cipher_pair(suite, keys, self._random))
        self.state = IkeSaState.ESTABLISHED
        self.peer_identity, self.assigned_addresses = old.peer_identity, old.assigned_addresses
        self.dns, self.nat_local, self.nat_remote = old.dns, old.nat_local, old.nat_remote
        self.peer_fragmentation, self.peer_mobike = old.peer_fragmentation, old.peer_mobike
        self.mobike = old.mobike
        self._peer_hashes = old.peer_hash_algorithms
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
            allocator.acquire(self.local_spi, 4 if address.version == 4 else 6, address)

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
        self._half_open_deadline = now + REKEYED_IKE_SA_GRACE
