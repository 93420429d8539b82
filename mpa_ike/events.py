"""What the IKE core tells its user, one typed event at a time (``next_event()``).

Every event names the IKE SA it concerns by ``ike_sa``, the IKE SA's local SPI
(the key of :class:`mpa_ike.endpoint.Endpoint`), and ``name``, the configured
connection name (the gateway names a responder SA after its peer's identity).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams
from mpa_ike.wire import IPAddress


@dataclass(frozen=True, slots=True)
class Event:
    ike_sa: bytes
    name: str


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


@dataclass(frozen=True, slots=True)
class IkeSaFailed(Event):
    """The IKE SA could not be set up or died (give-up, authentication failure, ...).

    ``notify`` is the error notify received or sent, if any.
    """

    reason: str
    notify: NotifyType | None = None


@dataclass(frozen=True, slots=True)
class IkeSaDeleted(Event):
    """An established IKE SA ended by DELETE (``by_peer`` tells who asked)."""

    by_peer: bool


@dataclass(frozen=True, slots=True)
class ChildSaEstablished(Event):
    """A CHILD SA is negotiated: install ``params`` in the datapath."""

    params: ChildSaParams


@dataclass(frozen=True, slots=True)
class ChildSaFailed(Event):
    """The CHILD SA could not be created; the IKE SA survives (RFC 7296 §2.21)."""

    notify: NotifyType
    reason: str


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(Event):
    """A CHILD SA is gone: remove it from the datapath."""

    spi_in: bytes
    spi_out: bytes
    by_peer: bool


@dataclass(frozen=True, slots=True)
class LeaseReleased(Event):
    """The responder gave the IKE SA's CP addresses back to the allocator."""

    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class LivenessConfirmed(Event):
    """The peer answered an empty INFORMATIONAL (RFC 7296 §1.4)."""
