"""The datapath's limits of a CHILD SA (ChildSaParams.limits): the configured CHILD
lifetimes, strongSwan's rekey_*/life_* with their random parts, the soft time being the
core's own rekey deadline, for the datapath (the kernel's XFRM) to count and expire."""

from __future__ import annotations

from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded

from gateway.pool import AddressPool
from mpa_ike.datapath import NO_LIMITS, ChildSaParams
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import ChildSaEstablished, ChildSaRekeyed
from mpa_ike.ike_config import Lifetimes

PSK = b"a pre-shared key for the gateway"
OFF = Lifetimes(ike_rekey_time=None, child_rekey_time=None)


def established(link: Link, side: str) -> list[ChildSaParams]:
    events = link.of_type(ChildSaEstablished, side)
    return [e.params for e in events if isinstance(e, ChildSaEstablished)]


def connect(pool: AddressPool[object], mobile: Lifetimes, gateway: Lifetimes) -> Link:
    responder = responder_config(pool, psk=PSK, lifetimes=gateway)
    link = Link(Endpoint(random=seeded(1)), Endpoint(random=seeded(2), responder=responder))
    link.mobile.initiate(initiator_config(psk=PSK, lifetimes=mobile), MOBILE, GATEWAY, 0.0)
    link.run(until=10.0)
    return link


def test_limits_follow_the_configured_lifetimes(pool: AddressPool[object]) -> None:
    gateway = Lifetimes(
        ike_rekey_time=None,
        child_rekey_time=600.0,
        child_life_time=660.0,
        child_rekey_bytes=100_000,
        child_life_bytes=120_000,
        child_rekey_packets=1000,
        child_life_packets=2000,
    )
    link = connect(pool, OFF, gateway)
    (params,) = established(link, "gateway")
    limits = params.limits
    assert limits.hard_seconds == 660.0
    assert limits.soft_seconds is not None and 540.0 <= limits.soft_seconds <= 600.0
    # The soft counts less a random part of up to the gap to the hard ones.
    assert (limits.hard_bytes, limits.hard_packets) == (120_000, 2000)
    assert 80_000 <= limits.soft_bytes <= 100_000
    assert 1 <= limits.soft_packets <= 1000
    # Nothing configured: nothing to count, no deadline.
    (mobile,) = established(link, "mobile")
    assert mobile.limits == NO_LIMITS


def test_soft_bytes_without_a_hard_limit_are_exact(pool: AddressPool[object]) -> None:
    link = connect(pool, OFF, Lifetimes(ike_rekey_time=None, child_rekey_bytes=16_000))
    (params,) = established(link, "gateway")
    assert (params.limits.soft_bytes, params.limits.hard_bytes) == (16_000, 0)
    assert (params.limits.soft_packets, params.limits.hard_packets) == (0, 0)


def test_soft_time_is_the_core_rekey_deadline_and_a_rekey_gets_its_own(
    pool: AddressPool[object],
) -> None:
    lifetimes = Lifetimes(ike_rekey_time=None, child_rekey_time=30.0)  # life_time 33 s
    link = connect(pool, lifetimes, OFF)
    (first,) = established(link, "mobile")
    installed, timer = link.now, link.mobile.get_timer()
    assert timer is not None and first.limits.soft_seconds is not None
    assert first.limits.soft_seconds == timer - installed  # one deadline, the kernel's too
    assert first.limits.hard_seconds == 33.0
    link.run(until=timer)
    assert len(link.of_type(ChildSaRekeyed)) == 1
    second = established(link, "mobile")[-1]
    assert second.spi_in != first.spi_in
    assert second.limits.hard_seconds == 33.0
    assert second.limits.soft_seconds is not None and 27.0 <= second.limits.soft_seconds <= 30.0
