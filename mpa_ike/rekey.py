"""CREATE_CHILD_SA on one IKE SA (RFC 7296 §1.3, §2.8, §2.18, §2.25): :class:`Rekey`.

It holds the commands ``create_child_sa``, ``rekey_child_sa`` and ``rekey_ike_sa``
(also ``IkeSa`` methods), the CREATE_CHILD_SA responder
:meth:`Rekey.on_create_child_request`, the lifetimes that start the rekeys, and
what is remembered of rekeys in flight for the collision rules. Additional
CHILD SAs; CHILD SA rekey (N(REKEY_SA), new SPIs, KE for PFS: the new SA is
installed, then the rekey initiator deletes the old one); IKE SA rekey (a new
IKE SA with new SPIs, SKEYSEED from the old SK_d, Message IDs from 0, which
takes the CHILD SAs and the lease). Both roles; collisions (§2.8.1, §2.25).

It talks to its IKE SA through :class:`RekeyHost` and sends through the SA's
:class:`mpa_ike.exchange.Exchanges`; the new IKE SA of a rekey is a
:class:`Successor` made by the host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mpa_ike.child_negotiation import Selectors, accept_child
from mpa_ike.child_sa import ChildInstaller, ChildSa, ChildSaState
from mpa_ike.constants import DhGroup, ExchangeType, NotifyType, ProtocolId, TransformType
from mpa_ike.crypto.dh import KeyExchange, generate_key_exchange
from mpa_ike.crypto.proposal import ProposalSpec
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaLimits
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.events import ChildSaFailed, ChildSaRekeyed, Event
from mpa_ike.exchange import Exchanges
from mpa_ike.ike_config import InitiatorConfig, Lifetimes, ResponderConfig
from mpa_ike.ike_sa_common import (
    LIVE_STATES,
    NONCE_SIZE,
    IkeSaState,
    error_notifies,
    protocol_error,
)
from mpa_ike.sa_payload import answer, check_answer, sa_payload, select
from mpa_ike.traffic_selectors import acceptable_answer
from mpa_ike.wire import (
    IPAddress,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
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

Random = Callable[[int], bytes]

# How long a rekeyed IKE SA waits for the peer's DELETE before it goes quietly.
REKEYED_IKE_SA_GRACE = 30.0
# A rekey refused with TEMPORARY_FAILURE (§2.25) is tried again this much later.
REKEY_RETRY_DELAY = 10.0
# An IKE SA rekey asked for while other exchanges are under way waits this long (§2.18).
IKE_REKEY_BUSY_DELAY = 1.0


class Successor(Protocol):
    """The new IKE SA of a rekey (§2.18), as the old one's rekey sees it."""

    @property
    def local_spi(self) -> bytes: ...

    def mark_superseded(self) -> None: ...

    def await_peer_delete(self, now: float) -> None: ...

    def delete(self, now: float) -> None: ...

    def adopt(self, children: dict[bytes, ChildSa], lease: Sequence[IPAddress] | None) -> None: ...

    def resume_address_update(self, now: float) -> None: ...


class RekeyHost(ChildInstaller, Protocol):
    """What CREATE_CHILD_SA reads and changes of its IKE SA."""

    name: str
    state: IkeSaState
    children: dict[bytes, ChildSa]
    counters: Counter[str]

    @property
    def local_spi(self) -> bytes: ...

    @property
    def config(self) -> InitiatorConfig | ResponderConfig: ...

    @property
    def dh_group(self) -> int: ...

    def emit(self, event: Event) -> None: ...

    def new_child_spi(self) -> bytes: ...

    def new_ike_spi(self) -> bytes: ...

    def child_selectors(self) -> tuple[Selectors, Selectors]: ...

    def delete_child(self, child: ChildSa, now: float) -> None: ...

    def successor(
        self,
        spi_i: bytes,
        spi_r: bytes,
        we_initiated: bool,
        spec: ProposalSpec,
        nonces: tuple[bytes, bytes],
        shared_secret: bytes,
        now: float,
    ) -> Successor: ...

    def hand_over(self, new: Successor, now: float) -> None: ...

    def delete(self, now: float) -> None: ...


@dataclass
class IkeRekey:
    """Our CREATE_CHILD_SA rekeying the IKE SA (§1.3.2): the new SPI, Ni and KE."""

    spi: bytes
    nonce: bytes
    dh: KeyExchange


