"""The mobile node's other addresses, announced to a gateway (RFC 4555 §3.4, §3.6).

With ``announce_addresses: true`` in a gateway's entry the node tells that gateway,
once the IKE SA is up and again whenever the list changes, the addresses it could also
be reached at: ADDITIONAL_IP4_ADDRESS / ADDITIONAL_IP6_ADDRESS notifies in an
INFORMATIONAL, or NO_ADDITIONAL_ADDRESSES when there are none (§3.6: each list replaces
the one before). The list is every global address of an interface with link, except
the one the IKE SA runs from, the CP addresses (on the TUN device, or an nCoA moved to
an interface) and the datapath's device; a burst of address events gives one update.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING

from mpa_ike.events import (
    AddressUpdateAccepted,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from mpa_ike.ike_sa_common import IkeSaState
from mpa_ike.wire import IPAddress

if TYPE_CHECKING:
    from mobile.service import MobileService

log = logging.getLogger(__name__)

# Address events come in bursts (an interface's addresses, DAD finishing): wait this
# long after the first before sending the list.
SETTLE = 0.1


class Announcer:
    """The address lists of one :class:`mobile.service.MobileService`."""

    def __init__(self, service: MobileService) -> None:
        self.service = service
        self.sent: dict[bytes, tuple[str, ...]] = {}  # IKE SA -> the list it was last told
        self._pending: asyncio.TimerHandle | None = None

    def on_event(self, event: Event) -> None:
        if isinstance(event, IkeSaEstablished | AddressUpdateAccepted):
            self.changed()
        elif isinstance(event, IkeSaRekeyed) and event.ike_sa in self.sent:
            self.sent[event.new_ike_sa] = self.sent.pop(event.ike_sa)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            self.sent.pop(event.ike_sa, None)

    def changed(self) -> None:
        """Something may have changed: send the lists that did, shortly."""
        wanted = any(e.announce_addresses for e in self.service.config.gateways.values())
        if self._pending is None and wanted:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(SETTLE, self._announce)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _announce(self) -> None:
        self._pending = None
        transport, mover = self.service.transport, self.service.mpa.mover
        if transport is None or mover is None:
            return
        try:
            found = mover.global_addresses()
        except OSError as error:
            log.warning("listing our addresses: %s", error)
            return
        device = self.service.glue.status().get("device")
        assigned = {str(a) for sa in self.service.endpoint for a in sa.assigned_addresses}
        for sa in list(self.service.endpoint):
            entry = self.service.config.gateways.get(sa.name)
            if entry is None or not entry.announce_addresses:
                continue
            if sa.closed or sa.state != IkeSaState.ESTABLISHED or not sa.mobike:
                continue
            own = str(ipaddress.ip_address(sa.local[0]))
            others = tuple(
                sorted(
                    {a for i, a in found if i != device and a != own and a not in assigned},
                    key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)),
                )
            )
            if self.sent.get(sa.local_spi) == others:
                continue
            self.sent[sa.local_spi] = others
            addresses: list[IPAddress] = [ipaddress.ip_address(a) for a in others]
            log.info("%s: announcing our other addresses: %s", sa.name, ", ".join(others) or "none")
            with contextlib.suppress(Exception):
                self.service.endpoint.send_additional_addresses(
                    sa.local_spi, addresses, transport.now()
                )
        transport.process()
