"""What both daemons' services are built on: the endpoint, its transport, the datapath
glue and the registry, and the start and stop they share.

:class:`NodeService` holds them; a daemon's service (the gateway's, the mobile node's)
builds its endpoint and binds its sockets in ``start`` through :meth:`open_transport`,
adds its control commands, and reacts to the core's events in ``on_event``. ``stop``
deletes every IKE SA with DELETE, waits briefly for the answers, closes the datapath
and then the sockets.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import tracemalloc
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpa_ike.constants import ProtocolId
from mpa_ike.crypto.keys import IkeKeyExport
from mpa_ike.crypto.proposal import ProposalSpec, parse_proposal
from mpa_ike.datapath import Datapath, RecordingDatapath
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import Event, IkeSaDeleted, IkeSaFailed, IkeSaRekeyed
from mpa_ike.ike_sa import IkeSa
from mpa_ike.ike_sa_common import IkeSaState
from mpa_ike.io.policy_routing import Routing
from mpa_ike.node.control import Handler
from mpa_ike.node.control_client import ControlError
from mpa_ike.node.datapath import DatapathGlue
from mpa_ike.node.describe import EVENT_FIELDS, Subject, describe
from mpa_ike.node.keylog import KeyLog
from mpa_ike.node.registry import Registry
from mpa_ike.node.transport import EspHandler, IkeTransport

if TYPE_CHECKING:
    from mpa_ike.node.metrics import NodeMetrics

log = logging.getLogger(__name__)

EAP_TYPES = {"md5": EapType.MD5_CHALLENGE, "mschapv2": EapType.MSCHAPV2}
# How long a stopping daemon waits for the answers to its DELETEs.
DELETE_GRACE = 1.5


class NodeService:
    """The parts of a daemon's service both daemons have.

    ``datapath`` replaces the one the configuration names (tests pass a recording one);
    ``esp_handler`` then gets the ESP in UDP arriving on port 4500.
    """

    def __init__(
        self, *, datapath: Datapath | None = None, esp_handler: EspHandler | None = None
    ) -> None:
        self.esp_handler = esp_handler
        self.registry = Registry()
        self.given_datapath = datapath
        self.glue = DatapathGlue(datapath if datapath is not None else RecordingDatapath())
        self.endpoint = Endpoint(random=os.urandom)
        self.transport: IkeTransport | None = None
        self.metrics: NodeMetrics | None = None  # with metrics: in the configuration
        self.subjects: dict[bytes, Subject] = {}  # local SPI -> SPIs and peer, for logs
        self.keylog: KeyLog | None = None  # with keylog: in the configuration

    @property
    def datapath(self) -> Datapath:
        return self.glue.datapath

    def handlers(self) -> Mapping[str, Handler]:
        return {"status": self.status, "memory": self.memory}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """What every daemon's status shows: IKE SAs with counters, drops, the datapath."""
        self.registry.refresh(self.endpoint)
        return {
            "ike_sas": self.glue.annotate(self.registry.to_json()),
            "counters": counters(self.endpoint, self.transport),
            "datapath": self.glue.status(),
        }

    async def memory(self, args: dict[str, Any]) -> dict[str, Any]:
        """The process's resident memory and, when Python traces its allocations
        (``-X tracemalloc``), what they hold now and at most: cheap whatever the number
        of SAs, for a benchmark's memory per SA."""
        return process_memory()

    def new_transport(self) -> IkeTransport:
        if self.metrics is not None:
            return self.metrics.transport(
                self.endpoint, self.on_event, esp_handler=self.esp_handler
            )
        return IkeTransport(self.endpoint, self.on_event, esp_handler=self.esp_handler)

    def open_datapath(
        self,
        kind: str,
        transport: IkeTransport,
        *,
        routing: Routing,
        inner_addresses: bool = False,
        forward: bool = False,
    ) -> None:
        """The datapath ``kind`` wired to ``transport`` with the instance's policy
        ``routing``, unless one was given."""
        if self.given_datapath is None:
            self.glue = DatapathGlue.open(
                kind,
                transport,
                routing=routing,
                inner_addresses=inner_addresses,
                forward=forward,
            )

    def open_keylog(self, directory: Path | None) -> None:
        """Wireshark's key tables in ``directory`` (None: none), from now on."""
        if directory is None:
            return
        try:
            self.keylog = KeyLog(directory, self.exported_keys)
        except OSError as error:
            raise ControlError(f"keylog: '{directory}': {error.strerror}") from None
        log.warning("keylog: the keys of every SA are written to %s", directory)

    def exported_keys(self, spi: bytes) -> IkeKeyExport | None:
        sa = self.endpoint.sas.get(spi)
        return sa.exported_keys() if sa is not None else None

    def on_event(self, event: Event) -> None:
        """Count the event, hand it to the key log and the datapath, then log it (one
        line): an SA installed or moved carries traffic without waiting for its log
        line (a fraction of a millisecond, in a handover's outage). The metrics come
        before the datapath, which forgets a deleted CHILD SA's counters."""
        subject = self.subject_of(event)
        if self.metrics is not None:
            self.metrics.on_event(event, subject)
        if self.keylog is not None:
            self.keylog.on_event(event)
        self.glue.on_event(event)
        if log.isEnabledFor(logging.INFO):  # the line is built only to be logged
            record = describe(event, subject)
            log.info("%s", record.text_line(), extra={EVENT_FIELDS: record.json_fields()})
        if isinstance(event, IkeSaDeleted | IkeSaFailed | IkeSaRekeyed):
            self.subjects.pop(event.ike_sa, None)

    def subject_of(self, event: Event) -> Subject:
        """Both SPIs and the peer of the event's IKE SA: the event names only our SPI.

        An SA that failed in its handshake is gone from the endpoint when its event
        comes: then only our SPI is known, which is SPIr on a responder."""
        known = self.subjects.get(event.ike_sa)
        if known is not None and known.peer:
            return known
        sa = self.endpoint.sas.get(event.ike_sa)
        if sa is not None:
            peer = str(sa.peer_identity) if sa.peer_identity is not None else ""
            known = Subject(sa.spi_i.hex(), sa.spi_r.hex(), peer, sa.is_initiator)
            self.subjects[event.ike_sa] = known
            return known
        if known is not None:
            return known
        if self.endpoint.responder is not None:
            return Subject(spi_r=event.ike_sa.hex(), initiator=False)
        return Subject(spi_i=event.ike_sa.hex(), initiator=True)

    def metrics_snapshot(self) -> dict[str, Any]:
        """What a metrics scrape reads: IKE and CHILD SAs by state, half-open SAs, the
        core's and the sockets' counters."""
        ike_sas = Counter({state.value.upper(): 0 for state in IkeSaState})
        child_sas = Counter({"INSTALLED": 0})
        for sa in self.endpoint.snapshot():
            ike_sas[str(sa["state"]).upper()] += 1
            for child in sa.get("child_sas", []):  # type: ignore[attr-defined]
                child_sas[str(child["state"]).upper()] += 1
        return {
            "ike_sas": dict(ike_sas),
            "half_open": self.endpoint.half_open_count(),
            "child_sas": dict(child_sas),
            "counters": counters(self.endpoint, self.transport),
        }

    def matching(self, target: str) -> list[IkeSa]:
        """The live IKE SAs of the peer ``target`` names: its identity (IDi, or the one EAP
        authenticated), the SA's name, or an address, the peer's outer one or one leased
        to it."""
        try:
            address = str(ipaddress.ip_address(target))
        except ValueError:
            address = None
        found = []
        for sa in self.endpoint:
            if sa.closed or sa.state == IkeSaState.REKEYED:
                continue
            identity = str(sa.peer_identity) if sa.peer_identity is not None else None
            addresses = {str(ipaddress.ip_address(sa.remote[0]))}
            addresses.update(str(a) for a in sa.assigned_addresses)
            if target in (identity, sa.unique_identity, sa.name) or address in addresses:
                found.append(sa)
        return found

    async def delete_and_wait(self, sas: Iterable[IkeSa], grace: float = DELETE_GRACE) -> None:
        """DELETE each of ``sas`` and wait up to ``grace`` seconds for them to close."""
        transport = self.transport
        if transport is None:
            return
        spis = [sa.local_spi for sa in sas]
        for spi in spis:
            self.endpoint.delete(spi, transport.now())
        transport.process()
        deadline = transport.now() + grace
        while transport.now() < deadline and any(spi in self.endpoint.sas for spi in spis):
            await asyncio.sleep(0.01)
        transport.process()

    async def stop(self) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if any(not sa.closed for sa in self.endpoint):
            log.info("deleting %d IKE SAs", sum(1 for sa in self.endpoint if not sa.closed))
            await delete_all_and_wait(transport)
        self.close()
        self.glue.close()
        transport.close()
        if self.keylog is not None:
            self.keylog.close()
            self.keylog = None

    def close(self) -> None:
        """What a daemon closes of its own before its datapath and sockets."""


