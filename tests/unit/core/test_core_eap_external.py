"""The gateway's EAP decided by an external authenticator (a RADIUS server behind the
glue), back to back with a fake AAA on the fake clock: EapRequestForAaa out,
Endpoint.eap_answer in, the IKE_AUTH response held in between (RFC 7296 §2.16)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest
from core_harness import (
    GATEWAY,
    MOBILE,
    PASSWORD,
    USER,
    Link,
    initiator_config,
    responder_config,
)

from gateway.pool import AddressPool
from mpa_ike.constants import NotifyType
from mpa_ike.eap import EapAnswer, EapResult, EapServer, EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError, LocalProtocolError
from mpa_ike.events import (
    ChildSaEstablished,
    EapRequestForAaa,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from mpa_ike.ike_sa import IkeSaState
from mpa_ike.ike_sa_common import Random
from mpa_ike.wire import IPAddress

AAA_ADDRESS = IPv4Address("10.99.0.5")  # outside the pool


def seeded(seed: int) -> Random:
    return random.Random(seed).randbytes


@dataclass
class FakeAaa:
    """A RADIUS server's EAP, answering ``delay`` seconds after each request (never,
    with ``delay`` None); on Accept it adds ``addresses`` and ``session_timeout``."""

    gateway: Endpoint
    delay: float | None = 1.0
    method: EapType = EapType.MSCHAPV2
    users: dict[str, str] = field(default_factory=lambda: {USER: PASSWORD})
    addresses: tuple[IPAddress, ...] = ()
    session_timeout: float | None = None
    requests: list[EapRequestForAaa] = field(default_factory=list)
    _servers: dict[bytes, EapServer] = field(default_factory=dict)
    _due: list[tuple[float, bytes, EapAnswer]] = field(default_factory=list)

    def on_gateway_event(self, event: Event, now: float) -> None:
        if not isinstance(event, EapRequestForAaa):
            return
        self.requests.append(event)
        if self.delay is not None:
            self._due.append((now + self.delay, event.ike_sa, self._decide(event)))

    def _decide(self, request: EapRequestForAaa) -> EapAnswer:
        if not request.eap_message:
            server = EapServer(self.method, self._lookup, seeded(7), identity=request.identity)
            self._servers[request.ike_sa] = server
            return EapAnswer(server.start())
        server = self._servers[request.ike_sa]
        reply = server.handle(request.eap_message)
        assert reply is not None
        if server.result != EapResult.SUCCESS:
            return EapAnswer(reply, server.result)
        return EapAnswer(reply, EapResult.SUCCESS, server.msk, self.addresses, self.session_timeout)

    def _lookup(self, identity: bytes) -> str | None:
        return self.users.get(identity.decode())

    def get_timer(self) -> float | None:
        return min((due for due, _, _ in self._due), default=None)

    def handle_timer(self, now: float) -> None:
        ready = [item for item in self._due if item[0] <= now]
        self._due = [item for item in self._due if item[0] > now]
        for _, spi, answer in ready:
            self.gateway.eap_answer(spi, answer, now)


def connect(
    pool: AddressPool[object] | None,
    *,
    until: float = 1000.0,
    password: str = PASSWORD,
    **aaa_options: object,
) -> tuple[Link, FakeAaa]:
    method = aaa_options.get("method", EapType.MSCHAPV2)
    assert isinstance(method, EapType)
    config = responder_config(pool, psk=b"psk of the gateway", eap_authenticator="external")
    gateway = Endpoint(random=seeded(2), responder=config)
    aaa = FakeAaa(gateway, **aaa_options)  # type: ignore[arg-type]
    link = Link(Endpoint(random=seeded(1)), gateway, helpers=[aaa])
    mobile_config = initiator_config(psk=b"psk of the gateway", password=password)
    link.mobile.initiate(mobile_config, MOBILE, GATEWAY, 0.0)
    link.run(until=until)
    return link, aaa


def established(link: Link) -> tuple[IkeSaEstablished, IkeSaEstablished]:
    (mobile,) = link.of_type(IkeSaEstablished, "mobile")
    (gateway,) = link.of_type(IkeSaEstablished, "gateway")
    assert isinstance(mobile, IkeSaEstablished) and isinstance(gateway, IkeSaEstablished)
    assert len(link.of_type(ChildSaEstablished, "mobile")) == 1
    assert len(link.of_type(ChildSaEstablished, "gateway")) == 1
    return mobile, gateway


def test_answers_after_a_delay(pool: AddressPool[object]) -> None:
    """EAP-Start, Identity, MSCHAPv2 Response, Success acknowledgement: four relays,
    each answered three ticks later; the lease comes from the pool as before."""
    link, aaa = connect(pool, delay=3.0)
    mobile, gateway = established(link)
    assert [bool(r.eap_message) for r in aaa.requests] == [False, True, True, True]
    assert {r.identity for r in aaa.requests} == {USER.encode()}
    assert aaa.requests[0].peer == (MOBILE[0], 4500)
    assert mobile.assigned_addresses == (IPv4Address("10.10.0.1"),)
    assert pool.lease_of(gateway.ike_sa) is not None
    # Nothing waits before the first answer: IKE_AUTH response at 3 s, then 3 s a round.
    assert link.timer_fires == [3.0, 6.0, 9.0, 12.0]
    (sa,) = link.gateway.sas.values()
    assert sa.counters["eap_messages_relayed"] == 4


def test_a_retransmission_while_waiting_is_absorbed(pool: AddressPool[object]) -> None:
    """The mobile node retransmits after 4 s; the AAA answers after 5 s: the copy is
    neither relayed again nor answered from the cache of the previous round."""
    link, aaa = connect(pool, delay=5.0)
    established(link)
    assert len(aaa.requests) == 4
    (sa,) = link.gateway.sas.values()
    assert sa.counters["retransmissions_absorbed"] == 4  # one per held response
    assert sa.counters["retransmissions_answered"] == 0
    assert link.mobile.statistics()["retransmitted"] == 4


def test_a_reject_fails_both_sides(pool: AddressPool[object]) -> None:
    """A wrong password: MSCHAPv2 Failure, its acknowledgement, then the AAA's
    EAP-Failure goes out with N(AUTHENTICATION_FAILED) (§2.21.2)."""
    link, aaa = connect(pool, password="wrong")
    assert len(aaa.requests) == 4
    for side in ("mobile", "gateway"):
        (failed,) = link.of_type(IkeSaFailed, side)
        assert isinstance(failed, IkeSaFailed)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert not link.of_type(IkeSaEstablished, "gateway")
    assert list(pool.leases()) == []


def test_an_address_from_the_aaa_replaces_a_lease(pool: AddressPool[object]) -> None:
    link, _ = connect(pool, addresses=(AAA_ADDRESS,))
    mobile, gateway = established(link)
    assert mobile.assigned_addresses == gateway.assigned_addresses == (AAA_ADDRESS,)
    assert pool.lease_of(gateway.ike_sa) is None
    (child,) = link.of_type(ChildSaEstablished, "gateway")
    assert isinstance(child, ChildSaEstablished)
    assert [str(ts) for ts in child.params.remote_ts] == [str(AAA_ADDRESS)]


def test_an_address_from_the_aaa_without_a_pool() -> None:
    link, _ = connect(None, addresses=(AAA_ADDRESS,))
    mobile, _ = established(link)
    assert mobile.assigned_addresses == (AAA_ADDRESS,)


def test_no_answer_ends_the_half_open_sa(pool: AddressPool[object]) -> None:
    """The AAA never answers: the half-open timeout (30 s) ends the gateway's SA, and a
    late answer finds nothing."""
    link, aaa = connect(pool, delay=None, until=40.0)
    assert len(aaa.requests) == 1
    (failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(failed, IkeSaFailed) and "half-open" in failed.reason
    assert 30.0 in link.timer_fires
    assert link.gateway.half_open_count() == 0
    link.gateway.eap_answer(failed.ike_sa, EapAnswer(b"\x01\x00\x00\x04"), link.now)
    assert link.gateway.datagrams_to_send(link.now) == []


def test_eap_md5_has_no_msk(pool: AddressPool[object]) -> None:
    """EAP-MD5 generates no MSK: both AUTHs are keyed by SK_p (§2.16)."""
    link, aaa = connect(pool, method=EapType.MD5_CHALLENGE)
    established(link)
    assert len(aaa.requests) == 3  # EAP-Start, Identity, MD5 Response


def test_session_timeout_deletes_the_sa(pool: AddressPool[object]) -> None:
    """The AAA's Session-Timeout (RFC 2865 §5.27): the gateway deletes the IKE SA then;
    the mobile node was told by AUTH_LIFETIME (RFC 4478)."""
    link, _ = connect(pool, session_timeout=100.0, until=200.0)
    _, gateway = established(link)
    (deleted,) = link.of_type(IkeSaDeleted, "mobile")
    assert isinstance(deleted, IkeSaDeleted) and deleted.by_peer
    assert 104.0 in link.timer_fires  # established at 4 s (four rounds of 1 s)
    assert pool.lease_of(gateway.ike_sa) is None


def test_an_answer_nobody_asked_for_is_a_local_error(pool: AddressPool[object]) -> None:
    link, _ = connect(pool)
    (sa,) = link.gateway.sas.values()
    assert sa.state == IkeSaState.ESTABLISHED
    with pytest.raises(LocalProtocolError):
        link.gateway.eap_answer(sa.local_spi, EapAnswer(b""), link.now)


def test_answer_and_config_checks(pool: AddressPool[object]) -> None:
    with pytest.raises(LocalProtocolError):
        EapAnswer(b"", EapResult.FAILURE, msk=bytes(64))
    with pytest.raises(LocalProtocolError):
        EapAnswer(b"", EapResult.SUCCESS, session_timeout=0)
    with pytest.raises(ConfigError):
        responder_config(pool, psk=b"k", eap_authenticator="radius")


def test_a_slow_aaa_outlasts_the_half_open_timeout(pool: AddressPool[object]) -> None:
    """Four rounds of 10 s: the set-up is still waiting at 30 s and ends there."""
    link, aaa = connect(pool, delay=10.0, until=60.0)
    assert len(aaa.requests) == 3
    (failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(failed, IkeSaFailed) and "half-open" in failed.reason
