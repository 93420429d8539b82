"""EAP server (RFC 3748 §2, §4, §5): the gateway's side, sans-I/O.

:meth:`EapServer.start` gives the first Request; each Response from the IKEv2
EAP payload goes to :meth:`EapServer.handle`, which returns the next Request,
an EAP-Success or an EAP-Failure. ``handle`` never raises, whatever the bytes:

* unparsable packets, anything but a Response, and a Response whose
  Identifier is not the outstanding Request's are silently discarded (§4.1):
  ``handle`` returns None and nothing changes;
* a Response of the wrong type, a Nak that is not the first answer to a
  method Request (§5.3.1), malformed method data, an unknown user or a wrong
  password end the conversation with EAP-Failure, as strongSwan does.

Conversation: EAP-Identity (unless ``ask_identity`` is off and the IKE
initiator's IDi is the identity), then the first configured method; a Nak
naming another configured method switches to it once (strongSwan's
eap-dynamic); EAP-MSCHAPv2 ends with its own Success or Failure Request and
the peer's acknowledgement before EAP-Success or EAP-Failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from hmac import compare_digest

from mpa_ike.crypto.randomness import Random
from mpa_ike.eap.identity import build_identity_request, identity_of
from mpa_ike.eap.md5 import CHALLENGE_LENGTH as MD5_CHALLENGE_LENGTH
from mpa_ike.eap.md5 import Md5Value, md5_response_matches, parse_md5
from mpa_ike.eap.mschapv2 import (
    CHALLENGE_LENGTH,
    ERROR_AUTHENTICATION_FAILURE,
    MsChapAck,
    MsChapChallenge,
    MsChapMessage,
    MsChapResponse,
    OpCode,
    authenticator_response,
    derive_msk,
    format_authenticator_response,
    generate_nt_response,
    hash_nt_password_hash,
    nt_password_hash,
    parse_mschapv2,
    user_name_of,
)
from mpa_ike.eap.packet import (
    EapCode,
    EapPacket,
    EapType,
    failure,
    parse_nak,
    parse_packet,
    request,
    success,
)
from mpa_ike.eap.result import EapResult
from mpa_ike.errors import CodecError, ConfigError, LocalProtocolError

SERVER_METHODS = (EapType.MSCHAPV2, EapType.MD5_CHALLENGE)
SERVER_NAME = b"mpa-ike"

UserLookup = Callable[[bytes], str | None]


class _Verdict(Enum):
    CONTINUE = "continue"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class _Step:
    verdict: _Verdict
    data: bytes = b""  # Type-Data of the next Request when CONTINUE


_FAIL = _Step(_Verdict.FAILURE)


class _ServerMethod:
    """One authentication method on the server side."""

    eap_type: EapType

    def __init__(self, identity: bytes, lookup: UserLookup, random: Random) -> None:
        self.identity = identity
        self._lookup = lookup
        self._random = random
        self.msk: bytes | None = None

    def initiate(self, identifier: int) -> bytes:
        """Type-Data of the method's first Request."""
        raise NotImplementedError

    def process(self, reply: EapPacket) -> _Step:
        raise NotImplementedError


class _Md5Server(_ServerMethod):
    """RFC 3748 §5.4: one random challenge, one MD5 comparison."""

    eap_type = EapType.MD5_CHALLENGE

    def initiate(self, identifier: int) -> bytes:
        self._identifier = identifier
        self._challenge = self._random(MD5_CHALLENGE_LENGTH)
        return Md5Value(self._challenge).to_bytes()

    def process(self, reply: EapPacket) -> _Step:
        try:
            value = parse_md5(reply.data).value
        except CodecError:
            return _FAIL
        password = self._lookup(self.identity)
        if password is None:
            return _FAIL
        secret = password.encode()
        if md5_response_matches(self._identifier, secret, self._challenge, value):
            return _Step(_Verdict.SUCCESS)
        return _FAIL


