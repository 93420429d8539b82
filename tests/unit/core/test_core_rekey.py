"""CREATE_CHILD_SA back to back (RFC 7296 §1.3, §2.8, §2.17, §2.18, §2.25): CHILD and IKE
SA rekeys in both directions, collisions decided by the nonces, a peer's rekey while
our MOBIKE update is out (strongSwan does that), additional CHILD SAs, lifetimes."""

from __future__ import annotations

import dataclasses
from typing import Any

from core_harness import GATEWAY, MOBILE, Link, ike, initiator_config, responder_config, seeded

from gateway.pool import AddressPool
from mpa_ike.child_sa import ChildSa, ChildSaState
from mpa_ike.constants import ExchangeType, NotifyType, TransformType
from mpa_ike.datagram import Datagram
from mpa_ike.datapath import ChildSaParams
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import (
    ChildSaAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    LeaseReleased,
    LivenessConfirmed,
)
from mpa_ike.ike_config import Lifetimes
from mpa_ike.ike_sa import IkeSa
from mpa_ike.mobike import AddressPolicy, AddressPolicyMode
from mpa_ike.wire import parse_header

PSK = b"a pre-shared key for the gateway"


def up(
    pool: AddressPool[object],
    *,
    mobile: dict[str, Any] | None = None,
    gateway_seed: int = 2,
    **gw: Any,
) -> Link:
    gateway = Endpoint(random=seeded(gateway_seed), responder=responder_config(pool, psk=PSK, **gw))
    link = Link(Endpoint(random=seeded(1)), gateway)
    link.mobile.initiate(initiator_config(psk=PSK, **(mobile or {})), MOBILE, GATEWAY, 0.0)
    link.run(until=10.0)
    assert link.of_type(IkeSaEstablished) and link.of_type(ChildSaEstablished, "gateway")
    link.mobile_events.clear()
    link.gateway_events.clear()
    return link


def sas(link: Link) -> tuple[IkeSa, IkeSa]:
    (mobile,) = link.mobile
    (gateway,) = link.gateway
    return mobile, gateway


def only_child(sa: IkeSa) -> ChildSa:
    (child,) = sa.children.values()
    return child


def params(child: ChildSa) -> ChildSaParams:
    assert child.params is not None
    return child.params


def assert_pair(mobile: IkeSa, gateway: IkeSa) -> None:
    """One CHILD SA each side, the same pair, keys crosswise equal."""
    m, g = only_child(mobile), only_child(gateway)
    assert (m.spi_in, m.spi_out) == (g.spi_out, g.spi_in)
    assert m.state == g.state == ChildSaState.INSTALLED
    assert params(m).encr_key_out == params(g).encr_key_in
    assert params(m).encr_key_in == params(g).encr_key_out


