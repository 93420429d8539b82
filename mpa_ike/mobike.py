"""MOBIKE (RFC 4555) on one IKE SA: :class:`Mobike` holds the UPDATE_SA_ADDRESSES
initiator (the mobile node's :meth:`Mobike.move_to`, behind the command
``IkeSa.update_addresses``) and responder (:meth:`Mobike.on_update_sa_addresses`,
reached from the INFORMATIONAL handler), return routability, and the
additional-address lists. It talks to the IKE SA through :class:`MobikeHost`
and sends through the SA's :class:`mpa_ike.exchange.Exchanges`.

The responder's address policy is :mod:`mpa_ike.address_policy` (re-exported
here). §3.12: ESP arriving from an unexpected address is no proof that the
peer moved or lives there; the core never moves an SA on ESP (it does not see
ESP at all).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mpa_ike.address_policy import AddressCheck, AddressPolicy, AddressPolicyMode, IkeSaInfo
from mpa_ike.child_sa import ChildSa
from mpa_ike.constants import ExchangeType, NotifyType
from mpa_ike.datagram import Address
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
    ChildSaAddressesUpdated,
    Event,
    IkeSaAddressesUpdated,
    PeerAddressesAnnounced,
)
from mpa_ike.exchange import Exchanges
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.ike_sa_common import CHILD_IN_DATAPATH, IkeSaState, error_notifies, ip_of
from mpa_ike.wire import IPAddress, Message, NotifyPayload, Payload
from mpa_ike.wire.notify import (
    additional_address_notify,
    cookie2_notify,
    no_nats_allowed_notify,
    read_additional_address,
    read_cookie2,
    read_no_nats_allowed,
)

__all__ = [
    "ADDRESS_LIST_NOTIFIES",
    "COOKIE2_SIZE",
    "AddressCheck",
    "AddressPolicy",
    "AddressPolicyMode",
    "IkeSaInfo",
    "Mobike",
    "MobikeHost",
    "additional_address_notifies",
    "cookie2_echo",
    "no_nats_mismatch",
]

COOKIE2_SIZE = 16  # §3.7: 8 to 64 octets
Random = Callable[[int], bytes]


@dataclass(frozen=True)
class PreparedUpdate:
    """An UPDATE_SA_ADDRESSES built ahead of the move it announces: the path it is for,
    its COOKIE2, and the request as ``Exchanges.seal_request`` made it."""

    path: tuple[Address, Address]
    cookie: bytes
    sealed: tuple[int, list[bytes]]


class MobikeHost(Protocol):
    """What MOBIKE reads and moves of its IKE SA."""

    name: str
    local: Address
    remote: Address
    mobike: bool
    state: IkeSaState
    children: dict[bytes, ChildSa]
    counters: Counter[str]
    nat_local: bool
    nat_remote: bool

    @property
    def local_spi(self) -> bytes: ...

    @property
    def encap(self) -> bool: ...

    @property
    def config(self) -> InitiatorConfig | ResponderConfig: ...

    def emit(self, event: Event) -> None: ...

    def natd_notifies(self, path: tuple[Address, Address] | None = None) -> list[NotifyPayload]: ...

    def detect_nat(self, message: Message, src: Address, dst: Address) -> None: ...

    def fail(self, reason: str, now: float) -> None: ...

    def abandon(
        self, reason: str, now: float, also_to: tuple[Address, Address] | None = None
    ) -> None: ...

    def info(self) -> IkeSaInfo: ...


def no_nats_mismatch(notify: NotifyPayload, src: Address, dst: Address) -> bool:
    """§3.9: NO_NATS_ALLOWED names the sender's view of the IP header; True if it differs."""
    claimed = read_no_nats_allowed(notify)
    seen = (ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0]), src[1], dst[1])
    return (claimed.src_addr, claimed.dst_addr, claimed.src_port, claimed.dst_port) != seen


def additional_address_notifies(addresses: Sequence[IPAddress]) -> list[NotifyPayload]:
    """§3.4/§3.6: the whole list, or NO_ADDITIONAL_ADDRESSES when there is none."""
    if not addresses:
        return [NotifyPayload(NotifyType.NO_ADDITIONAL_ADDRESSES)]
    return [additional_address_notify(a) for a in addresses]


ADDRESS_LIST_NOTIFIES = frozenset(
    {
        NotifyType.ADDITIONAL_IP4_ADDRESS,
        NotifyType.ADDITIONAL_IP6_ADDRESS,
        NotifyType.NO_ADDITIONAL_ADDRESSES,
    }
)


def cookie2_echo(message: Message) -> list[Payload]:
    """RFC 4555 §3.7: a COOKIE2 in a request is copied into the response."""
    cookie = message.notify(NotifyType.COOKIE2)
    return [cookie2_notify(read_cookie2(cookie))] if cookie is not None else []


