"""Media-independent pre-authentication on the mobile node: ``preauth`` and ``handover``.

``preauth NAME`` runs IKE_SA_INIT and IKE_AUTH (EAP, CP) with a candidate gateway
through the current network. The address it assigns, the nCoA, goes on the TUN device
like any CP address, but the routes into the tunnel go into a table of their own that
only traffic from the nCoA reaches (``from`` rule): the proactive handover tunnel (PHT)
carries the nCoA's traffic while everything else keeps using the current network.
Several candidates may be pre-authenticated at once, each with its own table.

``handover NAME`` waits for the link of the gateway's interface
(``gateways.NAME.interface``; at once if it is up), puts the nCoA on that interface
(no DAD: the gateway allocated it), routes the gateway through it, and sends one
INFORMATIONAL with UPDATE_SA_ADDRESSES from the nCoA (RFC 4555). The SAs move in the
datapath at once; on the gateway's answer the nCoA leaves the TUN device, the tunnel's
routes become the node's routes (as after ``connect``) and the PHTs to the other
candidates are deleted (and, under ``preauth: auto``, made anew through the new network:
:mod:`mobile.autopreauth`). ``handover: auto`` does the same on the kernel's link and
address events alone: the PHT's path lost (its interface's carrier gone, or its outer
address removed) while a candidate's interface has link moves there at once; a
candidate's link coming up while the path is lost moves there; a link coming up while
the current path works changes nothing yet.

Fallbacks: without a live PHT (never made, expired, deleted by the gateway), or when
the gateway refuses the move (UNACCEPTABLE_ADDRESSES, UNEXPECTED_NAT_DETECTED) or does
not answer, the node connects anew from the new network, a full IKE exchange from an
address of the interface's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mobile.config import GatewayEntry
from mobile.waits import ANSWER_WAIT, LINK_WAIT
from mpa_ike.config_payload import prefix_length
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from mpa_ike.ike_sa import IkeSa
from mpa_ike.ike_sa_common import IkeSaState
from mpa_ike.io.links import AddressMover, LinkWatcher, link_is_up
from mpa_ike.io.policy_routing import Routing, Rules, source_rule
from mpa_ike.io.tun import Netlink
from mpa_ike.node.control import CommandError

if TYPE_CHECKING:
    from mobile.service import MobileService

log = logging.getLogger(__name__)

# After the gateway's answer, the clean-up waits for the first packets on the new path.
CLEAN_UP_AFTER = 0.01
TURN = 1e-6  # a timer's minimum: the next round of the loop, after its I/O


@dataclass
class Pht:
    """A proactive handover tunnel: a pre-authenticated IKE SA and its nCoA."""

    name: str
    ike_sa: bytes
    table: int
    addresses: list[str] = field(default_factory=list)
    prefixes: dict[str, int] = field(default_factory=dict)  # CP's netmask, per address
    interface: str | None = None  # where the nCoA lives once moved
    gateway: str | None = None  # the gateway's address it was routed to there
    moving: bool = False
    prepared: tuple[str, str] | None = None  # (interface, gateway) laid ahead of the link
    via: str | None = None  # the interface its IKE SA runs over, found for via_address
    via_address: str | None = None
    timeline: dict[str, float] = field(default_factory=dict)

    @property
    def moved(self) -> bool:
        return self.interface is not None


class HandoverFailed(Exception):
    """The move did not happen; the text says why (for the fallback's answer)."""


class Mpa:
    """The MPA commands of one :class:`mobile.service.MobileService`."""

    def __init__(self, service: MobileService) -> None:
        self.service = service
        self.phts: dict[str, Pht] = {}
        self.links: LinkWatcher | None = None
        self.mover: AddressMover | None = None
        self.rules: Rules | None = None
        self._own_netlink: Netlink | None = None
        self._answers: dict[bytes, asyncio.Future[Event]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.handovers: list[dict[str, Any]] = []
        self.waiting: set[str] = set()
        """Gateways whose handover waits for its interface's link."""
        self._auto_moving: set[str] = set()  # automatic handovers started, not yet done
        self.moved_connections: dict[str, Pht] = {}
        """Connections (not PHTs) moved by plain MOBIKE: the route to undo at their end."""

    # ------------------------------------------------------------------
    # Lifecycle

    def start(self) -> None:
        try:
            self.links = LinkWatcher()
        except OSError as error:
            log.warning("no link events (%s): handover unavailable", error.strerror)
            return
        self.links.listeners.append(self._link_changed)
        self.links.address_listeners.append(self._address_changed)
        userspace = self.service.glue.userspace
        netlink = getattr(userspace.tun, "netlink", None) if userspace is not None else None
        if netlink is None:
            try:
                netlink = self._own_netlink = Netlink()
            except OSError as error:
                log.warning("no rtnetlink (%s): handover unavailable", error.strerror)
                return
        self.mover = AddressMover(netlink)
        self.rules = Rules(netlink)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for pht in list(self.phts.values()):
            self._release(pht)
        if self.rules is not None:
            self.rules.close()
        if self.links is not None:
            self.links.close()
        if self._own_netlink is not None:
            self._own_netlink.close()

    # ------------------------------------------------------------------
    # Commands

    async def preauth(self, args: dict[str, Any]) -> str:
        name = self.service.gateway_name(args)
        entry = self.service.config.gateways[name]
        if not entry.preauth:
            raise CommandError(f"preauth {name}: gateways.{name}.preauth is not true")
        if self.mover is None:
            raise CommandError(f"preauth {name}: no rtnetlink access (run as root)")
        self.service.autopreauth.release(name)
        answer = await self.service.establish("preauth", name, preauth=True)
        pht = self.phts.get(name)
        if pht is None or not pht.addresses:
            with contextlib.suppress(CommandError):
                await self.service.disconnect({"name": name})
            raise CommandError(f"preauth {name}: the gateway assigned no address (no nCoA)")
        await self._bind_ncoa(pht)
        return answer.replace(": established,", ": pre-authenticated,", 1) + " (PHT up)"

    async def handover(self, args: dict[str, Any]) -> str:
        name = self.service.gateway_name(args)
        entry = self.service.config.gateways[name]
        if entry.interface is None:
            raise CommandError(f"handover {name}: gateways.{name}.interface is not set")
        return await self.move(entry, entry.interface)

    async def move(self, entry: GatewayEntry, interface: str, since: float | None = None) -> str:
        """The handover to ``entry`` on ``interface``; ``since``: the loop time of the
        event that started it, when that came after the link (the origin of its timeline)."""
        name = entry.name
        if self.links is None or self.mover is None:
            raise CommandError(f"handover {name}: no rtnetlink access (run as root)")
        pht = self.phts.get(name)
        if pht is not None and pht.moving:
            raise CommandError(f"handover {name}: already under way")
        if pht is not None:
            pht.moving = True
        try:
            sa = self._live_sa(pht)
            if pht is not None and sa is not None and not pht.moved:
                self._prepare(pht, sa, interface)
            self.waiting.add(name)
            try:
                link_up = await self.links.wait_up(interface, LINK_WAIT)
                link_up = link_up if since is None else max(link_up, since)
            except TimeoutError:
                raise CommandError(f"handover {name}: no link on {interface}") from None
            except OSError:
                raise CommandError(f"handover {name}: no interface {interface}") from None
            finally:
                self.waiting.discard(name)
            sa = self._live_sa(pht)
            if pht is None:
                connected = self._connected_sa(name)
                if connected is not None:
                    return await self._move_connected(entry, connected, interface, link_up)
            if pht is None or sa is None:
                return await self._reconnect(entry, interface, "no pre-authentication")
            if pht.moved:
                return f"{name}: already on {pht.interface} with {pht.addresses[0]}"
            try:
                return await self._move_pht(pht, sa, interface, link_up)
            except HandoverFailed as failure:
                log.warning("%s: handover failed: %s; connecting anew", name, failure)
                return await self._reconnect(entry, interface, str(failure))
        finally:
            if pht is not None:
                pht.moving = False
                self._unprepare(pht)

    # ------------------------------------------------------------------
    # The move

    async def _move_pht(self, pht: Pht, sa: IkeSa, interface: str, link_up: float) -> str:
        assert self.mover is not None
        service, transport = self.service, self.service.live_transport()
        address = pht.addresses[0]
        remote = self._remote_for(sa, address)
        if pht.prepared != (interface, remote[0]):
            self.mover.attach(interface, address, remote[0], pht.prefixes.get(address))
        pht.interface, pht.gateway = interface, remote[0]
        local = (address, sa.local[1])
        await transport.bind(address, (local[1],))
        answer: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._answers[sa.local_spi] = answer
        sent = transport.now()
        service.endpoint.update_addresses(sa.local_spi, local, sent, remote)
        transport.process()
        try:
            async with asyncio.timeout(ANSWER_WAIT):
                event = await answer
        except TimeoutError:
            event = None
        finally:
            self._answers.pop(sa.local_spi, None)
        answered = transport.now()
        if not isinstance(event, AddressUpdateAccepted):
            raise HandoverFailed(self._refusal_text(event))
        pht.timeline = {"link_up": link_up, "update_sent": sent, "answered": answered}
        self.handovers.append({"gateway": pht.name, "address": address, **pht.timeline})
        await self._settle(pht)
        return (
            f"{pht.name}: moved to {address} on {interface}, "
            f"update answered {1e3 * (answered - link_up):.1f} ms after the link event"
        )

    async def _move_connected(
        self, entry: GatewayEntry, sa: IkeSa, interface: str, link_up: float
    ) -> str:
        """Plain MOBIKE (RFC 4555), as charon moves: an IKE SA made by ``connect``
        follows the node to an address of the new interface's own. A gateway that
        only accepts the addresses it allocated refuses; then a full exchange."""
        assert self.mover is not None
        target = self._move_target(sa, interface)
        if target is None:
            return await self._reconnect(entry, interface, "no address to move to")
        own, gateway = target
        moving = Pht(entry.name, sa.local_spi, table=0, addresses=[own])
        self.mover.quick_neighbour_retries(interface)
        self.mover.ask_from_own_address(interface)
        self.mover.route_gateway(interface, own, gateway)  # the address is the OS's
        moving.prepared = (interface, gateway)
        try:
            answer = await self._move_pht(moving, sa, interface, link_up)
        except HandoverFailed as failure:
            log.warning("%s: move failed: %s; connecting anew", entry.name, failure)
            return await self._reconnect(entry, interface, str(failure))
        self.moved_connections[entry.name] = moving
        return answer

    def _move_target(self, sa: IkeSa, interface: str) -> tuple[str, str] | None:
        """An address of ``interface``'s own and the gateway's address of its family:
        in the IKE SA's family, else in the other one if the gateway announced an
        address of it (RFC 4555 §3.4: a move between families)."""
        assert self.mover is not None
        current = ipaddress.ip_address(sa.remote[0]).version
        for version in (current, 6 if current == 4 else 4):
            own = self.mover.own_address(interface, version, set())
            if own is None:
                continue
            with contextlib.suppress(HandoverFailed):
                return own, self._remote_for(sa, own)[0]
        return None

    def _connected_sa(self, name: str) -> IkeSa | None:
        return next(
            (
                sa
                for sa in self.service.endpoint.find(name)
                if not sa.closed and sa.state == IkeSaState.ESTABLISHED
            ),
            None,
        )

    async def _settle(self, pht: Pht) -> None:
        """After the gateway's yes: the nCoA off the TUN device (only now: until the
        answer, the old path must still deliver), the tunnel's routes for everyone (as
        after connect), the other candidates' PHTs deleted.

        The flow on the new path does not wait for this. Its first packets come within
        a millisecond or two of the answer (the gateway moves as it answers); the
        kernel calls (a tenth of a millisecond or more each on a busy host, an address
        removal more, as the kernel tells every rtnetlink listener) start
        ``CLEAN_UP_AFTER`` later, each in a turn of the loop of its own after the
        packets that arrived meanwhile."""
        userspace = self.service.glue.userspace
        wait = CLEAN_UP_AFTER
        for address in pht.addresses:
            if not await self._next_turn(pht, wait):
                return
            wait = TURN
            with contextlib.suppress(Exception):
                self.service.glue.take_inner_address(pht.ike_sa, address)
            # Only with the address off the device: removing it takes the routes
            # through the device that prefer it along.
            if userspace is not None:
                if not await self._next_turn(pht):
                    return
                userspace.move_routes(address, None)
            if pht.table:
                if not await self._next_turn(pht):
                    return
                self._drop_rule(address, pht.table)
        if not await self._next_turn(pht):
            return
        for other in [p for p in self.phts.values() if p is not pht and not p.moved]:
            log.info("%s: deleting the unused PHT", other.name)
            with contextlib.suppress(Exception):
                self.service.endpoint.delete(other.ike_sa, self.service.live_transport().now())
        self.service.live_transport().process()
        sa = self.service.endpoint.sas.get(pht.ike_sa)
        if sa is not None and pht.interface is not None:
            self.service.resolver.apply(pht.ike_sa, pht.name, pht.interface, sa.dns)
        self.service.autopreauth.kick(f"moved to {pht.name}", network_changed=True)

    async def _next_turn(self, pht: Pht, delay: float = TURN) -> bool:
        """A turn of the loop, on a timer: it comes after the packets that arrived
        meanwhile (the loop runs a timer after the sockets' callbacks of its round);
        whether the moved IKE SA still lives (it may have ended meanwhile: then its
        release has undone the move)."""
        await asyncio.sleep(delay)
        sa = self.service.endpoint.sas.get(pht.ike_sa)
        return sa is not None and not sa.closed

    def _prepare(self, pht: Pht, sa: IkeSa, interface: str) -> None:
        """While waiting for the link: the nCoA on the interface (it stays on the TUN
        device too, so the tunnel still delivers it) and the route to the gateway
        through it, ignored by the kernel until the link is up, and the update built
        (:meth:`mpa_ike.mobike.Mobike.prepare_update`). At link up only the update is
        left to send."""
        assert self.mover is not None
        address = pht.addresses[0]
        try:
            remote = self._remote_for(sa, address)
            gateway = remote[0]
            self.mover.ignore_routes_while_down(interface)
            self.mover.quick_neighbour_retries(interface)
            self.mover.ask_from_own_address(interface)
            self.mover.prepare(interface, address, pht.prefixes.get(address))
            self.mover.route_gateway(interface, address, gateway)
            pht.prepared = (interface, gateway)
            self.service.endpoint.prepare_update(sa.local_spi, (address, sa.local[1]), remote)
        except Exception as error:  # done again at the move, with the error reported
            log.warning("%s: preparing %s: %s", pht.name, interface, error)

    def _unprepare(self, pht: Pht) -> None:
        """A handover that did not happen leaves no nCoA or route on the interface."""
        prepared, pht.prepared = pht.prepared, None
        if prepared is not None and not pht.moved and self.mover is not None:
            address = pht.addresses[0]
            self.mover.detach(prepared[0], address, prepared[1], pht.prefixes.get(address))

    def _undo_move(self, pht: Pht) -> None:
        if self.mover is not None and pht.interface is not None:
            address = pht.addresses[0]
            self.mover.detach(pht.interface, address, pht.gateway, pht.prefixes.get(address))
        pht.interface = pht.gateway = None

    def _refusal_text(self, event: Event | None) -> str:
        if event is None:
            return "the gateway did not answer the update"
        if isinstance(event, AddressUpdateRefused):
            return f"the gateway refused the move ({event.notify.name})"
        return "the pre-authenticated IKE SA ended"

    def _remote_for(self, sa: IkeSa, address: str) -> tuple[str, int]:
        """The gateway's address in the nCoA's family: the current one, or one it
        announced (RFC 4555 §3.4), for a move across families."""
        version = ipaddress.ip_address(address).version
        if ipaddress.ip_address(sa.remote[0]).version == version:
            return sa.remote
        for candidate in sa.peer_additional_addresses:
            if candidate.version == version:
                return (str(candidate), sa.remote[1])
        raise HandoverFailed(f"the gateway announced no IPv{version} address to move to")

    async def _reconnect(self, entry: GatewayEntry, interface: str, reason: str) -> str:
        """A full IKE exchange from an address of ``interface``'s own."""
        assert self.mover is not None
        name = entry.name
        pht = self.phts.get(name)
        for sa in self.service.endpoint.find(name):
            if not sa.closed:
                self.service.endpoint.delete(sa.local_spi, self.service.live_transport().now())
        self.service.live_transport().process()
        if pht is not None:
            self._undo_move(pht)  # after the DELETE left from the nCoA, if it had moved
        gateway = str(entry.address.address)
        version = ipaddress.ip_address(gateway).version
        ncoas = set(pht.addresses) if pht is not None else set()
        own = self.mover.own_address(interface, version, ncoas)
        if own is None:
            raise CommandError(
                f"handover {name}: {reason}, and {interface} has no IPv{version} address "
                "of its own to connect from"
            )
        self.mover.attach(interface, own, gateway)
        answer = await self.service.establish("handover", name, source=own)
        return f"{answer} (connected anew from {own}: {reason})"

    # ------------------------------------------------------------------
    # Events

    def before_datapath(self, event: Event) -> None:
        """A pre-authenticated IKE SA's addresses get their table and rule before its
        CHILD SA's routes are installed."""
        if isinstance(event, IkeSaEstablished) and event.ike_sa in self.service.preauthenticating:
            pht = Pht(event.name, event.ike_sa, self._free_table())
            pht.addresses = [str(a) for a in event.assigned_addresses]
            # The nCoA with its network's prefix on the target's interface: the on-link
            # route of network B comes with it at the move.
            pht.prefixes = {
                str(a): prefix_length(a, event.netmask) for a in event.assigned_addresses
            }
            self._path_of(pht)  # now, not on the link event that may move it
            self.phts[event.name] = pht
            userspace = self.service.glue.userspace
            for address in pht.addresses:
                if userspace is not None:
                    userspace.move_routes(address, pht.table)
                self._add_rule(address, pht.table)
        elif isinstance(event, IkeSaRekeyed):
            for pht in [*self.phts.values(), *self.moved_connections.values()]:
                if pht.ike_sa == event.ike_sa:
                    pht.ike_sa = event.new_ike_sa
            if event.ike_sa in self._answers:
                self._answers[event.new_ike_sa] = self._answers.pop(event.ike_sa)

    def after_datapath(self, event: Event) -> None:
        answer = self._answers.get(event.ike_sa)
        if answer is not None and not answer.done():
            refused = isinstance(event, AddressUpdateRefused) and event.by_peer
            if refused or isinstance(event, AddressUpdateAccepted | IkeSaDeleted | IkeSaFailed):
                answer.set_result(event)
        if isinstance(event, IkeSaDeleted | IkeSaFailed):
            for pht in [p for p in self.phts.values() if p.ike_sa == event.ike_sa]:
                self._release(pht)
            for name, moved in list(self.moved_connections.items()):
                if moved.ike_sa == event.ike_sa and self.mover is not None:
                    del self.moved_connections[name]
                    if moved.interface is not None and moved.gateway is not None:
                        self.mover.unroute_gateway(
                            moved.interface, moved.addresses[0], moved.gateway
                        )

    def _release(self, pht: Pht) -> None:
        """The PHT's IKE SA ended: its rule, and the nCoA on the interface if moved."""
        self.phts.pop(pht.name, None)
        for address in pht.addresses:
            self._drop_rule(address, pht.table)
            userspace = self.service.glue.userspace
            if userspace is not None:
                userspace.source_tables.pop(address, None)
        if pht.moved:
            self._undo_move(pht)

    def _link_changed(self, interface: str, up: bool) -> None:
        """``handover: auto``: a candidate's link coming up while the PHT's own path
        has none, or the PHT's path going down while a candidate's link is up, moves
        to that candidate; a link coming up while the current one still works does
        not (the node stays where it is until that one goes)."""
        # Only a link that came may open a path: a pause after a failure goes on when
        # one goes.
        self.service.autopreauth.kick(f"{interface} {'up' if up else 'down'}", network_changed=up)
        self.service.announcer.changed()
        if up:
            for entry, pht in self._auto_candidates():
                if entry.interface == interface and not self._path_alive(pht):
                    self._start_auto(entry, interface, f"{interface} up")
        else:
            self._path_lost(lambda pht: self._path_of(pht) == interface, f"{interface} down")

    def _address_changed(self, interface: str, address: str, added: bool) -> None:
        """An address lost is a path lost when a PHT runs from it; any change may make
        a candidate reachable (automatic pre-authentication looks again). Link-local
        addresses do neither (the kernel's own come and finish DAD as links come up)."""
        if ipaddress.ip_address(address).is_link_local:
            return
        self.service.autopreauth.kick(
            f"{address} {'added to' if added else 'removed from'} {interface}",
            network_changed=added,
        )
        self.service.announcer.changed()
        if not added:
            self._path_lost(
                lambda pht: self._outer_address(pht) == address, f"{address} gone from {interface}"
            )

    def _path_lost(self, on_path: Any, why: str) -> None:
        """The PHTs whose path is gone: move to the first candidate (configuration
        order) whose link is up; none up: the link-up event of one will."""
        lost = [pht for _, pht in self._auto_candidates() if on_path(pht)]
        if not lost:
            return
        for entry, _ in self._auto_candidates():
            assert entry.interface is not None
            if link_is_up(entry.interface):
                self._start_auto(entry, entry.interface, why)
                return
        log.info("%s: no candidate has link yet; moving when one has", why)

    def _auto_candidates(self) -> list[tuple[GatewayEntry, Pht]]:
        """Gateways under ``handover: auto`` with a PHT not moved to and not moving."""
        found = []
        for entry in self.service.config.gateways.values():
            pht = self.phts.get(entry.name)
            if entry.handover != "auto" or entry.interface is None or pht is None:
                continue
            if not (pht.moved or pht.moving or entry.name in self._auto_moving):
                found.append((entry, pht))
        return found

    def _outer_address(self, pht: Pht) -> str | None:
        sa = self.service.endpoint.sas.get(pht.ike_sa)
        return None if sa is None else str(ipaddress.ip_address(sa.local[0]))

    def _path_of(self, pht: Pht) -> str | None:
        """The interface the PHT's IKE SA runs over (where its outer address is)."""
        address = self._outer_address(pht)
        if address is None or self.mover is None:
            return None
        if pht.via is None or pht.via_address != address:
            pht.via, pht.via_address = self.mover.interface_of(address), address
        return pht.via

    def _path_alive(self, pht: Pht) -> bool:
        via = self._path_of(pht)
        return via is not None and link_is_up(via)

    def _start_auto(self, entry: GatewayEntry, interface: str, why: str) -> None:
        log.info("%s: handover to %s (%s)", entry.name, interface, why)
        self._auto_moving.add(entry.name)  # no second move from the next event
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._auto(entry, interface, loop.time()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auto(self, entry: GatewayEntry, interface: str, since: float) -> None:
        try:
            log.info("%s", await self.move(entry, interface, since))
        except CommandError as error:
            log.warning("%s", error)
        finally:
            self._auto_moving.discard(entry.name)

    # ------------------------------------------------------------------
    # Helpers

    def _live_sa(self, pht: Pht | None) -> IkeSa | None:
        if pht is None:
            return None
        sa = self.service.endpoint.sas.get(pht.ike_sa)
        if sa is None or sa.closed or sa.state != IkeSaState.ESTABLISHED:
            return None
        return sa

    async def _bind_ncoa(self, pht: Pht) -> None:
        """Open the IKE sockets on the nCoA now, not during the handover."""
        sa = self.service.endpoint.sas.get(pht.ike_sa)
        if sa is None:
            return
        for address in pht.addresses:
            with contextlib.suppress(Exception):
                await self.service.live_transport().bind(address, (sa.local[1],))

    def _routing(self) -> Routing:
        """The instance's policy routing (its ``routing:``, whatever the datapath)."""
        return self.service.glue.routing or self.service.config.routing

    def _free_table(self) -> int:
        used = {pht.table for pht in self.phts.values()}
        return next(table for table in self._routing().preauth_tables if table not in used)

    def _add_rule(self, address: str, table: int) -> None:
        if self.rules is None:
            return
        try:
            self.rules.add(**source_rule(address, self._routing().source_priority), table=table)
        except Exception as error:
            log.error("rule from %s to table %d: %s", address, table, error)

    def _drop_rule(self, address: str, table: int) -> None:
        if self.rules is not None:
            self.rules.remove(**source_rule(address, self._routing().source_priority), table=table)

    def candidate(self, ike_sa: bytes) -> bool:
        """The IKE SA is a PHT not moved to yet: it comes back pre-authenticated."""
        return any(p.ike_sa == ike_sa and not p.moved for p in self.phts.values())

    async def rebind(self, name: str) -> None:
        """A PHT set up again (:mod:`mobile.recovery`): its nCoA's sockets, as preauth."""
        pht = self.phts.get(name)
        if pht is not None:
            await self._bind_ncoa(pht)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "gateway": pht.name,
                "ike_sa": pht.ike_sa.hex(),
                "ncoa": pht.addresses,
                "table": pht.table,
                "moved_to": pht.interface,
                "timeline": pht.timeline,
            }
            for pht in self.phts.values()
        ]
