"""The mobile node re-authenticates before the gateway's AUTH_LIFETIME runs out.

The gateway limits how long an authentication lasts (RFC 4478: N(AUTH_LIFETIME) in
IKE_AUTH, from the AAA's Session-Timeout or its ``reauth_time``) and deletes the IKE SA
then; the node may have a ``reauth_time`` of its own. A margin before, the core tells
:class:`mpa_ike.events.ReauthenticationDue`, and this module re-authenticates
make-before-break, as strongSwan does: a new IKE SA from the same address, with
IKE_AUTH and EAP, asking by CP for the addresses the old one has
(``Endpoint.initiate(reauthenticates=...)``); the moment it is up the old one goes,
with a DELETE, its CHILD SAs leaving the datapath just before the new ones come in, so
that the inner address stays and the flow goes on. A pre-authenticated candidate (a PHT)
comes back as a PHT (:mod:`mobile.mpa`).

A re-authentication that fails leaves the old IKE SA up; it is tried again after a pause
while the gateway's deadline is ahead, and logged each time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mobile.gateway_tasks import GatewayWork
from mpa_ike.events import Event, ReauthenticationDue
from mpa_ike.node.control import CommandError

if TYPE_CHECKING:
    from mobile.service import MobileService

log = logging.getLogger(__name__)

# Pause before another attempt after a failed re-authentication (seconds).
RETRY_DELAY = 2.0


class Reauthentication(GatewayWork):
    """Re-authentication of the IKE SAs of one :class:`mobile.service.MobileService`."""

    def __init__(self, service: MobileService) -> None:
        super().__init__(service)
        self.done: list[dict[str, Any]] = []  # for status: gateway, seconds, SPIs, when

    def on_event(self, event: Event) -> None:
        if not isinstance(event, ReauthenticationDue) or not self._free(event.name):
            return
        log.info(
            "%s: re-authenticating (RFC 4478) with a new IKE SA; the old one goes once it is up",
            event.name,
        )
        self._tasks.start(event.name, self._run(event))

    async def _run(self, due: ReauthenticationDue) -> None:
        transport = self.service.live_transport()
        started = transport.now()
        try:
            while True:
                try:
                    answer = await self._reauthenticate(due)
                    break
                except CommandError as error:
                    if not self._old_up(due) or not self._time_left(due, RETRY_DELAY):
                        log.error("%s: re-authentication failed: %s", due.name, error)
                        return
                    log.warning(
                        "%s: re-authentication failed: %s; again in %g s",
                        due.name,
                        error,
                        RETRY_DELAY,
                    )
                    await asyncio.sleep(RETRY_DELAY)
        finally:
            self._tasks.done(due.name)
        seconds = transport.now() - started
        new = [sa.local_spi.hex() for sa in self.service.endpoint.find(due.name) if sa.established]
        self.done.append(
            {
                "gateway": due.name,
                "seconds": round(seconds, 3),
                "old": due.ike_sa.hex(),
                "new": new,
                "started": started,  # the loop's (monotonic) clock
                "finished": transport.now(),
            }
        )
        log.info("%s: re-authenticated in %.3f s: %s", due.name, seconds, answer)

    def _time_left(self, due: ReauthenticationDue, needed: float) -> bool:
        if due.deadline is None:
            return True
        return self.service.live_transport().now() + needed < due.deadline

    def _old_up(self, due: ReauthenticationDue) -> bool:
        endpoint = self.service.endpoint
        old = endpoint.sas.get(endpoint.resolve(due.ike_sa))
        return old is not None and old.established

    async def _reauthenticate(self, due: ReauthenticationDue) -> str:
        service = self.service
        old = service.endpoint.sas.get(service.endpoint.resolve(due.ike_sa))
        if old is None or not old.established:
            raise CommandError("the IKE SA is gone")
        pht = service.mpa.candidate(old.local_spi)
        answer = await service.establish(
            "reauth", due.name, source=old.local[0], preauth=pht, reauthenticates=old.local_spi
        )
        if pht:
            await service.mpa.rebind(due.name)
        return answer

    def status(self) -> dict[str, Any]:
        return {"reauthenticating": sorted(self._tasks), "reauthenticated": self.done[-20:]}
