"""SA payloads (RFC 7296 §3.3) to and from the proposal specs of mpa_ike.crypto.proposal.

The responder picks with :func:`select_proposal` (strongSwan's preference
order) and answers with one proposal carrying the received proposal number
(§3.3.1); the initiator checks that the answer is one of its own proposals
reduced to one transform per type (§2.7).
"""

from __future__ import annotations

from collections.abc import Sequence

from mpa_ike.constants import NotifyType, ProtocolId, TransformType
from mpa_ike.crypto.proposal import ProposalSpec, TransformSpec, match_proposal, select_proposal
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.wire import Proposal, SaPayload, Transform, TransformAttribute


def transform_to_wire(spec: TransformSpec) -> Transform:
    attributes = (
        () if spec.key_length is None else (TransformAttribute.key_length(spec.key_length),)
    )
    return Transform(spec.type, spec.id, attributes)


def proposal_to_wire(spec: ProposalSpec, number: int, spi: bytes) -> Proposal:
    transforms = tuple(transform_to_wire(t) for t in spec.transforms)
    return Proposal(number, spec.protocol, spi, transforms)


def proposal_from_wire(proposal: Proposal) -> ProposalSpec:
    transforms = [TransformSpec(t.type, t.id, t.key_length) for t in proposal.transforms]
    return ProposalSpec(proposal.protocol_id, transforms)


def sa_payload(specs: Sequence[ProposalSpec], spi: bytes = b"") -> SaPayload:
    """Our offer, proposals numbered from 1 (§3.3.1)."""
    return SaPayload(tuple(proposal_to_wire(s, n, spi) for n, s in enumerate(specs, 1)))


def no_proposal(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, NotifyType.NO_PROPOSAL_CHOSEN)


def select(
    configured: Sequence[ProposalSpec], offer: SaPayload, protocol: ProtocolId
) -> tuple[Proposal, ProposalSpec]:
    """Responder: the received proposal accepted and the selection; NO_PROPOSAL_CHOSEN if none."""
    received = [p for p in offer.proposals if p.protocol_id == protocol]
    chosen = select_proposal(configured, [proposal_from_wire(p) for p in received])
    if chosen is None:
        raise no_proposal(f"no acceptable {protocol.name} proposal")
    index, spec = chosen
    return received[index], spec


def answer(received: Proposal, spec: ProposalSpec, spi: bytes) -> SaPayload:
    """Responder: the one proposal it accepts, under the received number (§3.3.1)."""
    return SaPayload((proposal_to_wire(spec, received.number, spi),))


def check_answer(
    offered: Sequence[ProposalSpec], answered: SaPayload, protocol: ProtocolId
) -> tuple[Proposal, ProposalSpec]:
    """Initiator: the responder's single proposal must be a reduction of one offered."""
    if len(answered.proposals) != 1:
        raise no_proposal("the answer must carry exactly one proposal")
    proposal = answered.proposals[0]
    spec = proposal_from_wire(proposal)
    if proposal.protocol_id != protocol or not 1 <= proposal.number <= len(offered):
        raise no_proposal("the answered proposal was not offered")
    types = [t.type for t in spec.transforms]
    if len(types) != len(set(types)) or TransformType.ENCR not in types:
        raise no_proposal("the answered proposal is not a selection")
    if match_proposal(offered[proposal.number - 1], spec) != spec:
        raise no_proposal("the answered proposal holds transforms not offered")
    return proposal, spec
