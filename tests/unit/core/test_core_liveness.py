"""Liveness and recovery back to back on the fake clock: dead peer detection (RFC 7296
§2.4), NAT keepalives (RFC 3948 §2.3), INITIAL_CONTACT and the uniqueness policy,
INVALID_IKE_SPI (§2.21.4) answered, rate limited and acted on make-before-break, a
peer that keeps using an address the gateway refused (RFC 4555 §3.5), lifetimes."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from core_harness import (
    GATEWAY,
    MOBILE,
    NAT_PUBLIC,
    Link,
    initiator_config,
    responder_config,
    seeded,
)

from gateway.pool import AddressPool
from mpa_ike.constants import NAT_KEEPALIVE, ExchangeType, NotifyType
from mpa_ike.datagram import Address, Datagram, frame_for_socket
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError
from mpa_ike.events import (
    AddressUpdateRefused,
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaReplaced,
    LeaseReleased,
    LivenessConfirmed,
    PeerForgotIkeSa,
)
from mpa_ike.ike_config import Lifetimes
from mpa_ike.ike_sa import IkeSa
from mpa_ike.retransmit import RetransmitPolicy
from mpa_ike.wire import parse_header

PSK = b"a pre-shared key for the gateway"
QUIET = {"ike_rekey_time": None, "child_rekey_time": None}
ELSEWHERE: Address = ("192.0.2.99", 4500)
ELSEWHERE_TOO: Address = ("192.0.2.98", 4500)
SECOND_HOST: Address = ("192.0.2.11", 500)


def lifetimes(**values: Any) -> Lifetimes:
    return Lifetimes(**{**QUIET, **values})


def gateway_endpoint(pool: AddressPool[object], seed: int = 2, **gw: Any) -> Endpoint:
    gw.setdefault("lifetimes", lifetimes())
    return Endpoint(random=seeded(seed), responder=responder_config(pool, psk=PSK, **gw))


def connect(link: Link, local: Address = MOBILE, **mobile: Any) -> IkeSa:
    mobile.setdefault("lifetimes", lifetimes())
    sa = link.mobile.initiate(initiator_config(psk=PSK, **mobile), local, GATEWAY, link.now)
    link.run(until=link.now + 10.0)
    return sa


def up(
    pool: AddressPool[object], *, nat: bool = False, mobile: dict[str, Any] | None = None, **gw: Any
) -> Link:
    link = Link(Endpoint(random=seeded(1)), gateway_endpoint(pool, **gw), nat=nat)
    connect(link, **(mobile or {}))
    assert link.of_type(IkeSaEstablished) and link.of_type(ChildSaEstablished, "gateway")
    link.mobile_events.clear()
    link.gateway_events.clear()
    return link


def only(endpoint: Endpoint) -> IkeSa:
    (sa,) = [sa for sa in endpoint if not sa.closed]
    return sa


def sent(link: Link, direction: str, since: float = -1.0) -> list[tuple[float, Datagram]]:
    return [(t.time, t.datagram) for t in link.log if t.direction == direction and t.time > since]


def informational(datagram: Datagram) -> bool:
    return (
        datagram.data != NAT_KEEPALIVE
        and parse_header(datagram.data).exchange_type == ExchangeType.INFORMATIONAL
    )


def drop_all(datagram: Datagram, way: str, n: int) -> list[Datagram]:
    return []


# ---------------------------------------------------------------------- DPD


def test_dpd_sent_after_exactly_dpd_delay_of_silence(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"lifetimes": lifetimes(dpd_delay=30.0)})
    start = link.now
    assert link.mobile.get_timer() == start + 30.0
    assert link.gateway.get_timer() is None  # its own DPD is off
    link.run(until=start + 29.9)
    assert not sent(link, "m->g", start)
    link.run(until=start + 30.0)
    ((time, probe),) = sent(link, "m->g", start)
    assert time == start + 30.0 and informational(probe)
    assert link.of_type(LivenessConfirmed)
    assert only(link.mobile).counters["dpd_sent"] == 1
    # The answer is a message from the peer: the next check is dpd_delay after it.
    assert link.mobile.get_timer() == start + 60.0


def test_a_peer_request_postpones_dpd(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"lifetimes": lifetimes(dpd_delay=30.0)})
    start = link.now
    link.now = start + 20.0
    link.gateway.check_liveness(only(link.gateway).local_spi, link.now)
    link.run(until=start + 49.9)
    ours = [d for _, d in sent(link, "m->g", start) if not parse_header(d.data).is_response]
    assert not ours
    assert link.mobile.get_timer() == start + 50.0


def test_dpd_retransmitted_then_peer_dead_and_lease_released(pool: AddressPool[object]) -> None:
    link = up(pool, lifetimes=lifetimes(dpd_delay=30.0))
    gateway_sa = only(link.gateway)
    lease = pool.lease_of(gateway_sa.local_spi)
    assert lease is not None
    start = link.now
    link.tamper = drop_all
    link.run(until=start + 400.0)
    probes = [time - start for time, d in sent(link, "g->m", start)]
    policy = RetransmitPolicy()
    expected = [30.0]
    for n in range(1, policy.tries + 1):
        expected.append(expected[-1] + policy.delay(n))
    assert probes == pytest.approx(expected)  # the original and 5 retransmissions
    (failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(failed, IkeSaFailed) and failed.reason.startswith("peer dead")
    assert link.of_type(ChildSaDeleted, "gateway")
    (released,) = link.of_type(LeaseReleased, "gateway")
    assert isinstance(released, LeaseReleased) and released.addresses == (lease,)
    assert pool.lease_of(gateway_sa.local_spi) is None
    assert link.timer_fires[-1] - start == pytest.approx(30.0 + policy.total())


def test_dpd_timeout_bounds_the_retransmissions(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"lifetimes": lifetimes(dpd_delay=2.0, dpd_timeout=10.0)})
    start = link.now
    link.tamper = drop_all
    link.run(until=start + 100.0)
    probes = [time - start for time, _ in sent(link, "m->g", start)]
    assert probes == pytest.approx([2.0, 6.0])  # then 7.2 s more would pass 10 s
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and "peer dead" in failed.reason
    assert link.timer_fires[-1] - start == pytest.approx(12.0)


def test_explicit_liveness_check_failure_says_peer_dead(pool: AddressPool[object]) -> None:
    link = up(pool)
    link.tamper = drop_all
    link.mobile.check_liveness(only(link.mobile).local_spi, link.now)
    link.run(until=link.now + 300.0)
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.reason.startswith("peer dead")


# ---------------------------------------------------------------------- NAT keepalives


@pytest.mark.parametrize("nat", [True, False])
def test_keepalives_only_from_behind_a_nat(pool: AddressPool[object], nat: bool) -> None:
    both = lifetimes(keep_alive=20.0)
    link = up(pool, nat=nat, mobile={"lifetimes": both}, lifetimes=both)
    start = link.now
    link.run(until=start + 65.0)
    keepalives = [(t, d) for t, d in sent(link, "m->g", start) if d.data == NAT_KEEPALIVE]
    assert not [d for _, d in sent(link, "g->m", start) if d.data == NAT_KEEPALIVE]
    if not nat:
        assert not keepalives and link.mobile.get_timer() is None
        return
    assert [t - start for t, _ in keepalives] == pytest.approx([20.0, 40.0, 60.0])
    for _, keepalive in keepalives:
        assert keepalive.src[0] == NAT_PUBLIC and keepalive.dst == (GATEWAY[0], 4500)
        assert frame_for_socket(keepalive) == b"\xff"  # no non-ESP marker


def test_keepalive_waits_for_our_own_silence(pool: AddressPool[object]) -> None:
    keep = lifetimes(keep_alive=20.0)
    link = up(pool, nat=True, mobile={"lifetimes": keep})
    start = link.now
    link.now = start + 15.0
    link.mobile.check_liveness(only(link.mobile).local_spi, link.now)
    link.run(until=start + 36.0)
    keepalives = [t - start for t, d in sent(link, "m->g", start) if d.data == NAT_KEEPALIVE]
    assert keepalives == pytest.approx([35.0])


# ---------------------------------------------------------------------- INITIAL_CONTACT


def first_auth_has_initial_contact(sa: IkeSa) -> bool:
    return sa.initial_contact


def test_initial_contact_replaces_the_lost_ike_sa(pool: AddressPool[object]) -> None:
    """The mobile node restarted (a fresh endpoint): its first IKE SA says
    INITIAL_CONTACT, and the gateway drops the old one at once, lease and all, so the
    lease is free for the new one (the gateway's lease store gives an identity its
    address back)."""
    link = up(pool, unique="no")  # INITIAL_CONTACT replaces even under unique: no
    old = only(link.gateway)
    assert old.initial_contact  # the first IKE SA to this gateway said it
    address = old.assigned_addresses
    restarted = Link(Endpoint(random=seeded(7)), link.gateway, now=link.now)
    connect(restarted)
    (replaced,) = restarted.of_type(IkeSaReplaced, "gateway")
    assert isinstance(replaced, IkeSaReplaced) and replaced.ike_sa == old.local_spi
    assert "INITIAL_CONTACT" in replaced.reason
    new = only(link.gateway)
    assert replaced.new_ike_sa == new.local_spi and new.assigned_addresses
    (released,) = restarted.of_type(LeaseReleased, "gateway")
    assert isinstance(released, LeaseReleased) and released.addresses == address
    kinds = [type(e) for e in restarted.gateway_events]
    assert kinds.index(IkeSaReplaced) < kinds.index(IkeSaEstablished)
    assert LeaseReleased in kinds[: kinds.index(IkeSaEstablished)]
    # No DELETE went to the old SA's peer: it has forgotten it.
    assert not [d for _, d in sent(restarted, "g->m") if informational(d)]


def test_second_ike_sa_of_a_node_says_no_initial_contact(pool: AddressPool[object]) -> None:
    link = up(pool, unique="no")
    second = connect(link)
    assert not second.initial_contact
    assert len([sa for sa in link.gateway if not sa.closed]) == 2


@pytest.mark.parametrize(
    ("unique", "initial_contact", "from_other_host", "old_stays", "new_up"),
    [
        ("replace", False, False, False, True),
        ("replace", True, False, False, True),
        ("no", False, False, True, True),
        ("no", True, False, False, True),
        ("never", True, False, True, True),
        ("keep", False, True, True, False),
        ("keep", False, False, True, True),  # same address: a reauthentication
        ("keep", True, True, False, True),  # INITIAL_CONTACT wins
    ],
)
def test_uniqueness_policy(
    pool: AddressPool[object],
    unique: str,
    initial_contact: bool,
    from_other_host: bool,
    old_stays: bool,
    new_up: bool,
) -> None:
    """strongSwan's unique, exactly (charon's check_uniqueness)."""
    link = up(pool, unique=unique)
    old = only(link.gateway)
    # INITIAL_CONTACT comes from a restarted node (a fresh endpoint); without it, a
    # second IKE SA of the same endpoint.
    second = Link(Endpoint(random=seeded(9)), link.gateway, now=link.now)
    node = second if initial_contact else link
    node.gateway_events.clear()
    local = SECOND_HOST if from_other_host else MOBILE
    new_sa = connect(node, local)
    assert new_sa.initial_contact == initial_contact
    assert (not old.closed) == old_stays
    assert new_sa.established == new_up
    if not new_up:
        (failed,) = node.of_type(IkeSaFailed, "mobile")
        assert isinstance(failed, IkeSaFailed)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
    if not old_stays:
        (replaced,) = node.of_type(IkeSaReplaced, "gateway")
        assert isinstance(replaced, IkeSaReplaced)
        told = unique == "replace" and not initial_contact
        # replace: the old peer is told with a DELETE (sent once); it closes its SA.
        mobile_old = [sa for sa in link.mobile if sa is not new_sa]
        if told:
            assert not any(not sa.closed for sa in mobile_old)
            assert link.of_type(IkeSaDeleted, "mobile")


# ---------------------------------------------------------------------- INVALID_IKE_SPI


def forged_request(link: Link) -> Datagram:
    auth = next(t.datagram for t in link.log if t.direction == "m->g" and t.datagram.dst[1] == 4500)
    return Datagram(b"\x02" * 8 + b"\x03" * 8 + auth.data[16:], auth.src, auth.dst)


def test_invalid_ike_spi_answers_are_rate_limited(pool: AddressPool[object]) -> None:
    link = up(pool)
    request = forged_request(link)
    gateway = link.gateway
    for _ in range(8):
        gateway.receive_datagram(request.data, request.src, request.dst, 10.2)
    assert len(gateway.datagrams_to_send(10.2)) == gateway.invalid_spi_rate == 5
    assert gateway.counters["invalid_ike_spi_rate_limited"] == 3
    other = ("192.0.2.50", 4500)
    gateway.receive_datagram(request.data, other, request.dst, 10.9)
    assert [d.dst for d in gateway.datagrams_to_send(10.9)] == [other]
    gateway.receive_datagram(request.data, request.src, request.dst, 11.0)
    assert len(gateway.datagrams_to_send(11.0)) == 1  # a new second
    assert gateway.counters["invalid_ike_spi_sent"] == 7
    # Responses for unknown SPIs are never answered (§2.21.4).
    data = bytearray(request.data)
    data[19] |= 0x20
    gateway.receive_datagram(bytes(data), ("192.0.2.51", 4500), request.dst, 12.0)
    assert gateway.datagrams_to_send(12.0) == []


def restart_gateway(link: Link, pool: AddressPool[object]) -> None:
    """The gateway loses its state; its leases come back (as from its SQLite file)."""
    for sa in list(link.gateway):
        pool.release(sa.local_spi)
    link.gateway = gateway_endpoint(pool, seed=5)


def test_mobile_replaces_its_ike_sa_make_before_break(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"lifetimes": lifetimes(dpd_delay=30.0)})
    old = only(link.mobile)
    restart_gateway(link, pool)
    start = link.now
    link.run(until=start + 30.0)  # DPD: the gateway answers INVALID_IKE_SPI
    (hint,) = link.of_type(PeerForgotIkeSa)
    assert isinstance(hint, PeerForgotIkeSa) and hint.ike_sa == old.local_spi
    assert hint.peer == (GATEWAY[0], 4500)
    assert link.gateway.counters["invalid_ike_spi_sent"] == 1
    assert old.established  # unauthenticated: nothing torn down yet
    link.mobile_events.clear()
    config = initiator_config(psk=PSK, lifetimes=lifetimes(dpd_delay=30.0))
    new = link.mobile.initiate(config, MOBILE, GATEWAY, link.now, replaces=old.local_spi)
    assert new.initial_contact
    link.run(until=link.now + 5.0)
    assert old.closed and new.established and new.assigned_addresses
    kinds = [type(e).__name__ for e in link.mobile_events]
    # The old pair leaves the datapath before the new one is installed.
    assert kinds == [
        "ChildSaDeleted",
        "IkeSaReplaced",
        "IkeSaEstablished",
        "ChildSaEstablished",
    ]
    (replaced,) = link.of_type(IkeSaReplaced)
    assert isinstance(replaced, IkeSaReplaced) and replaced.new_ike_sa == new.local_spi
    assert "INVALID_IKE_SPI" in replaced.reason


def test_a_replacement_that_fails_leaves_the_old_ike_sa(pool: AddressPool[object]) -> None:
    link = up(pool)
    old = only(link.mobile)
    config = initiator_config(psk=b"the wrong key", lifetimes=lifetimes())
    link.mobile.initiate(config, MOBILE, GATEWAY, link.now, replaces=old.local_spi)
    link.run(until=link.now + 5.0)
    assert link.of_type(IkeSaFailed) and not link.of_type(IkeSaReplaced)
    assert old.established


def test_invalid_ike_spi_for_another_message_id_is_ignored(pool: AddressPool[object]) -> None:
    link = up(pool)
    old = only(link.mobile)
    link.tamper = drop_all
    link.mobile.check_liveness(old.local_spi, link.now)
    link.run(until=link.now + 1.0)
    probe = sent(link, "m->g")[-1][1]
    header = parse_header(probe.data)
    gateway = gateway_endpoint(pool, seed=5)
    stale = bytearray(probe.data)
    stale[20:24] = (header.message_id + 7).to_bytes(4, "big")
    gateway.receive_datagram(bytes(stale), probe.src, probe.dst, link.now)
    (answer,) = gateway.datagrams_to_send(link.now)
    link.mobile.receive_datagram(answer.data, answer.src, answer.dst, link.now)
    assert not link.mobile.next_event()
    assert old.counters["dropped_invalid_ike_spi"] == 1


# ---------------------------------------------------------------------- refused addresses


def refused_updates(link: Link) -> list[Event]:
    return link.of_type(AddressUpdateRefused, "gateway")


def test_refused_updates_delete_the_ike_sa(pool: AddressPool[object]) -> None:
    link = up(pool, max_refused_updates=2)
    mobile, gateway = only(link.mobile), only(link.gateway)
    link.mobile.update_addresses(mobile.local_spi, ELSEWHERE, link.now)
    link.run(until=link.now + 10.0)
    assert len(refused_updates(link)) == 1 and gateway.established
    link.mobile.update_addresses(mobile.local_spi, ELSEWHERE_TOO, link.now)
    link.run(until=link.now + 10.0)
    assert len(refused_updates(link)) == 2 and gateway.closed
    (failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(failed, IkeSaFailed)
    assert "2 address updates refused" in failed.reason and ELSEWHERE_TOO[0] in failed.reason
    assert pool.lease_of(gateway.local_spi) is None
    # The DELETE went where the peer really is too; it closes there.
    assert any(d.dst == ELSEWHERE_TOO and informational(d) for _, d in sent(link, "g->m"))
    assert mobile.closed and link.of_type(IkeSaDeleted, "mobile")


def test_rekey_from_a_refused_address_deletes_the_ike_sa(pool: AddressPool[object]) -> None:
    """charon ignores UNACCEPTABLE_ADDRESSES and rekeys from the refused address."""
    link = up(pool)
    mobile, gateway = only(link.mobile), only(link.gateway)
    link.mobile.update_addresses(mobile.local_spi, ELSEWHERE, link.now)
    link.run(until=link.now + 10.0)
    assert refused_updates(link) and gateway.established
    assert mobile.local == ELSEWHERE  # it stays where it was refused, as charon does
    (child,) = mobile.children.values()
    link.mobile.rekey_child_sa(mobile.local_spi, child.spi_in, link.now)
    link.run(until=link.now + 10.0)
    assert gateway.closed
    (failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(failed, IkeSaFailed)
    assert failed.reason.startswith(f"rekey request from {ELSEWHERE[0]}")
    assert gateway.counters["deleted_refused_address"] == 1


# ---------------------------------------------------------------------- lifetimes


def test_lifetime_defaults_are_strongswans() -> None:
    defaults = Lifetimes()
    assert defaults.ike_rekey_time == 4 * 3600
    assert defaults.ike_over_time == pytest.approx(0.1 * 4 * 3600)
    assert defaults.ike_rand_time == defaults.ike_over_time
    assert defaults.ike_life_time == pytest.approx(1.1 * 4 * 3600)
    assert defaults.child_rekey_time == 3600
    assert defaults.child_life_time == pytest.approx(3960)
    assert defaults.child_rand_time == pytest.approx(360)
    assert defaults.dpd_delay is None and defaults.keep_alive is None  # the core's


@pytest.mark.parametrize(
    "values",
    [
        {"child_rekey_time": 100.0, "child_life_time": 90.0},
        {"ike_rekey_time": 100.0, "ike_rand_time": 100.0},
        {"child_rekey_bytes": 10, "child_life_bytes": 5},
        {"dpd_delay": 0.0},
    ],
)
def test_bad_lifetimes_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Lifetimes(**values)


def test_child_sa_deleted_at_its_life_time(pool: AddressPool[object]) -> None:
    """A CHILD SA whose rekey never got through goes at life_time."""
    quiet = lifetimes(child_rekey_time=100.0, child_life_time=120.0, child_rand_time=0.0)
    link = up(pool, mobile={"lifetimes": quiet})
    start = link.now

    def drop_create_child(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if parse_header(datagram.data).exchange_type == ExchangeType.CREATE_CHILD_SA:
            return []
        return [datagram]

    link.tamper = drop_create_child
    link.run(until=start + 119.9)
    assert not link.of_type(ChildSaDeleted)
    link.run(until=start + 300.0)
    assert link.of_type(ChildSaDeleted) or link.of_type(IkeSaFailed)


def test_gateway_pool_address_is_reused_after_dpd(pool: AddressPool[object]) -> None:
    link = up(pool, lifetimes=lifetimes(dpd_delay=5.0, dpd_timeout=5.0))
    link.tamper = drop_all
    link.run(until=link.now + 20.0)
    assert link.of_type(LeaseReleased, "gateway")
    assert pool.available(4) == pool.size(4)
    assert IPv4Address("10.10.0.1") not in [a for a, _ in pool.leases()]
