"""The initiator's handshake (the mobile node): IKE_SA_INIT with COOKIE and
INVALID_KE_PAYLOAD, then IKE_AUTH with EAP (RFC 7296 §1.2, §2.6, §2.16)::

    HDR, SA, KE, Ni, N(NAT-D)x2, N(FRAG), N(SHA)  -->
                      <--  HDR, SA, KE, Nr, N(NAT-D)x2, N(FRAG), N(SHA)
    HDR, SK{IDi, [CERTREQ], IDr, CP, SA, TSi, TSr, N(MOBIKE)}  -->   (port 4500)
                      <--  HDR, SK{IDr, CERT, AUTH, EAP}
    HDR, SK{EAP}  -->  ...  <--  HDR, SK{EAP(Success)}
    HDR, SK{AUTH}  -->
                      <--  HDR, SK{AUTH, CP, SA, TSi, TSr, N(MOBIKE)}

:class:`InitiatorHandshake` owns what only the set-up needs (the DH exchange, the
nonces and IKE_SA_INIT messages, the COOKIE, the EAP peer, our IDi, the first
CHILD SA's offer); it sees its IKE SA through
:class:`mpa_ike.handshake_common.HandshakeHost` and sends through the SA's
:class:`mpa_ike.exchange.Exchanges`.
"""

from __future__ import annotations

