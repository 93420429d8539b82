"""What the two handshakes (:mod:`mpa_ike.handshake_initiator`,
:mod:`mpa_ike.handshake_responder`) share: the interface they see their IKE SA
through (:class:`HandshakeHost`), the signed transcript of IKE_SA_INIT
(:class:`Transcript`), the capability notifies, and the INFORMATIONAL answered
before the SA is up."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from mpa_ike.child_sa import ChildInstaller, ChildSa
from mpa_ike.config_payload import IPNetwork
from mpa_ike.constants import HashAlgorithm, NotifyType
from mpa_ike.crypto.auth import SUPPORTED_HASH_ALGORITHMS, auth_octets
from mpa_ike.crypto.keys import IkeKeys
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.datagram import Address
from mpa_ike.events import Event
from mpa_ike.exchange import Exchanges
from mpa_ike.identity import Identity
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.ike_sa_common import CHILD_ERRORS, IkeSaState, error_notifies
from mpa_ike.wire import IPAddress, Message, NotifyPayload
from mpa_ike.wire.notify import read_signature_hash_algorithms, signature_hash_algorithms_notify

# RFC 4478 §2: N(AUTH_LIFETIME) carries the seconds left before reauthentication.
AUTH_LIFETIME_SIZE = 4


class HandshakeHost(ChildInstaller, Protocol):
    """What a handshake reads and sets of its IKE SA: the path, the SPIs, what was
    negotiated (identity, addresses, capabilities), and the SA's life cycle."""

    name: str
    local: Address
    remote: Address
    state: IkeSaState
    spi_i: bytes
    spi_r: bytes
    counters: Counter[str]
    children: dict[bytes, ChildSa]
    assigned_addresses: tuple[IPAddress, ...]
    dns: tuple[IPAddress, ...]
    netmask: IPv4Address | None  # §3.15.1, with the IPv4 address
    subnets: tuple[IPNetwork, ...]  # §3.15.2: the networks behind the responder
    peer_identity: Identity | None
    eap_identity: str | None  # responder: the identity EAP authenticated
    peer_fragmentation: bool
    peer_hash_algorithms: tuple[HashAlgorithm, ...]
    peer_mobike: bool
    mobike: bool
    session_end: float | None
    reauth_at: float | None  # RFC 4478: when the initiator authenticates again
    reauth_deadline: float | None  # ... and when the gateway ends the IKE SA
    requested_addresses: tuple[IPAddress, ...]  # what the initiator's CP asks for
    initial_contact: bool  # RFC 7296 §2.4: ours to send, or the peer's received

    @property
    def local_spi(self) -> bytes: ...

    @property
    def encap(self) -> bool: ...

    def emit(self, event: Event) -> None: ...

    def natd_notifies(self) -> list[NotifyPayload]: ...

    def detect_nat(
        self, message: Message, src: Address, dst: Address, spi_r: bytes | None = None
    ) -> None: ...

    def new_ike_spi(self) -> bytes: ...

    def new_child_spi(self) -> bytes: ...

    def use_keys(self, suite: IkeSuite, keys: IkeKeys) -> None: ...

    def expire_at(self, deadline: float | None) -> None: ...

    def lease_addresses(self, wanted: Mapping[int, IPAddress | None]) -> tuple[IPAddress, ...]: ...

    def establish(self, now: float) -> None: ...

    def read_address_list(self, message: Message) -> None: ...

    def fail(
        self, reason: str, now: float, notify: NotifyType | None = None, retry: bool = False
    ) -> None: ...

    def admit(self, now: float) -> str | None: ...

    def tell_and_fail(self, reason: str, notify: NotifyType) -> None: ...


@dataclass
class Transcript:
    """What AUTH covers (RFC 7296 §2.15): both IKE_SA_INIT messages and nonces, and
    the keys derived from them (§2.14)."""

    nonce_i: bytes = b""
    nonce_r: bytes = b""
    init_request: bytes = b""
    init_response: bytes = b""
    suite: IkeSuite | None = None
    keys: IkeKeys | None = None

    @property
    def nonces(self) -> tuple[bytes, bytes]:
        """(Ni, Nr): the first CHILD SA's KEYMAT comes from them (§2.17)."""
        return self.nonce_i, self.nonce_r

    def derive(self, suite: IkeSuite, spi_i: bytes, spi_r: bytes, shared: bytes) -> IkeKeys:
        """SKEYSEED and the seven keys (§2.14)."""
        self.suite = suite
        self.keys = suite.derive_keys(self.nonce_i, self.nonce_r, spi_i, spi_r, shared)
        return self.keys

    def octets(self, initiator_side: bool, id_body: bytes) -> bytes:
        """InitiatorSignedOctets / ResponderSignedOctets (§2.15)."""
        suite, keys = self.suite, self.keys
        assert suite is not None and keys is not None
        if initiator_side:
            return auth_octets(self.init_request, self.nonce_r, suite.prf, keys.sk_pi, id_body)
        return auth_octets(self.init_response, self.nonce_i, suite.prf, keys.sk_pr, id_body)


def capability_notifies(config: InitiatorConfig | ResponderConfig) -> list[NotifyPayload]:
    """IKE_SA_INIT's IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 §2.3) and
    SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4)."""
    notifies: list[NotifyPayload] = []
    if config.fragmentation:
        notifies.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    if not isinstance(config, InitiatorConfig) or config.signature_hash_algorithms:
        notifies.append(signature_hash_algorithms_notify(SUPPORTED_HASH_ALGORITHMS))
    return notifies


def read_capabilities(sa: HandshakeHost, message: Message) -> None:
    """The peer's capability notifies of IKE_SA_INIT, kept on the IKE SA."""
    sa.peer_fragmentation = message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    hashes = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    listed = read_signature_hash_algorithms(hashes) if hashes else ()
    # Only what the signature choice can use, each once: a half-open SA must not hold
    # a datagram's worth of a peer's unknown or repeated values.
    sa.peer_hash_algorithms = tuple(dict.fromkeys(a for a in listed if a.known))


def auth_failure_in(message: Message) -> NotifyType | None:
    """An error notify that fails the IKE SA (not only the CHILD SA, §2.21.3)."""
    errors = [n for n in error_notifies(message) if n not in CHILD_ERRORS]
    return errors[0] if errors else None


def answer_informational_during_setup(
    sa: HandshakeHost, exchanges: Exchanges, message: Message, now: float
) -> None:
    """An INFORMATIONAL before the SA is up: strongSwan reports a failed
    authentication this way (N(AUTHENTICATION_FAILED) instead of the EAP
    acknowledgement, §2.21.2). Answer it, and end the SA on an error notify."""
    exchanges.respond(message.header, [])
    errors = error_notifies(message)
    if errors:
        sa.fail(f"peer reported {errors[0].name}", now, errors[0])
