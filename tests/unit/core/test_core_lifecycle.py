"""Fragmentation, NAT, DELETE both ways, liveness checks, malformed IKE_SA_INIT."""

from __future__ import annotations

from typing import Any

import pytest
from core_harness import (
    GATEWAY,
    MOBILE,
    NAT_PUBLIC,
    Link,
    initiator_config,
    only_lifetime_timers,
    responder_config,
    seeded,
)
from core_pki import Pki

from gateway.pool import AddressPool
from mpa_ike.constants import ExchangeType, NotifyType, PayloadType
from mpa_ike.datagram import Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    LeaseReleased,
    LivenessConfirmed,
)
from mpa_ike.wire import NotifyPayload, parse_header, parse_message


def up(
    pki: Pki,
    pool: AddressPool[object],
    *,
    credential: object = None,
    nat: bool = False,
    **mobile_options: Any,
) -> Link:
    gateway = Endpoint(
        random=seeded(2),
        responder=responder_config(pool, credential=credential or pki.rsa),  # type: ignore[arg-type]
    )
    link = Link(Endpoint(random=seeded(1)), gateway, nat=nat)
    config = initiator_config(ca=pki.ca.cert, **mobile_options)
    link.mobile.initiate(config, MOBILE, GATEWAY, 0.0)
    link.run()
    assert link.of_type(IkeSaEstablished, "gateway") and link.of_type(IkeSaEstablished)
    return link


def test_fragmented_certificate_chain(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool, credential=pki.chain)
    sizes = [len(t.datagram.data) for t in link.log]
    assert max(sizes) <= 1280 - 20 - 8 - 4
    fragments = [
        t for t in link.log if parse_header(t.datagram.data).next_payload == PayloadType.SKF
    ]
    assert len(fragments) >= 3  # the chain of three RSA certificates does not fit in one


def test_fragments_lost_and_retransmitted(pki: Pki, pool: AddressPool[object]) -> None:
    def lose_second_fragment(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [] if (way, n) == ("g->m", 2) else [datagram]

    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, credential=pki.chain))
    link = Link(Endpoint(random=seeded(1)), gateway, tamper=lose_second_fragment)
    link.mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
    link.run()
    assert link.of_type(IkeSaEstablished) and link.now == 4.0
    (sa,) = link.gateway
    assert sa.counters["retransmissions_answered"] == 1


def test_no_fragmentation_unless_both_support_it(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool, credential=pki.chain, fragmentation=False)
    assert all(parse_header(t.datagram.data).next_payload != PayloadType.SKF for t in link.log)


def test_nat_detected_floats_and_encapsulates(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool, nat=True, mobike=False)
    established = link.of_type(IkeSaEstablished, "gateway")[0]
    assert isinstance(established, IkeSaEstablished) and established.nat_detected
    assert established.remote == (NAT_PUBLIC, 14500)
    child = link.of_type(ChildSaEstablished, "mobile")[0]
    assert isinstance(child, ChildSaEstablished) and child.params.encap
    assert child.params.local == (MOBILE[0], 4500)


def test_without_nat_or_mobike_ike_stays_on_500(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool, mobike=False)
    assert {t.datagram.dst[1] for t in link.log} == {500}
    established = link.of_type(IkeSaEstablished)[0]
    assert isinstance(established, IkeSaEstablished) and not established.mobike


@pytest.mark.parametrize("who", ["mobile", "gateway"])
def test_delete_ike_sa(pki: Pki, pool: AddressPool[object], who: str) -> None:
    link = up(pki, pool)
    deleter = link.mobile if who == "mobile" else link.gateway
    (sa,) = deleter
    deleter.delete(sa.local_spi, link.now)
    link.run()
    other = "gateway" if who == "mobile" else "mobile"
    (deleted,) = link.of_type(IkeSaDeleted, who)
    assert isinstance(deleted, IkeSaDeleted) and not deleted.by_peer
    (peer_deleted,) = link.of_type(IkeSaDeleted, other)
    assert isinstance(peer_deleted, IkeSaDeleted) and peer_deleted.by_peer
    for side in ("mobile", "gateway"):
        assert len(link.of_type(ChildSaDeleted, side)) == 1
    assert link.of_type(LeaseReleased, "gateway")
    assert pool.available(4) == pool.size(4)
    assert not list(link.mobile) and not list(link.gateway)


def test_delete_child_sa_keeps_ike_sa(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool)
    (sa,) = link.mobile
    (spi_in,) = sa.children
    link.mobile.delete_child_sa(sa.local_spi, spi_in, link.now)
    link.run()
    for side in ("mobile", "gateway"):
        (deleted,) = link.of_type(ChildSaDeleted, side)
        assert isinstance(deleted, ChildSaDeleted)
    assert not sa.children and sa.established
    (gateway_sa,) = link.gateway
    assert not gateway_sa.children
    assert pool.available(4) == pool.size(4) - 1  # the lease stays with the IKE SA


