"""The gateway service behind ``mpa-gateway run``.

For now it holds the state the protocol layer will fill (the registry of IKE SAs and the
address pool) and answers ``status`` over the control socket; the IKE sockets are not
opened yet.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from gateway.config import GatewayConfig
from gateway.control import Handler
from gateway.pool import AddressPool, Family
from gateway.registry import Registry

FAMILIES: tuple[Family, ...] = (4, 6)


class GatewayService:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.registry = Registry()
        self.pool: AddressPool[Hashable] = AddressPool(config.pool, config.reserved_addresses())

    def handlers(self) -> Mapping[str, Handler]:
        return {"status": self.status}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs, leases and pool usage: the result of ``mpa-gateway status --json``."""
        return {
            "ike_sas": self.registry.to_json(),
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
        }

    def _describe(self, owner: Hashable) -> str:
        entry = self.registry.get(owner)
        return entry.name if entry is not None else str(owner)