class _MsChapV2Server(_ServerMethod):
    """draft-kamath-pppext-eap-mschapv2 §2 with RFC 2759 crypto, authenticator side."""

    eap_type = EapType.MSCHAPV2

    def initiate(self, identifier: int) -> bytes:
        # strongSwan uses the Challenge's EAP Identifier as MS-CHAPv2-ID.
        self._ms_id = identifier
        self._challenge = self._random(CHALLENGE_LENGTH)
        self._awaiting: OpCode = OpCode.RESPONSE
        self._pending_msk: bytes | None = None
        return MsChapChallenge(self._ms_id, self._challenge, SERVER_NAME).to_bytes()

    def process(self, reply: EapPacket) -> _Step:
        try:
            packet = parse_mschapv2(reply.data, from_peer=True)
        except CodecError:
            return _FAIL
        if self._awaiting == OpCode.RESPONSE and isinstance(packet, MsChapResponse):
            return self._on_response(packet)
        if isinstance(packet, MsChapAck) and packet.opcode == self._awaiting == OpCode.SUCCESS:
            self.msk = self._pending_msk
            return _Step(_Verdict.SUCCESS)
        return _FAIL

    def _on_response(self, packet: MsChapResponse) -> _Step:
        """RFC 2759 §4-6: check NT-Response, answer S= or E=691."""
        # Like strongSwan, the Name in the Response is the user authenticated.
        self.identity = packet.name
        password = self._lookup(packet.name)
        if password is None or not self._verify(packet, password):
            self._awaiting = OpCode.FAILURE
            return _Step(_Verdict.CONTINUE, self._failure_request())
        user = user_name_of(packet.name)
        auth = authenticator_response(
            password, packet.nt_response, packet.peer_challenge, self._challenge, user
        )
        hash_hash = hash_nt_password_hash(nt_password_hash(password))
        self._pending_msk = derive_msk(hash_hash, packet.nt_response)
        self._awaiting = OpCode.SUCCESS
        text = f"{format_authenticator_response(auth)} M=Welcome".encode()
        return _Step(_Verdict.CONTINUE, MsChapMessage(OpCode.SUCCESS, self._ms_id, text).to_bytes())

    def _verify(self, packet: MsChapResponse, password: str) -> bool:
        user = user_name_of(packet.name)
        expected = generate_nt_response(self._challenge, packet.peer_challenge, user, password)
        return compare_digest(expected, packet.nt_response)

    def _failure_request(self) -> bytes:
        """RFC 2759 §6: not retriable (R=0); C= is required even then."""
        challenge = self._random(CHALLENGE_LENGTH).hex().upper()
        text = f"E={ERROR_AUTHENTICATION_FAILURE} R=0 C={challenge} V=3 M=Authentication failed"
        return MsChapMessage(OpCode.FAILURE, self._ms_id, text.encode()).to_bytes()


class _State(Enum):
    IDLE = "idle"
    IDENTITY = "identity"
    METHOD = "method"
    DONE = "done"


