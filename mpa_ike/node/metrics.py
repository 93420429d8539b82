"""Prometheus metrics of a daemon (``metrics: {listen: ADDRESS:PORT}``), served on
``/metrics`` from the daemon's event loop.

Only a daemon configured with ``metrics:`` imports this module, and with it
``prometheus_client``. Two sources feed it, both on the loop, so nothing here needs a
lock:

- the core's events, as :meth:`NodeService.on_event` sees them (:meth:`NodeMetrics.
  on_event`): IKE and CHILD SAs established, failed and deleted, handovers
  (UPDATE_SA_ADDRESSES) accepted and refused by notify, EAP outcomes, and the two
  latencies; the IKE_SA_INIT requests and the INFORMATIONAL requests from a new address
  that start them are seen by :class:`ObservedTransport` as they arrive;
- a snapshot taken at each scrape (:meth:`NodeService.metrics_snapshot`): IKE SAs by
  state, half-open SAs, CHILD SAs, the core's counters (drops and refusals by reason,
  COOKIEs sent), the datapath's packets, bytes and drops, the gateway's pool.

The HTTP side is a few lines of asyncio (:class:`MetricsServer`): one request per
connection, the exposition of :func:`prometheus_client.generate_latest`, so that a
scrape reads the service's state between two events, never during one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mpa_ike.constants import ExchangeType, NotifyType
from mpa_ike.datagram import Address, unframe_from_socket
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaAddressesUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from mpa_ike.node.control_client import ControlError
from mpa_ike.node.datapath import DatapathGlue
from mpa_ike.node.describe import Subject
from mpa_ike.node.transport import EspHandler, EventHandler, IkeTransport
from mpa_ike.wire import HEADER_LENGTH, parse_header

log = logging.getLogger(__name__)

# Set-up (IKE_SA_INIT received -> first CHILD SA) takes round trips and public-key
# operations, an EAP round or several; an update one round trip.
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UPDATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# How long the start of a set-up or an update waits for its end, and how many wait.
PENDING_FOR = 60.0
MAX_PENDING = 4096
# A scrape request must come within this many seconds, its head within MAX_HEAD bytes.
REQUEST_TIMEOUT = 5.0
MAX_HEAD = 8192
# Core counters that count dropped or refused messages (besides dropped_*).
REFUSALS = ("init_refused", "init_malformed", "internal_errors", "spi_collisions")


class Observed(Protocol):
    """What the metrics read of a service at a scrape."""

    glue: DatapathGlue

    def metrics_snapshot(self) -> Mapping[str, Any]: ...


class NodeMetrics:
    """The metrics of one daemon, in a registry of their own."""

    def __init__(self, service: Observed, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ike_established = Counter("mpa_ike_sas_established", "IKE SAs established", registry=r)
        self.ike_failed = Counter(
            "mpa_ike_sas_failed", "IKE SAs failed, by notify", ["notify"], registry=r
        )
        self.ike_deleted = Counter(
            "mpa_ike_sas_deleted", "IKE SAs deleted, by who asked", ["by"], registry=r
        )
        self.child_established = Counter(
            "mpa_child_sas_established", "CHILD SAs established (rekeys included)", registry=r
        )
        self.handovers = Counter(
            "mpa_handovers",
            "UPDATE_SA_ADDRESSES exchanges ended, by result and refusal notify",
            ["result", "reason"],
            registry=r,
        )
        self.eap = Counter(
            "mpa_eap", "EAP authentications ended, by outcome", ["outcome"], registry=r
        )
        self.setup_seconds = Histogram(
            "mpa_ike_setup_seconds",
            "IKE_SA_INIT request received to first CHILD SA established",
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.update_seconds = Histogram(
            "mpa_handover_update_seconds",
            "UPDATE_SA_ADDRESSES started (received from a new address, or sent) to ended",
            ["result"],
            buckets=UPDATE_BUCKETS,
            registry=r,
        )
        r.register(SnapshotCollector(self))
        self.datapath = DatapathTotals()
        self._init_seen: dict[bytes, float] = {}  # peer's SPIi -> IKE_SA_INIT received
        self._setting_up: dict[bytes, float] = {}  # local SPI -> its IKE_SA_INIT received
        self._updating: dict[bytes, float] = {}  # local SPI -> update started
        self._remote: dict[bytes, Address] = {}  # local SPI -> the peer's address

    # ------------------------------------------------------------------ inputs

    def transport(
        self, endpoint: Endpoint, on_event: EventHandler, *, esp_handler: EspHandler | None
    ) -> IkeTransport:
        return ObservedTransport(endpoint, on_event, self, esp_handler=esp_handler)

    def ike_received(self, message: bytes, src: Address) -> None:
        """An IKE message arrived: the start of a set-up or of a peer's update."""
        try:
            header = parse_header(message)
        except Exception:
            return
        if header.is_response:
            return
        now = self.clock()
        if header.exchange_type == ExchangeType.IKE_SA_INIT and not any(header.spi_r):
            _start(self._init_seen, header.spi_i, now)
        elif header.exchange_type == ExchangeType.INFORMATIONAL:
            local_spi = header.spi_r if header.is_initiator else header.spi_i
            known = self._remote.get(local_spi)
            if known is not None and known != src:
                _start(self._updating, local_spi, now)

    def on_event(self, event: Event, subject: Subject) -> None:
        now = self.clock()
        spi = event.ike_sa
        self.datapath.on_event(event, self.service.glue)
        if isinstance(event, IkeSaEstablished):
            self.ike_established.inc()
            self.eap.labels("success").inc()
            self._remote[spi] = event.remote
            started = self._init_seen.pop(bytes.fromhex(subject.spi_i), None)
            if started is not None:
                self._setting_up[spi] = started
        elif isinstance(event, ChildSaEstablished):
            self.child_established.inc()
            started = self._setting_up.pop(spi, None)
            if started is not None:
                self.setup_seconds.observe(now - started)
        elif isinstance(event, IkeSaFailed):
            notify = event.notify.name if event.notify is not None else "none"
            self.ike_failed.labels(notify).inc()
            if event.notify == NotifyType.AUTHENTICATION_FAILED:
                self.eap.labels("failure").inc()
            self._forget(spi)
        elif isinstance(event, IkeSaDeleted):
            self.ike_deleted.labels("peer" if event.by_peer else "local").inc()
            self._forget(spi)
        elif isinstance(event, IkeSaRekeyed):
            self._rename(spi, event.new_ike_sa)
        else:
            self._on_update(event, subject, now)

    def _on_update(self, event: Event, subject: Subject, now: float) -> None:
        """Handovers: the gateway moves on a peer's update (IkeSaAddressesUpdated) or
        refuses it; the mobile node moves first, then hears the gateway's answer."""
        spi = event.ike_sa
        if isinstance(event, IkeSaAddressesUpdated):
            self._remote[spi] = event.remote
            if subject.initiator:
                _start(self._updating, spi, now)
            else:
                self._ended(spi, "accepted", "none", now)
        elif isinstance(event, AddressUpdateAccepted):
            self._remote[spi] = event.remote
            self._ended(spi, "accepted", "none", now)
        elif isinstance(event, AddressUpdateRefused):
            self._ended(spi, "refused", event.notify.name, now)

    def _ended(self, spi: bytes, result: str, reason: str, now: float) -> None:
        self.handovers.labels(result, reason).inc()
        started = self._updating.pop(spi, None)
        if started is not None:
            self.update_seconds.labels(result).observe(now - started)

    def _forget(self, spi: bytes) -> None:
        self._setting_up.pop(spi, None)
        self._updating.pop(spi, None)
        self._remote.pop(spi, None)

    def _rename(self, old: bytes, new: bytes) -> None:
        """§2.18: the IKE SA goes on under its new SPI."""
        if old in self._updating:
            self._updating[new] = self._updating.pop(old)
        if old in self._remote:
            self._remote[new] = self._remote.pop(old)

    # ------------------------------------------------------------------ output

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _start(table: dict[bytes, float], key: bytes, now: float) -> None:
    """Note when ``key`` started, unless it has (a retransmission); starts that found
    no end within PENDING_FOR, or beyond MAX_PENDING, are forgotten."""
    started = table.get(key)
    if started is not None and now - started < PENDING_FOR:
        return
    table.pop(key, None)
    while table and (len(table) >= MAX_PENDING or now - next(iter(table.values())) > PENDING_FOR):
        del table[next(iter(table))]
    table[key] = now


