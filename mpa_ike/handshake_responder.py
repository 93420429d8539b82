"""The responder's handshake (the gateway): IKE_SA_INIT, then IKE_AUTH with EAP,
CP and the first CHILD SA (RFC 7296 §1.2, §2.16, §2.19)::

    HDR, SA, KE, Ni, N(NAT-D)x2  -->          (the endpoint checked COOKIE, §2.6)
                      <--  HDR, SA, KE, Nr, N(NAT-D)x2, N(FRAG), N(SHA)
    HDR, SK{IDi, [CERTREQ], IDr, CP, SA, TSi, TSr, N(MOBIKE)}  -->
                      <--  HDR, SK{IDr, CERT, AUTH, EAP(Request)}
    HDR, SK{EAP(Response)}  -->  ...  <--  HDR, SK{EAP(Success)}
    HDR, SK{AUTH}  -->
                      <--  HDR, SK{AUTH, CP, SA, TSi, TSr, N(MOBIKE), N(ADDITIONAL_*),
                               [N(AUTH_LIFETIME)]}

Each EAP message of the peer goes to an :class:`mpa_ike.eap.EapAuthenticator`: the
gateway's own EAP server answers at once; an external one (a RADIUS server behind
the glue) later: the handshake emits :class:`mpa_ike.events.EapRequestForAaa`, holds
the IKE_AUTH response (the peer's retransmissions are absorbed meanwhile) and sends
it when :meth:`ResponderHandshake.eap_answer` brings the answer.

:class:`ResponderHandshake` owns what only the set-up needs (the DH exchange, the
nonces and IKE_SA_INIT messages, the EAP conversation, what the first IKE_AUTH
request asked for); it sees its IKE SA through
:class:`mpa_ike.handshake_common.HandshakeHost` and sends through the SA's
:class:`mpa_ike.exchange.Exchanges`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from mpa_ike.certificates import signature_method
from mpa_ike.child_negotiation import Selectors, accept_child
from mpa_ike.child_sa import without_key_exchange
from mpa_ike.config_payload import build_reply, parse_request
from mpa_ike.constants import (
    AuthMethod,
    CfgType,
    DhGroup,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    ProtocolId,
    TransformType,
)
from mpa_ike.crypto.auth import eap_auth, psk_auth, sign_auth, verify_shared_key_auth
from mpa_ike.crypto.dh import KeyExchange, generate_key_exchange
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.datagram import Address
from mpa_ike.eap import (
    EapAnswer,
    EapAuthenticator,
    EapResult,
    EapServer,
    ExternalEapAuthenticator,
    LocalEapAuthenticator,
)
from mpa_ike.errors import LocalProtocolError, RemoteProtocolError
from mpa_ike.events import ChildSaFailed, EapRequestForAaa
from mpa_ike.exchange import Exchanges
from mpa_ike.handshake_common import (
    AUTH_LIFETIME_SIZE,
    HandshakeHost,
    Transcript,
    capability_notifies,
)
from mpa_ike.handshake_common import read_capabilities as read_peer_capabilities
from mpa_ike.identity import identity_of, parse_identity
from mpa_ike.ike_config import ResponderConfig
from mpa_ike.ike_sa_common import (
    NONCE_SIZE,
    ZERO_SPI,
    IkeSaState,
    Random,
    ip_of,
    protocol_error,
)
from mpa_ike.mobike import additional_address_notifies
from mpa_ike.sa_payload import answer, select
from mpa_ike.wire import (
    AuthPayload,
    ConfigurationPayload,
    EapPayload,
    IdiPayload,
    IkeHeader,
    IPAddress,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
    serialize_message,
)
from mpa_ike.wire.notify import invalid_ke_notify

ChildSelectors = Callable[[], tuple[Selectors, Selectors]]


@dataclass
class AuthRequest:
    """What the responder keeps of the first IKE_AUTH request for its last answer."""

    idi: IdiPayload
    cp: ConfigurationPayload | None
    sa: SaPayload | None
    tsi: TsiPayload | None
    tsr: TsrPayload | None
    mobike: bool
    message: Message  # for its ADDITIONAL_*_ADDRESS list (RFC 4555 §3.4)

    @classmethod
    def of(cls, message: Message, idi: IdiPayload) -> AuthRequest:
        return cls(
            idi,
            message.find(ConfigurationPayload),
            message.find(SaPayload),
            message.find(TsiPayload),
            message.find(TsrPayload),
            message.notify(NotifyType.MOBIKE_SUPPORTED) is not None,
            message,
        )


@dataclass
class HeldResponse:
    """An IKE_AUTH response waiting for the external authenticator's answer."""

    request: IkeHeader
    payloads: list[Payload]  # what goes before the EAP payload (IDr, CERT, AUTH)


