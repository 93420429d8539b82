"""The responder's choice of a CHILD SA (RFC 7296 §2.9, §3.3): one ESP proposal and
the narrowed traffic selectors, in IKE_AUTH and in CREATE_CHILD_SA, either role."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from mpa_ike.child_sa import ChildSa
from mpa_ike.constants import NotifyType, ProtocolId
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.ike_config import InitiatorConfig
from mpa_ike.ike_sa_common import protocol_error
from mpa_ike.sa_payload import answer, select
from mpa_ike.traffic_selectors import narrow, selectors_for_networks
from mpa_ike.wire import SaPayload, TrafficSelector, TsiPayload, TsrPayload

Selectors = tuple[TrafficSelector, ...]


def accept_child(
    proposals: Sequence[ProposalSpec],
    offer: SaPayload,
    tsi_payload: TsiPayload,
    tsr_payload: TsrPayload,
    selectors: tuple[Selectors, Selectors],
    new_spi: Callable[[], bytes],
) -> tuple[ChildSa, ProposalSpec, SaPayload]:
    """§2.9: select ESP and narrow TSr to ``selectors`` (ours, theirs)[0] and TSi to
    [1]. Returns the new CHILD SA (its SPI from ``new_spi``), the spec and the SA
    payload of the answer; raises RemoteProtocolError with the notify to answer.
    USE_TRANSPORT_MODE is refused by leaving it out of the answer (§1.3.1)."""
    received, spec = select(proposals, offer, ProtocolId.ESP)
    if len(received.spi) != 4:
        raise protocol_error(NotifyType.INVALID_SYNTAX, "ESP SPI must be 4 octets")
    ours, theirs = selectors
    tsi = narrow(tsi_payload.selectors, theirs)
    tsr = narrow(tsr_payload.selectors, ours)
    if not tsi or not tsr:
        raise protocol_error(NotifyType.TS_UNACCEPTABLE, "no traffic selectors in common")
    child = ChildSa(spi_in=new_spi(), spi_out=received.spi)
    child.local_ts, child.remote_ts = tsr, tsi
    return child, spec, answer(received, spec, child.spi_in)


def initiator_local_selectors(config: InitiatorConfig) -> Selectors:
    """TSi of an initiator without CP-assigned addresses: the configured local_ts,
    else any address of each virtual IP family asked for (narrowed by the responder)."""
    if config.child.local_ts:
        return selectors_for_networks(config.child.local_ts)
    networks = [
        ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
        for family in config.virtual_ip_families
    ]
    return selectors_for_networks(networks)