class ObservedTransport(IkeTransport):
    """The transport, telling the metrics of each IKE request before the core has it."""

    def __init__(
        self,
        endpoint: Endpoint,
        on_event: EventHandler,
        metrics: NodeMetrics,
        *,
        esp_handler: EspHandler | None = None,
    ) -> None:
        super().__init__(endpoint, on_event, esp_handler=esp_handler)
        self.metrics = metrics

    def datagram_received(self, payload: bytes, src: Address, local: Address) -> None:
        message = unframe_from_socket(payload, local[1])
        if message is not None and len(message) >= HEADER_LENGTH:
            self.metrics.ike_received(message, src)
        super().datagram_received(payload, src, local)


class DatapathTotals:
    """Packets, bytes and drops of CHILD SAs gone, so that the totals never go back:
    a CHILD SA's counters are read as it is removed (before the glue removes it)."""

    def __init__(self) -> None:
        self.gone: Tally[str] = Tally()
        self.children: dict[bytes, set[bytes]] = {}  # IKE SA -> inbound SPIs

    def on_event(self, event: Event, glue: DatapathGlue) -> None:
        spi = event.ike_sa
        if isinstance(event, ChildSaEstablished):
            self.children.setdefault(spi, set()).add(event.params.spi_in)
        elif isinstance(event, ChildSaDeleted):
            self.children.get(spi, set()).discard(event.spi_in)
            self._retire(glue, event.spi_in)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            for spi_in in self.children.pop(spi, set()):
                self._retire(glue, spi_in)
        elif isinstance(event, IkeSaRekeyed):
            self.children[event.new_ike_sa] = self.children.pop(spi, set())

    def _retire(self, glue: DatapathGlue, spi_in: bytes) -> None:
        if glue.installed(spi_in):
            self.gone.update(flatten(glue.child_counters(spi_in)))

    def totals(self, glue: DatapathGlue) -> Tally[str]:
        found = Tally(self.gone)
        for spis in self.children.values():
            for spi_in in spis:
                if glue.installed(spi_in):
                    found.update(flatten(glue.child_counters(spi_in)))
        status = glue.status()
        found.update({f"drops.{k}": v for k, v in status.get("drops", {}).items()})
        found["errors"] = status.get("errors", 0)
        return found


