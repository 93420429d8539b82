"""MOBIKE (RFC 4555) pieces that are not state: the responder's address policy,
the NO_NATS_ALLOWED check, COOKIE2 and the additional-address lists.

The exchanges are here too, as functions of the :class:`mpa_ike.ike_sa.IkeSa`
they run on: the mobile node's :func:`update_addresses` (the command
``IkeSa.update_addresses``) and the UPDATE_SA_ADDRESSES responder
:func:`on_update_sa_addresses`, reached from the INFORMATIONAL handler.

The address policy is this project's own (issue 5): RFC 4555 §3.5 lets the
responder refuse a new address pair by local policy with
UNACCEPTABLE_ADDRESSES; no open IKEv2 implementation checks the new address
against the CP lease. Under ``allocated`` the new remote address must be one
the gateway leased to this very IKE SA (the MPA nCoA).

§3.12: ESP arriving from an unexpected address is no proof that the peer moved
or lives there; the core never moves an SA on ESP (it does not see ESP at all).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from mpa_ike.constants import ExchangeType, NotifyType
from mpa_ike.datagram import Address
from mpa_ike.datapath import IPNetwork
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
    ChildSaAddressesUpdated,
    IkeSaAddressesUpdated,
    PeerAddressesAnnounced,
)
from mpa_ike.ike_sa_common import CHILD_IN_DATAPATH, IkeSaState, error_notifies, ip_of
from mpa_ike.retransmit import RetransmitPolicy, Retransmitter
from mpa_ike.wire import IPAddress, Message, NotifyPayload, Payload
from mpa_ike.wire.notify import (
    additional_address_notify,
    cookie2_notify,
    no_nats_allowed_notify,
    read_additional_address,
    read_cookie2,
    read_no_nats_allowed,
)

if TYPE_CHECKING:
    from mpa_ike.ike_sa import IkeSa

COOKIE2_SIZE = 16  # §3.7: 8 to 64 octets


@dataclass(frozen=True, slots=True)
class IkeSaInfo:
    """What an address policy may look at of the IKE SA being moved."""

    name: str
    ike_sa: bytes
    peer_identity: str
    assigned_addresses: tuple[IPAddress, ...]
    local: Address
    remote: Address


AddressCheck = Callable[[IkeSaInfo, IPAddress], bool]


class AddressPolicyMode(Enum):
    ALLOCATED = "allocated"  # only an address leased to this IKE SA by CP (MPA)
    ANY = "any"  # strongSwan's behaviour
    PREFIXES = "prefixes"  # any address inside ``prefixes``


@dataclass(frozen=True)
class AddressPolicy:
    """The gateway's MOBIKE address policy; callable as an :data:`AddressCheck`."""

    mode: AddressPolicyMode = AddressPolicyMode.ALLOCATED
    prefixes: tuple[IPNetwork, ...] = ()

    def __call__(self, sa: IkeSaInfo, address: IPAddress) -> bool:
        if self.mode == AddressPolicyMode.ANY:
            return True
        if self.mode == AddressPolicyMode.PREFIXES:
            return any(address in prefix for prefix in self.prefixes)
        return address in sa.assigned_addresses


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


# ----------------------------------------------------------------------
# MOBIKE, initiator (RFC 4555 §3.5): the mobile node decides


def update_addresses(
    sa: IkeSa, new_local: Address, now: float, new_remote: Address | None = None
) -> None:
    """Command (mobile node): our address changed. Move the IKE SA and its CHILD SAs
    at once (events for the datapath) and send UPDATE_SA_ADDRESSES from there.

    §3.5: retransmissions go to the new addresses; if the address changes
    again before the answer, the request in flight is resent from the new
    address at once and a fresh update follows its answer (its NAT-D and
    NO_NATS_ALLOWED describe the path it was first sent on).
    """
    if sa._icfg is None or not sa.mobike or sa.state != IkeSaState.ESTABLISHED:
        return
    sa.local = new_local
    if new_remote is not None:
        sa.remote = new_remote
    announce_move(sa, children=not sa._initiator_config.return_routability)
    if sa._update_cookie is not None:
        sa._update_again = True
        outstanding = sa._outstanding
        if outstanding is not None:
            outstanding.retransmitter = Retransmitter(_update_schedule(sa), now)
            sa.counters["retransmitted"] += 1
            sa._send(outstanding.datagrams)
        return
    if not sa._update_queued:
        send_update(sa, now)


