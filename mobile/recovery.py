"""The mobile node sets its IKE SAs up again by itself when a gateway lost them.

Two signs (:mod:`mpa_ike.liveness`):

- The gateway answered one of our requests (the next one, or a DPD) with an
  unprotected INVALID_IKE_SPI: it restarted (RFC 7296 §2.21.4). Unauthenticated, so
  the IKE SA stays while a new one is set up from the same address (INITIAL_CONTACT,
  ``Endpoint.initiate(replaces=...)``); the old one goes only once the new one is up,
  its CHILD SAs leave the datapath just before the new ones come in (make before
  break). A forged hint costs one IKE SA set-up and breaks nothing.
- DPD found the gateway dead (IkeSaFailed "peer dead"): the IKE SA is gone; connect
  anew, again and again with a growing pause, until it works or the user disconnects.

A pre-authenticated candidate (a PHT not yet moved to) is pre-authenticated anew, so
that it comes back as a PHT with its nCoA (:mod:`mobile.mpa`). Each step is logged with
its reason; the gateway's lease store gives the identity its address back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mobile.gateway_tasks import GatewayWork
from mpa_ike.events import Event, IkeSaFailed, IkeSaReplaced, PeerForgotIkeSa
from mpa_ike.liveness import PEER_DEAD
from mpa_ike.node.control import CommandError

if TYPE_CHECKING:
    from mobile.service import MobileService

log = logging.getLogger(__name__)

# Pauses between attempts to reach a gateway DPD found dead (then the last, again).
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class Recovery(GatewayWork):
    """Re-establishment of the IKE SAs of one :class:`mobile.service.MobileService`."""

    def __init__(self, service: MobileService) -> None:
        super().__init__(service)
        self.recovered: list[dict[str, Any]] = []  # for status: name, why, seconds

    def on_event(self, event: Event) -> None:
        if not self._free(event.name):
            return
        if isinstance(event, PeerForgotIkeSa):
            log.warning(
                "%s: the gateway answered INVALID_IKE_SPI (it restarted?): setting up a new "
                "IKE SA; the old one stays until that is up",
                event.name,
            )
            self._start(event.name, self._replace(event), "INVALID_IKE_SPI")
        elif (
            isinstance(event, IkeSaFailed)
            and not isinstance(event, IkeSaReplaced)
            and event.reason.startswith(PEER_DEAD)
            and not self.service.deleting(event.ike_sa)
        ):
            log.warning("%s: the gateway is not answering (DPD): connecting anew", event.name)
            pht = self.service.mpa.candidate(event.ike_sa)
            self._start(event.name, self._reconnect(event.name, pht), "DPD")

    def _start(self, name: str, work: Any, why: str) -> None:
        self._tasks.start(name, self._run(name, work, why))

    async def _run(self, name: str, work: Any, why: str) -> None:
        started = self.service.live_transport().now()
        try:
            answer = await work
        except CommandError as error:
            log.error("%s: not re-established: %s", name, error)
            return
        finally:
            self._tasks.done(name)
        seconds = self.service.live_transport().now() - started
        self.recovered.append(
            # started: when the sign came, on the loop's (monotonic) clock
            {"gateway": name, "why": why, "seconds": round(seconds, 3), "started": started}
        )
        log.info("%s: re-established after %s in %.2f s: %s", name, why, seconds, answer)

    async def _replace(self, hint: PeerForgotIkeSa) -> str:
        sa = self.service.endpoint.sas.get(hint.ike_sa)
        if sa is None or sa.closed:
            raise CommandError("the IKE SA is gone already")
        pht = self.service.mpa.candidate(hint.ike_sa)
        answer = await self.service.establish(
            "recover", hint.name, source=sa.local[0], preauth=pht, replaces=hint.ike_sa
        )
        if pht:
            await self.service.mpa.rebind(hint.name)
        return answer

    async def _reconnect(self, name: str, pht: bool) -> str:
        for attempt, delay in enumerate([*RETRY_DELAYS, *[RETRY_DELAYS[-1]] * 1000]):
            try:
                answer = await self.service.establish("recover", name, preauth=pht)
            except CommandError as error:
                log.warning("%s: attempt %d: %s; again in %g s", name, attempt + 1, error, delay)
                await asyncio.sleep(delay)
                continue
            if pht:
                await self.service.mpa.rebind(name)
            return answer
        raise CommandError("gave up")

    def status(self) -> dict[str, Any]:
        return {"recovering": sorted(self._tasks), "recovered": self.recovered[-20:]}
