"""The gateway's AAA glue: EAP pass-through to RADIUS, accounting and disconnects.

With ``eap.method: radius`` the core's responder has an external EAP authenticator
(``ResponderConfig(eap_authenticator="external")``): every EAP message of a peer comes
as an :class:`~mpa_ike.events.EapRequestForAaa`, and :class:`GatewayAaa` relays it to
the RADIUS server in a task on the loop (RFC 3579 §2.1), then hands the answer to
``Endpoint.eap_answer`` and lets the transport send it. The conversation begins as the
gateway's own EAP server begins it: an EAP-Request/Identity to the peer (RFC 3748
§5.1), whose answer gives the User-Name (RFC 3579 §2.1) and is the first message
relayed. An Access-Reject ends in AUTHENTICATION_FAILED; no server answering too,
with a log line. On Access-Accept, Framed-IP-Address and Framed-IPv6-Address are the
peer's CP addresses, Session-Timeout the life of the IKE SA (the core announces it by
AUTH_LIFETIME and deletes the SA then), and Class is echoed in accounting.

Accounting (RFC 2866, ``eap.radius.accounting``): Start when the first CHILD SA is up,
Interim-Update when MOBIKE moves the IKE SA (the new outer address in
Calling-Station-Id), Stop with the octets and packets of the SA's CHILD SAs and why it
ended: the peer's DELETE or a new IKE SA of the same user replacing it, as a
re-authentication does (User-Request), ours (Admin-Reset), the Session-Timeout, a
failure (Lost-Service), or the gateway stopping (NAS-Reboot, sent before the DELETEs).
A session's requests go out in order, each after the previous one's answer.

Dynamic Authorization (RFC 5176, ``dae``): :mod:`gateway.radius_dae` listens, and
:meth:`GatewayAaa.disconnect` deletes the IKE SAs a Disconnect-Request names.

The glue sees an event before the datapath does (the CHILD SAs' counters are gone
after), and reaches the endpoint, the transport and the datapath through its host, the
gateway service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Protocol

from gateway.radius import (
    AccessAnswer,
    AccessResult,
    AccountingSession,
    EapRelay,
    RadiusClient,
    RadiusConfig,
    RadiusError,
    RadiusTimeout,
    TerminateCause,
    Usage,
    station_id,
)
from gateway.radius_dae import DaeConfig, DaeServer, DisconnectRequest
from mpa_ike.datagram import Address
from mpa_ike.eap import EapType
from mpa_ike.eap.authenticator import EapAnswer
from mpa_ike.eap.identity import build_identity_request, identity_of
from mpa_ike.eap.packet import EapCode, EapPacket, failure, parse_packet
from mpa_ike.eap.result import EapResult
from mpa_ike.errors import CodecError, LocalProtocolError
from mpa_ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    EapRequestForAaa,
    Event,
    IkeSaAddressesUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeSaReplaced,
)
from mpa_ike.ike_config import EapAuthenticatorKind
from mpa_ike.node.service import EAP_TYPES
from mpa_ike.wire import IPAddress

if TYPE_CHECKING:
    from gateway.config import EapServerConfig, GatewayConfig
    from mpa_ike.endpoint import Endpoint
    from mpa_ike.node.datapath import DatapathGlue
    from mpa_ike.node.transport import IkeTransport

log = logging.getLogger(__name__)

RADIUS = "radius"
# What RFC 2865 §5.8 reserves: the NAS (or the user) picks the address, i.e. the pool.
NOT_AN_ADDRESS = (IPv4Address("255.255.255.254"), IPv4Address("255.255.255.255"))
# The longest a stopping gateway waits for its Accounting-Stops.
SHUTDOWN_GRACE = 5.0


def local_eap_methods(eap: EapServerConfig) -> tuple[EapType, ...]:
    """The EAP methods of the gateway's own EAP server (none is used with RADIUS)."""
    return (EAP_TYPES[eap.method],) if eap.method in EAP_TYPES else (EapType.MSCHAPV2,)


