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
from mpa_ike.config_payload import AddressAllocator, IPNetwork
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.eap import EapType
from mpa_ike.errors import ConfigError
from mpa_ike.retransmit import INIT_RETRANSMIT, UPDATE_RETRANSMIT, RetransmitPolicy
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
# strongSwan's connections.<conn>.unique: what a new IKE SA of an identity does to the
# older ones (mpa_ike.uniqueness).
UniquePolicy = Literal["no", "never", "keep", "replace"]
UNIQUE_POLICIES: tuple[UniquePolicy, ...] = ("no", "never", "keep", "replace")
# A peer whose address updates the gateway refused this many times (RFC 4555 §3.5)
# loses its IKE SA: it keeps sending from there (charon ignores UNACCEPTABLE_ADDRESSES).
DEFAULT_MAX_REFUSED_UPDATES = 3


# What the gateway admits (mpa_ike.admission), with these defaults.
DEFAULT_HALF_OPEN_LIMIT = 1000
DEFAULT_COOKIE_LIFETIME = 60.0
DEFAULT_COOKIE_GRACE = 10.0
DEFAULT_INIT_RATE = 10.0
DEFAULT_INIT_BURST = 20
DEFAULT_RATE_SOURCES = 4096
DEFAULT_IKE_SAS_PER_IDENTITY = 8


@dataclass(frozen=True)
class AdmissionLimits:
    """How much an unauthenticated or a single peer may take of the gateway
    (RFC 7296 §2.6, RFC 8019), read by the endpoint at every request:

    ``half_open_limit``: half-open IKE SAs at most; beyond, IKE_SA_INIT is dropped.
    ``cookie_lifetime``: seconds between changes of the COOKIE secret;
    ``cookie_grace``: how long COOKIEs of the previous secret stay good after a change.
    ``init_rate``, ``init_burst``: IKE_SA_INIT requests a second per source address
    (a token bucket; 0: no limit), in a table of ``rate_sources`` addresses.
    ``ike_sas_per_identity``: IKE SAs of one peer identity (the one EAP authenticated,
    else IDi) at most, counted when the peer has authenticated (0: no limit); beyond,
    IKE_AUTH gets AUTHENTICATION_FAILED (§2.21.2: the one notify that refuses an IKE SA
    there).
    """

    half_open_limit: int = DEFAULT_HALF_OPEN_LIMIT
    cookie_lifetime: float = DEFAULT_COOKIE_LIFETIME
    cookie_grace: float = DEFAULT_COOKIE_GRACE
    init_rate: float = DEFAULT_INIT_RATE
    init_burst: int = DEFAULT_INIT_BURST
    rate_sources: int = DEFAULT_RATE_SOURCES
    ike_sas_per_identity: int = DEFAULT_IKE_SAS_PER_IDENTITY

    def __post_init__(self) -> None:
        if self.half_open_limit < 1:
            raise ConfigError("half_open_limit must be at least 1")
        if self.cookie_lifetime <= 0:
            raise ConfigError("cookie_lifetime must be positive")
        if not 0 <= self.cookie_grace <= self.cookie_lifetime:
            raise ConfigError("cookie_grace must be between 0 and cookie_lifetime")
        if self.init_rate < 0 or self.init_burst < 1 or self.rate_sources < 1:
            raise ConfigError("init_rate must not be negative, init_burst and rate_sources >= 1")
        if self.ike_sas_per_identity < 0:
            raise ConfigError("ike_sas_per_identity must not be negative")


def no_users(identity: bytes) -> str | None:
    """The user lookup of a gateway whose EAP is decided elsewhere."""
    return None