def proposal_specs(texts: Iterable[str], protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    return tuple(parse_proposal(text, protocol) for text in texts)


def wall_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def counters(endpoint: Endpoint, transport: IkeTransport | None) -> dict[str, int]:
    """What was dropped or refused, and why: the core's counters and the sockets'.

    The core's are :meth:`Endpoint.statistics`, those of the endpoint and of every IKE SA
    (a forged or replayed request is dropped and counted by its SA, a refused MOBIKE
    update too), not only the endpoint's own.
    """
    found = dict(endpoint.statistics())
    if transport is not None:
        found.update((f"udp_{name}", value) for name, value in transport.counters.items())
    return dict(sorted(found.items()))


async def delete_all_and_wait(transport: IkeTransport, grace: float = DELETE_GRACE) -> None:
    """Send DELETE for every IKE SA and wait up to ``grace`` seconds for them to close."""
    endpoint = transport.endpoint
    endpoint.delete_all(transport.now())
    transport.process()
    deadline = transport.now() + grace
    while any(not sa.closed for sa in endpoint) and transport.now() < deadline:
        await asyncio.sleep(0.01)
    transport.process()


def process_memory() -> dict[str, Any]:
    """RSS in KiB (``/proc/self/statm``); traced and peak KiB, or None when not tracing."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    traced: tuple[int, int] | None = None
    if tracemalloc.is_tracing():
        traced = tracemalloc.get_traced_memory()
    return {
        "rss_kib": resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024,
        "traced_kib": traced[0] // 1024 if traced else None,
        "traced_peak_kib": traced[1] // 1024 if traced else None,
    }
