"""Fuzzing the exchanges of an established IKE SA: MOBIKE updates, CHILD and IKE SA
rekeys (with collisions), additional CHILD SAs, DELETE. A session is recorded once;
its authentic datagrams are then replayed shuffled, repeated or left out to a fresh
pair that went through the same handshake (same seeds, so the same keys), which
drives every handler through orders no peer would choose. Nothing may raise."""

from __future__ import annotations

from core_harness import GATEWAY, MOBILE, POOL, Link, initiator_config, responder_config, seeded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pool import AddressPool
from mpa_ike.endpoint import Endpoint
from mpa_ike.mobike import AddressPolicy, AddressPolicyMode

PSK = b"a pre-shared key for the gateway"
LEASE = ("10.10.0.1", 4500)


def _established() -> Link:
    gateway = Endpoint(
        random=seeded(2),
        responder=responder_config(
            AddressPool([POOL]), psk=PSK, address_policy=AddressPolicy(AddressPolicyMode.ANY)
        ),
    )
    link = Link(Endpoint(random=seeded(1)), gateway)
    link.mobile.initiate(initiator_config(psk=PSK), MOBILE, GATEWAY, 0.0)
    link.run(until=10.0)
    return link


_recorded: dict[str, list[tuple[str, bytes]]] = {}


def _session() -> list[tuple[str, bytes]]:
    if "session" not in _recorded:
        link = _established()
        start = len(link.log)
        (mobile,) = link.mobile
        (gateway,) = link.gateway
        (child,) = mobile.children.values()
        link.mobile.update_addresses(mobile.local_spi, LEASE, link.now)
        link.gateway.rekey_child_sa(gateway.local_spi, child.spi_out, link.now)
        link.run(until=link.now + 10)
        (child,) = mobile.children.values()
        link.mobile.rekey_child_sa(mobile.local_spi, child.spi_in, link.now)
        link.gateway.rekey_child_sa(gateway.local_spi, child.spi_out, link.now)
        link.run(until=link.now + 10)
        link.mobile.create_child_sa(mobile.local_spi, link.now)
        link.mobile.send_additional_addresses(mobile.local_spi, [], link.now)
        link.run(until=link.now + 10)
        link.mobile.rekey_ike_sa(mobile.local_spi, link.now)
        link.gateway.rekey_ike_sa(gateway.local_spi, link.now)
        link.run(until=link.now + 10)
        (mobile,) = link.mobile
        link.mobile.delete(mobile.local_spi, link.now)
        link.run(until=link.now + 10)
        _recorded["session"] = [(t.direction, t.datagram.data) for t in link.log[start:]]
    return _recorded["session"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_established_exchanges_in_any_order(data: st.DataObject) -> None:
    session = _session()
    assert len(session) > 20
    picks = data.draw(st.lists(st.sampled_from(session), max_size=30))
    link = _established()
    now = link.now
    for direction, payload in picks:
        now += data.draw(st.sampled_from([0.0, 0.5, 5.0, 40.0]))
        sink = link.gateway if direction == "m->g" else link.mobile
        src, dst = (
            (LEASE, (GATEWAY[0], 4500)) if direction == "m->g" else ((GATEWAY[0], 4500), LEASE)
        )
        if data.draw(st.booleans()):
            src = (MOBILE[0], 4500) if direction == "m->g" else src
        sink.receive_datagram(payload, src, dst, now)
        if data.draw(st.integers(0, 4)) == 0:
            (link.mobile if direction == "m->g" else link.gateway).handle_timer(now)
        for endpoint in (link.gateway, link.mobile):
            endpoint.handle_timer(now)
            endpoint.datagrams_to_send(now)
            while endpoint.next_event() is not None:
                pass
    for endpoint in (link.gateway, link.mobile):
        assert endpoint.statistics()["internal_errors"] == 0
