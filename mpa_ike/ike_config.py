"""Configuration of IKE SAs, as the core takes it (the YAML is the glue's business).

:class:`InitiatorConfig` is one mobile-node connection (``gateways.NAME``),
:class:`ResponderConfig` the gateway's single policy. Proposals are parsed
:class:`ProposalSpec` lists (``mpa_ike.crypto.proposal.parse_proposals``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from mpa_ike.address_policy import AddressCheck, AddressPolicy
from mpa_ike.certificates import CertificateCredential
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.config_payload import AddressAllocator
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.eap import EapType
from mpa_ike.errors import ConfigError
from mpa_ike.retransmit import UPDATE_RETRANSMIT, RetransmitPolicy
from mpa_ike.wire import IPAddress

DEFAULT_EAP_METHODS = (EapType.MSCHAPV2, EapType.MD5_CHALLENGE)
# strongSwan's charon.fragment_size: the largest IP datagram of an IKE fragment.
DEFAULT_FRAGMENT_SIZE = 1280
# strongSwan's charon.half_open_timeout.
DEFAULT_HALF_OPEN_TIMEOUT = 30.0
# strongSwan's defaults: IKE SA rekey_time 4 h, CHILD SA rekey_time 1 h.
DEFAULT_IKE_REKEY_TIME = 4 * 3600.0
DEFAULT_CHILD_REKEY_TIME = 3600.0
WallClock = Callable[[], datetime.datetime]
UserLookup = Callable[[bytes], str | None]
EapAuthenticatorKind = Literal["local", "external"]


def no_users(identity: bytes) -> str | None:
    """The user lookup of a gateway whose EAP is decided elsewhere."""
    return None


@dataclass(frozen=True)
class Lifetimes:
    """When to rekey (RFC 7296 §2.8), in seconds after the SA came up.

    Each deadline is ``rekey_time`` minus a random part of up to ``jitter``
    (strongSwan's rand_time, 10 % by default), drawn from the injected random
    source so that two peers with one configuration do not collide. ``None``
    turns rekeying off.
    """

    ike_rekey_time: float | None = DEFAULT_IKE_REKEY_TIME
    child_rekey_time: float | None = DEFAULT_CHILD_REKEY_TIME
    jitter: float = 0.1  # fraction of the rekey time
    # strongSwan's dpd_delay: after this long without an authenticated message from
    # the peer, check its liveness with an empty INFORMATIONAL (RFC 7296 §1.4, §2.4);
    # no answer after the retransmissions: the IKE SA has failed. None: never.
    liveness_interval: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError("lifetime jitter must be a fraction below 1")


@dataclass(frozen=True)
class InitiatorConfig:
    """One connection of the mobile node (the IKE SA initiator, EAP client).

    The gateway is authenticated by a certificate chaining to one of ``ca``
    (then ``wall_clock`` gives the time to check validity against) or by
    ``psk``. ``virtual_ip_families`` are the address families asked for by CP.
    """

    name: str
    identity: str
    eap_password: str = field(repr=False)
    remote_id: str
    ike_proposals: tuple[ProposalSpec, ...]
    child: ChildSaConfig
    ca: tuple[x509.Certificate, ...] = ()
    wall_clock: WallClock | None = None
    psk: bytes | None = field(default=None, repr=False)
    eap_methods: tuple[EapType, ...] = DEFAULT_EAP_METHODS
    virtual_ip_families: tuple[int, ...] = (4,)
    mobike: bool = True
    fragmentation: bool = True
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    retransmit: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    # The schedule of our MOBIKE updates (RFC 4555 §3.5): sooner than other requests.
    update_retransmit: RetransmitPolicy = UPDATE_RETRANSMIT
    eap_identity: str | None = None  # strongSwan's eap_id; default: the IKE identity
    max_init_retries: int = 5  # COOKIE and INVALID_KE_PAYLOAD rounds before giving up
    # RFC 7427 §4: announce SIGNATURE_HASH_ALGORITHMS (off: the gateway signs classically).
    signature_hash_algorithms: bool = True
    # strongSwan's encap=yes: fake NAT-D so both sides use ESP in UDP on 4500.
    force_encap: bool = False
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    # RFC 4555 §3.9: no NAT allowed on the path (N(NO_NATS_ALLOWED) in updates).
    no_nats_allowed: bool = False
    # RFC 4555 §3.5: move the CHILD SAs only when the update's answer came back over
    # the new path (off: at once, the quickest handover; a refusal then leaves the
    # CHILD SAs on the new addresses).
    return_routability: bool = False

    def __post_init__(self) -> None:
        if self.psk is None and not self.ca:
            raise ConfigError(f"connection {self.name}: give ca or psk")
        if self.ca and self.wall_clock is None:
            raise ConfigError(f"connection {self.name}: certificate checks need wall_clock")
        if not self.ike_proposals or not self.child.esp_proposals:
            raise ConfigError(f"connection {self.name}: IKE and ESP proposals are required")


@dataclass(frozen=True)
class ResponderConfig:
    """The gateway: its identity and credential, EAP users, pool, proposals.

    ``eap_authenticator``: "local", the gateway's own EAP server with ``eap_users``
    and ``eap_methods``; or "external", every EAP message of the peer relayed through
    the glue (``EapRequestForAaa`` events, ``Endpoint.eap_answer``) to a RADIUS server.
    """

    identity: str
    ike_proposals: tuple[ProposalSpec, ...]
    child: ChildSaConfig
    eap_users: UserLookup = field(default=no_users, repr=False)
    credential: CertificateCredential | None = None
    psk: bytes | None = field(default=None, repr=False)
    eap_methods: tuple[EapType, ...] = (EapType.MSCHAPV2,)
    ask_eap_identity: bool = True
    allocator: AddressAllocator | None = None
    dns: tuple[IPAddress, ...] = ()
    mobike: bool = True
    fragmentation: bool = True
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    retransmit: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    half_open_timeout: float = DEFAULT_HALF_OPEN_TIMEOUT
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    # MOBIKE (RFC 4555 §3.5): which new addresses an update may move an IKE SA
    # to (an AddressPolicy, or any callable), and whether to check return
    # routability before the CHILD SAs move.
    address_policy: AddressCheck = field(default_factory=AddressPolicy)
    return_routability: bool = False
    # §3.4: the gateway's other addresses, announced in IKE_AUTH (as charon does), so
    # that a mobile node can move to one of another family.
    additional_addresses: tuple[IPAddress, ...] = ()
    eap_authenticator: EapAuthenticatorKind = "local"

    def __post_init__(self) -> None:
        if self.eap_authenticator not in ("local", "external"):
            raise ConfigError("eap_authenticator is local or external")
        if (self.credential is None) == (self.psk is None):
            raise ConfigError("the gateway needs a certificate credential or a psk, not both")
        if not self.ike_proposals or not self.child.esp_proposals:
            raise ConfigError("IKE and ESP proposals are required")
