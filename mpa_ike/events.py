"""What the IKE core tells its user, one typed event at a time (``next_event()``).

Every event names the IKE SA it concerns by ``ike_sa``, the IKE SA's local SPI
(the key of :class:`mpa_ike.endpoint.Endpoint`), and ``name``, the configured
connection name (the gateway names a responder SA after its peer's identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams
from mpa_ike.records import quick_init
from mpa_ike.wire import IPAddress


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    ike_sa: bytes
    name: str


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSaEstablished(Event):
    """IKE_AUTH finished: both sides authenticated (RFC 7296 §1.2)."""

    local: Address
    remote: Address
    peer_identity: str
    assigned_addresses: tuple[IPAddress, ...]  # CP-assigned (initiator) or leased (responder)
    dns: tuple[IPAddress, ...]
    mobike: bool
    nat_detected: bool
    # RFC 7296 §3.15.1, §3.15.2: the IPv4 address's netmask and the subnets behind the
    # gateway (CP-assigned on the initiator, sent on the responder).
    netmask: IPv4Address | None = None
    subnets: tuple[IPv4Network | IPv6Network, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSaFailed(Event):
    """The IKE SA could not be set up or died (give-up, authentication failure, ...).

    ``notify`` is the error notify received or sent, if any. ``retry``: a set-up that
    may well succeed if made again at once (the initiator took an IKE_SA_INIT answer
    that may have answered another of its requests, and the peer refused its AUTH).
    """

    reason: str
    notify: NotifyType | None = None
    retry: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSaDeleted(Event):
    """An established IKE SA ended by DELETE (``by_peer`` tells who asked)."""

    by_peer: bool


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaEstablished(Event):
    """A CHILD SA is negotiated: install ``params`` in the datapath."""

    params: ChildSaParams


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaFailed(Event):
    """The CHILD SA could not be created; the IKE SA survives (RFC 7296 §2.21)."""

    notify: NotifyType
    reason: str


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaDeleted(Event):
    """A CHILD SA is gone: remove it from the datapath."""

    spi_in: bytes
    spi_out: bytes
    by_peer: bool


@quick_init
@dataclass(frozen=True, slots=True)
class LeaseReleased(Event):
    """The responder gave the IKE SA's CP addresses back to the allocator."""

    addresses: tuple[IPAddress, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class LivenessConfirmed(Event):
    """The peer answered an empty INFORMATIONAL (RFC 7296 §1.4)."""


@quick_init
@dataclass(frozen=True, slots=True)
class PeerForgotIkeSa(Event):
    """The peer answered our request with an unprotected INVALID_IKE_SPI (RFC 7296
    §2.21.4): it has likely restarted and lost the IKE SA. Unauthenticated, so the IKE
    SA stays: set up a new one that replaces it once up (``Endpoint.initiate(...,
    replaces=ike_sa)``); DPD ends this one if the peer is really gone. Told once."""

    peer: Address


@quick_init
@dataclass(frozen=True, slots=True)
class ReauthenticationDue(Event):
    """The mobile node: the gateway limited the IKE SA's authentication (RFC 4478
    AUTH_LIFETIME) or the configured ``reauth_time`` has come, a margin before the
    gateway ends it at ``deadline``. Re-authenticate make-before-break: a new IKE SA
    (``Endpoint.initiate(..., reauthenticates=ike_sa)``) that asks for the same
    addresses and closes this one, with a DELETE, the moment it is up. Told once."""

    deadline: float | None


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSaReplaced(IkeSaFailed):
    """The IKE SA was closed locally, without DELETE, for the new IKE SA
    ``new_ike_sa`` of the same peer: INITIAL_CONTACT or the uniqueness policy on a
    gateway (RFC 7296 §2.4), or the one the mobile node set up after the peer forgot
    this one. Its CHILD SAs went before it (ChildSaDeleted), its lease too
    (LeaseReleased). An IkeSaFailed, so that a glue that knows only that one forgets
    the SA all the same."""

    new_ike_sa: bytes = b""


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaRekeyed(Event):
    """A CHILD SA was replaced by a rekey (RFC 7296 §2.8).

    Comes after the :class:`ChildSaEstablished` of the new pair (install it);
    the old pair goes with its own :class:`ChildSaDeleted` once the DELETE
    exchange is over, so a glue that only knows those two stays right.
    """

    old_spi_in: bytes
    old_spi_out: bytes
    new_spi_in: bytes
    new_spi_out: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSaRekeyed(Event):
    """The IKE SA ``ike_sa`` was rekeyed into ``new_ike_sa`` (RFC 7296 §2.18).

    Its CHILD SAs and its lease now belong to the new IKE SA; later events use
    the new SPI. The old one ends quietly (no :class:`IkeSaDeleted`).
    """

    new_ike_sa: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSaAddressesUpdated(Event):
    """MOBIKE (RFC 4555 §3.5): the IKE SA now runs between ``local`` and ``remote``."""

    local: Address
    remote: Address
    nat_detected: bool


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaAddressesUpdated(Event):
    """MOBIKE: move the installed pair to new outer addresses
    (``Datapath.move_child_sa(spi_in, spi_out, local, remote, encap)``)."""

    spi_in: bytes
    spi_out: bytes
    local: Address
    remote: Address
    encap: bool


@quick_init
@dataclass(frozen=True, slots=True)
class AddressUpdateRefused(Event):
    """An UPDATE_SA_ADDRESSES was refused (RFC 4555 §3.5, §3.9).

    On the gateway: it refused the peer's move to ``address`` (nothing moved).
    On the mobile node: the gateway refused ours; the SA is of no use at the
    new address, so fall back to a full IKE exchange from there.
    """

    notify: NotifyType
    address: Address
    by_peer: bool


@quick_init
@dataclass(frozen=True, slots=True)
class AddressUpdateAccepted(Event):
    """The mobile node: the gateway answered our UPDATE_SA_ADDRESSES without refusal;
    the SAs live at ``local`` === ``remote`` on both sides now."""

    local: Address
    remote: Address


@quick_init
@dataclass(frozen=True, slots=True)
class PeerAddressesAnnounced(Event):
    """ADDITIONAL_IP4/IP6_ADDRESS (or NO_ADDITIONAL_ADDRESSES: empty) from the peer;
    each list replaces the previous one (RFC 4555 §3.4, §3.6)."""

    addresses: tuple[IPAddress, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class EapRequestForAaa(Event):
    """The gateway's EAP authenticator is external (``ResponderConfig(eap_authenticator=
    "external")``): relay ``eap_message``, the peer's EAP-Response, to it (a RADIUS
    Access-Request, RFC 3579 §2.1), then give its answer to
    ``Endpoint.eap_answer(ike_sa, EapAnswer(...), now)``; the IKE_AUTH response waits
    for it, and the peer's retransmissions meanwhile are absorbed (RFC 7296 §2.16).

    An empty ``eap_message`` starts the conversation: send EAP-Start, or an
    EAP-Response/Identity built from ``identity`` (the peer's IDi data, also the
    User-Name), as strongSwan's eap-radius does. ``peer`` is the peer's outer address
    (Calling-Station-Id). No answer before the half-open timeout: the IKE SA fails.
    """

    identity: bytes
    eap_message: bytes
    peer: Address