def test_liveness_check_both_ways(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool)
    (mobile_sa,) = link.mobile
    (gateway_sa,) = link.gateway
    # Both ask at once: each answers the other's request while its own is out (§2.3).
    link.mobile.check_liveness(mobile_sa.local_spi, 1.0)
    link.gateway.check_liveness(gateway_sa.local_spi, 1.0)
    link.run()
    assert link.of_type(LivenessConfirmed, "mobile") and link.of_type(LivenessConfirmed, "gateway")
    assert only_lifetime_timers(link.mobile)


def test_dead_peer_detected_by_liveness_check(pki: Pki, pool: AddressPool[object]) -> None:
    link = up(pki, pool)
    link.tamper = lambda datagram, way, n: []
    (sa,) = link.mobile
    link.now = 100.0
    link.mobile.check_liveness(sa.local_spi, link.now)
    link.run(until=300.0)
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed)
    assert link.now == pytest.approx(265.06112)
    assert link.of_type(ChildSaDeleted)


def _init_request(pki: Pki) -> bytes:
    mobile = Endpoint(random=seeded(1))
    mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
    (request,) = mobile.datagrams_to_send(0.0)
    return request.data


def _last_payload_one_byte_longer(data: bytes) -> bytes:
    """The request with a byte added to its last payload, every length kept true: for an
    IKE_SA_INIT of ours, N(SIGNATURE_HASH_ALGORITHMS) with data of odd length."""
    offset, next_payload = 28, data[16]
    while True:
        following = data[offset]
        if following == 0:
            break
        offset += int.from_bytes(data[offset + 2 : offset + 4], "big")
    assert next_payload
    length = int.from_bytes(data[offset + 2 : offset + 4], "big") + 1
    grown = data[: offset + 2] + length.to_bytes(2, "big") + data[offset + 4 :] + b"\x06"
    return grown[:24] + len(grown).to_bytes(4, "big") + grown[28:]


@pytest.mark.parametrize(
    ("mutate", "notify"),
    [
        (lambda d: d[:17] + b"\x30" + d[18:], NotifyType.INVALID_MAJOR_VERSION),
        (lambda d: d[:-3], NotifyType.INVALID_SYNTAX),
        (_last_payload_one_byte_longer, NotifyType.INVALID_SYNTAX),
    ],
)
def test_malformed_init_request_is_answered(
    pki: Pki, pool: AddressPool[object], mutate: object, notify: NotifyType
) -> None:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, credential=pki.rsa))
    data = mutate(_init_request(pki))  # type: ignore[operator]
    gateway.receive_datagram(data, MOBILE, GATEWAY, 0.0)
    (answer,) = gateway.datagrams_to_send(0.0)
    message = parse_message(answer.data)
    assert message.header.exchange_type == ExchangeType.IKE_SA_INIT
    assert message.header.is_response
    (payload,) = message.payloads
    assert isinstance(payload, NotifyPayload) and payload.notify_type == notify
    assert not list(gateway)
    assert gateway.statistics().get("internal_errors", 0) == 0


def test_unknown_spi_dropped_and_answered(pki: Pki, pool: AddressPool[object]) -> None:
    """§2.21.4: a request for an unknown SPI is dropped, counted and answered with an
    unprotected INVALID_IKE_SPI (SPIs, exchange type and Message ID copied)."""
    link = up(pki, pool)
    auth = next(t.datagram for t in link.log if t.direction == "m->g" and t.datagram.dst[1] == 4500)
    forged = bytes(8) + b"\x01" * 8 + auth.data[16:]
    link.gateway.receive_datagram(forged, auth.src, auth.dst, 1.0)
    assert link.gateway.counters["dropped_unknown_spi"] == 1
    (answer,) = link.gateway.datagrams_to_send(1.0)
    assert (answer.src, answer.dst) == (auth.dst, auth.src)
    message = parse_message(answer.data)
    request = parse_header(forged)
    assert (message.header.spi_i, message.header.spi_r) == (request.spi_i, request.spi_r)
    assert message.header.exchange_type == request.exchange_type
    assert message.header.message_id == request.message_id
    assert message.header.is_response and not message.header.is_initiator
    (payload,) = message.payloads
    assert isinstance(payload, NotifyPayload)
    assert payload.notify_type == NotifyType.INVALID_IKE_SPI


def test_unsupported_critical_payload_in_init_is_answered(
    pki: Pki, pool: AddressPool[object]
) -> None:
    from mpa_ike.constants import PayloadType
    from mpa_ike.wire import Message, UnknownPayload, serialize_message

    request = parse_message(_init_request(pki))
    odd = UnknownPayload(PayloadType(200), b"?", critical=True)
    data = serialize_message(Message(request.header, (*request.payloads, odd)))
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, credential=pki.rsa))
    gateway.receive_datagram(data, MOBILE, GATEWAY, 0.0)
    (answer,) = gateway.datagrams_to_send(0.0)
    (payload,) = parse_message(answer.data).payloads
    assert isinstance(payload, NotifyPayload)
    assert payload.notify_type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert payload.data == bytes([200])
