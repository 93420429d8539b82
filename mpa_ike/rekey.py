"""CREATE_CHILD_SA bookkeeping (RFC 7296 §1.3, §2.8, §2.18, §2.25): what an IKE SA
remembers of rekeys in flight, and the collision rule.

The exchanges are functions of the :class:`mpa_ike.ike_sa.IkeSa` they run on:
the commands :func:`create_child_sa`, :func:`rekey_child_sa` and
:func:`rekey_ike_sa` (also ``IkeSa`` methods), the CREATE_CHILD_SA responder
:func:`on_create_child_request`, and the lifetimes that start the rekeys.
Additional CHILD SAs; CHILD SA rekey (N(REKEY_SA), new SPIs, KE for PFS: the new
SA is installed, then the rekey initiator deletes the old one); IKE SA rekey (a
new IkeSa with new SPIs, SKEYSEED from the old SK_d, Message IDs from 0, which
takes the CHILD SAs and the lease). Both roles; collisions (§2.8.1, §2.25).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpa_ike.child_sa import ChildSa, ChildSaState
from mpa_ike.constants import DhGroup, ExchangeType, NotifyType, ProtocolId, TransformType
from mpa_ike.crypto.dh import KeyExchange, generate_key_exchange
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.crypto.sk import sk_cipher_pair
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.datagram import Address
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.events import ChildSaFailed, ChildSaRekeyed, IkeSaRekeyed
from mpa_ike.ike_sa_common import (
    LIVE_STATES,
    NONCE_SIZE,
    IkeSaState,
    error_notifies,
    protocol_error,
)
from mpa_ike.mobike import send_update
from mpa_ike.sa_payload import answer, check_answer, sa_payload, select
from mpa_ike.traffic_selectors import (
    acceptable_answer,
    narrow,
    selector_for_address,
    selectors_for_networks,
)
from mpa_ike.wire import (
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
)
from mpa_ike.wire.notify import (
    invalid_ke_notify,
    read_invalid_ke_group,
    read_rekey_sa,
    rekey_sa_notify,
)

if TYPE_CHECKING:
    from mpa_ike.ike_config import Lifetimes
    from mpa_ike.ike_sa import IkeSa

# How long a rekeyed IKE SA waits for the peer's DELETE before it goes quietly.
REKEYED_IKE_SA_GRACE = 30.0
# A rekey refused with TEMPORARY_FAILURE (§2.25) is tried again this much later.
REKEY_RETRY_DELAY = 10.0
# An IKE SA rekey asked for while other exchanges are under way waits this long (§2.18).
IKE_REKEY_BUSY_DELAY = 1.0


@dataclass
class IkeRekey:
    """Our CREATE_CHILD_SA rekeying the IKE SA (§1.3.2): the new SPI, Ni and KE."""

    spi: bytes
    nonce: bytes
    dh: KeyExchange


@dataclass
class IkeCollision:
    """§2.25.2: the peer's IKE SA rekey, answered while ours was out."""

    successor: IkeSa
    nonces: tuple[bytes, bytes]


@dataclass
class PeerChildRekey:
    """§2.8.1: the peer's rekey of a CHILD SA we were rekeying ourselves."""

    new: ChildSa
    nonces: tuple[bytes, bytes]