@dataclass
class IkeCollision:
    """§2.25.2: the peer's IKE SA rekey, answered while ours was out."""

    successor: Successor
    nonces: tuple[bytes, bytes]


@dataclass
class PeerChildRekey:
    """§2.8.1: the peer's rekey of a CHILD SA we were rekeying ourselves."""

    new: ChildSa
    nonces: tuple[bytes, bytes]


@dataclass
class ChildRequest:
    """Our CREATE_CHILD_SA for a CHILD SA in flight: what its answer is checked against."""

    new: ChildSa
    old: ChildSa | None
    nonce_i: bytes
    dh: KeyExchange | None
    offered: tuple[Selectors, Selectors]


def ours_is_redundant(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """§2.8.1 (CHILD SAs) and §2.8.2 (IKE SAs): of two simultaneous rekeys, the SA
    created by the exchange holding the lowest of the four nonces is redundant, and
    the initiator of that exchange deletes it. ``ours``: (Ni, Nr) of our exchange."""
    return min(ours) < min(theirs)


def jittered(rekey_time: float, rand_time: float, random: Callable[[int], bytes]) -> float:
    """``rekey_time`` less a random part of up to ``rand_time`` seconds (strongSwan's
    rand_time), so that two peers with one configuration do not rekey at once."""
    fraction = int.from_bytes(random(2), "big") / 0x10000
    return rekey_time - rand_time * fraction


class Rekey:
    """CREATE_CHILD_SA exchanges of one IKE SA, both roles, and the rekey timers."""

    def __init__(
        self,
        sa: RekeyHost,
        exchanges: Exchanges,
        random: Random,
    ) -> None:
        self._sa = sa
        self._exchanges = exchanges
        self._random = random
        self._ike_rekey_at: float | None = None
        self._ike_expire_at: float | None = None  # rekey_time + over_time
        self._ike_rekey: IkeRekey | None = None
        self._ike_collision: IkeCollision | None = None
        self._peer_rekeyed: dict[bytes, PeerChildRekey] = {}
        self._child_rekeys_out: set[bytes] = set()  # old spi_in of our rekeys in flight

    # ------------------------------------------------------------------
    # Lifetimes (RFC 7296 §2.8: rekeying is up to each side's policy)

    @property
    def lifetimes(self) -> Lifetimes:
        return self._sa.config.lifetimes

    def start_ike_lifetime(self, now: float) -> None:
        lifetimes = self.lifetimes
        rekey_time, life_time = lifetimes.ike_rekey_time, lifetimes.ike_life_time
        self._ike_rekey_at = None
        if rekey_time is not None:
            rand = lifetimes.ike_rand_time or 0.0
            self._ike_rekey_at = now + jittered(rekey_time, rand, self._random)
        self._ike_expire_at = None if life_time is None else now + life_time

    def child_rekey_at(self, now: float) -> float | None:
        """When a CHILD SA installed ``now`` is due for its rekey."""
        lifetimes = self.lifetimes
        rekey_time = lifetimes.child_rekey_time
        if rekey_time is None:
            return None
        return now + jittered(rekey_time, lifetimes.child_rand_time or 0.0, self._random)

    def child_expire_at(self, now: float) -> float | None:
        """When a CHILD SA installed ``now`` is deleted if no rekey replaced it."""
        life_time = self.lifetimes.child_life_time
        return None if life_time is None else now + life_time

    def child_limits(self, child: ChildSa, now: float) -> ChildSaLimits:
        """The datapath's limits of ``child`` installed ``now``: its own rekey and expiry
        deadlines, and the byte and packet limits, the soft ones less a random part of up
        to the gap to the hard ones (strongSwan's rand_bytes and rand_packets)."""
        lifetimes = self.lifetimes

        def soft(rekey: int, life: int) -> int:
            if not rekey:
                return 0
            return max(1, int(jittered(rekey, max(life - rekey, 0) if life else 0, self._random)))

        return ChildSaLimits(
            soft_seconds=None if child.rekey_at is None else child.rekey_at - now,
            hard_seconds=None if child.expire_at is None else lifetimes.child_life_time,
            soft_bytes=soft(lifetimes.child_rekey_bytes, lifetimes.child_life_bytes),
            hard_bytes=lifetimes.child_life_bytes,
            soft_packets=soft(lifetimes.child_rekey_packets, lifetimes.child_life_packets),
            hard_packets=lifetimes.child_life_packets,
        )

    def deadlines(self) -> list[float | None]:
        """The lifetime deadlines of an established IKE SA (its own, its CHILD SAs')."""
        children = self._sa.children.values()
        installed = [c for c in children if c.state == ChildSaState.INSTALLED]
        return [
            self._ike_rekey_at,
            self._ike_expire_at,
            *(c.rekey_at for c in installed),
            *(c.expire_at for c in installed),
        ]

    def handle_timer(self, now: float) -> None:
        sa = self._sa
        if sa.state != IkeSaState.ESTABLISHED:
            return
        if self._ike_expire_at is not None and now >= self._ike_expire_at:
            # strongSwan's over_time: the rekey never got through; the SA ends.
            self._ike_expire_at = None
            sa.counters["ike_lifetime_expired"] += 1
            sa.delete(now)
            return
        if self._ike_rekey_at is not None and now >= self._ike_rekey_at:
            self._ike_rekey_at = None
            self.rekey_ike_sa(now)
        for child in list(sa.children.values()):
            if child.state != ChildSaState.INSTALLED:
                continue
            if child.expire_at is not None and now >= child.expire_at:
                child.expire_at = None  # life_time: no rekey replaced it (RFC 7296 §2.8)
                sa.counters["child_lifetime_expired"] += 1
                sa.delete_child(child, now)
            elif child.rekey_at is not None and now >= child.rekey_at:
                child.rekey_at = None
                self.rekey_child_sa(child.spi_in, now)

    def forget(self) -> None:
        """The IKE SA was rekeyed away: its CHILD SA rekeys in flight go with it."""
        self._peer_rekeyed.clear()
        self._child_rekeys_out.clear()

    # ------------------------------------------------------------------
    # CREATE_CHILD_SA, initiator (RFC 7296 §1.3.1, §1.3.3, §2.8, §2.17)

    def create_child_sa(self, now: float) -> None:
        """Command: one more CHILD SA with the configured proposals and selectors (§1.3.1)."""
        if self._sa.state == IkeSaState.ESTABLISHED:
            self._request_child(None, now)

    def rekey_child_sa(self, spi_in: bytes, now: float) -> None:
        """Command: rekey the CHILD SA ``spi_in`` (§1.3.3, §2.8): a new SA, then DELETE
        of the old one by us (or by the peer after a collision it won, §2.8.1)."""
        child = self._sa.children.get(spi_in)
        if self._sa.state != IkeSaState.ESTABLISHED or child is None:
            return
        if child.state != ChildSaState.INSTALLED:
            return
        child.state = ChildSaState.REKEYING
        self._request_child(child, now)

    def _proposals(self) -> tuple[ProposalSpec, ...]:
        return self._sa.config.child.esp_proposals

    def _request_child(self, old: ChildSa | None, now: float, group: int | None = None) -> None:
        """``group``: the KE group the peer asked for by INVALID_KE_PAYLOAD (§1.3)."""
        sa, exchanges = self._sa, self._exchanges
        if exchanges.busy:
            # Window 1 (§2.3): wait; what to send is decided when it can leave.
            exchanges.defer(lambda later: self._request_child_if_due(old, later))
            return
        proposals = self._proposals()
        new = ChildSa(spi_in=sa.new_child_spi())
        sa.children[new.spi_in] = new
        nonce = self._random(NONCE_SIZE)
        first = proposals[0].first(TransformType.DH)
        if group is None and first is not None:
            group = first.id
        dh = generate_key_exchange(group, self._random) if group else None  # PFS (§2.12)
        offered = (old.local_ts, old.remote_ts) if old is not None else sa.child_selectors()
        request = ChildRequest(new, old, nonce, dh, offered)
        if old is not None:
            self._child_rekeys_out.add(old.spi_in)
        exchanges.request(
            ExchangeType.CREATE_CHILD_SA,
            self._child_request_payloads(request, proposals),
            lambda message, later: self._on_child_response(request, message, later),
            now,
        )

    @staticmethod
    def _child_request_payloads(
        request: ChildRequest, proposals: Sequence[ProposalSpec]
    ) -> list[Payload]:
        payloads: list[Payload] = []
        if request.old is not None:
            payloads.append(rekey_sa_notify(request.old.spi_in))
        payloads += [sa_payload(proposals, request.new.spi_in), NoncePayload(request.nonce_i)]
        if request.dh is not None:
            payloads.append(KePayload(request.dh.group, request.dh.public_bytes))
        tsi, tsr = request.offered
        return [*payloads, TsiPayload(tsi), TsrPayload(tsr)]

    def _request_child_if_due(self, old: ChildSa | None, now: float) -> None:
        """A queued CHILD SA request: skipped if the SA to rekey went meanwhile (the
        peer rekeyed or deleted it, or the IKE SA is no longer established)."""
        sa = self._sa
        due = sa.state == IkeSaState.ESTABLISHED and (
            old is None
            or (old.state == ChildSaState.REKEYING and sa.children.get(old.spi_in) is old)
        )
        if due:
            self._request_child(old, now)
        else:
            self._exchanges.run_queue(now)

    def _on_child_response(self, request: ChildRequest, message: Message, now: float) -> None:
        sa, new, old = self._sa, request.new, request.old
        if old is not None:
            self._child_rekeys_out.discard(old.spi_in)
        self._exchanges.finish(now)
        if new.spi_in not in sa.children or sa.state not in LIVE_STATES:
            return  # the IKE SA was rekeyed or is going meanwhile
        wanted = self._child_ke_retry(message, request.dh)
        if wanted is not None:
            sa.children.pop(new.spi_in, None)
            if old is not None:
                self._child_rekeys_out.add(old.spi_in)
            self._request_child(old, now, group=wanted)
            return
        try:
            spec, nonce_r, shared = self._check_child_answer(message, request)
        except RemoteProtocolError as error:
            self._child_request_failed(new, old, error.notify, str(error), now)
            return
        nonces = (request.nonce_i, nonce_r)
        sa.install_child(new, spec, initiator=True, now=now, nonces=nonces, shared_secret=shared)
        if old is not None:
            self._finish_child_rekey(old, new, nonces, now)

    def _child_ke_retry(self, message: Message, dh: KeyExchange | None) -> int | None:
        """§1.3: INVALID_KE_PAYLOAD names the group the peer wants; retry once with it
        if it is one of ours (a second refusal of the same kind fails the CHILD SA)."""
        notify = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        if notify is None or dh is None:
            return None
        group = int(read_invalid_ke_group(notify))
        offered = {t.id for p in self._proposals() for t in p.of_type(TransformType.DH)}
        return group if group in offered and group != dh.group else None

    def _check_child_answer(
        self, message: Message, request: ChildRequest
    ) -> tuple[ProposalSpec, bytes, bytes | None]:
        errors = error_notifies(message)
        if errors:
            raise protocol_error(errors[0], f"CREATE_CHILD_SA refused: {errors[0].name}")
        sa_offer, nonce = message.find(SaPayload), message.find(NoncePayload)
        tsi, tsr = message.find(TsiPayload), message.find(TsrPayload)
        if sa_offer is None or nonce is None or tsi is None or tsr is None:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "SA, Nr, TSi and TSr are required")
        proposal, spec = check_answer(self._proposals(), sa_offer, ProtocolId.ESP)
        if len(proposal.spi) != 4:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "ESP SPI must be 4 octets")
        offered_i, offered_r = request.offered
        if not acceptable_answer(tsi.selectors, offered_i) or not acceptable_answer(
            tsr.selectors, offered_r
        ):
            raise protocol_error(NotifyType.TS_UNACCEPTABLE, "selectors not within those proposed")
        shared = _child_shared_secret(message, request.dh)
        new = request.new
        new.spi_out = proposal.spi
        new.local_ts = tuple(t for t in tsi.selectors if isinstance(t, TrafficSelector))
        new.remote_ts = tuple(t for t in tsr.selectors if isinstance(t, TrafficSelector))
        return spec, nonce.data, shared

    def _child_request_failed(
        self, new: ChildSa, old: ChildSa | None, notify: NotifyType, reason: str, now: float
    ) -> None:
        """§2.21.3: the IKE SA survives; a refused rekey keeps the old SA (and retries
        after TEMPORARY_FAILURE, §2.25)."""
        sa = self._sa
        sa.children.pop(new.spi_in, None)
        new.state = ChildSaState.FAILED
        if old is not None and old.state == ChildSaState.REKEYING:
            old.state = ChildSaState.INSTALLED
            if notify == NotifyType.TEMPORARY_FAILURE:
                old.rekey_at = now + REKEY_RETRY_DELAY
        sa.emit(ChildSaFailed(sa.local_spi, sa.name, notify, reason))

    def _finish_child_rekey(
        self, old: ChildSa, new: ChildSa, nonces: tuple[bytes, bytes], now: float
    ) -> None:
        """Our rekey of ``old`` produced ``new``. §2.8.1: if the peer rekeyed ``old``
        too, the exchange holding the lowest of the four nonces made the redundant
        SA, and its initiator deletes it; the winner's initiator deletes ``old``."""
        sa = self._sa
        peer = self._peer_rekeyed.pop(old.spi_in, None)
        if peer is not None and ours_is_redundant(nonces, peer.nonces):
            sa.counters["child_rekey_collisions_lost"] += 1
            old.state = ChildSaState.REKEYED  # the peer deletes it
            self._emit_rekeyed(old, peer.new)
            sa.delete_child(new, now)
            return
        if peer is not None:
            sa.counters["child_rekey_collisions_won"] += 1
        self._emit_rekeyed(old, new)
        sa.delete_child(old, now)

    def _emit_rekeyed(self, old: ChildSa, new: ChildSa) -> None:
        sa = self._sa
        sa.emit(
            ChildSaRekeyed(sa.local_spi, sa.name, old.spi_in, old.spi_out, new.spi_in, new.spi_out)
        )

    # ------------------------------------------------------------------
    # CREATE_CHILD_SA, responder (RFC 7296 §1.3, §2.8, §2.18, §2.25)

    def on_create_child_request(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        """A new CHILD SA, a CHILD SA rekey (N(REKEY_SA)) or an IKE SA rekey (an IKE
        proposal). Accepted while our own request is outstanding (§2.3): strongSwan
        rekeys the CHILD SA right after a MOBIKE update, often before answering it."""
        sa_offer = message.find(SaPayload)
        if self._sa.state != IkeSaState.ESTABLISHED:
            # §2.25: an SA being deleted or rekeyed away is not rekeyed again.
            self._refuse(message, NotifyType.TEMPORARY_FAILURE)
            return
        if sa_offer is None:
            self._refuse(message, NotifyType.INVALID_SYNTAX)
            return
        if any(p.protocol_id == ProtocolId.IKE for p in sa_offer.proposals):
            self._on_ike_rekey_request(message, sa_offer, now)
            return
        rekey = message.notify(NotifyType.REKEY_SA)
        if rekey is None:
            self._answer_create_child(message, sa_offer, None, now)
            return
        _, spi = read_rekey_sa(rekey)
        matching = [c for c in self._sa.children.values() if c.spi_out == spi]
        live = [c for c in matching if c.state in (ChildSaState.INSTALLED, ChildSaState.REKEYING)]
        if not live:
            # §2.25.1: being deleted (or rekeyed away): TEMPORARY_FAILURE; unknown:
            # CHILD_SA_NOT_FOUND.
            notify = NotifyType.TEMPORARY_FAILURE if matching else NotifyType.CHILD_SA_NOT_FOUND
            self._refuse(message, notify)
            return
        self._answer_create_child(message, sa_offer, live[0], now)

    def _refuse(self, message: Message, notify: NotifyType) -> None:
        self._exchanges.respond(message.header, [NotifyPayload(notify)])

    def _answer_create_child(
        self, message: Message, sa_offer: SaPayload, old: ChildSa | None, now: float
    ) -> None:
        sa = self._sa
        nonce, ke = message.find(NoncePayload), message.find(KePayload)
        tsi, tsr = message.find(TsiPayload), message.find(TsrPayload)
        new: ChildSa | None = None
        try:
            if nonce is None or tsi is None or tsr is None:
                raise protocol_error(NotifyType.INVALID_SYNTAX, "Ni, TSi and TSr are required")
            new, spec, sa_answer = accept_child(
                self._proposals(), sa_offer, tsi, tsr, sa.child_selectors(), sa.new_child_spi
            )
            sa.children[new.spi_in] = new
            ke_answer, shared = self._answer_child_ke(spec, ke)
        except RemoteProtocolError as error:
            if new is not None:
                sa.children.pop(new.spi_in, None)
            self._exchanges.respond(message.header, [NotifyPayload(error.notify, data=error.data)])
            if error.notify != NotifyType.INVALID_KE_PAYLOAD:  # that one is a round (§1.3)
                sa.emit(ChildSaFailed(sa.local_spi, sa.name, error.notify, str(error)))
            return
        nonce_r = self._random(NONCE_SIZE)
        payloads: list[Payload] = [sa_answer, NoncePayload(nonce_r), *ke_answer]
        payloads += [TsiPayload(new.remote_ts), TsrPayload(new.local_ts)]
        self._exchanges.respond(message.header, payloads)
        nonces = (nonce.data, nonce_r)
        sa.install_child(new, spec, initiator=False, now=now, nonces=nonces, shared_secret=shared)
        if old is not None:
            self._peer_rekeys_child(old, new, nonces)

    def _peer_rekeys_child(self, old: ChildSa, new: ChildSa, nonces: tuple[bytes, bytes]) -> None:
        if old.spi_in in self._child_rekeys_out:
            # §2.8.1: we are rekeying it too; decided when our answer comes.
            self._peer_rekeyed[old.spi_in] = PeerChildRekey(new, nonces)
            return
        old.state = ChildSaState.REKEYED  # the peer deletes it (§2.8)
        self._emit_rekeyed(old, new)

    def _answer_child_ke(
        self, spec: ProposalSpec, ke: KePayload | None
    ) -> tuple[list[Payload], bytes | None]:
        """PFS (§1.3.1): KEr in the selected group; INVALID_KE_PAYLOAD names it (§1.3)."""
        group = spec.first(TransformType.DH)
        if group is None or group.id == 0:
            return [], None
        if ke is None or ke.group != group.id:
            raise _invalid_ke(group.id)
        dh = generate_key_exchange(group.id, self._random)
        return [KePayload(dh.group, dh.public_bytes)], dh.shared_secret(ke.data)

    # ------------------------------------------------------------------
    # IKE SA rekey (RFC 7296 §1.3.2, §2.18, §2.25.2)

    def rekey_ike_sa(self, now: float, group: int | None = None) -> None:
        """Command: rekey this IKE SA. A new IKE SA with new SPIs and keys from SK_d
        takes the CHILD SAs and the lease; then we DELETE this one. ``group``: the KE
        group the peer asked for by INVALID_KE_PAYLOAD (default: the current one)."""
        sa = self._sa
        if sa.state != IkeSaState.ESTABLISHED or self._ike_rekey is not None:
            return
        if not self._exchanges.idle:
            # §2.18: not while other exchanges are under way; try again shortly.
            self._ike_rekey_at = now + IKE_REKEY_BUSY_DELAY
            return
        wanted = group or sa.dh_group
        # That group's proposals first, so that the peer needs no INVALID_KE round.
        proposals = sorted(
            self._sa.config.ike_proposals,
            key=lambda p: not any(t.id == wanted for t in p.of_type(TransformType.DH)),
        )
        rekey = IkeRekey(
            sa.new_ike_spi(),
            self._random(NONCE_SIZE),
            generate_key_exchange(wanted, self._random),
        )
        self._ike_rekey = rekey
        payloads: list[Payload] = [
            sa_payload(proposals, rekey.spi),
            NoncePayload(rekey.nonce),
            KePayload(rekey.dh.group, rekey.dh.public_bytes),
        ]
        self._exchanges.request(
            ExchangeType.CREATE_CHILD_SA,
            payloads,
            lambda message, later: self._on_ike_rekey_response(message, later, proposals),
            now,
        )

    def _on_ike_rekey_response(
        self, message: Message, now: float, proposals: Sequence[ProposalSpec]
    ) -> None:
        rekey, self._ike_rekey = self._ike_rekey, None
        assert rekey is not None
        try:
            spi_r, spec, nonce_r, shared = check_ike_rekey_answer(message, rekey, proposals)
        except RemoteProtocolError as error:
            self._ike_rekey_failed(message, rekey, proposals, error, now)
            return
        self._exchanges.complete()
        nonces = (rekey.nonce, nonce_r)
        ours = self._sa.successor(rekey.spi, spi_r, True, spec, nonces, shared, now)
        collision, self._ike_collision = self._ike_collision, None
        if collision is not None and ours_is_redundant(nonces, collision.nonces):
            # §2.25.2: our exchange holds the lowest nonce: ours is redundant and we
            # delete it; the peer deletes this IKE SA.
            self._sa.counters["ike_rekey_collisions_lost"] += 1
            self._sa.hand_over(collision.successor, now)
            ours.mark_superseded()
            ours.delete(now)
            return
        if collision is not None:
            self._sa.counters["ike_rekey_collisions_won"] += 1
            collision.successor.await_peer_delete(now)  # the peer deletes it
        self._sa.hand_over(ours, now)
        self._sa.state = IkeSaState.ESTABLISHED  # for delete(); nothing else runs on it now
        self._sa.delete(now)

    def _ike_rekey_failed(
        self,
        message: Message,
        rekey: IkeRekey,
        proposals: Sequence[ProposalSpec],
        error: RemoteProtocolError,
        now: float,
    ) -> None:
        self._sa.counters["ike_rekeys_failed"] += 1
        collision, self._ike_collision = self._ike_collision, None
        if collision is not None:
            # The peer's rekey, answered meanwhile, stands alone (§2.25.2).
            self._exchanges.complete()
            self._sa.hand_over(collision.successor, now)
            return
        self._exchanges.finish(now)
        retry_group = ike_ke_retry(message, rekey, proposals)
        if retry_group is not None:
            self.rekey_ike_sa(now, retry_group)
        elif error.notify == NotifyType.TEMPORARY_FAILURE:
            self._ike_rekey_at = now + REKEY_RETRY_DELAY

    def _on_ike_rekey_request(self, message: Message, offer: SaPayload, now: float) -> None:
        """§1.3.2: the peer rekeys this IKE SA. With a CHILD SA exchange of ours out,
        TEMPORARY_FAILURE (§2.25.2); with our own IKE SA rekey out, answer and let
        the nonces decide when our answer comes. An INFORMATIONAL of ours (a MOBIKE
        update) finishes on this IKE SA; an update is told again on the new one."""
        ours_out = self._exchanges.outstanding_exchange
        if ours_out == ExchangeType.CREATE_CHILD_SA and self._ike_rekey is None:
            self._refuse(message, NotifyType.TEMPORARY_FAILURE)
            return
        nonce, ke = message.find(NoncePayload), message.find(KePayload)
        try:
            if nonce is None or ke is None:
                raise protocol_error(NotifyType.INVALID_SYNTAX, "Ni and KEi are required")
            received, spec, shared, dh = self._select_ike_rekey(offer, ke)
        except RemoteProtocolError as error:
            self._exchanges.respond(message.header, [NotifyPayload(error.notify, data=error.data)])
            return
        spi_r, nonce_r = self._sa.new_ike_spi(), self._random(NONCE_SIZE)
        self._exchanges.respond(
            message.header,
            [
                answer(received, spec, spi_r),
                NoncePayload(nonce_r),
                KePayload(dh.group, dh.public_bytes),
            ],
        )
        nonces = (nonce.data, nonce_r)
        successor = self._sa.successor(received.spi, spi_r, False, spec, nonces, shared, now)
        if self._ike_rekey is not None:
            self._ike_collision = IkeCollision(successor, nonces)
            return
        self._sa.hand_over(successor, now)

    def _select_ike_rekey(
        self, offer: SaPayload, ke: KePayload
    ) -> tuple[Proposal, ProposalSpec, bytes, KeyExchange]:
        received, spec = select(self._sa.config.ike_proposals, offer, ProtocolId.IKE)
        group = spec.first(TransformType.DH)
        assert group is not None
        if ke.group != group.id:
            raise _invalid_ke(group.id)
        if len(received.spi) != 8:
            raise protocol_error(NotifyType.INVALID_SYNTAX, "IKE SPI must be 8 octets")
        dh = generate_key_exchange(group.id, self._random)
        return received, spec, dh.shared_secret(ke.data), dh


def _invalid_ke(group: int) -> RemoteProtocolError:
    """§1.3: INVALID_KE_PAYLOAD naming the group we want."""
    return RemoteProtocolError(
        "KE of another group", NotifyType.INVALID_KE_PAYLOAD, invalid_ke_notify(DhGroup(group)).data
    )


def _child_shared_secret(message: Message, dh: KeyExchange | None) -> bytes | None:
    """PFS (§1.3.1): g^ir from the answer's KE, which must be in our group."""
    if dh is None:
        return None
    ke = message.find(KePayload)
    if ke is None or ke.group != dh.group:
        raise protocol_error(NotifyType.INVALID_KE_PAYLOAD, "the answer lacks our KE group")
    return dh.shared_secret(ke.data)


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


def check_ike_rekey_answer(
    message: Message, rekey: IkeRekey, proposals: Sequence[ProposalSpec]
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
