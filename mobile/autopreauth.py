"""Pre-authentication without a command: ``preauth: auto``.

For each gateway whose entry says ``preauth: auto`` (or every gateway naming its
interface, with the top-level ``preauth: auto``) the daemon keeps a proactive handover
tunnel up by itself (:mod:`mobile.mpa`): it pre-authenticates once the candidate's
network is reachable through the current one, that is when the kernel routes the
gateway's address out of an interface with link other than the candidate's own. It
looks again when something may have changed: at start, on every link or address event
of the node, once a handover moved the node (the PHTs to the other candidates are
deleted then and made anew through the new network), and when a PHT's IKE SA ended
without the user asking (deleted by the gateway, rekeying failed, lifetime reached):
the core rekeys a PHT's IKE and CHILD SAs in place like any others, so a PHT is made
anew only when that did not keep it. A failed attempt is tried again after a pause
that doubles up to a minute; a link coming up or an address added starts the pauses
over, since a new path may have opened (a link or address going opens none). Several
candidates are pre-authenticated at once, each by a task of its own.

``disconnect NAME`` holds a gateway's automatic pre-authentication until ``preauth
NAME`` or ``connect NAME`` is asked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from mobile.gateway_tasks import GatewayTasks
from mpa_ike.constants import IKE_PORT
from mpa_ike.ike_sa_common import IkeSaState
from mpa_ike.io.links import link_is_up
from mpa_ike.node.control import CommandError
from mpa_ike.node.transport import TransportError, source_address_for

if TYPE_CHECKING:
    from mobile.config import GatewayEntry
    from mobile.service import MobileService

log = logging.getLogger(__name__)

# Pauses after failed attempts, then the last one again.
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
# Without any event, how often reachability is looked at again (a route may change
# without an address or link event of the node's own).
RECHECK = 10.0


def backoff(failures: int) -> float:
    """The pause after ``failures`` failed attempts in a row (1 or more)."""
    return BACKOFF[min(failures, len(BACKOFF)) - 1]


class AutoPreauth:
    """The automatic pre-authentications of one :class:`mobile.service.MobileService`."""

    def __init__(self, service: MobileService) -> None:
        self.service = service
        self._tasks = GatewayTasks()
        self._wake: dict[str, asyncio.Event] = {}
        self._fresh: set[str] = set()  # woken by the network changing: no pause
        self.held: set[str] = set()
        """Gateways the user disconnected: no automatic pre-authentication for now."""
        self.failures: dict[str, int] = {}
        self.last: dict[str, str] = {}  # gateway -> what the last attempt said
        self.pauses: dict[str, list[float]] = {}  # gateway -> seconds waited after failures

    def gateways(self) -> list[GatewayEntry]:
        return [e for e in self.service.config.gateways.values() if e.auto_preauth]

    def start(self) -> None:
        for entry in self.gateways():
            self._wake[entry.name] = asyncio.Event()
            self._tasks.start(entry.name, self._keep(entry))

    def close(self) -> None:
        self._tasks.close()

    def hold(self, name: str) -> None:
        self.held.add(name)

    def release(self, name: str) -> None:
        self.held.discard(name)

    def kick(self, why: str, *, network_changed: bool = False) -> None:
        """Look at every candidate again; ``network_changed``: skip the pause after a
        failure (the path it failed on may be gone)."""
        for name, wake in self._wake.items():
            if network_changed:
                self._fresh.add(name)
            if not wake.is_set():
                log.debug("%s: automatic pre-authentication looks again (%s)", name, why)
            wake.set()

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "held": name in self.held,
                "failures": self.failures.get(name, 0),
                "last": self.last.get(name, ""),
                "pauses": [round(p, 3) for p in self.pauses.get(name, [])[-10:]],
            }
            for name in self._tasks
        }

    # ------------------------------------------------------------------

    async def _keep(self, entry: GatewayEntry) -> None:
        name = entry.name
        while True:
            reason = self._reachable_through(entry) if self._wanted(name) else None
            if reason is None:
                await self._sleep(name, RECHECK)
                continue
            try:
                answer = await self.service.mpa.preauth({"name": name})
            except CommandError as error:
                failures = self.failures[name] = self.failures.get(name, 0) + 1
                self.last[name] = str(error)
                pause = backoff(failures)
                log.warning(
                    "%s: automatic pre-authentication through %s failed (%d in a row): %s; "
                    "again in %g s",
                    name,
                    reason,
                    failures,
                    error,
                    pause,
                )
                self._fresh.discard(name)
                loop = asyncio.get_running_loop()
                paused = loop.time()
                await self._sleep(name, pause, pausing=True)
                self.pauses.setdefault(name, []).append(loop.time() - paused)
                del self.pauses[name][:-10]
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the task die: log and pause
                log.exception("%s: automatic pre-authentication", name)
                await self._sleep(name, BACKOFF[-1], pausing=True)
                continue
            self.failures.pop(name, None)
            self.last[name] = answer
            log.info("%s: pre-authenticated by itself through %s: %s", name, reason, answer)

    async def _sleep(self, name: str, seconds: float, *, pausing: bool = False) -> None:
        """Until woken or ``seconds`` passed; a pause after a failure ends early only
        when the network changed."""
        wake = self._wake[name]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await wake.wait()
            if loop.time() >= deadline or not pausing or name in self._fresh:
                self._fresh.discard(name)
                return

    def _wanted(self, name: str) -> bool:
        """No IKE SA with this gateway (live or being set up), none on its way back
        (recovery), no handover to it under way, not held by the user."""
        service = self.service
        if service.transport is None or name in self.held:
            return False
        if service.recovery.busy(name) or name in service.mpa.waiting:
            return False
        # One on its way out (a PHT deleted after a move, its DELETE perhaps unanswerable
        # over the link that went) does not count: a new one may start beside it.
        gone = (IkeSaState.REKEYED, IkeSaState.DELETING)
        return not any(not sa.closed and sa.state not in gone for sa in service.endpoint.find(name))

    def _reachable_through(self, entry: GatewayEntry) -> str | None:
        """The interface the kernel would send to the gateway from, if it has link and
        is not the candidate's own (on its own network the node would connect, not
        pre-authenticate); else None."""
        mover = self.service.mpa.mover
        if mover is None or entry.interface is None:
            return None
        gateway = str(ipaddress.ip_address(entry.address.address))
        try:
            source = source_address_for(gateway, entry.address.port or IKE_PORT)
            interface = mover.interface_of(source)
        except (OSError, TransportError, ValueError):
            return None
        if interface is None or interface == entry.interface or not link_is_up(interface):
            return None
        return interface