@dataclass(frozen=True)
class Lifetimes:
    """Lifetimes and liveness of an IKE SA and its CHILD SAs, in seconds, by
    strongSwan's names (swanctl.conf) and with its defaults.

    IKE SA: rekeyed at ``ike_rekey_time`` less a random part of up to
    ``ike_rand_time`` (RFC 7296 §2.8: each side's own policy), deleted at
    ``ike_rekey_time + ike_over_time`` if no rekey got through (over_time: 10 % of
    rekey_time; rand_time: over_time). CHILD SA: rekeyed at ``child_rekey_time`` less
    up to ``child_rand_time``, deleted at ``child_life_time`` (110 % of rekey_time;
    rand_time: life_time - rekey_time). The byte and packet limits are the datapath's
    to count (0: none). ``None`` for a rekey time turns rekeying off. The random parts
    come from the injected random source, so that two peers with one configuration
    do not collide.

    Liveness (RFC 7296 §2.4): ``dpd_delay``: after this long without an authenticated
    message from the peer, an empty INFORMATIONAL; no answer through its
    retransmissions and the IKE SA is dead (IkeSaFailed "peer dead"). strongSwan
    ignores ``dpd_timeout`` for IKEv2 (the retransmissions decide); here it bounds that
    INFORMATIONAL's retransmissions (None: the whole schedule, 165 s by default).
    ``keep_alive``: NAT keepalives (RFC 3948 §2.3) every that many seconds of our
    silence, by the side that found itself behind a NAT (charon.keep_alive, 20 s).
    The core leaves both off unless asked; the daemons turn them on.

    ``ike_reauth_time`` (strongSwan's reauth_time, None: off): on the gateway, how long
    a peer's authentication lasts: told in AUTH_LIFETIME (RFC 4478), the IKE SA deleted
    then (the AAA's Session-Timeout, if shorter, wins); on the mobile node, when it
    re-authenticates by itself (the gateway's AUTH_LIFETIME, if sooner, wins).
    """

    ike_rekey_time: float | None = DEFAULT_IKE_REKEY_TIME
    ike_over_time: float | None = None  # default: 10 % of ike_rekey_time
    ike_rand_time: float | None = None  # default: ike_over_time
    child_rekey_time: float | None = DEFAULT_CHILD_REKEY_TIME
    child_life_time: float | None = None  # default: 110 % of child_rekey_time
    child_rand_time: float | None = None  # default: child_life_time - child_rekey_time
    child_rekey_bytes: int = 0
    child_life_bytes: int = 0
    child_rekey_packets: int = 0
    child_life_packets: int = 0
    dpd_delay: float | None = None
    dpd_timeout: float | None = None
    keep_alive: float | None = None
    ike_reauth_time: float | None = None

    def __post_init__(self) -> None:
        ike, child = self.ike_rekey_time, self.child_rekey_time
        over = self.ike_over_time if self.ike_over_time is not None else (ike or 0.0) / 10
        life = self.child_life_time
        if life is None and child is not None:
            life = child * 11 / 10
        rand_child = self.child_rand_time
        if rand_child is None:
            rand_child = max(life - child, 0.0) if life is not None and child is not None else 0.0
        object.__setattr__(self, "ike_over_time", over)
        if self.ike_rand_time is None:
            object.__setattr__(self, "ike_rand_time", over)
        object.__setattr__(self, "child_life_time", life)
        object.__setattr__(self, "child_rand_time", rand_child)
        self._check()

    def _check(self) -> None:
        rekey, life = self.child_rekey_time, self.child_life_time
        if rekey is not None and life is not None and life <= rekey:
            raise ConfigError("CHILD SA life_time must be above rekey_time")
        for rekey, rand, what in (
            (self.ike_rekey_time, self.ike_rand_time, "IKE"),
            (self.child_rekey_time, self.child_rand_time, "CHILD"),
        ):
            if rekey is not None and rekey <= 0:
                raise ConfigError(f"{what} SA rekey_time must be positive")
            if rand is not None and (rand < 0 or (rekey is not None and rand >= rekey)):
                raise ConfigError(f"{what} SA rand_time must be below rekey_time")
        for soft, hard, what in (
            (self.child_rekey_bytes, self.child_life_bytes, "bytes"),
            (self.child_rekey_packets, self.child_life_packets, "packets"),
        ):
            if soft < 0 or hard < 0 or (soft and hard and soft >= hard):
                raise ConfigError(f"CHILD SA rekey_{what} must be below life_{what}")
        for value, what in (
            (self.dpd_delay, "dpd_delay"),
            (self.dpd_timeout, "dpd_timeout"),
            (self.ike_reauth_time, "reauth_time"),
        ):
            if value is not None and value <= 0:
                raise ConfigError(f"{what} must be positive")
        if self.keep_alive is not None and self.keep_alive <= 0:
            raise ConfigError("keep_alive must be positive")

    @property
    def ike_life_time(self) -> float | None:
        """When an IKE SA that was not rekeyed ends: rekey_time + over_time."""
        if self.ike_rekey_time is None:
            return None
        return self.ike_rekey_time + (self.ike_over_time or 0.0)


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
    # The schedule of IKE_SA_INIT without a COOKIE: sooner than other requests.
    init_retransmit: RetransmitPolicy = INIT_RETRANSMIT
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
    # §3.15.2: the networks behind the gateway, sent in every CFG_REPLY (INTERNAL_IP4_SUBNET,
    # INTERNAL_IP6_SUBNET) for the families the peer asked an address of.
    subnets: tuple[IPNetwork, ...] = ()
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
    # What a new IKE SA does to the older ones of the same peer identity (strongSwan's
    # unique; here replace by default, strongSwan's default is no).
    unique: UniquePolicy = "replace"
    # MOBIKE: refused updates after which the IKE SA is deleted (0: never); a rekey
    # request from a refused address deletes it at once.
    max_refused_updates: int = DEFAULT_MAX_REFUSED_UPDATES
    # Half-open cap, COOKIE secret schedule, per-source and per-identity limits.
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)

    def __post_init__(self) -> None:
        if self.unique not in UNIQUE_POLICIES:
            raise ConfigError(f"unique is one of {', '.join(UNIQUE_POLICIES)}")
        if self.eap_authenticator not in ("local", "external"):
            raise ConfigError("eap_authenticator is local or external")
        if (self.credential is None) == (self.psk is None):
            raise ConfigError("the gateway needs a certificate credential or a psk, not both")
        if not self.ike_proposals or not self.child.esp_proposals:
            raise ConfigError("IKE and ESP proposals are required")
