"""A NAT's new mapping seen on the peer's ESP in UDP (the kernel's XFRM_MSG_MAPPING):
``Endpoint.nat_mapping`` moves the IKE SA and its CHILD SAs to the peer's new public
address or port where the peer is behind a NAT and we are not (RFC 7296 §2.23, as
strongSwan's update_sa_job), and nowhere else (RFC 4555 §3.12)."""

from __future__ import annotations

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
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import ChildSaAddressesUpdated, IkeSaAddressesUpdated, IkeSaEstablished

PSK = b"a pre-shared key for the gateway"
NEW = (NAT_PUBLIC, 31000)


def connect(pool: AddressPool[object], *, nat: bool, mobike: bool = True) -> Link:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, psk=PSK))
    link = Link(Endpoint(random=seeded(1)), gateway, nat=nat)
    link.mobile.initiate(initiator_config(psk=PSK, mobike=mobike), MOBILE, GATEWAY, 0.0)
    link.run(until=10.0)
    assert link.of_type(IkeSaEstablished, "gateway")
    link.mobile_events.clear()
    link.gateway_events.clear()
    return link


def test_the_gateway_follows_a_peer_behind_a_nat(pool: AddressPool[object]) -> None:
    link = connect(pool, nat=True)
    ((spi, sa),) = link.gateway.sas.items()
    (child,) = sa.children.values()
    assert sa.remote == (NAT_PUBLIC, 14500)
    link.gateway.nat_mapping(spi, NEW, link.now)
    link.run(until=link.now)
    assert sa.remote == NEW
    (moved,) = link.of_type(ChildSaAddressesUpdated, "gateway")
    assert isinstance(moved, ChildSaAddressesUpdated)
    assert (moved.spi_in, moved.spi_out) == (child.spi_in, child.spi_out)
    assert (moved.local, moved.remote, moved.encap) == (sa.local, NEW, True)
    assert link.of_type(IkeSaAddressesUpdated, "gateway")
    assert sa.counters["nat_mappings_followed"] == 1
    # The same mapping again moves nothing.
    link.gateway_events.clear()
    link.gateway.nat_mapping(spi, NEW, link.now)
    link.run(until=link.now)
    assert not link.gateway_events


def test_no_move_behind_our_own_nat_or_without_one(pool: AddressPool[object]) -> None:
    behind = connect(pool, nat=True)
    ((spi, sa),) = behind.mobile.sas.items()
    before = sa.remote
    behind.mobile.nat_mapping(spi, ("192.0.2.99", 4500), behind.now)  # we are the NATed one
    behind.run(until=behind.now)
    assert sa.remote == before and not behind.mobile_events

    plain = connect(pool, nat=False)
    ((spi, sa),) = plain.gateway.sas.items()
    before = sa.remote
    plain.gateway.nat_mapping(spi, ("192.0.2.99", 4500), plain.now)  # a path for MOBIKE
    plain.run(until=plain.now)
    assert sa.remote == before and not plain.gateway_events


def test_a_new_address_only_without_mobike(pool: AddressPool[object]) -> None:
    elsewhere = ("198.51.100.9", 4500)
    with_mobike = connect(pool, nat=True)
    ((spi, sa),) = with_mobike.gateway.sas.items()
    assert sa.mobike
    before = sa.remote
    with_mobike.gateway.nat_mapping(spi, elsewhere, with_mobike.now)  # MOBIKE's to decide
    with_mobike.run(until=with_mobike.now)
    assert sa.remote == before and not with_mobike.gateway_events

    without = connect(pool, nat=True, mobike=False)
    ((spi, sa),) = without.gateway.sas.items()
    assert not sa.mobike
    without.gateway.nat_mapping(spi, elsewhere, without.now)
    without.run(until=without.now)
    assert sa.remote == elsewhere
    assert without.of_type(ChildSaAddressesUpdated, "gateway")