class ResponderHandshake:
    """The gateway's set-up of one IKE SA, from IKE_SA_INIT to the first CHILD SA.

    ``child_selectors`` gives (ours, theirs) for narrowing the first CHILD SA's
    selectors once the CP addresses are known (the IKE SA's ``child_selectors``).
    """

    def __init__(
        self,
        sa: HandshakeHost,
        exchanges: Exchanges,
        config: ResponderConfig,
        random: Random,
        child_selectors: ChildSelectors,
    ) -> None:
        self._sa = sa
        self._exchanges = exchanges
        self._config = config
        self._random = random
        self._child_selectors = child_selectors
        self._transcript = Transcript()
        self._dh: KeyExchange | None = None
        self._request: AuthRequest | None = None
        self._authenticator: EapAuthenticator | None = None
        self._held: HeldResponse | None = None
        self._eap_success: EapAnswer | None = None

    # ------------------------------------------------------------------
    # IKE_SA_INIT (§1.2, §2.6)

    def receive_init_request(self, message: Message, data: bytes, now: float) -> None:
        """Answer a new IKE_SA_INIT request (the endpoint checked COOKIE)."""
        sa = self._sa
        sa.spi_i = message.header.spi_i
        try:
            spec, ke = self._select_ike(message)
            read_peer_capabilities(sa, message)
        except RemoteProtocolError as error:  # a malformed notify too (INVALID_SYNTAX)
            self._refuse_init(message.header, error)
            return
        nonce = message.find(NoncePayload)
        assert nonce is not None
        self._transcript.nonce_i, self._transcript.init_request = nonce.data, data
        sa.spi_r = sa.new_ike_spi()
        self._transcript.nonce_r = self._random(NONCE_SIZE)
        suite = IkeSuite.from_proposal(spec)
        self._dh = generate_key_exchange(suite.dh_group, self._random)
        try:
            shared = self._dh.shared_secret(ke.data)
        except RemoteProtocolError as error:
            self._refuse_init(message.header, error)
            return
        sa.detect_nat(message, sa.remote, sa.local, spi_r=ZERO_SPI)
        self._answer_init(message, spec)
        sa.use_keys(suite, self._transcript.derive(suite, sa.spi_i, sa.spi_r, shared))
        sa.state = IkeSaState.INIT_DONE
        self._exchanges.init_answered()
        sa.expire_at(now + self._config.half_open_timeout)

    def _select_ike(self, message: Message) -> tuple[ProposalSpec, KePayload]:
        sa, ke, nonce = message.find(SaPayload), message.find(KePayload), message.find(NoncePayload)
        if sa is None or ke is None or nonce is None:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, KE and Ni are required")
        _, spec = select(self._config.ike_proposals, sa, ProtocolId.IKE)
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
        """§2.21.1: stateless error answer to IKE_SA_INIT; the endpoint drops the SA."""
        header = IkeHeader(
            request.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, int(HeaderFlag.RESPONSE), 0
        )
        notify = NotifyPayload(error.notify, data=error.data)
        self._exchanges.send([serialize_message(Message(header, (notify,)))])
        self._sa.fail(f"IKE_SA_INIT refused: {error}", 0.0, error.notify)

    def _answer_init(self, request: Message, spec: ProposalSpec) -> None:
        assert self._dh is not None
        sa = request.find(SaPayload)
        assert sa is not None
        received, _ = select(self._config.ike_proposals, sa, ProtocolId.IKE)
        payloads: list[Payload] = [
            answer(received, spec, b""),
            KePayload(self._dh.group, self._dh.public_bytes),
            NoncePayload(self._transcript.nonce_r),
        ]
        if request.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None:
            payloads += self._sa.natd_notifies()
        payloads += capability_notifies(self._config)
        header = self._exchanges.header(ExchangeType.IKE_SA_INIT, 0, response=True)
        self._transcript.init_response = serialize_message(Message(header, tuple(payloads)))
        self._exchanges.send([self._transcript.init_response])

    def resend_init_response(self, src: Address, dst: Address) -> None:
        """§2.1: a retransmitted IKE_SA_INIT request gets the same response."""
        if self._transcript.init_response:
            self._sa.counters["retransmissions_answered"] += 1
            self._exchanges.send_to(self._transcript.init_response, dst, src)

    # ------------------------------------------------------------------
    # IKE_AUTH with EAP (§2.16)

    def _follow_peer(self, src: Address, dst: Address) -> None:
        """§2.23: answer where the authenticated request came from (the float to 4500)."""
        self._sa.remote, self._sa.local = src, dst

    def on_first_auth_request(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        """§1.2, §2.16: IDi without AUTH: our IDr, CERT and AUTH, and the first EAP Request."""
        self._follow_peer(src, dst)
        idi = message.find(IdiPayload)
        if idi is None or message.find(AuthPayload) is not None:
            # Only EAP initiators are configured: one that sends AUTH is refused.
            self._refuse_auth(message.header, "IDi without AUTH (EAP) is required", now)
            return
        sa, config = self._sa, self._config
        sa.peer_identity = identity_of(idi)
        sa.name = str(sa.peer_identity)
        sa.initial_contact = message.notify(NotifyType.INITIAL_CONTACT) is not None
        self._request = AuthRequest.of(message, idi)
        self._authenticator = self._new_authenticator(idi)
        payloads: list[Payload] = [parse_identity(config.identity).idr()]
        payloads += self._auth_payloads()
        sa.state = IkeSaState.EAP
        self._ask(message.header, payloads, b"", now)

    def _new_authenticator(self, idi: IdiPayload) -> EapAuthenticator:
        config = self._config
        if config.eap_authenticator == "external":
            return ExternalEapAuthenticator()
        server = EapServer(
            config.eap_methods,
            config.eap_users,
            self._random,
            ask_identity=config.ask_eap_identity,
            identity=idi.data,
        )
        return LocalEapAuthenticator(server)

    def _auth_payloads(self) -> list[Payload]:
        """§2.15: CERT chain and AUTH (RFC 7427 method 14 if the peer announced
        hashes), or a PSK AUTH."""
        config, transcript = self._config, self._transcript
        assert transcript.suite is not None
        idr_body = parse_identity(config.identity).idr().rest_of_id_payload()
        octets = transcript.octets(False, idr_body)
        if config.psk is not None:
            return [AuthPayload(AuthMethod.PSK, psk_auth(transcript.suite.prf, config.psk, octets))]
        credential = config.credential
        assert credential is not None
        method = signature_method(credential.key, self._sa.peer_hash_algorithms)
        signature = sign_auth(method, credential.key, octets)
        return [*credential.cert_payloads(), AuthPayload(method, signature)]

    def _refuse_auth(self, request: IkeHeader, reason: str, now: float) -> None:
        """§2.21.2: N(AUTHENTICATION_FAILED) in the response, and the SA is gone."""
        self._exchanges.respond(request, [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
        self._sa.fail(reason, now, NotifyType.AUTHENTICATION_FAILED)

    def on_eap_request(self, message: Message, src: Address, dst: Address, now: float) -> None:
        """§2.16: an EAP Response for the authenticator, or the final AUTH after
        EAP-Success."""
        self._follow_peer(src, dst)
        auth, eap = message.find(AuthPayload), message.find(EapPayload)
        if self._eap_success is not None and auth is not None:
            self._on_final_auth_request(message, auth, now)
        elif self._eap_success is not None or eap is None:
            self._refuse_auth(message.header, "IKE_AUTH without a usable EAP message", now)
        else:
            self._ask(message.header, [], eap.data, now)

    def _ask(
        self, request: IkeHeader, payloads: list[Payload], eap_message: bytes, now: float
    ) -> None:
        """The authenticator's answer to ``eap_message`` (empty: the first Request), now
        or, for an external one, when :meth:`eap_answer` brings it."""
        authenticator = self._authenticator
        assert authenticator is not None
        answer = authenticator.handle(eap_message) if eap_message else authenticator.start()
        if answer is not None:
            self._answer(request, payloads, answer, now)
            return
        self._held = HeldResponse(request, payloads)
        self._exchanges.hold(request)
        sa, auth_request = self._sa, self._request
        assert auth_request is not None
        sa.counters["eap_messages_relayed"] += 1
        identity = auth_request.idi.data
        sa.emit(EapRequestForAaa(sa.local_spi, sa.name, identity, eap_message, sa.remote))

    def eap_answer(self, answer: EapAnswer, now: float) -> None:
        """The external authenticator's answer: the held IKE_AUTH response goes out."""
        held = self._held
        if held is None:
            raise LocalProtocolError("no EAP answer is awaited")
        self._held = None
        self._answer(held.request, held.payloads, answer, now)

    def _answer(
        self, request: IkeHeader, payloads: list[Payload], answer: EapAnswer, now: float
    ) -> None:
        """§2.16: the next EAP Request or EAP-Success; on failure (§2.21.2) EAP-Failure
        and N(AUTHENTICATION_FAILED), and the SA is gone."""
        eap = [EapPayload(answer.eap_message)] if answer.eap_message else []
        if answer.result != EapResult.FAILURE:
            if answer.result == EapResult.SUCCESS:
                self._eap_success = answer
            self._exchanges.respond(request, [*payloads, *eap])
            return
        failed = NotifyPayload(NotifyType.AUTHENTICATION_FAILED)
        self._exchanges.respond(request, [*payloads, *eap, failed])
        reason = "EAP authentication failed" if eap else "IKE_AUTH without a usable EAP message"
        self._sa.fail(reason, now, NotifyType.AUTHENTICATION_FAILED)

    def _on_final_auth_request(self, message: Message, auth: AuthPayload, now: float) -> None:
        """§2.16: the initiator's AUTH from the MSK (SK_pi without one), then ours and the SA."""
        transcript, request = self._transcript, self._request
        assert transcript.suite is not None and transcript.keys is not None
        assert self._eap_success is not None and request is not None
        prf, msk = transcript.suite.prf, self._eap_success.msk
        idi_octets = transcript.octets(True, request.idi.rest_of_id_payload())
        try:
            verify_shared_key_auth(prf, msk or transcript.keys.sk_pi, idi_octets, auth.data)
        except RemoteProtocolError:
            self._refuse_auth(message.header, "initiator AUTH after EAP does not verify", now)
            return
        idr_body = parse_identity(self._config.identity).idr().rest_of_id_payload()
        octets = transcript.octets(False, idr_body)
        payloads: list[Payload] = [
            AuthPayload(AuthMethod.PSK, eap_auth(prf, msk, transcript.keys.sk_pr, octets))
        ]
        if self._eap_success.identity:
            # Uniqueness, INITIAL_CONTACT and the lease go by who EAP authenticated.
            self._sa.eap_identity = self._eap_success.identity.decode("utf-8", "replace")
        refusal = self._sa.admit(now)
        if refusal is not None:
            # strongSwan's unique=keep (the older IKE SA of this identity stays), or the
            # gateway's cap of IKE SAs per identity.
            self._refuse_auth(message.header, refusal, now)
            return
        self._establish(message.header, request, payloads, now)

    def _establish(
        self, header: IkeHeader, request: AuthRequest, payloads: list[Payload], now: float
    ) -> None:
        """The last IKE_AUTH response: CP (§2.19), the CHILD SA (§2.9), MOBIKE (RFC 4555
        §3.2, §3.4); the SA is up."""
        sa = self._sa
        sa.peer_mobike = request.mobike
        sa.mobike = sa.peer_mobike and self._config.mobike
        success = self._eap_success
        assert success is not None
        reply = self._lease(request.cp, success.addresses)
        sa.establish(now)
        child_payloads, child_result = self._first_child(request, reply, now)
        payloads += child_payloads
        if sa.mobike:
            payloads.append(NotifyPayload(NotifyType.MOBIKE_SUPPORTED))
            payloads += self._own_additional_addresses()
        payloads += self._session_limit(self._authentication_lifetime(success), now)
        self._exchanges.respond(header, payloads)
        sa.read_address_list(request.message)  # RFC 4555 §3.4
        child_result()

    def _authentication_lifetime(self, success: EapAnswer) -> float | None:
        """The AAA's Session-Timeout or our reauth_time, the shorter (None: neither)."""
        limits = [success.session_timeout, self._config.lifetimes.ike_reauth_time]
        return min((t for t in limits if t is not None), default=None)

    def _session_limit(self, timeout: float | None, now: float) -> list[Payload]:
        """The AAA's Session-Timeout (RFC 2865 §5.27) or our reauth_time: the IKE SA ends
        then, and RFC 4478 §2's AUTH_LIFETIME tells the peer, to authenticate again
        before (make-before-break, with a new IKE SA)."""
        if timeout is None:
            return []
        self._sa.session_end = now + timeout
        seconds = min(int(timeout), 2**32 - 1).to_bytes(AUTH_LIFETIME_SIZE, "big")
        return [NotifyPayload(NotifyType.AUTH_LIFETIME, data=seconds)]

    def _own_additional_addresses(self) -> list[Payload]:
        """RFC 4555 §3.4: the configured addresses other than the one this IKE SA uses."""
        ours = ip_of(self._sa.local)
        others = [a for a in self._config.additional_addresses if a != ours]
        return list(additional_address_notifies(others)) if others else []

    # ------------------------------------------------------------------
    # CP and the first CHILD SA (§2.19, §2.9, §2.17)

    def _lease(
        self, request: ConfigurationPayload | None, from_aaa: tuple[IPAddress, ...]
    ) -> ConfigurationPayload | None:
        """§2.19: an address of each family asked for, the AAA's (not leased from the
        pool) or a lease; the CFG_REPLY, or None."""
        if request is None or request.cfg_type != CfgType.CFG_REQUEST:
            return None
        wanted = parse_request(request)
        given = {a.version: a for a in reversed(from_aaa) if a.version in wanted.addresses}
        rest = {f: a for f, a in wanted.addresses.items() if f not in given}
        leased = self._sa.lease_addresses(rest) if rest else ()
        addresses = tuple(sorted([*given.values(), *leased], key=lambda a: a.version))
        sa, config = self._sa, self._config
        sa.assigned_addresses = addresses
        if not addresses:
            return None
        dns = config.dns if wanted.dns else ()
        families = sorted(wanted.addresses)
        sa.netmask = self._netmask(addresses)
        sa.subnets = tuple(s for s in config.subnets if s.version in families)
        return build_reply(addresses, dns, families, netmask=sa.netmask, subnets=sa.subnets)

    def _netmask(self, addresses: tuple[IPAddress, ...]) -> IPv4Address | None:
        """§3.15.1: the netmask of the pool network the IPv4 address lies in."""
        allocator = self._config.allocator
        v4 = next((a for a in addresses if isinstance(a, IPv4Address)), None)
        network = allocator.network_of(v4) if allocator is not None and v4 is not None else None
        return network.netmask if isinstance(network, IPv4Network) else None

    def _first_child(
        self, request: AuthRequest, reply: ConfigurationPayload | None, now: float
    ) -> tuple[list[Payload], Callable[[], None]]:
        """Payloads for the CHILD SA part of the last IKE_AUTH response, and its event."""
        payloads: list[Payload] = [reply] if reply is not None else []
        if request.sa is None or request.tsi is None or request.tsr is None:
            return payloads, lambda: None  # childless (RFC 6023 style): nothing to set up
        if request.cp is not None and reply is None and self._config.allocator:
            failure = NotifyType.INTERNAL_ADDRESS_FAILURE
            return [*payloads, NotifyPayload(failure)], lambda: self._child_refused(failure)
        try:
            child, spec, sa_answer = accept_child(
                without_key_exchange(self._config.child.esp_proposals),
                request.sa,
                request.tsi,
                request.tsr,
                self._child_selectors(),
                self._sa.new_child_spi,
            )
        except RemoteProtocolError as error:
            notify = error.notify
            return [*payloads, NotifyPayload(notify)], lambda: self._child_refused(notify)
        self._sa.children[child.spi_in] = child
        payloads += [sa_answer, TsiPayload(child.remote_ts), TsrPayload(child.local_ts)]
        nonces = self._transcript.nonces
        return payloads, lambda: self._sa.install_child(
            child, spec, initiator=False, now=now, nonces=nonces
        )

    def _child_refused(self, notify: NotifyType) -> None:
        sa = self._sa
        sa.emit(ChildSaFailed(sa.local_spi, sa.name, notify, "CHILD SA refused"))