def ours_is_redundant(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """§2.8.1 (CHILD SAs) and §2.8.2 (IKE SAs): of two simultaneous rekeys, the SA
    created by the exchange holding the lowest of the four nonces is redundant, and
    the initiator of that exchange deletes it. ``ours``: (Ni, Nr) of our exchange."""
    return min(ours) < min(theirs)


def jittered(rekey_time: float, jitter: float, random: Callable[[int], bytes]) -> float:
    """``rekey_time`` less a random part of up to ``jitter`` of it (strongSwan's
    rand_time), so that two peers with one configuration do not rekey at once."""
    fraction = int.from_bytes(random(2), "big") / 0x10000
    return rekey_time * (1.0 - jitter * fraction)


# ----------------------------------------------------------------------
# Lifetimes (RFC 7296 §2.8: rekeying is up to each side's policy)


def lifetimes_of(sa: IkeSa) -> Lifetimes:
    config = sa._icfg or sa._rcfg
    assert config is not None
    return config.lifetimes


def jittered_time(sa: IkeSa, rekey_time: float) -> float:
    """``rekey_time`` less up to ``jitter`` of it, drawn from the injected random."""
    return jittered(rekey_time, lifetimes_of(sa).jitter, sa._random)


def start_ike_lifetime(sa: IkeSa, now: float) -> None:
    sa._last_heard = now
    rekey_time = lifetimes_of(sa).ike_rekey_time
    sa._ike_rekey_at = None if rekey_time is None else now + jittered_time(sa, rekey_time)


def lifetime_timers(sa: IkeSa, now: float) -> None:
    if sa.state != IkeSaState.ESTABLISHED:
        return
    if sa._ike_rekey_at is not None and now >= sa._ike_rekey_at:
        sa._ike_rekey_at = None
        rekey_ike_sa(sa, now)
    for child in list(sa.children.values()):
        if child.rekey_at is not None and now >= child.rekey_at:
            child.rekey_at = None
            rekey_child_sa(sa, child.spi_in, now)


# ----------------------------------------------------------------------
# CREATE_CHILD_SA, initiator (RFC 7296 §1.3.1, §1.3.3, §2.8, §2.17)


def create_child_sa(sa: IkeSa, now: float) -> None:
    """Command: one more CHILD SA with the configured proposals and selectors (§1.3.1)."""
    if sa.state == IkeSaState.ESTABLISHED:
        request_child(sa, None, now)


def rekey_child_sa(sa: IkeSa, spi_in: bytes, now: float) -> None:
    """Command: rekey the CHILD SA ``spi_in`` (§1.3.3, §2.8): a new SA, then DELETE
    of the old one by us (or by the peer after a collision it won, §2.8.1)."""
    child = sa.children.get(spi_in)
    if sa.state != IkeSaState.ESTABLISHED or child is None:
        return
    if child.state != ChildSaState.INSTALLED:
        return
    child.state = ChildSaState.REKEYING
    request_child(sa, child, now)


def child_config_proposals(sa: IkeSa) -> tuple[ProposalSpec, ...]:
    config = sa._icfg or sa._rcfg
    assert config is not None
    return config.child.esp_proposals


def new_child_ts(sa: IkeSa) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """(TSi, TSr) as this side proposes them for an additional CHILD SA."""
    if sa._icfg is not None:
        if sa.assigned_addresses:
            local = tuple(selector_for_address(a) for a in sa.assigned_addresses)
        else:
            local = sa._dynamic_local_ts()
        return local, selectors_for_networks(sa._icfg.child.remote_ts)
    config = sa._responder_config
    return selectors_for_networks(config.child.local_ts), sa._allowed_remote_ts()


def request_child(sa: IkeSa, old: ChildSa | None, now: float, group: int | None = None) -> None:
    """``group``: the KE group the peer asked for by INVALID_KE_PAYLOAD (§1.3)."""
    if sa._outstanding is not None:
        # Window 1 (§2.3): wait; what to send is decided when it can leave.
        sa._queued.append(lambda later: request_child_if_due(sa, old, later))
        return
    proposals = child_config_proposals(sa)
    new = ChildSa(spi_in=sa._new_child_spi())
    sa.children[new.spi_in] = new
    nonce = sa._random(NONCE_SIZE)
    first = proposals[0].first(TransformType.DH)
    if group is None and first is not None:
        group = first.id
    dh = None
    if group:  # PFS (§1.3.1, §2.12)
        dh = generate_key_exchange(group, sa._random)
    tsi, tsr = (old.local_ts, old.remote_ts) if old is not None else new_child_ts(sa)
    payloads: list[Payload] = []
    if old is not None:
        payloads.append(rekey_sa_notify(old.spi_in))
    payloads += [sa_payload(proposals, new.spi_in), NoncePayload(nonce)]
    if dh is not None:
        payloads.append(KePayload(dh.group, dh.public_bytes))
    payloads += [TsiPayload(tsi), TsrPayload(tsr)]

    def on_response(message: Message, later: float) -> None:
        if old is not None:
            sa._child_rekeys_out.discard(old.spi_in)
        sa._finish_exchange(later)
        on_create_child_response(sa, message, later, new, old, nonce, dh, (tsi, tsr))

    if old is not None:
        sa._child_rekeys_out.add(old.spi_in)
    sa._request(ExchangeType.CREATE_CHILD_SA, payloads, on_response, now)


def request_child_if_due(sa: IkeSa, old: ChildSa | None, now: float) -> None:
    """A queued CHILD SA request: skipped if the SA to rekey went meanwhile (the
    peer rekeyed or deleted it, or the IKE SA is no longer established)."""
    due = sa.state == IkeSaState.ESTABLISHED and (
        old is None or (old.state == ChildSaState.REKEYING and sa.children.get(old.spi_in) is old)
    )
    if due:
        request_child(sa, old, now)
    else:
        sa._next_queued(now)


def on_create_child_response(
    sa: IkeSa,
    message: Message,
    now: float,
    new: ChildSa,
    old: ChildSa | None,
    nonce_i: bytes,
    dh: KeyExchange | None,
    offered: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]],
) -> None:
    if new.spi_in not in sa.children or sa.state not in LIVE_STATES:
        return  # the IKE SA was rekeyed or is going meanwhile
    wanted = child_ke_retry(sa, message, dh)
    if wanted is not None:
        sa.children.pop(new.spi_in, None)
        if old is not None:
            sa._child_rekeys_out.add(old.spi_in)
        request_child(sa, old, now, group=wanted)
        return
    try:
        spec, nonce_r, shared = check_child_answer(sa, message, new, dh, offered)
    except RemoteProtocolError as error:
        child_request_failed(sa, new, old, error.notify, str(error), now)
        return
    sa._install_child(
        new, spec, initiator=True, now=now, nonces=(nonce_i, nonce_r), shared_secret=shared
    )
    if old is not None:
        finish_child_rekey(sa, old, new, (nonce_i, nonce_r), now)