def names(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_child_rekey_by_the_mobile_node(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    old = params(only_child(mobile))
    link.mobile.rekey_child_sa(mobile.local_spi, old.spi_in, link.now)
    link.run(until=link.now + 10)
    assert_pair(mobile, gateway)
    new = params(only_child(mobile))
    assert new.spi_in != old.spi_in and new.encr_key_in != old.encr_key_in
    for side in ("mobile", "gateway"):
        events = link.mobile_events if side == "mobile" else link.gateway_events
        assert names(events) == ["ChildSaEstablished", "ChildSaRekeyed", "ChildSaDeleted"]
    (deleted,) = link.of_type(ChildSaDeleted)
    assert isinstance(deleted, ChildSaDeleted) and deleted.spi_in == old.spi_in
    (rekeyed,) = link.of_type(ChildSaRekeyed, "gateway")
    assert isinstance(rekeyed, ChildSaRekeyed) and rekeyed.old_spi_out == old.spi_in
    assert rekeyed.new_spi_out == new.spi_in


def test_child_rekey_by_the_gateway(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    old = params(only_child(gateway))
    link.gateway.rekey_child_sa(gateway.local_spi, old.spi_in, link.now)
    link.run(until=link.now + 10)
    assert_pair(mobile, gateway)
    assert params(only_child(gateway)).spi_in != old.spi_in
    assert names(link.mobile_events) == ["ChildSaEstablished", "ChildSaRekeyed", "ChildSaDeleted"]
    (deleted,) = link.of_type(ChildSaDeleted)
    assert isinstance(deleted, ChildSaDeleted) and deleted.by_peer


def test_child_rekey_with_pfs(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"esp_text": "aes128gcm16-x25519"}, esp_text="aes128gcm16-x25519")
    mobile, gateway = sas(link)
    old = params(only_child(mobile))
    link.mobile.rekey_child_sa(mobile.local_spi, old.spi_in, link.now)
    link.run(until=link.now + 10)
    assert_pair(mobile, gateway)
    requests = [t for t in link.log if parse_header(t.datagram.data).exchange_type == 36]
    assert requests  # CREATE_CHILD_SA went out
    assert len(requests[0].datagram.data) > 200  # with KEi (x25519) inside SK


def test_additional_child_sa(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    link.mobile.create_child_sa(mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    assert len(mobile.children) == len(gateway.children) == 2
    assert names(link.mobile_events) == ["ChildSaEstablished"]
    spis = {(c.spi_in, c.spi_out) for c in mobile.children.values()}
    assert spis == {(c.spi_out, c.spi_in) for c in gateway.children.values()}


def test_ike_rekey_by_the_mobile_node(pool: AddressPool[object]) -> None:
    link = up(pool)
    old_mobile, old_gateway = sas(link)
    child = only_child(old_mobile)
    assert old_mobile._keys is not None
    old_sk_d = old_mobile._keys.sk_d
    link.mobile.rekey_ike_sa(old_mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    mobile, gateway = sas(link)
    assert old_mobile.closed and old_gateway.closed
    assert (mobile.spi_i, mobile.spi_r) == (gateway.spi_i, gateway.spi_r)
    assert mobile.spi_i not in (old_mobile.spi_i, old_mobile.spi_r)
    assert mobile.is_initiator and not gateway.is_initiator
    assert mobile._keys is not None and mobile._keys.sk_d != old_sk_d
    assert old_mobile._keys is not None and mobile._keys.sk_ei != old_mobile._keys.sk_ei
    assert gateway._keys == mobile._keys  # SKEYSEED from the old SK_d, both sides (§2.18)
    assert only_child(mobile) is child  # the CHILD SA moved, untouched
    assert_pair(mobile, gateway)
    # The lease moved with it; nothing was released; no IKE SA deleted for the glue.
    assert pool.lease_of(gateway.local_spi) is not None
    assert pool.lease_of(old_gateway.local_spi) is None
    for side in ("mobile", "gateway"):
        assert not link.of_type(LeaseReleased, side) and not link.of_type(IkeSaDeleted, side)
        (rekeyed,) = link.of_type(IkeSaRekeyed, side)
        assert isinstance(rekeyed, IkeSaRekeyed)
    assert not link.of_type(ChildSaDeleted) and not link.of_type(ChildSaDeleted, "gateway")
    # Message IDs start again at 0 on the new IKE SA (§2.2).
    start = len(link.log)
    link.mobile.check_liveness(mobile.local_spi, link.now)
    link.gateway.check_liveness(gateway.local_spi, link.now)
    link.run(until=link.now + 10)
    headers = [parse_header(t.datagram.data) for t in link.log[start:]]
    assert {h.message_id for h in headers} == {0}
    assert all(h.spi_i == mobile.spi_i for h in headers)
    assert link.of_type(LivenessConfirmed) and link.of_type(LivenessConfirmed, "gateway")


def test_ike_rekey_by_the_gateway_then_mobike(pool: AddressPool[object]) -> None:
    link = up(pool)
    _old_mobile, old_gateway = sas(link)
    lease = old_gateway.assigned_addresses[0]
    link.gateway.rekey_ike_sa(old_gateway.local_spi, link.now)
    link.run(until=link.now + 10)
    mobile, gateway = sas(link)
    assert gateway.is_initiator and not mobile.is_initiator  # §2.18: roles follow the rekey
    assert pool.lease_of(gateway.local_spi) == lease
    assert_pair(mobile, gateway)
    # The mobile node still decides MOBIKE, and the lease check still holds.
    link.mobile.update_addresses(mobile.local_spi, (str(lease), 4500), link.now)
    link.run(until=link.now + 10)
    assert gateway.remote == (str(lease), 4500)
    assert link.of_type(ChildSaAddressesUpdated, "gateway")
    # Deleting the new IKE SA releases the lease.
    link.mobile.delete(mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    assert link.of_type(LeaseReleased, "gateway") and pool.lease_of(gateway.local_spi) is None


def test_simultaneous_child_rekey(pool: AddressPool[object]) -> None:
    """§2.8.1: both sides rekey the same CHILD SA; the exchange with the lowest of the
    four nonces made the redundant SA, which its initiator deletes."""
    link = up(pool)
    mobile, gateway = sas(link)
    old_m = params(only_child(mobile))
    link.mobile.rekey_child_sa(mobile.local_spi, old_m.spi_in, link.now)
    link.gateway.rekey_child_sa(gateway.local_spi, old_m.spi_out, link.now)
    link.run(until=link.now + 10)
    assert_pair(mobile, gateway)
    assert params(only_child(mobile)).spi_in != old_m.spi_in
    lost = (
        mobile.counters["child_rekey_collisions_lost"]
        + gateway.counters["child_rekey_collisions_lost"]
    )
    won = (
        mobile.counters["child_rekey_collisions_won"]
        + gateway.counters["child_rekey_collisions_won"]
    )
    assert (lost, won) == (1, 1)
    # Each side installed two new pairs and removed the old and the redundant one.
    for side in ("mobile", "gateway"):
        assert len(link.of_type(ChildSaEstablished, side)) == 2
        assert len(link.of_type(ChildSaDeleted, side)) == 2
    assert not link.of_type(IkeSaFailed)


def test_simultaneous_ike_rekey(pool: AddressPool[object]) -> None:
    link = up(pool)
    old_mobile, old_gateway = sas(link)
    child = only_child(old_mobile)
    link.mobile.rekey_ike_sa(old_mobile.local_spi, link.now)
    link.gateway.rekey_ike_sa(old_gateway.local_spi, link.now)
    link.run(until=link.now + 100)
    mobile, gateway = sas(link)  # exactly one IKE SA left on each side
    assert (mobile.spi_i, mobile.spi_r) == (gateway.spi_i, gateway.spi_r)
    assert only_child(mobile) is child
    assert_pair(mobile, gateway)
    assert pool.lease_of(gateway.local_spi) is not None
    counters = [sa.counters for sa in (old_mobile, old_gateway)]
    assert sum(c["ike_rekey_collisions_lost"] for c in counters) == 1
    assert sum(c["ike_rekey_collisions_won"] for c in counters) == 1
    assert not link.of_type(IkeSaDeleted) and not link.of_type(IkeSaDeleted, "gateway")
    link.mobile.check_liveness(mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    assert link.of_type(LivenessConfirmed)


def test_peer_rekeys_before_answering_our_update(pool: AddressPool[object]) -> None:
    """strongSwan (kernel-libipsec) rekeys the CHILD SA after a MOBIKE update, often
    before it answers it: the mobile node answers while its update is out."""
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    mobile, gateway = sas(link)
    old = params(only_child(gateway))
    held: list[Datagram] = []

    def gateway_rekeys_first(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        header = parse_header(datagram.data)
        if way == "m->g" and header.exchange_type == ExchangeType.INFORMATIONAL and not held:
            held.append(datagram)
            link.gateway.rekey_child_sa(gateway.local_spi, old.spi_in, link.now)
            return []
        if way == "g->m" and header.exchange_type == ExchangeType.CREATE_CHILD_SA and held:
            link.gateway.receive_datagram(held[0].data, held[0].src, held[0].dst, link.now)
            held.append(held[0])
        return [datagram]

    link.tamper = gateway_rekeys_first
    link.mobile.update_addresses(mobile.local_spi, ("192.0.2.77", 4500), link.now)
    link.run(until=link.now + 10)
    assert gateway.remote == ("192.0.2.77", 4500)
    assert_pair(mobile, gateway)
    assert params(only_child(mobile)).remote == (GATEWAY[0], 4500)
    assert params(only_child(gateway)).remote == ("192.0.2.77", 4500)
    assert link.of_type(ChildSaRekeyed) and not link.of_type(IkeSaFailed)
    assert mobile.counters["retransmitted"] == 0


def test_lifetimes_trigger_rekeys(pool: AddressPool[object]) -> None:
    lifetimes = Lifetimes(ike_rekey_time=100.0, child_rekey_time=30.0)  # rand_time 10 %
    off = Lifetimes(ike_rekey_time=None, child_rekey_time=None)
    link = up(pool, mobile={"lifetimes": lifetimes}, lifetimes=off)
    mobile, _ = sas(link)
    assert link.gateway.get_timer() is None
    timer = link.mobile.get_timer()
    assert timer is not None and 27.0 <= timer <= 30.0  # CHILD rekey_time less jitter
    link.run(until=26.9)
    assert not link.of_type(ChildSaRekeyed)
    link.run(until=30.0)
    assert len(link.of_type(ChildSaRekeyed)) == 1
    link.run(until=89.9)
    assert not link.of_type(IkeSaRekeyed)
    link.run(until=100.0)
    assert len(link.of_type(IkeSaRekeyed)) == 1
    new_mobile, new_gateway = sas(link)
    assert new_mobile is not mobile
    assert_pair(new_mobile, new_gateway)
    assert not link.of_type(IkeSaFailed)


def test_rekey_of_an_unknown_child_sa_is_refused(pool: AddressPool[object]) -> None:
    """§2.25: CHILD_SA_NOT_FOUND; the old SA stays as it was, the IKE SA too."""
    link = up(pool)
    mobile, gateway = sas(link)
    child = only_child(mobile)
    gateway.children.clear()  # the gateway forgot it (as if deleted in a crossing DELETE)
    link.mobile.rekey_child_sa(mobile.local_spi, child.spi_in, link.now)
    link.run(until=link.now + 10)
    (failed,) = link.of_type(ChildSaFailed)
    assert isinstance(failed, ChildSaFailed) and failed.notify == NotifyType.CHILD_SA_NOT_FOUND
    assert only_child(mobile) is child and child.state == ChildSaState.INSTALLED
    assert mobile.established


def test_rekey_of_a_child_sa_being_deleted_gets_temporary_failure(
    pool: AddressPool[object],
) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    child = only_child(mobile)
    link.gateway.delete_child_sa(gateway.local_spi, child.spi_out, link.now)
    link.mobile.rekey_child_sa(mobile.local_spi, child.spi_in, link.now)
    link.run(until=link.now + 100)
    (failed,) = link.of_type(ChildSaFailed)
    assert isinstance(failed, ChildSaFailed) and failed.notify == NotifyType.TEMPORARY_FAILURE
    assert not mobile.children and not gateway.children
    assert mobile.established and gateway.established


def test_ike_rekey_waits_for_a_child_exchange_of_the_peer(pool: AddressPool[object]) -> None:
    """§2.25.2: an IKE SA rekey meeting the peer's CHILD SA exchange gets
    TEMPORARY_FAILURE and is tried again later; both CHILD SAs then move."""
    link = up(pool)
    mobile, gateway = sas(link)
    start = link.now
    link.gateway.create_child_sa(gateway.local_spi, link.now)
    link.mobile.rekey_ike_sa(mobile.local_spi, link.now)
    link.run(until=start + 5)
    assert not link.of_type(IkeSaRekeyed) and len(mobile.children) == 2
    link.run(until=start + 20)
    (rekeyed,) = link.of_type(IkeSaRekeyed)
    assert isinstance(rekeyed, IkeSaRekeyed)
    new_mobile, new_gateway = sas(link)
    assert len(new_mobile.children) == len(new_gateway.children) == 2
    assert not link.of_type(IkeSaFailed)


def test_no_key_exchange_in_ike_auth(pool: AddressPool[object]) -> None:
    """§1.2: the IKE_AUTH CHILD SA takes no KE; PFS groups only in CREATE_CHILD_SA, and
    a gateway configured with PFS accepts a peer that offers none there (strongSwan)."""
    link = up(pool, esp_text="aes128gcm16-x25519")
    mobile, gateway = sas(link)
    spec = only_child(gateway).spec
    assert spec is not None and not spec.of_type(TransformType.DH)
    assert_pair(mobile, gateway)


def test_peer_ike_rekey_while_our_update_is_out(pool: AddressPool[object]) -> None:
    """The gateway rekeys the IKE SA while the mobile node's update is in flight: the
    update is told again on the new IKE SA, which ends up at the new address."""
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    old_mobile, old_gateway = sas(link)
    new_address = ("192.0.2.77", 4500)
    link.mobile.update_addresses(old_mobile.local_spi, new_address, link.now)
    link.gateway.rekey_ike_sa(old_gateway.local_spi, link.now)
    link.run(until=link.now + 10)
    mobile, gateway = sas(link)
    assert gateway.remote == new_address and mobile.local == new_address
    assert_pair(mobile, gateway)
    assert params(only_child(gateway)).remote == new_address or any(
        isinstance(e, ChildSaAddressesUpdated) and e.remote == new_address
        for e in link.gateway_events
    )
    assert gateway.counters["updates_accepted"] == 1  # on the new IKE SA
    assert not link.of_type(IkeSaFailed) and not link.of_type(IkeSaFailed, "gateway")


def test_child_rekey_meets_ike_rekey(pool: AddressPool[object]) -> None:
    """§2.25.2: the gateway rekeys a CHILD SA while the mobile node rekeys the IKE SA:
    the IKE rekey gets TEMPORARY_FAILURE and comes again; the CHILD rekey goes through."""
    link = up(pool)
    mobile, gateway = sas(link)
    start = link.now
    link.gateway.rekey_child_sa(gateway.local_spi, only_child(gateway).spi_in, link.now)
    link.mobile.rekey_ike_sa(mobile.local_spi, link.now)
    link.run(until=start + 20)
    assert len(link.of_type(ChildSaRekeyed)) == 1 and len(link.of_type(IkeSaRekeyed)) == 1
    new_mobile, new_gateway = sas(link)
    assert_pair(new_mobile, new_gateway)
    # The new IKE SA's SK_d keys the next CHILD SA rekey: both sides still agree.
    link.mobile.rekey_child_sa(new_mobile.local_spi, only_child(new_mobile).spi_in, link.now)
    link.run(until=link.now + 10)
    assert_pair(new_mobile, new_gateway)
    assert len(link.of_type(ChildSaRekeyed)) == 2
    assert not link.of_type(IkeSaFailed) and not link.of_type(IkeSaFailed, "gateway")


def test_commands_on_an_old_spi_reach_the_rekeyed_ike_sa(pool: AddressPool[object]) -> None:
    """The glue may still hold the SPI of IkeSaEstablished: after (two) IKE SA rekeys
    its commands reach the IKE SA of today."""
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    first, _ = sas(link)
    spi = first.local_spi
    for _ in range(2):
        (current,) = link.mobile
        link.mobile.rekey_ike_sa(current.local_spi, link.now)
        link.run(until=link.now + 10)
    mobile, gateway = sas(link)
    assert link.mobile.resolve(spi) == mobile.local_spi != spi
    link.mobile.update_addresses(spi, ("192.0.2.77", 4500), link.now)
    link.run(until=link.now + 10)
    assert gateway.remote == ("192.0.2.77", 4500)
    assert link.mobile.resolve(b"unknown!") == b"unknown!"


def test_simultaneous_child_delete(pool: AddressPool[object]) -> None:
    """§1.4.1/§2.25.1: both sides DELETE the same CHILD SA; each answers without it,
    each removes it once."""
    link = up(pool)
    mobile, gateway = sas(link)
    child = only_child(mobile)
    link.mobile.delete_child_sa(mobile.local_spi, child.spi_in, link.now)
    link.gateway.delete_child_sa(gateway.local_spi, child.spi_out, link.now)
    link.run(until=link.now + 10)
    assert not mobile.children and not gateway.children
    assert len(link.of_type(ChildSaDeleted)) == len(link.of_type(ChildSaDeleted, "gateway")) == 1
    assert mobile.established and gateway.established


def test_child_rekey_retries_with_the_group_the_peer_wants(pool: AddressPool[object]) -> None:
    """§1.3: INVALID_KE_PAYLOAD names the gateway's PFS group; the rekey is sent again
    with a KE of that group (one of ours) and succeeds."""
    link = up(
        pool,
        mobile={"esp_text": "aes128gcm16-x25519-modp2048"},
        esp_text="aes128gcm16-modp2048",
    )
    mobile, gateway = sas(link)
    old = params(only_child(mobile))
    link.mobile.rekey_child_sa(mobile.local_spi, old.spi_in, link.now)
    link.run(until=link.now + 10)
    assert_pair(mobile, gateway)
    assert params(only_child(mobile)).spi_in != old.spi_in
    assert not link.of_type(ChildSaFailed)
    creates = [
        t
        for t in link.log
        if parse_header(t.datagram.data).exchange_type == ExchangeType.CREATE_CHILD_SA
    ]
    assert len(creates) == 4  # INVALID_KE_PAYLOAD round, then the rekey
    assert not link.of_type(ChildSaFailed, "gateway")


def test_periodic_liveness_check(pool: AddressPool[object]) -> None:
    """Lifetimes.dpd_delay: a quiet peer is asked every interval; one that stops
    answering fails the IKE SA (§2.4)."""
    lifetimes = Lifetimes(ike_rekey_time=None, child_rekey_time=None, dpd_delay=60.0)
    link = up(pool, mobile={"lifetimes": lifetimes})
    assert link.mobile.get_timer() == 60.0 and link.now == 0.0
    link.run(until=130.0)
    assert len(link.of_type(LivenessConfirmed)) == 2  # at 60 and 120
    link.tamper = lambda datagram, way, n: [] if way == "g->m" else [datagram]
    link.run(until=1000.0)
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and "peer dead" in failed.reason


def test_ike_rekey_retries_with_the_group_the_peer_wants(pool: AddressPool[object]) -> None:
    """§1.3: the gateway's policy changed to another group; INVALID_KE_PAYLOAD names it
    and the IKE SA rekey is sent again with a KE of that group."""
    link = up(pool, mobile={"ike_text": "aes128gcm16-prfsha256-x25519-modp2048"})
    mobile, gateway = sas(link)
    assert mobile._suite is not None and mobile._suite.dh_group == 31  # x25519
    gateway._config = dataclasses.replace(
        gateway.config, ike_proposals=ike("aes128gcm16-prfsha256-modp2048")
    )
    link.mobile.rekey_ike_sa(mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    assert len(link.of_type(IkeSaRekeyed)) == 1
    new_mobile, new_gateway = sas(link)
    assert new_mobile._suite is not None and new_mobile._suite.dh_group == 14  # modp2048
    assert mobile.counters["ike_rekeys_failed"] == 1
    assert_pair(new_mobile, new_gateway)
