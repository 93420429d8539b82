"""CHILD SAs: ESP negotiation in IKE_AUTH (RFC 7296 §1.2, §2.17) and their state.

A :class:`ChildSa` is created when this side offers or accepts one; it holds
its SPIs (``spi_in`` chosen here, ``spi_out`` by the peer), the narrowed
traffic selectors and, once negotiated, the :class:`ChildSaParams` for the
datapath. Only tunnel mode is offered and accepted: a USE_TRANSPORT_MODE
request is refused by leaving the notify out of the answer (§1.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from mpa_ike.constants import TransformType
from mpa_ike.crypto.prf import Prf
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.crypto.suite import ChildSuite
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams, IPNetwork
from mpa_ike.traffic_selectors import ranges
from mpa_ike.wire import TrafficSelector

ESP_SPI_SIZE = 4


class ChildSaState(Enum):
    CREATING = "creating"
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our CREATE_CHILD_SA with REKEY_SA is out (§2.8)
    REKEYED = "rekeyed"  # replaced; kept for inbound traffic until its DELETE
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


@dataclass(frozen=True)
class ChildSaConfig:
    """ESP proposals and traffic selectors of a connection's CHILD SA.

    ``local_ts`` empty on the initiator means "dynamic": the CP-assigned
    address (strongSwan's default with a virtual IP); on the responder it is
    the networks behind the gateway.
    """

    esp_proposals: tuple[ProposalSpec, ...]
    local_ts: tuple[IPNetwork, ...] = ()
    remote_ts: tuple[IPNetwork, ...] = ()


def without_key_exchange(proposals: tuple[ProposalSpec, ...]) -> tuple[ProposalSpec, ...]:
    """The ESP proposals of IKE_AUTH: its CHILD SA takes no KE (RFC 7296 §1.2), so
    DH transforms, there for PFS in CREATE_CHILD_SA, are left out (as strongSwan does)."""
    return tuple(
        ProposalSpec(p.protocol, [t for t in p.transforms if t.type != TransformType.DH])
        for p in proposals
    )


@dataclass
class ChildSa:
    spi_in: bytes
    state: ChildSaState = ChildSaState.CREATING
    spi_out: bytes = b""
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    params: ChildSaParams | None = field(default=None, repr=False)
    spec: ProposalSpec | None = field(default=None, repr=False)
    rekey_at: float | None = None  # lifetime deadline (Lifetimes.child_rekey_time)
    expire_at: float | None = None  # hard deadline (Lifetimes.child_life_time)

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "spi_in": self.spi_in.hex(),
            "spi_out": self.spi_out.hex(),
            "local_ts": [str(r) for r in ranges(self.local_ts)],
            "remote_ts": [str(r) for r in ranges(self.remote_ts)],
        }


class ChildInstaller(Protocol):
    """The IKE SA as the exchange that negotiated a CHILD SA (IKE_AUTH's or
    CREATE_CHILD_SA's) sees it: it derives the KEYMAT and installs the SA."""

    def install_child(
        self,
        child: ChildSa,
        spec: ProposalSpec,
        *,
        initiator: bool,
        now: float,
        nonces: tuple[bytes, bytes],
        shared_secret: bytes | None = None,
    ) -> None: ...


def child_sa_params(
    child: ChildSa,
    spec: ProposalSpec,
    prf: Prf,
    sk_d: bytes,
    nonces: tuple[bytes, bytes],
    initiator: bool,
    endpoints: tuple[Address, Address],
    encap: bool,
    shared_secret: bytes | None = None,
) -> ChildSaParams:
    """KEYMAT (§2.17) split into the two directions of ``child``.

    ``nonces`` are (Ni, Nr) of the exchange that created the SA, ``initiator``
    whether this side initiated that exchange, ``endpoints`` (local, remote),
    ``shared_secret`` the CREATE_CHILD_SA key exchange result with PFS.
    """
    suite = ChildSuite.from_proposal(spec)
    keys = suite.derive_keys(prf, sk_d, nonces[0], nonces[1], shared_secret)
    encr_out, integ_out = keys.outbound(initiator)
    encr_in, integ_in = keys.inbound(initiator)
    return ChildSaParams(
        spi_in=child.spi_in,
        spi_out=child.spi_out,
        encr_id=int(suite.encr.id),
        encr_key_bits=suite.encr_key_bits,
        integ_id=int(suite.integ.id) if suite.integ else None,
        encr_key_in=encr_in,
        integ_key_in=integ_in,
        encr_key_out=encr_out,
        integ_key_out=integ_out,
        esn=suite.esn,
        local=endpoints[0],
        remote=endpoints[1],
        encap=encap,
        local_ts=ranges(child.local_ts),
        remote_ts=ranges(child.remote_ts),
    )
