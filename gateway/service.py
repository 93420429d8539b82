"""The gateway service behind ``mpa-gateway run``.

It turns the configuration into the core's responder policy, serves IKE on UDP 500 and
4500 of every ``listen`` address, hands CHILD SA keys to the datapath ``datapath:``
names, and answers ``status`` from the core's snapshot (leases come from the pool the
core allocates from) with each CHILD SA's counters (the shared parts are
:class:`mpa_ike.node.service.NodeService`). Decrypted traffic leaves the TUN device for
the LAN by IP forwarding; the routes of leased addresses lead back into it, where the
datapath picks the SA by the peer's traffic selectors. On stop it deletes every IKE SA
with DELETE, waits briefly for the answers, and closes the datapath (device, routes,
forwarding as it was).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Hashable
from typing import Any

from gateway.aaa import GatewayAaa, eap_authenticator, local_eap_methods
from gateway.config import GatewayConfig
from gateway.leases import open_pool, peer_identity
from gateway.pool import AddressPool, Family
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import ProtocolId
from mpa_ike.datapath import Datapath
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError
from mpa_ike.events import Event
from mpa_ike.ike_config import ResponderConfig
from mpa_ike.node.control_client import ControlError
from mpa_ike.node.credentials import credential
from mpa_ike.node.service import NodeService, proposal_specs
from mpa_ike.node.transport import IKE_PORTS, EspHandler, TransportError

log = logging.getLogger(__name__)

FAMILIES: tuple[Family, ...] = (4, 6)


class GatewayService(NodeService):
    """The responder: IKE on every ``listen`` address, leases from the pool."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        datapath: Datapath | None = None,
        esp_handler: EspHandler | None = None,
    ) -> None:
        # The responder's endpoint is built by start(), so that a bad key file or a busy
        # port ends the daemon with one line (the daemon loop reports ControlError so).
        super().__init__(datapath=datapath, esp_handler=esp_handler)
        self.config = config
        self.pool: AddressPool[Hashable] = AddressPool(config.pool, config.reserved_addresses())
        self.aaa = GatewayAaa(config, self)  # RADIUS: EAP relay, accounting, disconnects

    def _responder_config(self) -> ResponderConfig:
        config = self.config
        users = dict(config.eap.users)
        child = ChildSaConfig(
            proposal_specs(config.esp, ProtocolId.ESP), local_ts=tuple(config.local_ts)
        )
        cred = None
        if config.certificate is not None and config.private_key is not None:
            cred = credential(config.certificate, config.private_key)
        return ResponderConfig(
            identity=config.id,
            ike_proposals=proposal_specs(config.ike, ProtocolId.IKE),
            child=child,
            eap_users=lambda name: users.get(name.decode("utf-8", "replace")),
            credential=cred,
            psk=config.psk,
            eap_methods=local_eap_methods(config.eap),
            eap_authenticator=eap_authenticator(config.eap),
            allocator=self.pool,
            dns=tuple(config.dns),
            address_policy=config.mobike.address_policy,
            return_routability=config.mobike.return_routability,
            additional_addresses=tuple(
                address
                for address in (ipaddress.ip_address(str(x.address)) for x in config.listen)
                if not address.is_unspecified
            ),
        )

    async def start(self) -> None:
        try:
            self.pool = open_pool(self.config, lambda owner: peer_identity(self.endpoint, owner))
            responder = self._responder_config()
        except ConfigError as error:
            raise ControlError(str(error)) from None
        self.endpoint = Endpoint(
            random=os.urandom,
            responder=responder,
            half_open_threshold=self.config.half_open_threshold,
        )
        transport = self.new_transport()
        try:
            for listen in self.config.listen:
                ports = IKE_PORTS if listen.port is None else (listen.port,)
                await transport.bind(str(listen.address), ports, freebind=True)
        except TransportError as error:
            transport.close()
            raise ControlError(str(error)) from None
        try:
            self.open_datapath(self.config.datapath, transport, forward=True)
        except BaseException:
            transport.close()
            raise
        self.transport = transport
        try:
            await self.aaa.start()
        except OSError as error:
            await self.stop()
            raise ControlError(f"dae.listen: {error.strerror or error}") from None
        log.info("serving IKE on %s", ", ".join(f"{a}[{p}]" for a, p in transport.local_addresses))

    def on_event(self, event: Event) -> None:
        self.aaa.on_event(event)  # first: the datapath forgets the CHILD SAs' counters
        super().on_event(event)

    async def stop(self) -> None:
        if self.transport is not None:
            await self.aaa.shutdown()  # Accounting-Stops before the DELETEs
        await super().stop()

    def close(self) -> None:
        self.aaa.close()
        self.pool.close()

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs, leases and pool usage: the result of ``mpa-gateway status --json``."""
        found = await super().status(args)
        self.pool.reclaim(time.time())  # held leases past lease_grace are not shown as held
        listening = self.transport.local_addresses if self.transport is not None else []
        return {
            "listening": [f"{address}[{port}]" for address, port in listening],
            "ike_sas": found["ike_sas"],
            "leases": [
                {"address": str(address), "ike_sa": self._describe(owner)}
                for address, owner in self.pool.leases()
            ],
            "pool": {
                f"ipv{family}": {
                    "size": self.pool.size(family),
                    "available": self.pool.available(family),
                }
                for family in FAMILIES
            },
            "counters": found["counters"],
            "datapath": found["datapath"],
            **self.aaa.status(),
        }

    def _describe(self, owner: Hashable) -> str:
        entry = self.registry.get(owner)
        if entry is not None:
            return entry.name
        return owner.hex() if isinstance(owner, bytes) else str(owner)
