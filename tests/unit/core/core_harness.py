"""Two endpoints back to back in memory, with a fake clock (aioquic-style tests).

:class:`Link` carries datagrams between the mobile node's and the gateway's
:class:`Endpoint`, through an optional ``tamper`` hook (drop, duplicate,
corrupt) and an optional NAT in front of the mobile node. Time only moves when
nothing is in flight: to the earliest timer of either side.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from typing import Any, Protocol

from cryptography import x509

from gateway.pool import AddressPool
from mpa_ike.certificates import CertificateCredential
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import NAT_KEEPALIVE
from mpa_ike.crypto.proposal import ProposalSpec, parse_proposals
from mpa_ike.datagram import Address, Datagram
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import Event
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.ike_sa import Random

MOBILE: Address = ("192.0.2.10", 500)
GATEWAY: Address = ("198.51.100.1", 500)
NAT_PUBLIC = "203.0.113.7"
GATEWAY_ID = "gw.example.net"
USER = "alice"
PASSWORD = "correct horse"
POOL = IPv4Network("10.10.0.0/28")


def seeded(seed: int) -> Random:
    generator = random.Random(seed)
    return generator.randbytes


def ike(text: str) -> tuple[ProposalSpec, ...]:
    return tuple(parse_proposals(text))


def esp(text: str) -> tuple[ProposalSpec, ...]:
    from mpa_ike.constants import ProtocolId

    return tuple(parse_proposals(text, ProtocolId.ESP))


def wall_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def initiator_config(
    *,
    ca: x509.Certificate | None = None,
    psk: bytes | None = None,
    password: str = PASSWORD,
    ike_text: str = "aes128gcm16-prfsha256-x25519",
    esp_text: str = "aes128gcm16",
    remote_ts: str = "0.0.0.0/0",
    eap_methods: tuple[EapType, ...] = (EapType.MSCHAPV2, EapType.MD5_CHALLENGE),
    **overrides: Any,
) -> InitiatorConfig:
    return InitiatorConfig(
        name="gw",
        identity=USER,
        eap_password=password,
        remote_id=GATEWAY_ID,
        ike_proposals=ike(ike_text),
        child=ChildSaConfig(esp(esp_text), remote_ts=(ip_network(remote_ts),)),
        ca=(ca,) if ca is not None else (),
        wall_clock=wall_clock if ca is not None else None,
        psk=psk,
        eap_methods=eap_methods,
        **overrides,
    )


def responder_config(
    pool: AddressPool[object] | None,
    *,
    credential: CertificateCredential | None = None,
    psk: bytes | None = None,
    eap_method: EapType = EapType.MSCHAPV2,
    ike_text: str = "aes128gcm16-prfsha256-x25519",
    esp_text: str = "aes128gcm16",
    local_ts: str = "0.0.0.0/0",
    **overrides: Any,
) -> ResponderConfig:
    users = {USER: PASSWORD}
    return ResponderConfig(
        identity=GATEWAY_ID,
        ike_proposals=ike(ike_text),
        child=ChildSaConfig(esp(esp_text), local_ts=(ip_network(local_ts),)),
        eap_users=lambda identity: users.get(identity.decode(errors="replace")),
        credential=credential,
        psk=psk,
        eap_methods=(eap_method,),
        allocator=pool,
        dns=(ip_network("10.10.0.14/32").network_address,),
        **overrides,
    )


Tamper = Callable[[Datagram, str, int], list[Datagram]]


class Helper(Protocol):
    """Something beside the two endpoints on the fake clock (a fake AAA server): it
    sees the gateway's events as they come and has a timer of its own."""

    def on_gateway_event(self, event: Event, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


def deliver(datagram: Datagram, direction: str, index: int) -> list[Datagram]:
    return [datagram]


@dataclass
class Transmission:
    time: float
    direction: str  # "m->g" or "g->m"
    datagram: Datagram


@dataclass
class Link:
    mobile: Endpoint
    gateway: Endpoint
    now: float = 0.0
    tamper: Tamper = deliver
    nat: bool = False
    log: list[Transmission] = field(default_factory=list)
    mobile_events: list[Event] = field(default_factory=list)
    gateway_events: list[Event] = field(default_factory=list)
    timer_fires: list[float] = field(default_factory=list)
    helpers: list[Helper] = field(default_factory=list)

    def _nat_out(self, datagram: Datagram) -> Datagram:
        if not self.nat:
            return datagram
        return Datagram(datagram.data, (NAT_PUBLIC, 10000 + datagram.src[1]), datagram.dst)

    def _nat_in(self, datagram: Datagram) -> Datagram:
        if not self.nat:
            return datagram
        return Datagram(datagram.data, datagram.src, (MOBILE[0], datagram.dst[1] - 10000))

    def _pump_once(self) -> bool:
        moved = False
        for direction, source, sink in (
            ("m->g", self.mobile, self.gateway),
            ("g->m", self.gateway, self.mobile),
        ):
            for datagram in source.datagrams_to_send(self.now):
                moved = True
                if direction == "m->g":
                    datagram = self._nat_out(datagram)
                index = sum(1 for t in self.log if t.direction == direction)
                self.log.append(Transmission(self.now, direction, datagram))
                for delivered in self.tamper(datagram, direction, index):
                    if direction == "g->m":
                        delivered = self._nat_in(delivered)
                    if delivered.data == NAT_KEEPALIVE:
                        continue  # the transport keeps NAT keepalives from the core
                    sink.receive_datagram(delivered.data, delivered.src, delivered.dst, self.now)
        self._collect()
        return moved

    def _collect(self) -> None:
        while (event := self.mobile.next_event()) is not None:
            self.mobile_events.append(event)
        while (event := self.gateway.next_event()) is not None:
            self.gateway_events.append(event)
            for helper in self.helpers:
                helper.on_gateway_event(event, self.now)

    def run(self, until: float = 1000.0) -> None:
        """Deliver until quiet, then fire timers, until nothing is left before ``until``."""
        for _ in range(10_000):
            if self._pump_once():
                continue
            own = [h.get_timer() for h in self.helpers]
            timers = [t for t in (self.mobile.get_timer(), self.gateway.get_timer(), *own) if t]
            if not timers or min(timers) > until:
                return
            self.now = max(self.now, min(timers))
            self.timer_fires.append(self.now)
            for helper in self.helpers:
                timer = helper.get_timer()
                if timer is not None and timer <= self.now:
                    helper.handle_timer(self.now)
            self.mobile.handle_timer(self.now)
            self.gateway.handle_timer(self.now)
            self._collect()
        raise AssertionError("the link did not settle")

    def of_type(self, kind: type[Event], side: str = "mobile") -> list[Event]:
        events = self.mobile_events if side == "mobile" else self.gateway_events
        return [e for e in events if isinstance(e, kind)]


def only_lifetime_timers(endpoint: Endpoint) -> bool:
    """No retransmission or half-open timer left: the next deadline is a rekey,
    at least CHILD rekey_time less its 10 % jitter (strongSwan's defaults)."""
    timer = endpoint.get_timer()
    return timer is None or timer >= 3600 * 0.9
