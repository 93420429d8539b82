"""The mobile node's daemon behind ``mpa-mobile run``.

``connect NAME`` starts an IKE SA to the configured gateway (EAP, CP for an address,
one tunnel-mode CHILD SA) from the address the kernel would use to reach it, on UDP 500
and 4500 of that address as charon does, and answers once the CHILD SA is up or the
attempt failed; ``disconnect NAME`` deletes it. ``status`` shows the core's snapshot
with each CHILD SA's counters. The datapath ``datapath:`` names carries the traffic: the
CP address goes on its TUN device and the gateway's traffic selectors are routed into
it, as charon's kernel-libipsec does with a virtual IP.

MPA (:mod:`mobile.mpa`): ``preauth NAME`` does the same through the current network
with a candidate gateway, but the address it gets (the nCoA) only routes its own traffic
into the tunnel, the proactive handover tunnel (PHT); ``handover NAME`` moves the nCoA
to the gateway's network once its link is up and sends one UPDATE_SA_ADDRESSES.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mobile.announce import Announcer
from mobile.autopreauth import AutoPreauth
from mobile.config import GatewayEntry, MobileConfig
from mobile.mpa import Mpa
from mobile.reauth import Reauthentication
from mobile.recovery import Recovery
from mobile.resolver import Resolver
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import IKE_PORT, NAT_T_PORT, NotifyType, ProtocolId
from mpa_ike.datagram import Address
from mpa_ike.datapath import Datapath
from mpa_ike.errors import ConfigError as CoreConfigError
from mpa_ike.events import (
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from mpa_ike.ike_config import InitiatorConfig
from mpa_ike.ike_sa import IkeSa
from mpa_ike.ike_sa_common import IkeSaState
from mpa_ike.node.control import CommandError, Handler
from mpa_ike.node.control_client import DEFAULT_TIMEOUT
from mpa_ike.node.credentials import load_certificates
from mpa_ike.node.describe import with_notify
from mpa_ike.node.service import EAP_TYPES, NodeService, proposal_specs, wall_clock
from mpa_ike.node.transport import (
    IKE_PORTS,
    EspHandler,
    IkeTransport,
    TransportError,
    source_address_for,
)

log = logging.getLogger(__name__)

GATEWAY_COMMANDS = ("connect", "disconnect", "preauth", "handover")
# The CLI gives up on an answer after DEFAULT_TIMEOUT; answer a little before that.
COMMAND_WAIT = DEFAULT_TIMEOUT - 0.5


@dataclass
class _Attempt:
    """A connect or disconnect waiting for the core to settle an IKE SA."""

    done: asyncio.Future[str]
    address: str | None = None
    children: list[str] = field(default_factory=list)
    may_retry: bool = False  # a connect whose IKE SA may be set up once more


class _SetUpAgain(Exception):
    """The IKE SA failed in a way that another set-up at once may well not (IkeSaFailed.retry)."""


class MobileService(NodeService):
    """The initiator: IKE SAs to the configured gateways, on the commands it is given."""

    def __init__(
        self,
        config: MobileConfig,
        *,
        datapath: Datapath | None = None,
        esp_handler: EspHandler | None = None,
    ) -> None:
        super().__init__(datapath=datapath, esp_handler=esp_handler)
        self.config = config
        self._connecting: dict[bytes, _Attempt] = {}
        self._deleting: dict[bytes, _Attempt] = {}
        self.preauthenticating: set[bytes] = set()
        """IKE SAs being set up as proactive handover tunnels (their routes differ)."""
        self.mpa = Mpa(self)
        self.recovery = Recovery(self)
        self.reauth = Reauthentication(self)
        self.autopreauth = AutoPreauth(self)
        self.announcer = Announcer(self)
        self.resolver = Resolver(config.dns, config.dns_file)

    def handlers(self) -> Mapping[str, Handler]:
        handlers: dict[str, Handler] = {
            **super().handlers(),
            "status": self.status,
            "connect": self.connect,
            "disconnect": self.disconnect,
            "preauth": self.mpa.preauth,
            "handover": self.mpa.handover,
        }
        return handlers

    async def start(self) -> None:
        self.open_keylog(self.config.keylog)
        transport = self.new_transport()
        # The CP address goes on the TUN device, routes to the gateway's selectors
        # through it (charon's kernel-libipsec with a virtual IP).
        self.open_datapath(
            self.config.datapath,
            transport,
            routing=self.config.routing,
            inner_addresses=True,
        )
        self.transport = transport
        self.mpa.start()
        self.autopreauth.start()

    def close(self) -> None:
        self.autopreauth.close()
        self.announcer.close()
        self.recovery.close()
        self.reauth.close()
        self.mpa.close()
        self.resolver.close()

    # ------------------------------------------------------------------
    # Commands

    async def connect(self, args: dict[str, Any]) -> str:
        name = self.gateway_name(args)
        self.autopreauth.release(name)
        return await self.establish("connect", name)

    async def establish(
        self,
        command: str,
        name: str,
        *,
        source: str | None = None,
        preauth: bool = False,
        wait: float = COMMAND_WAIT,
        replaces: bytes | None = None,
        reauthenticates: bytes | None = None,
    ) -> str:
        """IKE_SA_INIT, IKE_AUTH with EAP and CP to gateway ``name`` (from ``source``,
        else the address the kernel picks); the answer once the CHILD SA is up.
        ``replaces``: an IKE SA the gateway lost, closed once the new one is up;
        ``reauthenticates``: one re-authenticated (:mod:`mobile.reauth`), likewise."""
        transport = self.live_transport()
        old = {replaces, reauthenticates}
        others = [sa for sa in self.endpoint.find(name) if sa.local_spi not in old]
        if any(_in_use(sa) for sa in others):
            raise CommandError(f"{command} {name}: already connected (disconnect first)")
        entry = self.config.gateways[name]
        try:
            config = self.initiator_config(entry)
            local, remote = await self._addresses(transport, entry, source)
        except (CoreConfigError, TransportError) as error:
            raise CommandError(f"{command} {name}: {error}") from None
        try:
            async with asyncio.timeout(wait):
                return await self._set_up(
                    config,
                    (local, remote),
                    preauth=preauth,
                    replaces=replaces,
                    reauthenticates=reauthenticates,
                )
        except TimeoutError:
            raise CommandError(
                f"{command} {name}: no answer from {remote[0]} yet (still trying)"
            ) from None

    async def _set_up(
        self,
        config: InitiatorConfig,
        path: tuple[Address, Address],
        *,
        preauth: bool,
        replaces: bytes | None,
        reauthenticates: bytes | None,
    ) -> str:
        """One IKE SA set up, once more if its failure says that may help."""
        transport = self.live_transport()
        local, remote = path
        for may_retry in (True, False):
            attempt = _Attempt(asyncio.get_running_loop().create_future(), may_retry=may_retry)
            sa = self.endpoint.initiate(
                config,
                local,
                remote,
                transport.now(),
                replaces=replaces,
                reauthenticates=reauthenticates,
            )
            log.info("%s: initiating %s[%d] -> %s[%d]", config.name, *local, *remote)
            self._connecting[sa.local_spi] = attempt
            if preauth:
                self.preauthenticating.add(sa.local_spi)
            transport.process()
            try:
                return await attempt.done
            except _SetUpAgain as failure:
                log.warning("%s: %s; setting the IKE SA up once more", config.name, failure)
            finally:
                _forget(self._connecting, attempt)
                self.preauthenticating.discard(sa.local_spi)
        raise AssertionError("the second set-up never asks for a third")

    async def disconnect(self, args: dict[str, Any]) -> str:
        name = self.gateway_name(args)
        self.recovery.cancel(name)
        self.reauth.cancel(name)
        self.autopreauth.hold(name)
        transport = self.live_transport()
        sas = [sa for sa in self.endpoint.find(name) if not sa.closed]
        if not sas:
            raise CommandError(f"disconnect {name}: not connected")
        loop = asyncio.get_running_loop()
        attempts = []
        for sa in sas:
            attempt = _Attempt(loop.create_future())
            self._deleting[sa.local_spi] = attempt
            attempts.append(attempt)
            self.endpoint.delete(sa.local_spi, transport.now())
        transport.process()
        try:
            async with asyncio.timeout(COMMAND_WAIT):
                await asyncio.gather(*(attempt.done for attempt in attempts))
        except TimeoutError:
            raise CommandError(f"disconnect {name}: the gateway did not answer yet") from None
        finally:
            for attempt in attempts:
                _forget(self._deleting, attempt)
        return f"{name}: deleted"

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs and configured gateways: the result of ``mpa-mobile status --json``."""
        found = await super().status(args)
        return {
            "ike_sas": found["ike_sas"],
            "gateways": [
                {
                    "name": entry.name,
                    "address": str(entry.address),
                    "interface": entry.interface,
                    "preauth": "auto" if entry.auto_preauth else entry.preauth,
                    "handover": entry.handover,
                }
                for entry in self.config.gateways.values()
            ],
            "counters": found["counters"],
            "datapath": found["datapath"],
            "phts": self.mpa.status(),
            "handovers": self.mpa.handovers,
            "waiting_for_link": sorted(self.mpa.waiting),
            "auto_preauth": self.autopreauth.status(),
            "dns": self.resolver.status(),
            **self.recovery.status(),
            **self.reauth.status(),
        }

    def deleting(self, ike_sa: bytes) -> bool:
        """The user asked for this IKE SA's end (disconnect)."""
        return ike_sa in self._deleting

    def gateway_name(self, args: dict[str, Any]) -> str:
        name = args.get("name")
        if not isinstance(name, str):
            raise CommandError("a gateway name is required")
        if name not in self.config.gateways:
            raise CommandError(f"unknown gateway {name!r}")
        return name

    def live_transport(self) -> IkeTransport:
        if self.transport is None:
            raise CommandError("the daemon is not running")
        return self.transport

    # ------------------------------------------------------------------
    # Configuration and addresses

    def initiator_config(self, entry: GatewayEntry) -> InitiatorConfig:
        cas = load_certificates(entry.ca, f"gateways.{entry.name}.ca") if entry.ca else ()
        families = tuple(sorted({network.version for network in entry.remote_ts}))
        return InitiatorConfig(
            name=entry.name,
            identity=self.config.identity,
            eap_password=self.config.eap.password,
            remote_id=entry.id,
            ike_proposals=proposal_specs(entry.ike, ProtocolId.IKE),
            child=ChildSaConfig(
                proposal_specs(entry.esp, ProtocolId.ESP), remote_ts=tuple(entry.remote_ts)
            ),
            ca=cas,
            wall_clock=wall_clock if cas else None,
            psk=entry.psk,
            eap_methods=(EAP_TYPES[self.config.eap.method],),
            virtual_ip_families=families or (4,),
            eap_identity=self.config.eap.identity,
            force_encap=entry.encap,
            no_nats_allowed=entry.no_nats_allowed,
            return_routability=entry.return_routability,
            lifetimes=entry.lifetimes,
        )

    async def _addresses(
        self, transport: IkeTransport, entry: GatewayEntry, source: str | None = None
    ) -> tuple[tuple[str, int], tuple[str, int]]:
        """(local, remote): our source address towards the gateway, on 500 and 4500
        like charon (only 4500, with the marker, if the gateway listens elsewhere)."""
        gateway = str(ipaddress.ip_address(entry.address.address))
        port = entry.address.port or IKE_PORT
        source = source or source_address_for(gateway, port)
        ports = IKE_PORTS if port == IKE_PORT else (NAT_T_PORT,)
        await transport.bind(source, ports)
        return (source, ports[0]), (gateway, port)

    # ------------------------------------------------------------------
    # Events

    def on_event(self, event: Event) -> None:
        self.recovery.on_event(event)  # first: it reads the PHTs before they go
        self.reauth.on_event(event)
        self.mpa.before_datapath(event)
        super().on_event(event)
        self.mpa.after_datapath(event)
        self._resolver_event(event)
        self.announcer.on_event(event)
        if isinstance(event, IkeSaRekeyed):  # later events name the new IKE SA
            for waiting in (self._connecting, self._deleting):
                if event.ike_sa in waiting:
                    waiting[event.new_ike_sa] = waiting.pop(event.ike_sa)
            return
        connecting = self._connecting.get(event.ike_sa)
        if connecting is not None:
            self._settle_connect(connecting, event)
        deleting = self._deleting.get(event.ike_sa)
        if deleting is not None and isinstance(event, IkeSaDeleted | IkeSaFailed):
            _resolve(deleting, "deleted")

    def _resolver_event(self, event: Event) -> None:
        """CP's DNS servers: given to the resolver once the CP address is the node's
        (a PHT's on its move, :mod:`mobile.mpa`), taken back with the IKE SA."""
        if isinstance(event, IkeSaEstablished) and event.ike_sa not in self.preauthenticating:
            interface = self.glue.status().get("device")
            if interface is None and self.mpa.mover is not None:
                interface = self.mpa.mover.interface_of(str(event.local[0]))
            self.resolver.apply(event.ike_sa, event.name, interface or "lo", event.dns)
        elif isinstance(event, IkeSaRekeyed):
            self.resolver.rekeyed(event.ike_sa, event.new_ike_sa)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            self.resolver.remove(event.ike_sa)
            if not self._set_up_again(event):
                self.autopreauth.kick(f"an IKE SA with {event.name} ended")

    def _set_up_again(self, event: Event) -> bool:
        """A connect's IKE SA that failed in a way that has it set up once more at once
        (IkeSaFailed.retry): the gateway is not left without one meanwhile."""
        attempt = self._connecting.get(event.ike_sa)
        retry = isinstance(event, IkeSaFailed) and event.retry
        return retry and attempt is not None and attempt.may_retry

    def _settle_connect(self, attempt: _Attempt, event: Event) -> None:
        if isinstance(event, IkeSaEstablished):
            attempt.address = ", ".join(str(a) for a in event.assigned_addresses) or None
        elif isinstance(event, ChildSaEstablished):
            address = f", address {attempt.address}" if attempt.address else ""
            _resolve(attempt, f"{event.name}: established{address}")
        elif isinstance(event, ChildSaFailed):
            reason = with_notify(event.reason, event.notify)
            _fail(attempt, f"connect {event.name}: CHILD SA failed: {reason}")
        elif isinstance(event, IkeSaFailed) and self._set_up_again(event):
            if not attempt.done.done():
                attempt.done.set_exception(_SetUpAgain(_failure_text(event)))
        elif isinstance(event, IkeSaFailed):
            _fail(attempt, f"connect {event.name}: {_failure_text(event)}")


def _in_use(sa: IkeSa) -> bool:
    """Not closed, and not on its way out (a new IKE SA may start beside one that is)."""
    return not sa.closed and sa.state != IkeSaState.DELETING


def _failure_text(event: IkeSaFailed) -> str:
    if event.notify == NotifyType.AUTHENTICATION_FAILED:
        return f"authentication failed ({event.reason})"
    return with_notify(event.reason, event.notify)


def _forget(waiting: dict[bytes, _Attempt], attempt: _Attempt) -> None:
    """Drop ``attempt`` wherever it is filed (an IKE SA rekey moves it to the new SPI)."""
    for spi in [spi for spi, filed in waiting.items() if filed is attempt]:
        del waiting[spi]


def _resolve(attempt: _Attempt, text: str) -> None:
    if not attempt.done.done():
        attempt.done.set_result(text)


def _fail(attempt: _Attempt, text: str) -> None:
    if not attempt.done.done():
        attempt.done.set_exception(CommandError(text))