def child_ke_retry(sa: IkeSa, message: Message, dh: KeyExchange | None) -> int | None:
    """§1.3: INVALID_KE_PAYLOAD names the group the peer wants; retry once with it
    if it is one of ours (a second refusal of the same kind fails the CHILD SA)."""
    notify = message.notify(NotifyType.INVALID_KE_PAYLOAD)
    if notify is None or dh is None:
        return None
    group = int(read_invalid_ke_group(notify))
    offered = {t.id for p in child_config_proposals(sa) for t in p.of_type(TransformType.DH)}
    return group if group in offered and group != dh.group else None


def check_child_answer(
    sa: IkeSa,
    message: Message,
    new: ChildSa,
    dh: KeyExchange | None,
    offered: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]],
) -> tuple[ProposalSpec, bytes, bytes | None]:
    errors = error_notifies(message)
    if errors:
        raise protocol_error(errors[0], f"CREATE_CHILD_SA refused: {errors[0].name}")
    sa_offer, nonce = message.find(SaPayload), message.find(NoncePayload)
    tsi, tsr = message.find(TsiPayload), message.find(TsrPayload)
    if sa_offer is None or nonce is None or tsi is None or tsr is None:
        raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, Nr, TSi and TSr are required")
    proposal, spec = check_answer(child_config_proposals(sa), sa_offer, ProtocolId.ESP)
    if len(proposal.spi) != 4:
        raise protocol_error(NotifyType.INVALID_SYNTAX, "ESP SPI must be 4 octets")
    if not acceptable_answer(tsi.selectors, offered[0]) or not acceptable_answer(
        tsr.selectors, offered[1]
    ):
        raise protocol_error(NotifyType.TS_UNACCEPTABLE, "selectors not within those proposed")
    shared = None
    if dh is not None:
        ke = message.find(KePayload)
        if ke is None or ke.group != dh.group:
            raise protocol_error(NotifyType.INVALID_KE_PAYLOAD, "the answer lacks our KE group")
        shared = dh.shared_secret(ke.data)
    new.spi_out = proposal.spi
    new.local_ts = tuple(t for t in tsi.selectors if isinstance(t, TrafficSelector))
    new.remote_ts = tuple(t for t in tsr.selectors if isinstance(t, TrafficSelector))
    return spec, nonce.data, shared