def send_update(sa: IkeSa, now: float) -> None:
    """Built when it leaves, so that it describes the addresses of that moment."""
    if sa.state != IkeSaState.ESTABLISHED:
        sa._update_queued = False
        sa._next_queued(now)
        return
    if sa._outstanding is not None:
        sa._update_queued = True
        sa._queued.append(lambda later: send_update(sa, later))
        return
    sa._update_queued = False
    sa._update_again = False
    cookie = sa._random(COOKIE2_SIZE)
    payloads: list[Payload] = [
        NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES),
        *sa._natd_notifies(sa.spi_r),
    ]
    if sa._initiator_config.no_nats_allowed:
        payloads.append(
            no_nats_allowed_notify(ip_of(sa.local), ip_of(sa.remote), sa.local[1], sa.remote[1])
        )
    payloads.append(cookie2_notify(cookie))
    sa._update_cookie = cookie
    sa.counters["updates_sent"] += 1
    sa._request(
        ExchangeType.INFORMATIONAL,
        payloads,
        lambda message, later: on_update_response(sa, message, later),
        now,
        retransmit=_update_schedule(sa),
    )


def _update_schedule(sa: IkeSa) -> RetransmitPolicy:
    return sa._icfg.update_retransmit if sa._icfg is not None else sa._retransmit


def on_update_response(sa: IkeSa, message: Message, now: float) -> None:
    """§3.5/§3.7: the answer must echo our COOKIE2, else the SA is closed."""
    expected, sa._update_cookie = sa._update_cookie, None
    echoed = message.notify(NotifyType.COOKIE2)
    if expected is None or echoed is None or not hmac.compare_digest(echoed.data, expected):
        sa._outstanding = None
        sa._close_failed("UPDATE_SA_ADDRESSES answer without our COOKIE2", None, now)
        return
    refusal = next(
        (
            n
            for n in error_notifies(message)
            if n in (NotifyType.UNACCEPTABLE_ADDRESSES, NotifyType.UNEXPECTED_NAT_DETECTED)
        ),
        None,
    )
    again = sa._update_again
    sa._update_again = False
    if refusal is not None:
        sa.counters["updates_refused"] += 1
        sa._finish_exchange(now)
        if again:
            # The refusal was about an address we have left since: ask anew.
            send_update(sa, now)
        else:
            sa._emit(AddressUpdateRefused(sa.local_spi, sa.name, refusal, sa.local, by_peer=True))
        return
    src, dst = sa._response_path
    encap_before = sa.nat_local or sa.nat_remote
    sa._detect_nat(message, sa.spi_r, src, dst)
    encap_changed = (sa.nat_local or sa.nat_remote) != encap_before
    if encap_changed:
        announce_move(sa, children=False)
    if encap_changed or sa._initiator_config.return_routability:
        move_children(sa)  # the answer came back over the new path
    sa._finish_exchange(now)
    if again:
        send_update(sa, now)
    else:
        sa._emit(AddressUpdateAccepted(sa.local_spi, sa.name, sa.local, sa.remote))


def announce_move(sa: IkeSa, *, children: bool) -> None:
    encap = sa.nat_local or sa.nat_remote
    sa._emit(IkeSaAddressesUpdated(sa.local_spi, sa.name, sa.local, sa.remote, encap))
    if children:
        move_children(sa)


def move_children(sa: IkeSa) -> None:
    encap = sa.nat_local or sa.nat_remote
    for child in sa.children.values():
        if child.state in CHILD_IN_DATAPATH:
            sa._emit(
                ChildSaAddressesUpdated(
                    sa.local_spi,
                    sa.name,
                    child.spi_in,
                    child.spi_out,
                    sa.local,
                    sa.remote,
                    encap,
                )
            )


