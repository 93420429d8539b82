"""The mobile node's background work per gateway: at most one task for each gateway
name (a re-authentication, a recovery, an automatic pre-authentication), cancelled when
the user disconnects that gateway or the daemon stops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobile.service import MobileService


class GatewayTasks:
    """Tasks by gateway name; the work removes its own entry when it ends (:meth:`done`),
    so that the gateway is free again before anything the work does next."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def start(self, name: str, work: Coroutine[Any, Any, Any]) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(work)

    def done(self, name: str) -> None:
        self._tasks.pop(name, None)

    def cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


class GatewayWork:
    """What the mobile node does by itself for a gateway, one task at a time per
    gateway (a re-authentication, a recovery): the user's disconnect cancels it."""

    def __init__(self, service: MobileService) -> None:
        self.service = service
        self._tasks = GatewayTasks()

    def close(self) -> None:
        self._tasks.close()

    def cancel(self, name: str) -> None:
        """The user disconnected ``name``: no more of this work for it."""
        self._tasks.cancel(name)

    def busy(self, name: str) -> bool:
        return name in self._tasks

    def _free(self, name: str) -> bool:
        """``name`` is a gateway of the configuration with no such work under way."""
        return name not in self._tasks and name in self.service.config.gateways