def child_request_failed(
    sa: IkeSa, new: ChildSa, old: ChildSa | None, notify: NotifyType, reason: str, now: float
) -> None:
    """§2.21.3: the IKE SA survives; a refused rekey keeps the old SA (and retries
    after TEMPORARY_FAILURE, §2.25)."""
    sa.children.pop(new.spi_in, None)
    new.state = ChildSaState.FAILED
    if old is not None and old.state == ChildSaState.REKEYING:
        old.state = ChildSaState.INSTALLED
        if notify == NotifyType.TEMPORARY_FAILURE:
            old.rekey_at = now + REKEY_RETRY_DELAY
    sa._emit(ChildSaFailed(sa.local_spi, sa.name, notify, reason))


def finish_child_rekey(
    sa: IkeSa, old: ChildSa, new: ChildSa, nonces: tuple[bytes, bytes], now: float
) -> None:
    """Our rekey of ``old`` produced ``new``. §2.8.1: if the peer rekeyed ``old``
    too, the exchange holding the lowest of the four nonces made the redundant
    SA, and its initiator deletes it; the winner's initiator deletes ``old``."""
    peer = sa._peer_rekeyed.pop(old.spi_in, None)
    if peer is not None and ours_is_redundant(nonces, peer.nonces):
        sa.counters["child_rekey_collisions_lost"] += 1
        old.state = ChildSaState.REKEYED  # the peer deletes it
        emit_rekeyed(sa, old, peer.new)
        sa._send_child_delete(new, now)
        return
    if peer is not None:
        sa.counters["child_rekey_collisions_won"] += 1
    emit_rekeyed(sa, old, new)
    sa._send_child_delete(old, now)


def emit_rekeyed(sa: IkeSa, old: ChildSa, new: ChildSa) -> None:
    sa._emit(
        ChildSaRekeyed(
            sa.local_spi,
            sa.name,
            old.spi_in,
            old.spi_out,
            new.spi_in,
            new.spi_out,
        )
    )


# ----------------------------------------------------------------------
# CREATE_CHILD_SA, responder (RFC 7296 §1.3, §2.8, §2.18, §2.25)


def on_create_child_request(
    sa: IkeSa, message: Message, src: Address, dst: Address, now: float
) -> None:
    """A new CHILD SA, a CHILD SA rekey (N(REKEY_SA)) or an IKE SA rekey (an IKE
    proposal). Accepted while our own request is outstanding (§2.3): strongSwan
    rekeys the CHILD SA right after a MOBIKE update, often before answering it."""
    sa_offer = message.find(SaPayload)
    if sa.state != IkeSaState.ESTABLISHED:
        # §2.25: an SA being deleted or rekeyed away is not rekeyed again.
        sa._respond(message.header, [NotifyPayload(NotifyType.TEMPORARY_FAILURE)])
        return
    if sa_offer is None:
        sa._respond(message.header, [NotifyPayload(NotifyType.INVALID_SYNTAX)])
        return
    if any(p.protocol_id == ProtocolId.IKE for p in sa_offer.proposals):
        on_ike_rekey_request(sa, message, sa_offer, now)
        return
    old: ChildSa | None = None
    rekey = message.notify(NotifyType.REKEY_SA)
    if rekey is not None:
        _, spi = read_rekey_sa(rekey)
        matching = [c for c in sa.children.values() if c.spi_out == spi]
        live = [c for c in matching if c.state in (ChildSaState.INSTALLED, ChildSaState.REKEYING)]
        if not live:
            # §2.25.1: being deleted (or rekeyed away): TEMPORARY_FAILURE; unknown:
            # CHILD_SA_NOT_FOUND.
            notify = NotifyType.TEMPORARY_FAILURE if matching else NotifyType.CHILD_SA_NOT_FOUND
            sa._respond(message.header, [NotifyPayload(notify)])
            return
        old = live[0]
    answer_create_child(sa, message, sa_offer, old, now)