class EapServer:
    """EAP authenticator for IKEv2 (RFC 7296 §2.16) with EAP-MD5 and EAP-MSCHAPv2.

    ``methods`` lists the acceptable methods, preferred first. ``lookup`` maps
    an identity to its password (None: unknown user). ``identity`` is the IKE
    initiator's IDi data, used when ``ask_identity`` is off or the peer answers
    EAP-Identity with an empty identity.
    """

    def __init__(
        self,
        methods: EapType | Iterable[EapType],
        lookup: UserLookup,
        random: Random,
        *,
        ask_identity: bool = True,
        identity: bytes | None = None,
    ) -> None:
        self.methods = (methods,) if isinstance(methods, EapType) else tuple(methods)
        if not self.methods or any(m not in SERVER_METHODS for m in self.methods):
            raise ConfigError(f"EAP server methods must be among {SERVER_METHODS}")
        if not ask_identity and identity is None:
            raise ConfigError("without EAP-Identity the IKE identity is needed")
        self._lookup = lookup
        self._random = random
        self._ask_identity = ask_identity
        self.identity = identity
        self._state = _State.IDLE
        self._outstanding: EapPacket | None = None
        self._method: _ServerMethod | None = None
        self._method_answered = False
        self._tried: set[EapType] = set()
        self.result = EapResult.PENDING
        self.msk: bytes | None = None

    @property
    def method(self) -> EapType | None:
        return None if self._method is None else self._method.eap_type

    def start(self) -> bytes:
        """The first Request: EAP-Identity, or the method when the IDi will do."""
        if self._state != _State.IDLE:
            raise LocalProtocolError("EAP conversation already started")
        identifier = self._random(1)[0]
        if self._ask_identity:
            self._state = _State.IDENTITY
            return self._send(build_identity_request(identifier))
        assert self.identity is not None
        return self._start_method(self.methods[0], identifier)

    def handle(self, data: bytes) -> bytes | None:
        """Process one Response; return the next Request, Success or Failure, or None."""
        if self._state in (_State.IDLE, _State.DONE):
            return None
        try:
            packet = parse_packet(data)
        except CodecError:
            return None  # RFC 3748 §4: silently discard
        current = self._outstanding
        assert current is not None
        if packet.code != EapCode.RESPONSE or packet.identifier != current.identifier:
            return None  # §4.1: only a Response to the outstanding Request counts
        if packet.type == EapType.NAK:
            return self._on_nak(packet)
        if packet.type != current.type:
            return self._finish(EapResult.FAILURE, packet.identifier)
        if self._state == _State.IDENTITY:
            return self._on_identity(packet)
        return self._on_method_response(packet)

    def _next_identifier(self) -> int:
        assert self._outstanding is not None
        return (self._outstanding.identifier + 1) % 256

    def _send(self, packet: EapPacket) -> bytes:
        self._outstanding = packet
        return packet.to_bytes()

    def _start_method(self, eap_type: EapType, identifier: int) -> bytes:
        assert self.identity is not None
        factory = _Md5Server if eap_type == EapType.MD5_CHALLENGE else _MsChapV2Server
        self._method = factory(self.identity, self._lookup, self._random)
        self._tried.add(eap_type)
        self._method_answered = False
        self._state = _State.METHOD
        return self._send(request(identifier, eap_type, self._method.initiate(identifier)))

    def _on_identity(self, packet: EapPacket) -> bytes:
        """RFC 3748 §5.1; an empty identity leaves the IKE IDi in force (strongSwan)."""
        received = identity_of(packet)
        if received:
            self.identity = received
        if self.identity is None:
            return self._finish(EapResult.FAILURE, packet.identifier)
        return self._start_method(self.methods[0], self._next_identifier())

    def _on_nak(self, packet: EapPacket) -> bytes:
        """RFC 3748 §5.3.1: Nak only instead of a method's first Response."""
        if self._state != _State.METHOD or self._method_answered:
            return self._finish(EapResult.FAILURE, packet.identifier)
        for proposed in parse_nak(packet):
            if proposed in self.methods and proposed not in self._tried:
                return self._start_method(proposed, self._next_identifier())
        return self._finish(EapResult.FAILURE, packet.identifier)

    def _on_method_response(self, packet: EapPacket) -> bytes:
        assert self._method is not None
        self._method_answered = True
        step = self._method.process(packet)
        self.identity = self._method.identity
        if step.verdict == _Verdict.CONTINUE:
            assert packet.type is not None
            return self._send(request(self._next_identifier(), packet.type, step.data))
        if step.verdict == _Verdict.SUCCESS:
            self.msk = self._method.msk
            return self._finish(EapResult.SUCCESS, packet.identifier)
        return self._finish(EapResult.FAILURE, packet.identifier)

    def _finish(self, result: EapResult, identifier: int) -> bytes:
        """RFC 3748 §4.2: Success/Failure carry the Identifier of the Response."""
        self._state = _State.DONE
        self.result = result
        if result != EapResult.SUCCESS:
            self.msk = None
        return (success if result == EapResult.SUCCESS else failure)(identifier).to_bytes()