from mpa_ike.certificates import certreq_payload, verify_peer_certificate
from mpa_ike.child_negotiation import Selectors, initiator_local_selectors
from mpa_ike.child_sa import ChildSa, ChildSaState, without_key_exchange
from mpa_ike.config_payload import build_request, parse_reply
from mpa_ike.constants import (
    IKE_PORT,
    NAT_T_PORT,
    AuthMethod,
    CfgType,
    ExchangeType,
    NotifyType,
    ProtocolId,
    TransformType,
)
from mpa_ike.crypto.auth import eap_auth, verify_auth, verify_shared_key_auth
from mpa_ike.crypto.dh import KeyExchange, generate_key_exchange
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.datagram import Address
from mpa_ike.eap import EapPeer, EapResult
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.events import ChildSaFailed
from mpa_ike.exchange import Exchanges
from mpa_ike.handshake_common import (
    AUTH_LIFETIME_SIZE,
    HandshakeHost,
    Transcript,
    auth_failure_in,
    capability_notifies,
    read_capabilities,
)
from mpa_ike.identity import identity_of, parse_identity
from mpa_ike.ike_config import InitiatorConfig, Lifetimes
from mpa_ike.ike_sa_common import (
    CHILD_ERRORS,
    NONCE_SIZE,
    ZERO_SPI,
    IkeSaState,
    Random,
    error_notifies,
    protocol_error,
)
from mpa_ike.sa_payload import check_answer, sa_payload
from mpa_ike.traffic_selectors import acceptable_answer, selectors_for_networks
from mpa_ike.wire import (
    AuthPayload,
    CertPayload,
    ConfigurationPayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
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
from mpa_ike.wire.notify import cookie_notify, read_invalid_ke_group

# RFC 4478 leaves the margin to the initiator: strongSwan's is over_time (10 % of
# rekey_time); here at most this share of a short AUTH_LIFETIME, so that a lifetime
# below over_time does not make the node re-authenticate at once, again and again.
REAUTH_MARGIN_SHARE = 0.2


def reauthentication_delay(lifetime: float, lifetimes: Lifetimes) -> float:
    """How long after IKE_AUTH to re-authenticate, given the gateway's AUTH_LIFETIME."""
    share = lifetime * REAUTH_MARGIN_SHARE
    over_time = lifetimes.ike_over_time
    return lifetime - (min(over_time, share) if over_time else share)


class InitiatorHandshake:
    """The mobile node's set-up of one IKE SA, from IKE_SA_INIT to the first CHILD SA."""

    def __init__(
        self,
        sa: HandshakeHost,
        exchanges: Exchanges,
        config: InitiatorConfig,
        random: Random,
    ) -> None:
        self._sa = sa
        self._exchanges = exchanges
        self._config = config
        self._random = random
        self._transcript = Transcript(nonce_i=random(NONCE_SIZE))
        self._dh: KeyExchange | None = None
        self._cookie: bytes | None = None
        self._init_retries = 0
        self._groups_sent: set[int] = set()
        # Our KE went out without a COOKIE too: an answer without one may be to either.
        self._sent_without_cookie = False
        self._init_ambiguous = False
        self._eap_peer: EapPeer | None = None
        self._idi: IdiPayload | None = None
        self._child: ChildSa | None = None
        self._offered_ts: tuple[Selectors, Selectors] = ((), ())

    # ------------------------------------------------------------------
    # IKE_SA_INIT (§1.2, §2.6)

    def start(self, now: float) -> None:
        """Send IKE_SA_INIT with the first proposal's first group."""
        first_group = self._config.ike_proposals[0].first(TransformType.DH)
        assert first_group is not None
        self._dh = generate_key_exchange(first_group.id, self._random)
        self._send_init(now)

    def _send_init(self, now: float) -> None:
        assert self._dh is not None
        payloads: list[Payload] = []
        if self._cookie is not None:
            payloads.append(cookie_notify(self._cookie))  # §2.6: COOKIE first
        payloads += [
            sa_payload(self._config.ike_proposals),
            KePayload(self._dh.group, self._dh.public_bytes),
            NoncePayload(self._transcript.nonce_i),
            *self._sa.natd_notifies(),
            *capability_notifies(self._config),
        ]
        header = self._exchanges.header(ExchangeType.IKE_SA_INIT, 0, response=False)
        self._transcript.init_request = serialize_message(Message(header, tuple(payloads)))
        self._sa.state = IkeSaState.INIT_SENT
        self._groups_sent.add(self._dh.group)
        without_cookie = self._cookie is None
        self._sent_without_cookie |= without_cookie
        self._exchanges.send_request(
            ExchangeType.IKE_SA_INIT,
            0,
            [self._transcript.init_request],
            self._unused_handler,
            now,
            retransmit=self._config.init_retransmit if without_cookie else None,
        )

    def _unused_handler(self, message: Message, now: float) -> None:
        raise AssertionError("IKE_SA_INIT responses go to on_init_response")

    def on_init_response(
        self, message: Message, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        """§1.2; §2.6 (COOKIE) and §1.3 (INVALID_KE_PAYLOAD) ask for the request again.
        An answer to a copy sent before the request changed asks for what we have done
        already: it is left alone."""
        if self._sa.state != IkeSaState.INIT_SENT:
            return
        cookie = message.notify(NotifyType.COOKIE)
        invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        errors = error_notifies(message)
        if cookie is not None:
            if cookie.data != self._cookie:
                self._retry_init(now, cookie=cookie.data)
        elif invalid_ke is not None:
            group = read_invalid_ke_group(invalid_ke)
            if not self._asked_already(group):
                self._retry_with_group(group, now)
        elif errors:
            self._sa.fail(f"IKE_SA_INIT refused: {errors[0].name}", now, errors[0])
        else:
            self._accept_init_response(message, data, src, dst, now)

    def _retry_init(self, now: float, cookie: bytes | None = None) -> None:
        self._init_retries += 1
        if self._init_retries > self._config.max_init_retries:
            self._sa.fail("too many IKE_SA_INIT retries", now)
            return
        if cookie is not None:
            self._cookie = cookie
        self._exchanges.abandon()
        self._send_init(now)

    def _asked_already(self, group: int) -> bool:
        """An INVALID_KE_PAYLOAD for the group we have switched to answers an earlier copy."""
        assert self._dh is not None
        return group == self._dh.group and len(self._groups_sent) > 1

    def _retry_with_group(self, group: int, now: float) -> None:
        """§1.3/§2.6: retry with the group the responder wants, if we proposed it."""
        proposed = {t.id for p in self._config.ike_proposals for t in p.of_type(TransformType.DH)}
        assert self._dh is not None
        if group not in proposed or group == self._dh.group:
            self._sa.fail(
                f"INVALID_KE_PAYLOAD asks for group {group}, which we did not propose",
                now,
                NotifyType.INVALID_KE_PAYLOAD,
            )
            return
        self._dh = generate_key_exchange(group, self._random)
        self._sent_without_cookie = False
        self._retry_init(now)

    def _accept_init_response(
        self, message: Message, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        """§2.14: the keys from g^ir and the nonces; then IKE_AUTH (§2.23: to 4500)."""
        sa = self._sa
        try:
            spec = self._check_init_response(message)
            read_capabilities(sa, message)
        except RemoteProtocolError as error:
            sa.fail(f"bad IKE_SA_INIT response: {error}", now, error.notify)
            return
        ke, nonce = message.find(KePayload), message.find(NoncePayload)
        assert ke is not None and nonce is not None and self._dh is not None
        try:
            shared = self._dh.shared_secret(ke.data)
        except RemoteProtocolError as error:
            sa.fail(f"bad KE from the responder: {error}", now, error.notify)
            return
        sa.spi_r = message.header.spi_r
        # Our request with the COOKIE is the likelier one; the peer may hold a copy without.
        self._init_ambiguous = self._cookie is not None and self._sent_without_cookie
        self._transcript.init_response, self._transcript.nonce_r = data, nonce.data
        suite = IkeSuite.from_proposal(spec)
        sa.use_keys(suite, self._transcript.derive(suite, sa.spi_i, sa.spi_r, shared))
        sa.detect_nat(message, src, dst)
        self._exchanges.complete()  # IKE_SA_INIT was Message ID 0
        self._float_to_nat_t()
        self._send_first_auth(now)

    def _check_init_response(self, message: Message) -> ProposalSpec:
        sa, ke, nonce = message.find(SaPayload), message.find(KePayload), message.find(NoncePayload)
        if sa is None or ke is None or nonce is None or message.header.spi_r == ZERO_SPI:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, KE and Nr are required")
        _, spec = check_answer(self._config.ike_proposals, sa, ProtocolId.IKE)
        group = spec.first(TransformType.DH)
        assert self._dh is not None
        if group is None or group.id != self._dh.group or ke.group != self._dh.group:
            raise protocol_error(NotifyType.INVALID_KE_PAYLOAD, "the responder's group is not ours")
        return spec

    def _float_to_nat_t(self) -> None:
        """RFC 7296 §2.23 behind a NAT, RFC 4555 §3.3 with MOBIKE: IKE_AUTH goes to 4500."""
        sa = self._sa
        if not (sa.encap or self._config.mobike):
            return
        if sa.local[1] == IKE_PORT:
            sa.local = (sa.local[0], NAT_T_PORT)
        if sa.remote[1] == IKE_PORT:
            sa.remote = (sa.remote[0], NAT_T_PORT)

    # ------------------------------------------------------------------
    # IKE_AUTH with EAP (§2.16)

    def _send_first_auth(self, now: float) -> None:
        """§1.2, §2.16: IDi without AUTH asks for EAP; CP (§2.19), SA and TS (§2.9)."""
        config = self._config
        identity = parse_identity(config.identity)
        eap_identity = config.eap_identity.encode() if config.eap_identity else identity.data
        self._eap_peer = EapPeer(
            eap_identity, config.eap_password, config.eap_methods, self._random
        )
        self._child = ChildSa(spi_in=self._sa.new_child_spi())
        self._sa.children[self._child.spi_in] = self._child
        self._offered_ts = (
            initiator_local_selectors(config),
            selectors_for_networks(config.child.remote_ts),
        )
        self._idi = identity.idi()
        self._sa.state = IkeSaState.AUTH_SENT
        self._exchanges.request(
            ExchangeType.IKE_AUTH, self._first_auth_payloads(), self._on_first_auth_response, now
        )

    def _first_auth_payloads(self) -> list[Payload]:
        config = self._config
        assert self._idi is not None and self._child is not None
        payloads: list[Payload] = [self._idi]
        if config.ca:
            payloads.append(certreq_payload(config.ca))
        tsi, tsr = self._offered_ts
        payloads += [
            parse_identity(config.remote_id).idr(),
            build_request(config.virtual_ip_families, self._sa.requested_addresses),
            sa_payload(without_key_exchange(config.child.esp_proposals), self._child.spi_in),
            TsiPayload(tsi),
            TsrPayload(tsr),
        ]
        if config.mobike:
            payloads.append(NotifyPayload(NotifyType.MOBIKE_SUPPORTED))
        if self._sa.initial_contact:
            # §2.4: our first IKE SA with this peer: older ones of ours are gone.
            payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
        return payloads

    def _refused(self, message: Message, now: float) -> bool:
        """§2.21.2: an error notify in an IKE_AUTH response ends the SA."""
        error = auth_failure_in(message)
        if error is None:
            return False
        if error == NotifyType.AUTHENTICATION_FAILED and self._init_ambiguous:
            reason = (
                "IKE_AUTH refused: AUTHENTICATION_FAILED (the IKE_SA_INIT answer taken "
                "may have answered our request without the COOKIE)"
            )
            self._sa.fail(reason, now, error, retry=True)
        else:
            self._sa.fail(f"IKE_AUTH refused: {error.name}", now, error)
        return True

    def _on_first_auth_response(self, message: Message, now: float) -> None:
        """The gateway's IDr, [CERT], AUTH and first EAP Request (§2.16)."""
        self._exchanges.finish(now)
        if self._refused(message, now):
            return
        try:
            self._verify_responder(message)
        except RemoteProtocolError as failure:
            self._sa.tell_and_fail(f"gateway authentication failed: {failure}", failure.notify)
            return
        self._continue_eap(message, now)

    def _verify_responder(self, message: Message) -> None:
        """§2.15: check IDr against the configured id, then AUTH (certificate or PSK)."""
        config = self._config
        idr, auth = message.find(IdrPayload), message.find(AuthPayload)
        if idr is None or auth is None:
            raise protocol_error(NotifyType.AUTHENTICATION_FAILED, "IDr and AUTH are required")
        expected = parse_identity(config.remote_id)
        if identity_of(idr) != expected:
            raise protocol_error(
                NotifyType.AUTHENTICATION_FAILED, f"gateway is not {config.remote_id}"
            )
        octets = self._transcript.octets(False, idr.rest_of_id_payload())
        suite = self._transcript.suite
        assert suite is not None
        if config.psk is not None:
            if auth.method != AuthMethod.PSK:
                raise protocol_error(
                    NotifyType.AUTHENTICATION_FAILED, "expected PSK authentication"
                )
            verify_shared_key_auth(suite.prf, config.psk, octets, auth.data)
        else:
            assert config.wall_clock is not None
            key = verify_peer_certificate(
                message.find_all(CertPayload), config.ca, expected, config.wall_clock()
            )
            verify_auth(auth.method, key, octets, auth.data)
        self._sa.peer_identity = expected

    def _continue_eap(self, message: Message, now: float) -> None:
        """Feed the EAP payload to the peer; answer, or send AUTH after EAP-Success."""
        peer = self._eap_peer
        eap = message.find(EapPayload)
        assert peer is not None
        if eap is None:
            self._sa.fail("IKE_AUTH response without EAP", now, NotifyType.AUTHENTICATION_FAILED)
            return
        reply = peer.handle(eap.data)
        if peer.result == EapResult.SUCCESS:
            self._send_final_auth(now)
        elif reply is not None:
            # Also after a method failure: MSCHAPv2 acknowledges its Failure
            # Request, and the server then ends with EAP-Failure.
            self._sa.state = IkeSaState.EAP_SENT
            self._exchanges.request(
                ExchangeType.IKE_AUTH, [EapPayload(reply)], self._on_eap_response, now
            )
        elif peer.result == EapResult.FAILURE:
            self._sa.fail("EAP authentication failed", now, NotifyType.AUTHENTICATION_FAILED)
        else:
            self._sa.tell_and_fail("unusable EAP request", NotifyType.AUTHENTICATION_FAILED)

    def _on_eap_response(self, message: Message, now: float) -> None:
        self._exchanges.finish(now)
        if not self._refused(message, now):
            self._continue_eap(message, now)

    def _send_final_auth(self, now: float) -> None:
        """§2.16: AUTH keyed by the MSK, or SK_pi when the method has none (EAP-MD5)."""
        transcript, peer = self._transcript, self._eap_peer
        assert transcript.suite is not None and transcript.keys is not None
        assert peer is not None and self._idi is not None
        octets = transcript.octets(True, self._idi.rest_of_id_payload())
        data = eap_auth(transcript.suite.prf, peer.msk, transcript.keys.sk_pi, octets)
        self._sa.state = IkeSaState.AUTH_FINAL_SENT
        self._exchanges.request(
            ExchangeType.IKE_AUTH,
            [AuthPayload(AuthMethod.PSK, data)],
            self._on_final_auth_response,
            now,
        )

    def _on_final_auth_response(self, message: Message, now: float) -> None:
        """§2.16: the gateway's AUTH from the MSK (SK_pr without one), then the SA is up."""
        self._exchanges.finish(now)
        if self._refused(message, now):
            return
        try:
            self._verify_final_auth(message.find(AuthPayload))
        except RemoteProtocolError as failure:
            self._sa.tell_and_fail(f"gateway AUTH after EAP: {failure}", failure.notify)
            return
        self._establish(message, now)

    def _verify_final_auth(self, auth: AuthPayload | None) -> None:
        transcript, peer = self._transcript, self._eap_peer
        assert transcript.suite is not None and transcript.keys is not None and peer is not None
        if auth is None:
            raise protocol_error(NotifyType.AUTHENTICATION_FAILED, "no AUTH after EAP")
        idr_body = parse_identity(self._config.remote_id).idr().rest_of_id_payload()
        key = peer.msk or transcript.keys.sk_pr
        octets = transcript.octets(False, idr_body)
        verify_shared_key_auth(transcript.suite.prf, key, octets, auth.data)

    def _establish(self, message: Message, now: float) -> None:
        """§2.19: the CP-assigned addresses; RFC 4555 §3.4: the gateway's list."""
        sa = self._sa
        cp = message.find(ConfigurationPayload)
        if cp is not None and cp.cfg_type == CfgType.CFG_REPLY:
            reply = parse_reply(cp)
            sa.assigned_addresses, sa.dns = reply.addresses, reply.dns
            sa.netmask, sa.subnets = reply.netmask, reply.subnets
        sa.peer_mobike = message.notify(NotifyType.MOBIKE_SUPPORTED) is not None
        sa.mobike = self._config.mobike and sa.peer_mobike
        self._schedule_reauthentication(message.notify(NotifyType.AUTH_LIFETIME), now)
        sa.establish(now)
        sa.read_address_list(message)
        self._child_result(message, now)

    def _schedule_reauthentication(self, notify: NotifyPayload | None, now: float) -> None:
        """RFC 4478 §2: N(AUTH_LIFETIME), the seconds the gateway grants before it ends the
        IKE SA; we authenticate again a margin before (or at our own reauth_time)."""
        sa, reauth_time = self._sa, self._config.lifetimes.ike_reauth_time
        candidates = [now + reauth_time] if reauth_time is not None else []
        if notify is not None and len(notify.data) == AUTH_LIFETIME_SIZE:
            lifetime = float(int.from_bytes(notify.data, "big"))
            sa.reauth_deadline = now + lifetime
            candidates.append(now + reauthentication_delay(lifetime, self._config.lifetimes))
        elif notify is not None:
            sa.counters["dropped_malformed_auth_lifetime"] += 1
        sa.reauth_at = min(candidates, default=None)

    # ------------------------------------------------------------------
    # The first CHILD SA (§1.2, §2.9, §2.17)

    def _child_result(self, message: Message, now: float) -> None:
        """§2.21.3: a refused CHILD SA leaves the IKE SA up."""
        child = self._child
        assert child is not None
        errors = [n for n in error_notifies(message) if n in CHILD_ERRORS]
        sa, tsi, tsr = message.find(SaPayload), message.find(TsiPayload), message.find(TsrPayload)
        if errors or sa is None or tsi is None or tsr is None:
            notify = errors[0] if errors else NotifyType.NO_PROPOSAL_CHOSEN
            self._fail_child(child, notify, "CHILD SA refused by the gateway")
            return
        try:
            spec, spi_out = self._check_child_answer(sa, tsi, tsr)
        except RemoteProtocolError as error:
            self._fail_child(child, error.notify, f"unacceptable CHILD SA answer: {error}")
            return
        child.spi_out = spi_out
        child.local_ts = tuple(t for t in tsi.selectors if isinstance(t, TrafficSelector))
        child.remote_ts = tuple(t for t in tsr.selectors if isinstance(t, TrafficSelector))
        nonces = self._transcript.nonces
        self._sa.install_child(child, spec, initiator=True, now=now, nonces=nonces)

    def _check_child_answer(
        self, sa: SaPayload, tsi: TsiPayload, tsr: TsrPayload
    ) -> tuple[ProposalSpec, bytes]:
        proposals = without_key_exchange(self._config.child.esp_proposals)
        proposal, spec = check_answer(proposals, sa, ProtocolId.ESP)
        if len(proposal.spi) != 4:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "ESP SPI must be 4 octets")
        offered_i, offered_r = self._offered_ts
        if not acceptable_answer(tsi.selectors, offered_i) or not acceptable_answer(
            tsr.selectors, offered_r
        ):
            raise protocol_error(NotifyType.TS_UNACCEPTABLE, "selectors not within those proposed")
        return spec, proposal.spi

    def _fail_child(self, child: ChildSa, notify: NotifyType, reason: str) -> None:
        child.state = ChildSaState.FAILED
        self._sa.children.pop(child.spi_in, None)
        self._sa.emit(ChildSaFailed(self._sa.local_spi, self._sa.name, notify, reason))