def answer_create_child(
    sa: IkeSa, message: Message, sa_offer: SaPayload, old: ChildSa | None, now: float
) -> None:
    nonce, ke = message.find(NoncePayload), message.find(KePayload)
    tsi, tsr = message.find(TsiPayload), message.find(TsrPayload)
    new: ChildSa | None = None
    try:
        if nonce is None or tsi is None or tsr is None:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "Ni, TSi and TSr are required")
        if sa._rcfg is not None:
            new, spec, sa_answer = sa._accept_child(sa_offer, tsi, tsr)
        else:
            new, spec, sa_answer = accept_child_as_initiator(sa, sa_offer, tsi, tsr)
        ke_answer, shared = answer_child_ke(sa, spec, ke)
    except RemoteProtocolError as error:
        if new is not None:
            sa.children.pop(new.spi_in, None)
        sa._respond(message.header, [NotifyPayload(error.notify, data=error.data)])
        if error.notify != NotifyType.INVALID_KE_PAYLOAD:  # that one is a round (§1.3)
            sa._emit(ChildSaFailed(sa.local_spi, sa.name, error.notify, str(error)))
        return
    nonce_r = sa._random(NONCE_SIZE)
    payloads: list[Payload] = [sa_answer, NoncePayload(nonce_r), *ke_answer]
    payloads += [TsiPayload(new.remote_ts), TsrPayload(new.local_ts)]
    sa._respond(message.header, payloads)
    nonces = (nonce.data, nonce_r)
    sa._install_child(new, spec, initiator=False, now=now, nonces=nonces, shared_secret=shared)
    if old is None:
        return
    if old.spi_in in sa._child_rekeys_out:
        # §2.8.1: we are rekeying it too; decided when our answer comes.
        sa._peer_rekeyed[old.spi_in] = PeerChildRekey(new, nonces)
        return
    old.state = ChildSaState.REKEYED  # the peer deletes it (§2.8)
    emit_rekeyed(sa, old, new)


def accept_child_as_initiator(
    sa: IkeSa, offer: SaPayload, tsi_payload: TsiPayload, tsr_payload: TsrPayload
) -> tuple[ChildSa, ProposalSpec, SaPayload]:
    """The mobile node answering the gateway's CREATE_CHILD_SA: our selectors are
    TSr (the lease or dynamic), the gateway's networks TSi."""
    config = sa._initiator_config
    received, spec = select(config.child.esp_proposals, offer, ProtocolId.ESP)
    if len(received.spi) != 4:
        raise protocol_error(NotifyType.INVALID_SYNTAX, "ESP SPI must be 4 octets")
    ours, theirs = new_child_ts(sa)
    tsi = narrow(tsi_payload.selectors, theirs)
    tsr = narrow(tsr_payload.selectors, ours)
    if not tsi or not tsr:
        raise protocol_error(NotifyType.TS_UNACCEPTABLE, "no traffic selectors in common")
    child = ChildSa(spi_in=sa._new_child_spi(), spi_out=received.spi)
    child.local_ts, child.remote_ts = tsr, tsi
    sa.children[child.spi_in] = child
    return child, spec, answer(received, spec, child.spi_in)


