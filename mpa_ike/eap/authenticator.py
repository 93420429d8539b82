"""Who decides on the peer's EAP messages for the IKE responder (RFC 7296 §2.16).

The responder hands each EAP-Response of the peer to an :class:`EapAuthenticator`
and sends what its :class:`EapAnswer` says. :class:`LocalEapAuthenticator` is the
gateway's own :class:`mpa_ike.eap.server.EapServer` and answers at once;
:class:`ExternalEapAuthenticator` answers nothing itself: the IKE SA emits
``EapRequestForAaa`` and waits for the glue's ``eap_answer`` (a RADIUS server's
Access-Challenge, -Accept or -Reject, RFC 3579).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mpa_ike.eap.result import EapResult
from mpa_ike.eap.server import EapServer
from mpa_ike.errors import LocalProtocolError
from mpa_ike.wire import IPAddress


@dataclass(frozen=True)
class EapAnswer:
    """An authenticator's answer to one EAP message of the peer.

    ``eap_message``: the EAP packet for the peer (the next Request, Success or
    Failure; empty: none, the peer's message was unusable). ``result``: PENDING
    while the conversation goes on (an Access-Challenge), SUCCESS or FAILURE at its
    end. On SUCCESS: ``msk``, None for a method without one (EAP-MD5: AUTH is then
    keyed by SK_p, §2.16); ``addresses`` assigned by the AAA (Framed-IP-Address,
    Framed-IPv6-Address), given in CFG_REPLY instead of a pool lease for their
    families; ``session_timeout`` (RFC 2865 §5.27), seconds after which the IKE SA
    is deleted; ``identity``, the identity EAP authenticated (the EAP-Identity, or
    the User-Name the AAA accepted), by which the gateway tells its peers apart.
    """

    eap_message: bytes
    result: EapResult = EapResult.PENDING
    msk: bytes | None = None
    addresses: tuple[IPAddress, ...] = ()
    session_timeout: float | None = None
    identity: bytes | None = None

    def __post_init__(self) -> None:
        if self.result != EapResult.SUCCESS and (self.msk or self.addresses):
            raise LocalProtocolError("an MSK and addresses come with EAP success only")
        if self.session_timeout is not None and self.session_timeout <= 0:
            raise LocalProtocolError("a session timeout is a positive number of seconds")


class EapAuthenticator(Protocol):
    """One peer's EAP conversation, authenticator side. Each call returns the answer,
    or None when it comes later (``IkeSa.eap_answer``)."""

    def start(self) -> EapAnswer | None:
        """The first Request (EAP-Identity or a method's)."""
        ...

    def handle(self, eap_message: bytes) -> EapAnswer | None:
        """The answer to one EAP-Response of the peer."""
        ...


class LocalEapAuthenticator:
    """The gateway's own EAP server (its ``eap_users``): answers at once."""

    def __init__(self, server: EapServer) -> None:
        self._server = server

    def start(self) -> EapAnswer:
        return EapAnswer(self._server.start())

    def handle(self, eap_message: bytes) -> EapAnswer:
        server = self._server
        reply = server.handle(eap_message)
        if reply is None:  # RFC 3748 §4.1 would discard it; IKE_AUTH refuses it
            return EapAnswer(b"", EapResult.FAILURE)
        if server.result == EapResult.SUCCESS:
            return EapAnswer(reply, EapResult.SUCCESS, server.msk, identity=server.identity)
        return EapAnswer(reply, server.result)


class ExternalEapAuthenticator:
    """An authenticator elsewhere (a RADIUS server): every answer comes later."""

    def start(self) -> None:
        return None

    def handle(self, eap_message: bytes) -> None:
        return None
