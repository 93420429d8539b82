"""A daemon's datapath, driven by the core's CHILD SA events.

:class:`DatapathGlue` builds what ``datapath:`` names (the userspace datapath over a TUN
device, or the kernel's XFRM) and turns the core's events into its calls, filing CHILD
SAs and inner addresses under their IKE SA so that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mpa_ike.config_payload import IPNetwork, prefix_length
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams, Datapath, RecordingDatapath
from mpa_ike.errors import LocalProtocolError
from mpa_ike.esp import Expiry
from mpa_ike.events import (
    ChildSaAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from mpa_ike.io.policy_routing import (
    NextHop,
    Routing,
    RoutingInUse,
    Rules,
    TableClaim,
    XfrmRoutes,
    gateway_rules,
    held_tables,
)
from mpa_ike.io.raw_esp import RawEspSockets
from mpa_ike.io.rtnl import Rtnl
from mpa_ike.io.tun import IFA_F_NODAD, IFA_F_NOPREFIXROUTE, MAIN_TABLE
from mpa_ike.io.userspace import UserspaceDatapath, inside_subnets
from mpa_ike.io.xfrm import (
    InstanceSlot,
    StateExpired,
    StateMapping,
    XfrmDatapath,
    XfrmEvent,
    XfrmEvents,
    XfrmUsageError,
    choose_datapath,
)
from mpa_ike.node.control_client import ControlError
from mpa_ike.node.transport import IkeTransport

log = logging.getLogger(__name__)

FORWARDING = {
    4: Path("/proc/sys/net/ipv4/ip_forward"),
    6: Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}
# What a datapath raises when the kernel or its own checks refuse an SA.
DATAPATH_ERRORS = (LocalProtocolError, XfrmUsageError, OSError, KeyError)
LOOPBACK_INDEX = 1  # lo is the first device of every network namespace


class DatapathGlue:
    """A daemon's datapath and the core events that drive it.

    :meth:`open` builds what ``datapath:`` names. The userspace one (strongSwan's
    kernel-libipsec) reads a TUN device, sends ESP in UDP from the IKE sockets of the
    transport, which hands it the ESP arriving on 4500, and plain ESP over raw sockets
    where allowed. The glue files CHILD SAs and inner addresses under their IKE SA, so
    that an IKE SA that ends takes them along whatever events came before, and a
    shutdown leaves no SA, route or address behind.

    ``inner_addresses`` (the mobile node): the CP-assigned addresses go on the TUN
    device, as charon puts a virtual IP there, with CP's netmask (RFC 7296 §3.15.1) as
    their prefix but no prefix route; where the gateway named the subnets it protects
    (§3.15.2), only those of the peer's selectors are routed into the tunnel.
    ``forward`` (the gateway): IP forwarding is turned on with the first CHILD SA of a
    family, since decrypted traffic goes on to the LAN, and back to what it was on close.

    With XFRM the routes the TUN device's SAs get are :class:`XfrmRoutes`: the peer's
    selectors out of the interface towards the peer, in a table of their own behind a
    rule (the mobile node preferring its CP address as source; the gateway routing the
    leased addresses so that what the LAN sends them meets the policy), re-routed when
    the SA moves and removed with it.

    Tables, rule priorities and the mark are the instance's own (``routing``, held by a
    :class:`TableClaim` while it runs): closing removes its rules and routes, never
    another instance's.
    """

    def __init__(
        self,
        datapath: Datapath,
        kind: str = "none",
        *,
        userspace: UserspaceDatapath | None = None,
        raw: RawEspSockets | None = None,
        inner_addresses: bool = False,
        forward: bool = False,
    ) -> None:
        self.datapath = datapath
        self.kind = kind
        self.userspace = userspace
        self.raw = raw
        self.inner_addresses = inner_addresses
        self.forward = forward
        self.errors = 0
        self.transport: IkeTransport | None = None
        self.rules: Rules | None = None
        self._rekeying: set[bytes] = set()  # inbound SPIs rekeyed for their sequence numbers
        self._children: dict[bytes, dict[bytes, bytes]] = {}  # IKE SA -> spi_in -> spi_out
        self._inner: dict[bytes, list[str]] = {}  # IKE SA -> addresses on the device
        self.prefixes: dict[str, int] = {}  # inner address -> CP netmask's prefix length
        self.subnets: dict[str, tuple[IPNetwork, ...]] = {}  # inner address -> CP subnets
        self._forwarding_was: dict[int, str] = {}
        self.slot: InstanceSlot | None = None
        self.events: XfrmEvents | None = None
        self.rtnl: Rtnl | None = None
        self.routes: XfrmRoutes | None = None
        self.routing: Routing | None = None
        self.claim: TableClaim | None = None
        if userspace is not None:
            userspace.on_expire = self._expired
            userspace.on_mapping = self._mapped

    @classmethod
    def open(
        cls,
        kind: str,
        transport: IkeTransport,
        *,
        routing: Routing,
        inner_addresses: bool = False,
        forward: bool = False,
        device: str = "mpa%d",
    ) -> DatapathGlue:
        """The datapath ``kind`` (userspace, xfrm, auto) wired to ``transport``, with the
        instance's ``routing`` (its table claimed for as long as the glue is open).

        ``auto`` without the right to create a TUN device runs without a datapath (a
        warning: SAs are negotiated but carry nothing); ``userspace`` fails then.
        """
        try:
            claim = TableClaim(routing.table)
        except RoutingInUse as error:
            raise ControlError(str(error)) from None
        except OSError as error:
            reason = f"cannot hold table {routing.table}: {error.strerror or error}"
            raise ControlError(f"routing.table: {reason}") from None
        try:
            glue = cls._open(kind, transport, routing, inner_addresses, forward, device)
        except BaseException:
            claim.close()
            raise
        glue.routing, glue.claim = routing, claim
        log.info("policy routing: %s", routing)
        return glue

    @classmethod
    def _open(
        cls,
        kind: str,
        transport: IkeTransport,
        routing: Routing,
        inner_addresses: bool,
        forward: bool,
        device: str,
    ) -> DatapathGlue:
        choice = choose_datapath(kind)
        log.info("%s", choice)
        if choice.kind == "xfrm":
            return cls._open_xfrm(
                transport, routing, inner_addresses=inner_addresses, forward=forward
            )
        # pyroute2 logs every netlink message at DEBUG: the daemon's debug log drowned.
        logging.getLogger("pyroute2").setLevel(max(logging.INFO, log.getEffectiveLevel()))
        table = routing.table if forward else MAIN_TABLE
        try:
            userspace = UserspaceDatapath.open(transport.send_raw, name=device, route_table=table)
        except OSError as error:
            reason = f"cannot create a TUN device: {error.strerror or error}"
            if kind == "userspace":
                raise ControlError(f"datapath userspace: {reason}") from None
            log.warning("no datapath (%s): CHILD SAs will carry no traffic", reason)
            return cls(
                RecordingDatapath(), "none", inner_addresses=inner_addresses, forward=forward
            )
        raw = None
        try:
            raw = RawEspSockets(asyncio.get_running_loop(), userspace.esp_received)
            userspace.send_plain = raw.send
        except OSError as error:
            log.warning("ESP in UDP only: no raw socket for plain ESP (%s)", error.strerror)
        transport.esp_handler = userspace.esp_received
        rules = None
        if forward:
            rules = cls._gateway_routing(userspace, transport, raw, routing)
        log.info("userspace datapath on %s", cls._device(userspace))
        glue = cls(
            userspace,
            "userspace",
            userspace=userspace,
            raw=raw,
            inner_addresses=inner_addresses,
            forward=forward,
        )
        glue.transport = transport
        glue.rules = rules
        return glue

    @classmethod
    def _open_xfrm(
        cls, transport: IkeTransport, routing: Routing, *, inner_addresses: bool, forward: bool
    ) -> DatapathGlue:
        """The kernel's XFRM under this instance's slot of reqids: what an earlier run of
        it left is flushed first, and the kernel's expiries and mappings are read on the
        loop."""
        slot = None
        try:
            slot = InstanceSlot.take()
            # Each state's limits are its CHILD SA's (ChildSaParams.limits): the kernel's
            # soft EXPIRE asks for the rekey, as charon's kernel-netlink has it.
            xfrm = XfrmDatapath(reqids=slot.reqids, move_method="migrate")
            states, policies = xfrm.flush_own()
        except (OSError, XfrmUsageError) as error:
            if slot is not None:
                slot.close()
            raise ControlError(
                f"datapath xfrm: {getattr(error, 'strerror', None) or error}"
            ) from None
        if states or policies:
            log.info(
                "datapath: removed %d states and %d policies left by an earlier run",
                states,
                policies,
            )
        glue = cls(xfrm, "xfrm", inner_addresses=inner_addresses, forward=forward)
        glue.slot = slot
        glue.transport = transport
        try:
            glue.rtnl = Rtnl()
            glue.routes = XfrmRoutes(glue.rtnl, routing, bypass=forward)
            if forward:  # an nCoA is both a leased and an outer address: IKE by main
                transport.mark_sockets(routing.mark)
        except OSError as error:
            log.warning("no routes to the peers' selectors (%s)", error.strerror)
        try:
            glue.events = XfrmEvents(glue.kernel_event, reqids=slot.reqids)
            asyncio.get_running_loop().add_reader(glue.events.fileno(), glue.events.read)
        except OSError as error:
            log.warning("no XFRM events (%s): no rekey on the kernel's expiries", error.strerror)
        transport.hand_esp_to_kernel()
        log.info(
            "XFRM datapath, instance slot %d (reqids %#x-%#x)",
            slot.number,
            slot.reqids.start,
            slot.reqids.stop - 1,
        )
        return glue

    @staticmethod
    def _gateway_routing(
        userspace: UserspaceDatapath,
        transport: IkeTransport,
        raw: RawEspSockets | None,
        routing: Routing,
    ) -> Rules | None:
        """Tunnel routes in their own table, our IKE and ESP sockets marked past it: an
        nCoA is both the inner and the outer address after the move."""
        netlink = getattr(userspace.tun, "netlink", None)
        if netlink is None:
            return None
        rules = gateway_rules(netlink, routing)
        transport.mark_sockets(routing.mark)
        if raw is not None:
            raw.mark_sockets(routing.mark)
        return rules

    @staticmethod
    def _device(userspace: UserspaceDatapath) -> str:
        return str(getattr(userspace.tun, "name", ""))

    # ------------------------------------------------------------------
    # Events

    def on_event(self, event: Event) -> None:
        """Turn one core event into datapath calls; a refused call is logged and counted."""
        try:
            self._apply(event)
        except DATAPATH_ERRORS as error:
            self.errors += 1
            log.error("%s[%s]: datapath: %s", event.name, event.ike_sa.hex(), error)
            if isinstance(event, ChildSaEstablished):
                self._delete_soon(event.ike_sa, event.params.spi_in)

    def _delete_soon(self, ike_sa: bytes, spi_in: bytes) -> None:
        """A CHILD SA the datapath refused carries nothing: delete it, as charon does when
        the kernel refuses an SA, once the events under way are handled."""
        transport = self.transport
        if transport is None:
            return

        def delete() -> None:
            if self.transport is not transport:  # closed meanwhile
                return
            log.info("deleting CHILD SA %s: the datapath refused it", spi_in.hex())
            try:
                transport.endpoint.delete_child_sa(ike_sa, spi_in, transport.now())
            except Exception as error:  # the IKE SA went away meanwhile
                log.warning("CHILD SA %s: delete refused: %s", spi_in.hex(), error)
            transport.process()

        asyncio.get_running_loop().call_soon(delete)

    def _apply(self, event: Event) -> None:
        if isinstance(event, IkeSaEstablished) and self.inner_addresses:
            self._add_inner(event)
        elif isinstance(event, ChildSaEstablished):
            self._install(event.ike_sa, event.params)
        elif isinstance(event, ChildSaDeleted):
            self._remove(event.ike_sa, event.spi_in)
        elif isinstance(event, ChildSaAddressesUpdated):
            self.datapath.move_child_sa(
                event.spi_in, event.spi_out, event.local, event.remote, event.encap
            )
            self._reroute(event.spi_in, event.local, event.remote)
        elif isinstance(event, IkeSaRekeyed):  # its CHILD SAs and lease move along
            if event.ike_sa in self._children:
                self._children[event.new_ike_sa] = self._children.pop(event.ike_sa)
            if event.ike_sa in self._inner:
                self._inner[event.new_ike_sa] = self._inner.pop(event.ike_sa)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            self._forget(event.ike_sa)

    def _add_inner(self, event: IkeSaEstablished) -> None:
        if self.userspace is None and self.kind != "xfrm":
            return
        added = self._inner.setdefault(event.ike_sa, [])
        for ip in event.assigned_addresses:
            address = str(ip)
            self.prefixes[address] = prefix_length(ip, event.netmask)
            if event.subnets:  # before the CHILD SAs: their routes go by them
                self.subnets[address] = event.subnets
                if self.userspace is not None:
                    self.userspace.subnets[address] = event.subnets
            self._inner_address("add", address)
            added.append(address)

    def take_inner_address(self, ike_sa: bytes, address: str) -> None:
        """Take ``address`` off the device: it moved to an interface (MPA handover)."""
        addresses = self._inner.get(ike_sa, [])
        if address in addresses:
            addresses.remove(address)
            self._inner_address("del", address)

    def _inner_address(self, command: str, address: str) -> None:
        """An inner address on the TUN device, or with XFRM on lo (as charon puts a
        virtual IP on a device): the kernel's policies take what leaves from it."""
        ip = ipaddress.ip_address(address)
        length = self.prefixes.get(address, ip.max_prefixlen)
        if self.userspace is not None:
            if command == "add":
                self.userspace.add_inner_address(address, length)
            else:
                self.userspace.del_inner_address(address, length)
            return
        if self.rtnl is None:
            self.rtnl = Rtnl()
        flags = IFA_F_NODAD if ip.version == 6 else 0
        if length < ip.max_prefixlen:  # on lo, a prefix route would swallow the prefix
            flags |= IFA_F_NOPREFIXROUTE
        extra = {"flags": flags} if flags and command == "add" else {}
        self.rtnl.request(
            "addr", command, index=LOOPBACK_INDEX, address=str(ip), prefixlen=length, **extra
        )

    def _install(self, ike_sa: bytes, params: ChildSaParams) -> None:
        if self.forward:
            self._enable_forwarding(params)
        self.datapath.install_child_sa(params)
        self._children.setdefault(ike_sa, {})[params.spi_in] = params.spi_out
        self._route(params)

    # ------------------------------------------------------------------
    # Routes of the XFRM datapath

    def _next_hop(self, local: Address, remote: Address) -> NextHop | None:
        assert self.routes is not None
        try:
            return self.routes.next_hop(remote[0], local[0])
        except OSError as error:
            log.warning("no route to %s from %s: %s", remote[0], local[0], error)
            return None

    def _route(self, params: ChildSaParams) -> None:
        """Route the peer's selectors towards it (the SA stands even if this fails: the
        routes may be there already, as they were before the glue made them)."""
        if self.routes is None:
            return
        hop = self._next_hop(params.local, params.remote)
        if hop is None:
            return
        routes = selector_routes(params, with_source=self.inner_addresses, subnets=self.subnets)
        try:
            self.routes.add(params.spi_in, routes, hop)
        except OSError as error:
            log.warning("CHILD SA %s: routes to %s: %s", params.spi_in.hex(), routes, error)

    def _reroute(self, spi_in: bytes, local: Address, remote: Address) -> None:
        if self.routes is None:
            return
        hop = self._next_hop(local, remote)
        if hop is None:
            return
        try:
            self.routes.move(spi_in, hop)
        except OSError as error:
            log.warning("CHILD SA %s: re-routing: %s", spi_in.hex(), error)

    def _remove(self, ike_sa: bytes, spi_in: bytes) -> None:
        for children in (self._children.get(ike_sa), *self._children.values()):
            if children is not None and spi_in in children:
                self._rekeying.discard(spi_in)
                if self.routes is not None:
                    self.routes.remove(spi_in)
                self.datapath.remove_child_sa(spi_in, children.pop(spi_in))
                return

    def _forget(self, ike_sa: bytes) -> None:
        """Everything of an IKE SA that ended: its CHILD SAs, then its inner addresses."""
        for spi_in in list(self._children.get(ike_sa, {})):
            try:
                self._remove(ike_sa, spi_in)
            except DATAPATH_ERRORS as error:
                self.errors += 1
                log.error("datapath: removing %s: %s", spi_in.hex(), error)
        self._children.pop(ike_sa, None)
        for address in self._inner.pop(ike_sa, []):
            try:
                self._inner_address("del", address)
            except DATAPATH_ERRORS as error:
                log.error("datapath: removing address %s: %s", address, error)
            if any(address in held for held in self._inner.values()):
                continue  # a new IKE SA has it too (re-authentication): its CP stays
            self.prefixes.pop(address, None)
            self.subnets.pop(address, None)
            if self.userspace is not None:
                self.userspace.subnets.pop(address, None)

    def ike_sa_of(self, spi_in: bytes) -> bytes | None:
        return next((sa for sa, children in self._children.items() if spi_in in children), None)

    def _expired(self, expiry: Expiry, why: str = "sequence numbers running out") -> None:
        """Outbound sequence numbers running out, or (XFRM) a soft limit reached: rekey
        the CHILD SA, once (RFC 4303 §3.3.3, RFC 7296 §2.8), as charon does on the
        kernel's soft expire."""
        ike_sa = self.ike_sa_of(expiry.spi_in)
        transport = self.transport
        if ike_sa is None or transport is None or expiry.spi_in in self._rekeying:
            if expiry.hard:
                log.warning("CHILD SA %s: %s", expiry.spi_in.hex(), why)
            return
        self._rekeying.add(expiry.spi_in)
        log.info("CHILD SA %s: %s, rekeying", expiry.spi_in.hex(), why)
        try:
            transport.endpoint.rekey_child_sa(ike_sa, expiry.spi_in, transport.now())
        except Exception as error:  # a rekey already under way, an IKE SA going away
            log.warning("CHILD SA %s: rekey refused: %s", expiry.spi_in.hex(), error)
        transport.process()

    def kernel_event(self, event: XfrmEvent) -> None:
        """An expiry or a NAT mapping the kernel announced for one of our states."""
        if not isinstance(self.datapath, XfrmDatapath):
            return
        pair = self.datapath.child_of_state(event.key)
        if pair is None:
            return  # a state already removed, or another CHILD SA's
        spi_in, spi_out = pair
        if isinstance(event, StateMapping):
            self._mapped(spi_in, spi_out, event.new)
            return
        assert isinstance(event, StateExpired)
        side = "inbound" if event.key.spi == int.from_bytes(spi_in, "big") else "outbound"
        limit = "hard" if event.hard else "soft"
        counted = f"{event.bytes} bytes, {event.packets} packets"
        why = f"the kernel's {limit} limit on the {side} state ({counted})"
        if not event.hard:
            self._expired(Expiry(spi_in, spi_out, False), why)
            return
        # The kernel deleted the state: the CHILD SA carries nothing any more.
        log.warning("CHILD SA %s: %s, the kernel deleted it", spi_in.hex(), why)
        ike_sa = self.ike_sa_of(spi_in)
        if ike_sa is not None and spi_in not in self._rekeying:
            self._delete_soon(ike_sa, spi_in)

    def _mapped(self, spi_in: bytes, spi_out: bytes, src: Address) -> None:
        """The peer's authenticated ESP in UDP came from a new address or port (the
        kernel's XFRM_MSG_MAPPING, or the userspace datapath's): the core follows it
        where the peer is behind a NAT and we are not (RFC 7296 §2.23, as charon's
        update_sa_job; otherwise it is a path for MOBIKE to decide, RFC 4555 §3.12).
        The move comes back as ChildSaAddressesUpdated: the SAs' encapsulation then
        goes to the new port."""
        log.info("CHILD SA %s: ESP in UDP from %s[%d]", spi_in.hex(), *src)
        ike_sa = self.ike_sa_of(spi_in)
        transport = self.transport
        if ike_sa is None or transport is None:
            return
        transport.endpoint.nat_mapping(ike_sa, src, transport.now())
        transport.process()

    def _close_xfrm(self, xfrm: XfrmDatapath) -> None:
        """Stop hearing the kernel, flush whatever still carries our reqids, let go of
        the slot (only then may another instance take it)."""
        if self.events is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # no loop, or closed
                asyncio.get_running_loop().remove_reader(self.events.fileno())
            self.events.close()
            self.events = None
        if self.slot is not None:
            try:
                states, policies = xfrm.flush_own()
                if states or policies:
                    log.warning("datapath: %d states and %d policies were left", states, policies)
            except DATAPATH_ERRORS as error:
                log.error("datapath: flushing our XFRM entries: %s", error)
        xfrm.close()
        if self.slot is not None:
            self.slot.close()
            self.slot = None

    def _restore_forwarding(self) -> None:
        """Forwarding back to what it was, unless another instance of this namespace
        still runs (it may forward through the same knob)."""
        others = held_tables() - {self.claim.table} if self.claim is not None else set()
        for version, was in self._forwarding_was.items():
            if was == "1":
                continue
            if others:
                log.info("IPv%d forwarding left on: another instance runs here", version)
                continue
            with contextlib.suppress(OSError):
                FORWARDING[version].write_text(f"{was}\n")
        self._forwarding_was.clear()

    def _enable_forwarding(self, params: ChildSaParams) -> None:
        versions = {ipaddress.ip_address(ts.start).version for ts in params.remote_ts}
        for version in versions - set(self._forwarding_was):
            knob = FORWARDING[version]
            was = knob.read_text().strip()
            if was != "1":
                knob.write_text("1\n")
                log.info("IPv%d forwarding turned on (was %s)", version, was)
            self._forwarding_was[version] = was

    # ------------------------------------------------------------------
    # Status and shutdown

    def installed(self, spi_in: bytes) -> bool:
        return any(spi_in in children for children in self._children.values())

    def child_counters(self, spi_in: bytes) -> dict[str, Any]:
        """Bytes and packets each way and drops by reason of one installed CHILD SA."""
        found: dict[str, Any] = {}
        try:
            counted = self.datapath.counters(spi_in)
        except DATAPATH_ERRORS:
            return found
        found.update(
            bytes_in=counted.bytes_in,
            bytes_out=counted.bytes_out,
            packets_in=counted.packets_in,
            packets_out=counted.packets_out,
        )
        if self.userspace is not None:
            with contextlib.suppress(*DATAPATH_ERRORS):
                found["drops"] = self.userspace.drops(spi_in)
        return found

    def annotate(self, ike_sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Status entries of ``Registry.to_json`` with each CHILD SA's counters added."""
        for sa in ike_sas:
            for child in sa.get("child_sas", []):
                spi_in = bytes.fromhex(child["spi_in"])
                if self.installed(spi_in):
                    child.update(self.child_counters(spi_in))
        return ike_sas

    def status(self) -> dict[str, Any]:
        """The datapath's own line: kind, device, drops tied to no SA (unknown SPI, ...)."""
        installed = sum(len(children) for children in self._children.values())
        found: dict[str, Any] = {"kind": self.kind, "child_sas": installed, "errors": self.errors}
        if self.routing is not None:
            found["routing"] = {
                "table": self.routing.table,
                "priority": self.routing.priority,
                "mark": self.routing.mark,
            }
        if self.userspace is not None:
            found["device"] = self._device(self.userspace)
            found["drops"] = self.userspace.drops()
            found["tun_write_errors"] = self.userspace.tun_write_errors
        return found

    def close(self) -> None:
        """Remove what is still installed, close the device and sockets, restore forwarding."""
        self.transport = None
        for ike_sa in list(self._children) + list(self._inner):
            self._forget(ike_sa)
        if self.raw is not None:
            self.raw.close()
        if self.rules is not None:
            self.rules.close()
            self.rules = None
        if self.userspace is not None:
            self.userspace.close()
        elif isinstance(self.datapath, XfrmDatapath):
            self._close_xfrm(self.datapath)
        if self.routes is not None:
            self.routes.close()
            self.routes = None
        if self.rtnl is not None:
            self.rtnl.close()
            self.rtnl = None
        self._restore_forwarding()
        if self.claim is not None:  # last: the rules and routes of the table are gone
            self.claim.close()
            self.claim = None


def selector_routes(
    params: ChildSaParams,
    *,
    with_source: bool,
    subnets: Mapping[str, tuple[IPNetwork, ...]] = MappingProxyType({}),
) -> list[tuple[str, str | None]]:
    """The networks of the peer's selectors, as the userspace datapath routes them into
    its device: only those in the ``subnets`` of their source (CP's), a network covering
    the peer's outer address split around it (routing the ESP itself there would loop
    it), each with our single inner address of its family as the preferred source when
    ``with_source``."""
    outer = ipaddress.ip_address(params.remote[0])
    routes: list[tuple[str, str | None]] = []
    for ts in params.remote_ts:
        first, last = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
        src = None
        if with_source:
            src = next(
                (
                    t.start
                    for t in params.local_ts
                    if t.start == t.end and ipaddress.ip_address(t.start).version == first.version
                ),
                None,
            )
        networks = ipaddress.summarize_address_range(first, last)
        for net in inside_subnets(networks, subnets.get(src or "", ())):
            if outer.version == net.version and outer in net:
                host = ipaddress.ip_network(outer)
                routes.extend((str(n), src) for n in sorted(net.address_exclude(host)))  # type: ignore[arg-type]
            else:
                routes.append((str(net), src))
    return routes