def answer_child_ke(
    sa: IkeSa, spec: ProposalSpec, ke: KePayload | None
) -> tuple[list[Payload], bytes | None]:
    """PFS (§1.3.1): KEr in the selected group; INVALID_KE_PAYLOAD names it (§1.3)."""
    group = spec.first(TransformType.DH)
    if group is None or group.id == 0:
        return [], None
    if ke is None or ke.group != group.id:
        raise RemoteProtocolError(
            "KE of another group",
            NotifyType.INVALID_KE_PAYLOAD,
            invalid_ke_notify(DhGroup(group.id)).data,
        )
    dh = generate_key_exchange(group.id, sa._random)
    return [KePayload(dh.group, dh.public_bytes)], dh.shared_secret(ke.data)


# ----------------------------------------------------------------------
# IKE SA rekey (RFC 7296 §1.3.2, §2.18, §2.25.2)


def rekey_ike_sa(sa: IkeSa, now: float, group: int | None = None) -> None:
    """Command: rekey this IKE SA. A new IKE SA with new SPIs and keys from SK_d
    takes the CHILD SAs and the lease; then we DELETE this one. ``group``: the KE
    group the peer asked for by INVALID_KE_PAYLOAD (default: the current one)."""
    if sa.state != IkeSaState.ESTABLISHED or sa._ike_rekey is not None:
        return
    if sa._outstanding is not None or sa._queued:
        # §2.18: not while other exchanges are under way; try again shortly.
        sa._ike_rekey_at = now + IKE_REKEY_BUSY_DELAY
        return
    assert sa._suite is not None
    config = sa._icfg or sa._rcfg
    assert config is not None
    wanted = group or suite_group(sa)
    # That group's proposals first, so that the peer needs no INVALID_KE round.
    proposals = sorted(
        config.ike_proposals,
        key=lambda p: not any(t.id == wanted for t in p.of_type(TransformType.DH)),
    )
    rekey = IkeRekey(
        sa._new_ike_spi(),
        sa._random(NONCE_SIZE),
        generate_key_exchange(wanted, sa._random),
    )
    sa._ike_rekey = rekey
    payloads: list[Payload] = [
        sa_payload(proposals, rekey.spi),
        NoncePayload(rekey.nonce),
        KePayload(rekey.dh.group, rekey.dh.public_bytes),
    ]

    def on_response(message: Message, later: float) -> None:
        on_ike_rekey_response(sa, message, later, proposals)

    sa._request(ExchangeType.CREATE_CHILD_SA, payloads, on_response, now)


def ike_ke_retry(
    message: Message, rekey: IkeRekey, proposals: Sequence[ProposalSpec]
) -> int | None:
    """§1.3: the group an INVALID_KE_PAYLOAD answer asks for, if we offered it."""
    notify = message.notify(NotifyType.INVALID_KE_PAYLOAD)
    if notify is None:
        return None
    group = int(read_invalid_ke_group(notify))
    offered = {t.id for p in proposals for t in p.of_type(TransformType.DH)}
    return group if group in offered and group != rekey.dh.group else None


def suite_group(sa: IkeSa) -> int:
    assert sa._suite is not None
    return int(sa._suite.dh_group)