def flatten(counted: Mapping[str, Any]) -> dict[str, int]:
    """``{"bytes_in": 1, "drops": {"replay": 2}}`` -> ``{"bytes_in": 1, "drops.replay": 2}``."""
    flat: dict[str, int] = {}
    for key, value in counted.items():
        if isinstance(value, Mapping):
            flat.update((f"{key}.{k}", int(v)) for k, v in value.items())
        elif isinstance(value, int):
            flat[key] = value
    return flat


class SnapshotCollector(Collector):
    """What a scrape reads of the service's state (on the loop, between events)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # taken at scrape time only

    def collect(self) -> Iterator[Metric]:
        snapshot = self.metrics.service.metrics_snapshot()
        yield _gauge("mpa_ike_sas", "IKE SAs, by state", "state", snapshot["ike_sas"])
        yield GaugeMetricFamily(
            "mpa_ike_sas_half_open", "Half-open responder IKE SAs", value=snapshot["half_open"]
        )
        yield _gauge("mpa_child_sas", "CHILD SAs, by state", "state", snapshot["child_sas"])
        counters: Mapping[str, int] = snapshot["counters"]
        yield from _core_counters(counters)
        yield from _datapath(self.metrics.datapath.totals(self.metrics.service.glue))
        pool: Mapping[str, Mapping[str, int]] = snapshot.get("pool", {})
        if pool:
            size = GaugeMetricFamily("mpa_pool_size", "Leasable pool addresses", labels=["family"])
            free = GaugeMetricFamily(
                "mpa_pool_available", "Pool addresses neither leased nor held", labels=["family"]
            )
            for family, usage in pool.items():
                size.add_metric([family], usage["size"])
                free.add_metric([family], usage["available"])
            yield size
            yield free


def _gauge(name: str, documentation: str, label: str, values: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _core_counters(counters: Mapping[str, int]) -> Iterator[Metric]:
    cookies = CounterMetricFamily(
        "mpa_ike_cookies_sent",
        "COOKIEs sent (RFC 7296 section 2.6)",
        value=counters.get("cookies_sent", 0),
    )
    dropped = CounterMetricFamily(
        "mpa_ike_messages_dropped",
        "IKE messages (and UDP payloads) dropped or refused, by reason",
        labels=["reason"],
    )
    every = CounterMetricFamily(
        "mpa_ike_core_events", "The core's and the sockets' counters, by name", labels=["name"]
    )
    for name, value in sorted(counters.items()):
        every.add_metric([name], value)
        if "dropped" in name or name in REFUSALS or name == "udp_unroutable":
            dropped.add_metric([name.removeprefix("dropped_")], value)
    yield cookies
    yield dropped
    yield every


def _datapath(totals: Mapping[str, int]) -> Iterator[Metric]:
    packets = CounterMetricFamily(
        "mpa_datapath_packets", "ESP packets of CHILD SAs, by direction", labels=["direction"]
    )
    octets = CounterMetricFamily(
        "mpa_datapath_bytes", "Bytes of CHILD SAs, by direction", labels=["direction"]
    )
    for direction in ("in", "out"):
        packets.add_metric([direction], totals.get(f"packets_{direction}", 0))
        octets.add_metric([direction], totals.get(f"bytes_{direction}", 0))
    drops = CounterMetricFamily(
        "mpa_datapath_drops", "Packets the datapath dropped, by reason", labels=["reason"]
    )
    for key, value in sorted(totals.items()):
        if key.startswith("drops."):
            drops.add_metric([key.removeprefix("drops.")], value)
    errors = CounterMetricFamily(
        "mpa_datapath_errors", "Datapath calls that failed", value=totals.get("errors", 0)
    )
    yield from (packets, octets, drops, errors)


class MetricsServer:
    """``/metrics`` over HTTP/1.x on ``listen``, on the daemon's loop."""

    def __init__(self, metrics: NodeMetrics, listen: tuple[str, int]) -> None:
        self.metrics = metrics
        self.listen = listen
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        host, port = self.listen
        try:
            self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        except OSError as error:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            reason = error.strerror or str(error)
            raise ControlError(f"metrics.listen: cannot listen on {where}: {reason}") from None
        log.info("metrics on http://%s:%d/metrics", *self.listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer(head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    def answer(self, head: bytes) -> bytes:
        """The whole HTTP response to a request's head."""
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
        elif path not in ("/metrics", "/"):
            status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
        else:
            try:
                status, body, kind = "200 OK", self.metrics.exposition(), CONTENT_TYPE_LATEST
            except Exception:
                log.exception("metrics: a scrape failed")
                status, body, kind = "500 Internal Server Error", b"failed\n", "text/plain"
        headers = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return headers.encode() + (body if method != "HEAD" else b"")


def attach(service: Any, listen: tuple[str, int]) -> MetricsServer:
    """Metrics for ``service`` (a NodeService: it feeds them its events from now on),
    and the server the daemon starts once the service has."""
    metrics = NodeMetrics(service)
    service.metrics = metrics
    return MetricsServer(metrics, listen)
