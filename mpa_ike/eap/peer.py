"""EAP peer (RFC 3748 §2, §4, §5): the mobile node's side, sans-I/O.

Feed each EAP message from the IKEv2 EAP payload to :meth:`EapPeer.handle`
and send back what it returns, if anything. ``handle`` never raises, whatever
the bytes:

* a malformed packet, a Response, a Request for another method in the middle
  of one (§2.1), a method Request the method cannot parse or does not expect,
  and a Success whose Identifier is not the last Response's (§4.2) are
  silently discarded: ``handle`` returns None and nothing changes;
* a repeated Request (same Identifier and content) gets the stored Response
  again (§4.1), even after the conversation ended; a Request that reuses the
  Identifier with other content is a new Request;
* a method failure (wrong password at the server, a wrong authenticator
  response, EAP-Failure, or a Success before the method has finished) sets
  ``result`` to FAILURE and leaves ``msk`` None. The IKE SA then ends the
  exchange (RFC 7296 §2.16); over IKEv2, retransmission is IKE's business.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from mpa_ike.eap.identity import build_identity_response
from mpa_ike.eap.md5 import Md5Value, md5_response, parse_md5
from mpa_ike.eap.mschapv2 import (
    CHALLENGE_LENGTH,
    MsChapAck,
    MsChapChallenge,
    MsChapMessage,
    MsChapResponse,
    OpCode,
    authenticator_response,
    check_authenticator_response,
    derive_msk,
    generate_nt_response,
    hash_nt_password_hash,
    nt_password_hash,
    parse_mschapv2,
    user_name_of,
)
from mpa_ike.eap.packet import EapCode, EapPacket, EapType, build_nak, parse_packet, response
from mpa_ike.eap.result import EapResult
from mpa_ike.errors import CodecError, ConfigError

PEER_METHODS = (EapType.MSCHAPV2, EapType.MD5_CHALLENGE)


class _PeerMethod:
    """One authentication method on the peer side."""

    eap_type: EapType

    def __init__(self) -> None:
        self.finished = False  # EAP-Success may now be accepted
        self.failed = False
        self.msk: bytes | None = None

    def process(self, request: EapPacket) -> bytes | None:
        """Type-Data of the Response, or None to discard the Request."""
        raise NotImplementedError


class _Md5Peer(_PeerMethod):
    """RFC 3748 §5.4: answer each challenge; the server decides."""

    eap_type = EapType.MD5_CHALLENGE

    def __init__(self, password: str) -> None:
        super().__init__()
        self._secret = password.encode()

    def process(self, request: EapPacket) -> bytes | None:
        try:
            challenge = parse_md5(request.data)
        except CodecError:
            return None
        self.finished = True
        return Md5Value(md5_response(request.identifier, self._secret, challenge.value)).to_bytes()


class _MsChapV2Peer(_PeerMethod):
    """draft-kamath-pppext-eap-mschapv2 §2 with RFC 2759 crypto, peer side."""

    eap_type = EapType.MSCHAPV2

    def __init__(self, name: bytes, password: str, random: Callable[[int], bytes]) -> None:
        super().__init__()
        self._name = name
        self._password = password
        self._random = random
        self._expected_auth: bytes | None = None
        self._pending_msk: bytes | None = None

    def process(self, request: EapPacket) -> bytes | None:
        try:
            packet = parse_mschapv2(request.data, from_peer=False)
        except CodecError:
            return None
        if isinstance(packet, MsChapChallenge) and self._expected_auth is None:
            return self._on_challenge(packet)
        if isinstance(packet, MsChapMessage) and self._expected_auth is not None:
            if packet.opcode == OpCode.SUCCESS:
                return self._on_success(packet)
            return self._on_failure()
        return None

    def _on_challenge(self, challenge: MsChapChallenge) -> bytes:
        """RFC 2759 §4: answer with Peer-Challenge and NT-Response; echo MS-CHAPv2-ID."""
        peer_challenge = self._random(CHALLENGE_LENGTH)
        user = user_name_of(self._name)
        nt_response = generate_nt_response(
            challenge.challenge, peer_challenge, user, self._password
        )
        self._expected_auth = authenticator_response(
            self._password, nt_response, peer_challenge, challenge.challenge, user
        )
        hash_hash = hash_nt_password_hash(nt_password_hash(self._password))
        self._pending_msk = derive_msk(hash_hash, nt_response)
        reply = MsChapResponse(challenge.ms_id, peer_challenge, nt_response, self._name)
        return reply.to_bytes()

    def _on_success(self, message: MsChapMessage) -> bytes | None:
        """RFC 2759 §5 / §8.8: verify S= before acknowledging; else end the session."""
        assert self._expected_auth is not None
        if self.finished:
            return None
        received = message.fields().get("S", "")
        if not check_authenticator_response(self._expected_auth, received):
            self.failed = True
            return None
        self.finished = True
        self.msk = self._pending_msk
        return MsChapAck(OpCode.SUCCESS).to_bytes()

    def _on_failure(self) -> bytes:
        """draft-kamath §2: acknowledge a Failure Request; retries are not offered."""
        self.failed = True
        return MsChapAck(OpCode.FAILURE).to_bytes()


class EapPeer:
    """EAP peer for IKEv2 (RFC 7296 §2.16) with EAP-MD5 and EAP-MSCHAPv2."""

    def __init__(
        self,
        identity: bytes | str,
        password: str,
        methods: Iterable[EapType] = PEER_METHODS,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity.encode() if isinstance(identity, str) else identity
        self._password = password
        self.methods = tuple(EapType(m) for m in methods)
        unsupported = [m for m in self.methods if m not in PEER_METHODS]
        if unsupported:
            raise ConfigError(f"EAP methods not implemented: {unsupported}")
        self._random = random
        self._method: _PeerMethod | None = None
        self._last_request: EapPacket | None = None
        self._last_response: bytes | None = None
        self.result = EapResult.PENDING
        self.msk: bytes | None = None

    @property
    def method(self) -> EapType | None:
        """The method the server and this peer settled on, once one was started."""
        return None if self._method is None else self._method.eap_type

    def handle(self, data: bytes) -> bytes | None:
        """Process one EAP message; return the Response to send, or None."""
        try:
            packet = parse_packet(data)
        except CodecError:
            return None  # RFC 3748 §4: silently discard
        if packet.code == EapCode.REQUEST:
            return self._on_request(packet)
        if packet.code == EapCode.SUCCESS:
            self._on_success(packet)
        elif packet.code == EapCode.FAILURE:
            self._on_failure()
        return None

    def _on_request(self, request: EapPacket) -> bytes | None:
        """RFC 3748 §4.1: a duplicate Request gets the stored Response, unprocessed.

        A Request reusing the last Identifier with other content is processed
        as new: strongSwan draws each method's first Identifier at random, so
        after a Nak the new method may repeat the previous Identifier.
        """
        if request == self._last_request:
            return self._last_response
        if self.result != EapResult.PENDING:
            return None
        reply = self._respond(request)
        if reply is not None:
            self._last_request, self._last_response = request, reply
        return reply

    def _respond(self, request: EapPacket) -> bytes | None:
        assert request.type is not None
        if request.type == EapType.IDENTITY:
            # RFC 3748 §5.1
            return build_identity_response(request.identifier, self.identity).to_bytes()
        if request.type == EapType.NOTIFICATION:
            # RFC 3748 §5.2: acknowledge with an empty Notification Response
            return response(request.identifier, EapType.NOTIFICATION).to_bytes()
        if request.type == EapType.NAK:
            return None  # §5.3: Nak is a Response only
        return self._method_request(request)

    def _method_request(self, request: EapPacket) -> bytes | None:
        assert request.type is not None
        if self._method is None:
            if request.type not in self.methods:
                # RFC 3748 §5.3.1: Nak only instead of a method's first Response
                return build_nak(request.identifier, self.methods).to_bytes()
            self._method = self._create_method(request.type)
        if request.type != self._method.eap_type:
            return None  # §2.1: no other method until this one has ended
        data = self._method.process(request)
        if self._method.failed:
            self.result = EapResult.FAILURE
        if data is None:
            return None
        return response(request.identifier, request.type, data).to_bytes()

    def _create_method(self, eap_type: EapType) -> _PeerMethod:
        if eap_type == EapType.MD5_CHALLENGE:
            return _Md5Peer(self._password)
        return _MsChapV2Peer(self.identity, self._password, self._random)

    def _on_success(self, packet: EapPacket) -> None:
        """RFC 3748 §4.2: Success must answer our last Response and end a finished method."""
        if self.result != EapResult.PENDING or self._last_request is None:
            return
        if packet.identifier != self._last_request.identifier:
            return
        if self._method is None or not self._method.finished:
            self.result = EapResult.FAILURE
            return
        self.result = EapResult.SUCCESS
        self.msk = self._method.msk

    def _on_failure(self) -> None:
        """RFC 3748 §4.2: Failure ends the conversation whatever the state."""
        if self.result == EapResult.PENDING:
            self.result = EapResult.FAILURE
        self.msk = None
