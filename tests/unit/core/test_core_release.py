"""A closed IKE SA the endpoint has forgotten is freed by reference counting alone: its
parts refer back to it, and left to Python's cycle collector the SAs of a flood (or a
fuzzing campaign) would pile up between full collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded

from gateway.pool import AddressPool
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import LocalProtocolError
from mpa_ike.ike_config import Lifetimes
from mpa_ike.ike_sa import IkeSa

PSK = b"release test key"
QUIET = Lifetimes(ike_rekey_time=None, child_rekey_time=None)


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def pair() -> Link:
    pool: AddressPool[object] = AddressPool([IPv4Network("10.77.0.0/24")])
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, psk=PSK))
    return Link(Endpoint(random=seeded(1)), gateway)


def connect(link: Link) -> weakref.ref[IkeSa]:
    config = initiator_config(psk=PSK, lifetimes=QUIET)
    link.mobile.initiate(config, MOBILE, GATEWAY, link.now)
    link.run(until=link.now + 1.0)
    [sa] = link.gateway.sas.values()
    assert sa.established
    return weakref.ref(sa)


@pytest.mark.usefixtures("no_cycle_collector")
def test_a_deleted_ike_sa_is_freed_at_once() -> None:
    link = pair()
    gateway_sa = connect(link)
    [spi] = link.mobile.sas
    link.mobile.delete(spi, link.now)
    link.run(until=link.now + 1.0)
    assert not link.gateway.sas
    # What refers to SAs by their IKE_SA_INIT is swept once a second.
    link.now += 2.0
    link.gateway.datagrams_to_send(link.now)
    assert gateway_sa() is None


@pytest.mark.usefixtures("no_cycle_collector")
def test_a_refused_ike_sa_init_leaves_nothing_behind() -> None:
    link = pair()
    before = sum(1 for o in gc.get_objects() if isinstance(o, IkeSa))
    config = initiator_config(psk=PSK, lifetimes=QUIET, ike_text="aes256-sha512-modp4096")
    link.mobile.initiate(config, MOBILE, GATEWAY, link.now)
    link.run(until=link.now + 1.0)
    assert link.gateway.counters["init_refused"] == 1
    after = sum(1 for o in gc.get_objects() if isinstance(o, IkeSa) and not o.is_initiator)
    assert after <= before


def test_only_a_closed_ike_sa_lets_go() -> None:
    link = pair()
    gateway_sa = connect(link)
    sa = gateway_sa()
    assert sa is not None
    with pytest.raises(LocalProtocolError):
        sa.release()