def send_additional_addresses(sa: IkeSa, addresses: Sequence[IPAddress], now: float) -> None:
    """Command: announce our other addresses, or none (RFC 4555 §3.4, §3.6)."""
    if sa.mobike and sa.state == IkeSaState.ESTABLISHED:
        sa._request(
            ExchangeType.INFORMATIONAL,
            additional_address_notifies(addresses),
            lambda message, later: sa._finish_exchange(later),
            now,
        )


def read_address_list(sa: IkeSa, message: Message) -> None:
    """§3.4/§3.6: a list (or NO_ADDITIONAL_ADDRESSES) replaces the previous one."""
    notifies = [
        n for n in message.find_all(NotifyPayload) if n.notify_type in ADDRESS_LIST_NOTIFIES
    ]
    if not notifies or not sa.mobike:
        return
    sa.peer_additional_addresses = tuple(
        read_additional_address(n)
        for n in notifies
        if n.notify_type != NotifyType.NO_ADDITIONAL_ADDRESSES
    )
    sa._emit(PeerAddressesAnnounced(sa.local_spi, sa.name, sa.peer_additional_addresses))


def cookie2_echo(message: Message) -> list[Payload]:
    """RFC 4555 §3.7: a COOKIE2 in a request is copied into the response."""
    cookie = message.notify(NotifyType.COOKIE2)
    return [cookie2_notify(read_cookie2(cookie))] if cookie is not None else []


# ----------------------------------------------------------------------
# MOBIKE, responder (RFC 4555 §3.5, §3.9): the gateway checks and moves


def on_update_sa_addresses(
    sa: IkeSa, message: Message, src: Address, dst: Address, now: float
) -> None:
    """The UPDATE_SA_ADDRESSES responder (RFC 4555 §3.5).

    Reached only for an authenticated request with the expected Message ID
    (a forged or replayed one never gets here). The new address pair is the
    IP header's. Refused, by the address policy (UNACCEPTABLE_ADDRESSES, §3.5;
    under ``allocated`` the address must be this IKE SA's CP lease) or by
    NO_NATS_ALLOWED not matching the header (UNEXPECTED_NAT_DETECTED, §3.9):
    the answer goes back where the request came from and nothing moves.
    """
    echo = cookie2_echo(message)
    config = sa._rcfg
    if config is None or not sa.mobike:
        sa.counters["updates_ignored"] += 1
        sa._respond(message.header, echo)
        return
    refusal: NotifyType | None = None
    if not config.address_policy(sa.info(), ip_of(src)):
        refusal = NotifyType.UNACCEPTABLE_ADDRESSES
    else:
        no_nats = message.notify(NotifyType.NO_NATS_ALLOWED)
        if no_nats is not None and no_nats_mismatch(no_nats, src, dst):
            refusal = NotifyType.UNEXPECTED_NAT_DETECTED
    if refusal is not None:
        sa.counters["updates_refused"] += 1
        sa._respond(message.header, [NotifyPayload(refusal), *echo])
        sa._emit(AddressUpdateRefused(sa.local_spi, sa.name, refusal, src, False))
        return
    sa.remote, sa.local = src, dst
    sa._detect_nat(message, sa.spi_r, src, dst)
    sa.counters["updates_accepted"] += 1
    sa._respond(message.header, [*sa._natd_notifies(sa.spi_r), *echo])
    announce_move(sa, children=not config.return_routability)
    if config.return_routability:
        check_return_routability(sa, now)


def check_return_routability(sa: IkeSa, now: float) -> None:
    """§3.5/§3.7: an INFORMATIONAL with COOKIE2 to the new address; the CHILD SAs
    move when its answer echoes the cookie (no answer: the SA dies, §2.4)."""
    cookie = sa._random(COOKIE2_SIZE)
    target = sa.remote

    def on_response(message: Message, later: float) -> None:
        echoed = message.notify(NotifyType.COOKIE2)
        sa._finish_exchange(later)
        if echoed is None or not hmac.compare_digest(echoed.data, cookie):
            sa.counters["return_routability_failed"] += 1
            return
        if sa.remote == target:
            move_children(sa)

    sa._request(ExchangeType.INFORMATIONAL, [cookie2_notify(cookie)], on_response, now)