def on_ike_rekey_response(
    sa: IkeSa, message: Message, now: float, proposals: Sequence[ProposalSpec]
) -> None:
    rekey, sa._ike_rekey = sa._ike_rekey, None
    assert rekey is not None
    try:
        spi_r, spec, nonce_r, shared = check_ike_rekey_answer(sa, message, rekey, proposals)
    except RemoteProtocolError as error:
        sa.counters["ike_rekeys_failed"] += 1
        collision, sa._ike_collision = sa._ike_collision, None
        if collision is not None:
            # The peer's rekey, answered meanwhile, stands alone (§2.25.2).
            sa._outstanding = None
            sa._my_next_id += 1
            hand_over(sa, collision.successor, now)
            return
        sa._finish_exchange(now)
        retry_group = ike_ke_retry(message, rekey, proposals)
        if retry_group is not None:
            rekey_ike_sa(sa, now, retry_group)
        elif error.notify == NotifyType.TEMPORARY_FAILURE:
            sa._ike_rekey_at = now + REKEY_RETRY_DELAY
        return
    sa._outstanding = None
    sa._my_next_id += 1
    nonces = (rekey.nonce, nonce_r)
    ours = make_successor(sa, rekey.spi, spi_r, True, spec, nonces, shared, now)
    collision, sa._ike_collision = sa._ike_collision, None
    if collision is not None and ours_is_redundant(nonces, collision.nonces):
        # §2.25.2: our exchange holds the lowest nonce: ours is redundant and we
        # delete it; the peer deletes this IKE SA.
        sa.counters["ike_rekey_collisions_lost"] += 1
        hand_over(sa, collision.successor, now)
        ours._superseded = True
        ours.delete(now)
        return
    if collision is not None:
        sa.counters["ike_rekey_collisions_won"] += 1
        redundant = collision.successor  # the peer deletes it; it only waits for that
        redundant._superseded = True
        redundant.state = IkeSaState.REKEYED
        redundant._half_open_deadline = now + REKEYED_IKE_SA_GRACE
    hand_over(sa, ours, now)
    sa.state = IkeSaState.ESTABLISHED  # for delete(); nothing else runs on it now
    sa.delete(now)


def check_ike_rekey_answer(
    sa: IkeSa, message: Message, rekey: IkeRekey, proposals: Sequence[ProposalSpec]
) -> tuple[bytes, ProposalSpec, bytes, bytes]:
    errors = error_notifies(message)
    if errors:
        raise protocol_error(errors[0], f"IKE SA rekey refused: {errors[0].name}")
    sa_offer, nonce, ke = (
        message.find(SaPayload),
        message.find(NoncePayload),
        message.find(KePayload),
    )
    if sa_offer is None or nonce is None or ke is None:
        raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, Nr and KEr are required")
    proposal, spec = check_answer(proposals, sa_offer, ProtocolId.IKE)
    if len(proposal.spi) != 8 or ke.group != rekey.dh.group:
        raise protocol_error(NotifyType.INVALID_SYNTAX, "bad SPI or KE group in the answer")
    return proposal.spi, spec, nonce.data, rekey.dh.shared_secret(ke.data)


def on_ike_rekey_request(sa: IkeSa, message: Message, offer: SaPayload, now: float) -> None:
    """§1.3.2: the peer rekeys this IKE SA. With a CHILD SA exchange of ours out,
    TEMPORARY_FAILURE (§2.25.2); with our own IKE SA rekey out, answer and let
    the nonces decide when our answer comes. An INFORMATIONAL of ours (a MOBIKE
    update) finishes on this IKE SA; an update is told again on the new one."""
    outstanding = sa._outstanding
    if (
        outstanding is not None
        and outstanding.exchange == ExchangeType.CREATE_CHILD_SA
        and sa._ike_rekey is None
    ):
        sa._respond(message.header, [NotifyPayload(NotifyType.TEMPORARY_FAILURE)])
        return
    config = sa._icfg or sa._rcfg
    assert config is not None
    nonce, ke = message.find(NoncePayload), message.find(KePayload)
    try:
        if nonce is None or ke is None:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "Ni and KEi are required")
        received, spec = select(config.ike_proposals, offer, ProtocolId.IKE)
        group = spec.first(TransformType.DH)
        assert group is not None
        if ke.group != group.id:
            raise RemoteProtocolError(
                "KE of another group",
                NotifyType.INVALID_KE_PAYLOAD,
                invalid_ke_notify(DhGroup(group.id)).data,
            )
        if len(received.spi) != 8:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "IKE SPI must be 8 octets")
        dh = generate_key_exchange(group.id, sa._random)
        shared = dh.shared_secret(ke.data)
    except RemoteProtocolError as error:
        sa._respond(message.header, [NotifyPayload(error.notify, data=error.data)])
        return
    spi_r, nonce_r = sa._new_ike_spi(), sa._random(NONCE_SIZE)
    sa._respond(
        message.header,
        [
            answer(received, spec, spi_r),
            NoncePayload(nonce_r),
            KePayload(dh.group, dh.public_bytes),
        ],
    )
    nonces = (nonce.data, nonce_r)
    successor = make_successor(sa, received.spi, spi_r, False, spec, nonces, shared, now)
    if sa._ike_rekey is not None:
        sa._ike_collision = IkeCollision(successor, nonces)
        return
    hand_over(sa, successor, now)


