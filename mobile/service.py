"""The mobile node's daemon behind ``mpa-mobile run``.

For now it answers ``status`` from its registry and refuses the commands that need the
protocol core (connect, disconnect, preauth, handover) with "not implemented yet",
after checking that the gateway is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.control import CommandError, Handler
from gateway.registry import Registry
from mobile.config import MobileConfig

GATEWAY_COMMANDS = ("connect", "disconnect", "preauth", "handover")


class MobileService:
    def __init__(self, config: MobileConfig) -> None:
        self.config = config
        self.registry = Registry()

    def handlers(self) -> Mapping[str, Handler]:
        handlers: dict[str, Handler] = {"status": self.status}
        for command in GATEWAY_COMMANDS:
            handlers[command] = self._not_implemented(command)
        return handlers

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs and configured gateways: the result of ``mpa-mobile status --json``."""
        return {
            "ike_sas": self.registry.to_json(),
            "gateways": [
                {
                    "name": entry.name,
                    "address": str(entry.address),
                    "interface": entry.interface,
                    "preauth": entry.preauth,
                    "handover": entry.handover,
                }
                for entry in self.config.gateways.values()
            ],
        }

    def gateway_name(self, args: dict[str, Any]) -> str:
        name = args.get("name")
        if not isinstance(name, str):
            raise CommandError("a gateway name is required")
        if name not in self.config.gateways:
            raise CommandError(f"unknown gateway {name!r}")
        return name

    def _not_implemented(self, command: str) -> Handler:
        async def handle(args: dict[str, Any]) -> None:
            name = self.gateway_name(args)
            raise CommandError(f"{command} {name}: not implemented yet")

        return handle