class Mobike:
    """MOBIKE's state on one IKE SA: our update in flight (its COOKIE2), whether
    another must follow, and the peer's additional addresses."""

    # One per IKE SA held: slots rather than a dictionary each.
    __slots__ = (
        "_exchanges",
        "_prepared",
        "_random",
        "_refusals",
        "_refused",
        "_sa",
        "_update_again",
        "_update_cookie",
        "_update_queued",
        "peer_addresses",
    )

    def __init__(
        self,
        sa: MobikeHost,
        exchanges: Exchanges,
        random: Random,
    ) -> None:
        self._sa = sa
        self._exchanges = exchanges
        self._random = random
        self._update_cookie: bytes | None = None
        # Responder: the peer addresses whose update we refused, and how many refusals.
        self._refused: set[str] = set()
        self._refusals = 0
        self._update_queued = False
        self._update_again = False
        self._prepared: PreparedUpdate | None = None
        self.peer_addresses: tuple[IPAddress, ...] = ()

    @property
    def update_pending(self) -> bool:
        """An update of ours is queued or in flight."""
        return self._update_queued or self._update_cookie is not None

    def drop_queued(self) -> None:
        """The queue was cleared (the IKE SA was rekeyed away)."""
        self._update_queued = False

    # ------------------------------------------------------------------
    # Initiator (RFC 4555 §3.5): the mobile node decides

    def move_to(self, new_local: Address, now: float, new_remote: Address | None = None) -> None:
        """Command (mobile node): our address changed. Move the IKE SA and its CHILD SAs
        at once (events for the datapath) and send UPDATE_SA_ADDRESSES from there.

        §3.5: retransmissions go to the new addresses; if the address changes
        again before the answer, the request in flight is resent from the new
        address at once and a fresh update follows its answer (its NAT-D and
        NO_NATS_ALLOWED describe the path it was first sent on).
        """
        sa, config = self._sa, self._sa.config
        if not isinstance(config, InitiatorConfig) or not sa.mobike:
            return
        if sa.state != IkeSaState.ESTABLISHED:
            return
        sa.local = new_local
        if new_remote is not None:
            sa.remote = new_remote
        self._announce_move(children=not config.return_routability)
        if self._update_cookie is not None:
            self._update_again = True
            if self._exchanges.busy:
                self._exchanges.resend_outstanding(config.update_retransmit, now)
            return
        if not self._update_queued:
            self.send_update(now)

    def prepare_update(self, new_local: Address, new_remote: Address | None = None) -> None:
        """Command (mobile node): build the UPDATE_SA_ADDRESSES of a move to
        ``new_local`` (and ``new_remote``) ahead of it, while the link it will go over
        is not up: the move then sends it at once. It is built anew at the move if the
        move goes elsewhere or another request went out meanwhile (its Message ID is
        taken)."""
        sa, config = self._sa, self._sa.config
        self._prepared = None
        if not isinstance(config, InitiatorConfig) or not sa.mobike:
            return
        if sa.state != IkeSaState.ESTABLISHED or self._exchanges.busy or self.update_pending:
            return
        path = (new_local, new_remote or sa.remote)
        cookie, payloads = self._update_payloads(path)
        sealed = self._exchanges.seal_request(ExchangeType.INFORMATIONAL, payloads)
        self._prepared = PreparedUpdate(path, cookie, sealed)

    def send_update(self, now: float) -> None:
        """Built when it leaves, so that it describes the addresses of that moment (or
        built ahead for them by :meth:`prepare_update`)."""
        sa, exchanges, config = self._sa, self._exchanges, self._sa.config
        if sa.state != IkeSaState.ESTABLISHED or not isinstance(config, InitiatorConfig):
            self._update_queued = False
            exchanges.run_queue(now)
            return
        if exchanges.busy:
            self._update_queued = True
            exchanges.defer(self.send_update)
            return
        self._update_queued = False
        self._update_again = False
        sa.counters["updates_sent"] += 1
        retransmit = config.update_retransmit
        exchange, answered = ExchangeType.INFORMATIONAL, self._on_update_response
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.path == (sa.local, sa.remote):
            self._update_cookie = prepared.cookie
            if exchanges.send_sealed(exchange, prepared.sealed, answered, now, retransmit):
                return
        self._update_cookie, payloads = self._update_payloads((sa.local, sa.remote))
        exchanges.request(exchange, payloads, answered, now, retransmit=retransmit)

    def _update_payloads(self, path: tuple[Address, Address]) -> tuple[bytes, list[Payload]]:
        """(COOKIE2, payloads) of an UPDATE_SA_ADDRESSES sent over ``path``."""
        sa, config = self._sa, self._sa.config
        cookie = self._random(COOKIE2_SIZE)
        payloads: list[Payload] = [NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES)]
        payloads += sa.natd_notifies(path)
        if isinstance(config, InitiatorConfig) and config.no_nats_allowed:
            local, remote = path
            payloads.append(
                no_nats_allowed_notify(ip_of(local), ip_of(remote), local[1], remote[1])
            )
        payloads.append(cookie2_notify(cookie))
        return cookie, payloads

    def _on_update_response(self, message: Message, now: float) -> None:
        """§3.5/§3.7: the answer must echo our COOKIE2, else the SA is closed."""
        expected, self._update_cookie = self._update_cookie, None
        echoed = message.notify(NotifyType.COOKIE2)
        if expected is None or echoed is None or not hmac.compare_digest(echoed.data, expected):
            self._exchanges.abandon()
            self._sa.fail("UPDATE_SA_ADDRESSES answer without our COOKIE2", now)
            return
        again, self._update_again = self._update_again, False
        refusal = _update_refusal(message)
        if refusal is not None:
            self._update_refused(refusal, again, now)
        else:
            self._update_accepted(message, again, now)

    def _update_refused(self, refusal: NotifyType, again: bool, now: float) -> None:
        sa = self._sa
        sa.counters["updates_refused"] += 1
        self._exchanges.finish(now)
        if again:
            # The refusal was about an address we have left since: ask anew.
            self.send_update(now)
        else:
            sa.emit(AddressUpdateRefused(sa.local_spi, sa.name, refusal, sa.local, by_peer=True))

    def _update_accepted(self, message: Message, again: bool, now: float) -> None:
        sa = self._sa
        src, dst = self._exchanges.response_path
        encap_before = sa.encap
        sa.detect_nat(message, src, dst)
        encap_changed = sa.encap != encap_before
        if encap_changed:
            self._announce_move(children=False)
        if encap_changed or self._sa.config.return_routability:
            self._move_children()  # the answer came back over the new path
        self._exchanges.finish(now)
        if again:
            self.send_update(now)
        else:
            sa.emit(AddressUpdateAccepted(sa.local_spi, sa.name, sa.local, sa.remote))

    def follow_nat_mapping(self, new_remote: Address) -> bool:
        """The peer's NAT maps it to a new address or port, seen on its authenticated ESP
        in UDP (the kernel's XFRM_MSG_MAPPING): the IKE SA and its CHILD SAs follow, if
        the peer is behind a NAT and we are not (RFC 7296 §2.23; as strongSwan's
        update_sa_job). With MOBIKE only a new port of the same address is followed (the
        NAT's rebinding): a new address is a path for MOBIKE and the address policy to
        decide (RFC 4555 §3.12). Whether it moved."""
        sa = self._sa
        if sa.state != IkeSaState.ESTABLISHED or not sa.nat_remote or sa.nat_local:
            return False
        if new_remote == sa.remote or (sa.mobike and new_remote[0] != sa.remote[0]):
            return False
        sa.remote = new_remote
        sa.counters["nat_mappings_followed"] += 1
        self._announce_move(children=True)
        return True

    def _announce_move(self, *, children: bool) -> None:
        """The move's events: the CHILD SAs' first, as they carry the traffic (the
        datapath moves them before whatever the IKE SA's event sets off is done: a log
        line, an accounting update), then the IKE SA's."""
        sa = self._sa
        if children:
            self._move_children()
        sa.emit(IkeSaAddressesUpdated(sa.local_spi, sa.name, sa.local, sa.remote, sa.encap))

    def _move_children(self) -> None:
        sa = self._sa
        for child in sa.children.values():
            if child.state in CHILD_IN_DATAPATH:
                sa.emit(
                    ChildSaAddressesUpdated(
                        sa.local_spi,
                        sa.name,
                        child.spi_in,
                        child.spi_out,
                        sa.local,
                        sa.remote,
                        sa.encap,
                    )
                )

    # ------------------------------------------------------------------
    # Address lists (RFC 4555 §3.4, §3.6)

    def send_additional_addresses(self, addresses: Sequence[IPAddress], now: float) -> None:
        """Command: announce our other addresses, or none (RFC 4555 §3.4, §3.6)."""
        if self._sa.mobike and self._sa.state == IkeSaState.ESTABLISHED:
            self._exchanges.request(
                ExchangeType.INFORMATIONAL,
                additional_address_notifies(addresses),
                lambda message, later: self._exchanges.finish(later),
                now,
            )

    def read_address_list(self, message: Message) -> None:
        """§3.4/§3.6: a list (or NO_ADDITIONAL_ADDRESSES) replaces the previous one."""
        notifies = [
            n for n in message.find_all(NotifyPayload) if n.notify_type in ADDRESS_LIST_NOTIFIES
        ]
        if not notifies or not self._sa.mobike:
            return
        self.peer_addresses = tuple(
            read_additional_address(n)
            for n in notifies
            if n.notify_type != NotifyType.NO_ADDITIONAL_ADDRESSES
        )
        sa = self._sa
        sa.emit(PeerAddressesAnnounced(sa.local_spi, sa.name, self.peer_addresses))

    # ------------------------------------------------------------------
    # Responder (RFC 4555 §3.5, §3.9): the gateway checks and moves

    def on_update_sa_addresses(
        self, message: Message, src: Address, dst: Address, now: float
    ) -> None:
        """The UPDATE_SA_ADDRESSES responder (RFC 4555 §3.5).

        Reached only for an authenticated request with the expected Message ID
        (a forged or replayed one never gets here). The new address pair is the
        IP header's. Refused, by the address policy (UNACCEPTABLE_ADDRESSES, §3.5;
        under ``allocated`` the address must be this IKE SA's CP lease) or by
        NO_NATS_ALLOWED not matching the header (UNEXPECTED_NAT_DETECTED, §3.9):
        the answer goes back where the request came from and nothing moves.
        """
        sa, config = self._sa, self._sa.config
        echo = cookie2_echo(message)
        if not isinstance(config, ResponderConfig) or not sa.mobike:
            sa.counters["updates_ignored"] += 1
            self._exchanges.respond(message.header, echo)
            return
        refusal = self._check_update(config, message, src, dst)
        if refusal is not None:
            sa.counters["updates_refused"] += 1
            self._exchanges.respond(message.header, [NotifyPayload(refusal), *echo])
            sa.emit(AddressUpdateRefused(sa.local_spi, sa.name, refusal, src, False))
            self._count_refusal(config, src, dst, now)
            return
        sa.remote, sa.local = src, dst
        sa.detect_nat(message, src, dst)
        sa.counters["updates_accepted"] += 1
        self._refusals = 0  # the peer went where the policy lets it
        self._exchanges.respond(message.header, [*sa.natd_notifies(), *echo])
        self._announce_move(children=not config.return_routability)
        if config.return_routability:
            self._check_return_routability(now)

    def refused(self, src: Address) -> bool:
        """Responder: an update from ``src``'s address was refused."""
        return str(ip_of(src)) in self._refused

    def _count_refusal(
        self, config: ResponderConfig, src: Address, dst: Address, now: float
    ) -> None:
        """A peer that keeps asking to move where we refused (charon ignores
        UNACCEPTABLE_ADDRESSES and goes on from there) loses its IKE SA after
        ``max_refused_updates`` refusals."""
        self._refused.add(str(ip_of(src)))
        self._refusals += 1
        limit = config.max_refused_updates
        if limit and self._refusals >= limit:
            self._sa.counters["deleted_refused_address"] += 1
            reason = f"{self._refusals} address updates refused, the last from {src[0]}"
            self._sa.abandon(f"{reason} (RFC 4555 §3.5)", now, also_to=(dst, src))

    def _check_update(
        self, config: ResponderConfig, message: Message, src: Address, dst: Address
    ) -> NotifyType | None:
        """§3.5 address policy, then §3.9 NO_NATS_ALLOWED: the refusal, or None."""
        if not config.address_policy(self._sa.info(), ip_of(src)):
            return NotifyType.UNACCEPTABLE_ADDRESSES
        no_nats = message.notify(NotifyType.NO_NATS_ALLOWED)
        if no_nats is not None and no_nats_mismatch(no_nats, src, dst):
            return NotifyType.UNEXPECTED_NAT_DETECTED
        return None

    def _check_return_routability(self, now: float) -> None:
        """§3.5/§3.7: an INFORMATIONAL with COOKIE2 to the new address; the CHILD SAs
        move when its answer echoes the cookie (no answer: the SA dies, §2.4)."""
        cookie = self._random(COOKIE2_SIZE)
        target = self._sa.remote

        def on_response(message: Message, later: float) -> None:
            echoed = message.notify(NotifyType.COOKIE2)
            self._exchanges.finish(later)
            if echoed is None or not hmac.compare_digest(echoed.data, cookie):
                self._sa.counters["return_routability_failed"] += 1
                return
            if self._sa.remote == target:
                self._move_children()

        self._exchanges.request(
            ExchangeType.INFORMATIONAL, [cookie2_notify(cookie)], on_response, now
        )


def _update_refusal(message: Message) -> NotifyType | None:
    """§3.5, §3.9: the error notify of an update's answer that refuses the move."""
    refusals = (NotifyType.UNACCEPTABLE_ADDRESSES, NotifyType.UNEXPECTED_NAT_DETECTED)
    return next((n for n in error_notifies(message) if n in refusals), None)