def make_successor(
    sa: IkeSa,
    spi_i: bytes,
    spi_r: bytes,
    we_initiated: bool,
    spec: ProposalSpec,
    nonces: tuple[bytes, bytes],
    shared_secret: bytes,
    now: float,
) -> IkeSa:
    """The new IKE SA (§2.18): the rekey initiator is its original initiator,
    SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), Message IDs from 0."""
    assert sa._suite is not None and sa._keys is not None
    new = type(sa)(
        initiator=we_initiated,
        name=sa.name,
        local=sa.local,
        remote=sa.remote,
        random=sa._random,
        retransmit=sa._retransmit,
    )
    new._icfg, new._rcfg = sa._icfg, sa._rcfg
    new.spi_i, new.spi_r = spi_i, spi_r
    new._nonce_i, new._nonce_r = nonces
    new._suite = IkeSuite.from_proposal(spec)
    new._keys = new._suite.derive_rekeyed_keys(
        sa._suite.prf, sa._keys.sk_d, nonces[0], nonces[1], spi_i, spi_r, shared_secret
    )
    new._ciphers = sk_cipher_pair(new._suite, new._keys, sa._random)
    new.state = IkeSaState.ESTABLISHED
    new.peer_identity, new.assigned_addresses, new.dns = (
        sa.peer_identity,
        sa.assigned_addresses,
        sa.dns,
    )
    new.nat_local, new.nat_remote = sa.nat_local, sa.nat_remote
    new.peer_fragmentation, new.peer_mobike, new.mobike = (
        sa.peer_fragmentation,
        sa.peer_mobike,
        sa.mobike,
    )
    new._peer_hashes = sa._peer_hashes
    new.peer_additional_addresses = sa.peer_additional_addresses
    start_ike_lifetime(new, now)
    sa._successors.append(new)
    return new


def hand_over(sa: IkeSa, new: IkeSa, now: float) -> None:
    """Move the CHILD SAs and the lease to ``new``; this SA waits for its DELETE."""
    for child in sa.children.values():
        if child.state in (ChildSaState.REKEYING, ChildSaState.CREATING):
            child.state = ChildSaState.INSTALLED if child.params else ChildSaState.FAILED
            child.rekey_at = now  # its exchange died with this IKE SA: again, on the new
    new.children = {k: c for k, c in sa.children.items() if c.params is not None}
    sa.children = {}
    # A MOBIKE update queued or in flight here is told again on the new IKE SA, so
    # that the peer's new SA has our present addresses (RFC 4555 §3.5).
    update_pending = sa._update_queued or sa._update_cookie is not None
    sa._peer_rekeyed.clear()
    sa._child_rekeys_out.clear()
    sa._queued.clear()
    sa._update_queued = False
    reown_lease(sa, new)
    sa._superseded = True
    sa.state = IkeSaState.REKEYED
    sa._half_open_deadline = now + REKEYED_IKE_SA_GRACE
    sa.counters["ike_rekeys"] += 1
    sa._emit(IkeSaRekeyed(sa.local_spi, sa.name, new.local_spi))
    if update_pending and new.mobike and new._icfg is not None:
        send_update(new, now)


def reown_lease(sa: IkeSa, new: IkeSa) -> None:
    """The lease belongs to the IKE SA (§2.19): file it under the new SPI."""
    config = sa._rcfg
    if sa._lease_owner is None or config is None or config.allocator is None:
        return
    released = config.allocator.release(sa._lease_owner)
    sa._lease_owner = None
    new._lease_owner = new.local_spi
    for address in released:
        config.allocator.acquire(new.local_spi, address.version, address)
