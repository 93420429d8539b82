"""Fuzzing: nothing raises out of receive_datagram, whatever the bytes (h11's invariant).

Inputs are random bytes and mutations of real datagrams of a handshake, fed to
a gateway (new and established SAs) and to a mobile node mid-handshake. The
endpoint's safety net counts internal errors; the property is that it never has to.
"""

from __future__ import annotations

from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded
from core_pki import Pki
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pool import AddressPool
from mpa_ike.endpoint import Endpoint

_recorded: dict[str, list[bytes]] = {}


def _recording(pki: Pki) -> list[bytes]:
    if "log" not in _recorded:
        gateway = Endpoint(
            random=seeded(2), responder=responder_config(AddressPool([]), credential=pki.rsa)
        )
        link = Link(Endpoint(random=seeded(1)), gateway)
        link.mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
        link.run()
        _recorded["log"] = [t.datagram.data for t in link.log]
    return _recorded["log"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _fresh_pair(pki: Pki) -> tuple[Endpoint, Endpoint]:
    gateway = Endpoint(
        random=seeded(2), responder=responder_config(AddressPool([]), credential=pki.rsa)
    )
    mobile = Endpoint(random=seeded(1))
    mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
    return gateway, mobile


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_receive_datagram_never_raises(pki: Pki, data: st.DataObject) -> None:
    seeds = _recording(pki)
    payload = data.draw(st.one_of(st.binary(max_size=300), mutated(seeds)))
    gateway, mobile = _fresh_pair(pki)
    # Bring the gateway to a half-open SA first, so mutations can reach it.
    gateway.receive_datagram(seeds[0], MOBILE, GATEWAY, 0.0)
    for endpoint in (gateway, mobile):
        endpoint.receive_datagram(payload, MOBILE, GATEWAY, 1.0)
        endpoint.receive_datagram(payload, GATEWAY, MOBILE, 1.0)
        endpoint.datagrams_to_send(1.0)
        endpoint.handle_timer(1.0)
        assert endpoint.counters["internal_errors"] == 0
        for sa in endpoint:
            assert sa.counters["internal_errors"] == 0


def _recording_with_directions(pki: Pki) -> list[tuple[str, bytes]]:
    if "directed" not in _recorded_directed:
        gateway = Endpoint(
            random=seeded(2), responder=responder_config(AddressPool([]), credential=pki.rsa)
        )
        link = Link(Endpoint(random=seeded(1)), gateway)
        link.mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
        link.run()
        (sa,) = link.mobile
        link.mobile.check_liveness(sa.local_spi, 1.0)
        link.mobile.delete(sa.local_spi, 1.0)
        link.run()
        _recorded_directed["directed"] = [(t.direction, t.datagram.data) for t in link.log]
    return _recorded_directed["directed"]


_recorded_directed: dict[str, list[tuple[str, bytes]]] = {}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_recorded_datagrams_in_any_order(pki: Pki, data: st.DataObject) -> None:
    """Replaying a real exchange's datagrams shuffled, repeated or left out never raises."""
    recording = _recording_with_directions(pki)
    picks = data.draw(st.lists(st.sampled_from(recording), max_size=25))
    gateway, mobile = _fresh_pair(pki)
    now = 0.0
    for direction, payload in picks:
        now += data.draw(st.sampled_from([0.0, 0.5, 5.0, 40.0]))
        sink = gateway if direction == "m->g" else mobile
        src, dst = (MOBILE, GATEWAY) if direction == "m->g" else (GATEWAY, MOBILE)
        sink.receive_datagram(payload, src, dst, now)
        for endpoint in (gateway, mobile):
            endpoint.handle_timer(now)
            endpoint.datagrams_to_send(now)
            while endpoint.next_event() is not None:
                pass
    assert gateway.counters["internal_errors"] == 0
    assert mobile.counters["internal_errors"] == 0