def eap_authenticator(eap: EapServerConfig) -> EapAuthenticatorKind:
    """``ResponderConfig.eap_authenticator``: external when RADIUS decides."""
    return "external" if eap.radius is not None else "local"


class AaaHost(Protocol):
    """What the glue sees of the gateway service."""

    endpoint: Endpoint
    transport: IkeTransport | None
    glue: DatapathGlue


@dataclass
class _Session:
    """One IKE SA's AAA state, from its first EAP message to its Accounting-Stop."""

    name: str
    identity: bytes
    peer: Address
    relay: EapRelay | None = None
    last_identifier: int = 0
    task: asyncio.Task[None] | None = None
    accepted: AccessAnswer | None = None
    accounting: AccountingSession | None = None
    session_end: float | None = None  # the core deletes the IKE SA then
    started: float | None = None  # loop time of the Accounting-Start
    stopped: bool = False
    cause: TerminateCause | None = None  # why we delete it ourselves
    children: set[bytes] = field(default_factory=set)  # inbound SPIs installed
    past: Usage = field(default_factory=Usage)  # CHILD SAs gone (rekeyed, deleted)
    acct: asyncio.Task[None] | None = None  # the last accounting request queued


class GatewayAaa:
    """RADIUS for the gateway service ``host``: EAP relay, accounting, disconnects.

    Inactive (every method a no-op) when the configuration has neither
    ``eap.radius`` nor ``dae``.
    """

    def __init__(self, config: GatewayConfig, host: AaaHost) -> None:
        self.host = host
        self.nas_identifier = config.id
        radius: RadiusConfig | None = config.eap.radius
        self.client = (
            RadiusClient(radius, nas_identifier=config.id, random=os.urandom)
            if radius is not None
            else None
        )
        self.dae_config: DaeConfig | None = config.dae
        self.dae: DaeServer | None = None
        self._sessions: dict[bytes, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = {
            "access_rejects": 0,
            "access_accepts": 0,
            "radius_timeouts": 0,
            "radius_errors": 0,
            "accounting_failures": 0,
            "disconnects": 0,
        }

    @property
    def accounting(self) -> bool:
        return self.client is not None and self.client.config.accounting

    async def start(self) -> None:
        """Open the Dynamic Authorization listener; OSError if it cannot bind."""
        if self.dae_config is None:
            return
        dae = DaeServer(self.dae_config, self.disconnect, nas_identifier=self.nas_identifier)
        await dae.open()
        self.dae = dae
        log.info("RADIUS Dynamic Authorization on %s", dae.status()["listening"])

    # ------------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        """One core event, before the datapath glue sees it."""
        if isinstance(event, EapRequestForAaa):
            self._on_eap_request(event)
            return
        session = self._sessions.get(event.ike_sa)
        if session is None:
            return
        if isinstance(event, IkeSaEstablished):
            self._on_established(session, event)
        elif isinstance(event, ChildSaEstablished):
            session.children.add(event.params.spi_in)
            if self.accounting and session.accounting is not None and session.started is None:
                session.started = self._now()
                self._account(session, "start")
        elif isinstance(event, ChildSaDeleted):
            if event.spi_in in session.children:
                session.past = _add(session.past, self._child_usage(event.spi_in))
                session.children.discard(event.spi_in)
        elif isinstance(event, IkeSaAddressesUpdated):
            self._on_moved(session, event)
        elif isinstance(event, IkeSaRekeyed):
            self._sessions[event.new_ike_sa] = self._sessions.pop(event.ike_sa)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            self._on_ended(event.ike_sa, session, event)

    def _on_established(self, session: _Session, event: IkeSaEstablished) -> None:
        answer, relay = session.accepted, session.relay
        if answer is None or relay is None:
            return
        sa = self.host.endpoint.sas.get(event.ike_sa)
        session.session_end = sa.session_end if sa is not None else None
        session_id = f"{sa.spi_i.hex()}-{sa.spi_r.hex()}" if sa is not None else event.ike_sa.hex()
        v4 = [a for a in event.assigned_addresses if isinstance(a, IPv4Address)]
        v6 = [a for a in event.assigned_addresses if isinstance(a, IPv6Address)]
        session.accounting = AccountingSession(
            session_id=session_id,
            user_name=relay.user_name,
            calling_station_id=station_id(*event.remote),
            called_station_id=station_id(*event.local),
            framed_ip=v4[0] if v4 else None,
            framed_ipv6=v6[0] if v6 else None,
            classes=answer.classes,
        )

    def _on_moved(self, session: _Session, event: IkeSaAddressesUpdated) -> None:
        """MOBIKE moved the IKE SA: the new outer address, in an Interim-Update."""
        session.peer = event.remote
        if session.accounting is None:
            return
        session.accounting = replace(
            session.accounting,
            calling_station_id=station_id(*event.remote),
            called_station_id=station_id(*event.local),
        )
        if session.started is not None and not session.stopped:
            self._account(session, "interim")

    def _on_ended(self, spi: bytes, session: _Session, event: IkeSaDeleted | IkeSaFailed) -> None:
        del self._sessions[spi]
        task = session.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if session.started is None or session.stopped:
            return
        session.stopped = True
        if isinstance(event, IkeSaReplaced) and "uniqueness" in event.reason:
            # A new IKE SA of the same user replaced it (a re-authentication, RFC 4478).
            session.cause = TerminateCause.USER_REQUEST
        elif isinstance(event, IkeSaFailed):
            session.cause = TerminateCause.LOST_SERVICE
        elif event.by_peer:
            session.cause = TerminateCause.USER_REQUEST
        elif session.cause is None:
            expired = session.session_end is not None and self._now() >= session.session_end
            session.cause = (
                TerminateCause.SESSION_TIMEOUT if expired else TerminateCause.ADMIN_RESET
            )
        self._account(session, "stop")

    # ------------------------------------------------------------------ EAP relay

    def _on_eap_request(self, event: EapRequestForAaa) -> None:
        session = self._sessions.get(event.ike_sa)
        if session is None:
            session = _Session(event.name, event.identity, event.peer)
            self._sessions[event.ike_sa] = session
        previous = session.task
        session.task = self._spawn(
            self._converse(event.ike_sa, session, event.eap_message, previous)
        )

    async def _converse(
        self,
        spi: bytes,
        session: _Session,
        message: bytes,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:  # the core asks once per round; this only keeps order
            await asyncio.wait([previous])
        try:
            answer = await self._ask(spi, session, message)
        except RadiusTimeout as error:
            self.counters["radius_timeouts"] += 1
            log.error("%s[%s]: RADIUS: %s: ending the IKE SA", session.name, spi.hex(), error)
            answer = EapAnswer(failure(session.last_identifier).to_bytes(), EapResult.FAILURE)
        except (RadiusError, ValueError) as error:
            self.counters["radius_errors"] += 1
            log.error("%s[%s]: RADIUS: %s: ending the IKE SA", session.name, spi.hex(), error)
            answer = EapAnswer(failure(session.last_identifier).to_bytes(), EapResult.FAILURE)
        self._answer(spi, answer)

    async def _ask(self, spi: bytes, session: _Session, message: bytes) -> EapAnswer:
        """The answer to one EAP message of the peer (empty: the conversation starts)."""
        if not message:
            # RFC 3748 §5.1: who is the peer? Its answer is relayed with its User-Name.
            session.last_identifier = os.urandom(1)[0]
            return EapAnswer(build_identity_request(session.last_identifier).to_bytes())
        packet = _parse(message)
        if packet is not None:
            session.last_identifier = packet.identifier
        if session.relay is None:
            session.relay = self._new_relay(spi, session, packet)
        answer = await session.relay.relay(message)
        return self._eap_answer(spi, session, answer)

    def _new_relay(self, spi: bytes, session: _Session, packet: EapPacket | None) -> EapRelay:
        """RFC 3579 §2.1: the User-Name is the peer's EAP identity (its IKE identity if it
        gave none)."""
        assert self.client is not None
        user = session.identity
        if (
            packet is not None
            and packet.code == EapCode.RESPONSE
            and packet.type == EapType.IDENTITY
            and identity_of(packet)
        ):
            user = identity_of(packet)
        sa = self.host.endpoint.sas.get(spi)
        called = station_id(*sa.local) if sa is not None else None
        return self.client.eap_relay(
            user.decode("utf-8", "replace"), station_id(*session.peer), called
        )

    def _eap_answer(self, spi: bytes, session: _Session, answer: AccessAnswer) -> EapAnswer:
        name = f"{session.name}[{spi.hex()}]"
        if answer.result == AccessResult.CHALLENGE:
            return EapAnswer(answer.eap_message)
        if answer.result == AccessResult.REJECT:
            self.counters["access_rejects"] += 1
            log.info("%s: RADIUS Access-Reject from %s%s", name, answer.server, _said(answer))
            return EapAnswer(answer.eap_message, EapResult.FAILURE)
        self.counters["access_accepts"] += 1
        session.accepted = answer
        addresses: tuple[IPAddress, ...] = tuple(
            a
            for a in (answer.framed_ip, answer.framed_ipv6)
            if a is not None and a not in NOT_AN_ADDRESS
        )
        timeout = float(answer.session_timeout) if answer.session_timeout else None
        log.info(
            "%s: RADIUS Access-Accept from %s%s%s",
            name,
            answer.server,
            f", address {', '.join(map(str, addresses))}" if addresses else "",
            f", Session-Timeout {answer.session_timeout} s" if timeout else "",
        )
        # The User-Name the server accepted is who the peer is (uniqueness, leases).
        user = session.relay.user_name.encode() if session.relay is not None else session.identity
        return EapAnswer(
            answer.eap_message, EapResult.SUCCESS, answer.msk, addresses, timeout, identity=user
        )

    def _answer(self, spi: bytes, answer: EapAnswer) -> None:
        transport = self.host.transport
        if transport is None:
            return
        try:
            self.host.endpoint.eap_answer(spi, answer, transport.now())
        except LocalProtocolError as error:  # the IKE SA failed or timed out meanwhile
            log.debug("IKE SA %s: EAP answer not taken: %s", spi.hex(), error)
        transport.process()

    # ------------------------------------------------------------------ accounting

    def _account(self, session: _Session, kind: str) -> None:
        """Queue one Accounting-Request of ``session`` after those before it."""
        accounting, client = session.accounting, self.client
        if accounting is None or client is None or not self.accounting:
            return
        usage = self._usage(session) if kind != "start" else None
        cause = session.cause
        previous = session.acct

        async def send() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                if kind == "start":
                    await client.account_start(accounting)
                elif kind == "interim":
                    assert usage is not None
                    await client.account_interim(accounting, usage)
                else:
                    assert usage is not None and cause is not None
                    await client.account_stop(accounting, usage, cause)
            except RadiusError as error:
                self.counters["accounting_failures"] += 1
                log.warning("%s: RADIUS accounting %s: %s", session.name, kind, error)
            else:
                detail = f" ({cause.name})" if kind == "stop" and cause is not None else ""
                log.info("%s: RADIUS accounting %s sent%s", session.name, kind, detail)

        session.acct = self._spawn(send())

    def _child_usage(self, spi_in: bytes) -> Usage:
        counted = self.host.glue.child_counters(spi_in)
        return Usage(
            input_octets=int(counted.get("bytes_in", 0)),
            output_octets=int(counted.get("bytes_out", 0)),
            input_packets=int(counted.get("packets_in", 0)),
            output_packets=int(counted.get("packets_out", 0)),
        )

    def _usage(self, session: _Session) -> Usage:
        """The session's counters: its CHILD SAs gone and those still installed."""
        total = session.past
        for spi_in in session.children:
            total = _add(total, self._child_usage(spi_in))
        elapsed = self._now() - session.started if session.started is not None else 0.0
        return replace(total, session_time=int(elapsed))

    async def shutdown(self) -> None:
        """The gateway stops: Accounting-Stop (NAS-Reboot) for every session, before the
        DELETEs go out, waiting for the answers a little."""
        for session in self._sessions.values():
            if session.started is not None and not session.stopped:
                session.stopped = True
                session.cause = TerminateCause.NAS_REBOOT
                self._account(session, "stop")
        pending = [s.acct for s in self._sessions.values() if s.acct is not None]
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)

    def close(self) -> None:
        if self.dae is not None:
            self.dae.close()
            self.dae = None
        for task in list(self._tasks):
            task.cancel()
        if self.client is not None:
            self.client.close()

    # ------------------------------------------------------------------ disconnect

    def disconnect(self, request: DisconnectRequest) -> int:
        """RFC 5176 §3: delete every IKE SA that all the request's identification
        attributes match (Admin-Reset in its Accounting-Stop); how many."""
        transport = self.host.transport
        if transport is None:
            return 0
        found = list(self._matching(request))
        for spi in found:
            session = self._sessions.get(spi)
            if session is not None and session.cause is None:
                session.cause = TerminateCause.ADMIN_RESET
            log.info("IKE SA %s: deleting it, as the AAA asks (Disconnect-Request)", spi.hex())
            self.host.endpoint.delete(spi, transport.now())
        self.counters["disconnects"] += len(found)
        transport.process()
        return len(found)

    def _matching(self, request: DisconnectRequest) -> Iterator[bytes]:
        wanted = request.identification
        for sa in list(self.host.endpoint):
            if sa.closed or not sa.established:
                continue
            if all(value == self._attribute(sa, name) for name, value in wanted.items()):
                yield sa.local_spi

    def _attribute(self, sa: Any, name: str) -> str | None:
        """What the SA's session shows as the identification attribute ``name``."""
        session = self._sessions.get(sa.local_spi)
        accounting = session.accounting if session is not None else None
        addresses = list(sa.assigned_addresses)
        if name == "User-Name":
            if session is not None and session.relay is not None:
                return session.relay.user_name
            return str(sa.peer_identity) if sa.peer_identity is not None else None
        if name == "Acct-Session-Id":
            return accounting.session_id if accounting is not None else None
        if name == "Framed-IP-Address":
            return next((str(a) for a in addresses if a.version == 4), None)
        if name == "Framed-IPv6-Address":
            return next((str(a) for a in addresses if a.version == 6), None)
        if name == "Calling-Station-Id":
            return station_id(*sa.remote)
        return None

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The ``radius`` part of the gateway's status (empty when not configured)."""
        if self.client is None and self.dae is None:
            return {}
        found: dict[str, Any] = {"counters": dict(sorted(self.counters.items()))}
        if self.client is not None:
            found["servers"] = [str(server) for server in self.client.config.servers]
            found["active_server"] = str(self.client.active_server)
            found["accounting"] = self.client.config.accounting
        if self.dae is not None:
            found["dae"] = self.dae.status()
        return {"radius": found}

    # ------------------------------------------------------------------ helpers

    def _now(self) -> float:
        transport = self.host.transport
        return transport.now() if transport is not None else time.monotonic()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _parse(message: bytes) -> EapPacket | None:
    try:
        return parse_packet(message)
    except CodecError:
        return None


def _said(answer: AccessAnswer) -> str:
    return f": {answer.reply_message}" if answer.reply_message else ""


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        session_time=a.session_time,
        input_octets=a.input_octets + b.input_octets,
        output_octets=a.output_octets + b.output_octets,
        input_packets=a.input_packets + b.input_packets,
        output_packets=a.output_packets + b.output_packets,
    )
