"""Lost, duplicated and corrupted datagrams; retransmission timers; COOKIE; INVALID_KE."""

from __future__ import annotations

from typing import Any

import pytest
from core_harness import (
    GATEWAY,
    MOBILE,
    Link,
    initiator_config,
    responder_config,
    seeded,
)
from core_pki import Pki

from gateway.pool import AddressPool
from mpa_ike.constants import DhGroup, ExchangeType, HeaderFlag, NotifyType
from mpa_ike.datagram import Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import (
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    LivenessConfirmed,
)
from mpa_ike.retransmit import INIT_RETRANSMIT, RetransmitPolicy
from mpa_ike.wire import IkeHeader, Message, parse_header, parse_message, serialize_message
from mpa_ike.wire.notify import invalid_ke_notify

# A successful EAP-MSCHAPv2 run has 6 requests and 6 responses (INIT, AUTH x5).
STEPS = 6
SCHEDULE = [4.0, 11.2, 24.16, 47.488, 89.4784, 165.06112]


def make_link(pki: Pki, pool: AddressPool[object], **gateway_options: Any) -> Link:
    threshold = gateway_options.pop("half_open_threshold", 30)
    gateway = Endpoint(
        random=seeded(2),
        responder=responder_config(pool, credential=pki.rsa, **gateway_options),
        half_open_threshold=threshold,
    )
    return Link(Endpoint(random=seeded(1)), gateway)


def start(link: Link, pki: Pki, **options: Any) -> None:
    link.mobile.initiate(initiator_config(ca=pki.ca.cert, **options), MOBILE, GATEWAY, link.now)


def assert_up(link: Link) -> None:
    for side in ("mobile", "gateway"):
        assert len(link.of_type(IkeSaEstablished, side)) == 1
        assert len(link.of_type(ChildSaEstablished, side)) == 1


@pytest.mark.parametrize("direction", ["m->g", "g->m"])
@pytest.mark.parametrize("index", range(STEPS))
def test_lost_datagram_is_retransmitted(
    pki: Pki, pool: AddressPool[object], direction: str, index: int
) -> None:
    def lose(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [] if (way, n) == (direction, index) else [datagram]

    link = make_link(pki, pool)
    link.tamper = lose
    start(link, pki)
    link.run()
    assert_up(link)
    # One retransmission timeout: IKE_SA_INIT's own, or that of every other request.
    timeout = INIT_RETRANSMIT.timeout if index == 0 else RetransmitPolicy().timeout
    assert link.now == pytest.approx(timeout)
    assert link.timer_fires == pytest.approx([timeout])
    # The retransmission is bit-identical (RFC 7296 §2.1).
    requests = [t.datagram.data for t in link.log if t.direction == "m->g"]
    assert requests.count(requests[index]) == 2


@pytest.mark.parametrize("direction", ["m->g", "g->m"])
@pytest.mark.parametrize("index", range(STEPS))
def test_duplicated_datagram_is_harmless(
    pki: Pki, pool: AddressPool[object], direction: str, index: int
) -> None:
    def duplicate(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [datagram, datagram] if (way, n) == (direction, index) else [datagram]

    link = make_link(pki, pool)
    link.tamper = duplicate
    start(link, pki)
    link.run()
    assert_up(link)
    assert link.now == 0.0
    assert len(list(link.gateway)) == 1
    assert link.gateway.counters["internal_errors"] == 0


def test_corrupted_auth_request_is_dropped_silently(pki: Pki, pool: AddressPool[object]) -> None:
    def corrupt(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if (way, n) == ("m->g", 2):
            data = bytearray(datagram.data)
            data[-1] ^= 0xFF
            return [Datagram(bytes(data), datagram.src, datagram.dst)]
        return [datagram]

    link = make_link(pki, pool)
    link.tamper = corrupt
    start(link, pki)
    link.run()
    assert_up(link)
    (sa,) = link.gateway
    assert sa.counters["dropped_integrity"] == 1
    assert link.gateway.statistics()["dropped_integrity"] == 1
    assert link.now == 4.0


def test_give_up_after_five_retransmissions(pki: Pki, pool: AddressPool[object]) -> None:
    """strongSwan's schedule, here given to IKE_SA_INIT too."""
    link = make_link(pki, pool)
    link.tamper = lambda datagram, way, n: []
    start(link, pki, init_retransmit=RetransmitPolicy())
    assert link.mobile.get_timer() == 4.0
    link.run()
    assert link.timer_fires == pytest.approx(SCHEDULE)
    sent = [t.time for t in link.log if t.direction == "m->g"]
    assert sent == pytest.approx([0.0, *SCHEDULE[:-1]])
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and "retransmissions" in failed.reason
    assert not list(link.mobile)


def test_ike_sa_init_is_sent_again_sooner(pki: Pki, pool: AddressPool[object]) -> None:
    """A repeat of IKE_SA_INIT costs no state: ten sends 0.1 s apart, then doubling."""
    link = make_link(pki, pool)
    link.tamper = lambda datagram, way, n: []
    start(link, pki)
    link.run()
    sent = [t.time for t in link.log if t.direction == "m->g"]
    assert len(sent) == INIT_RETRANSMIT.tries + 1 == 19
    assert sent[:13] == pytest.approx([n / 10 for n in range(11)] + [1.2, 1.6])
    assert link.timer_fires[-1] == pytest.approx(INIT_RETRANSMIT.total())
    assert 100 < INIT_RETRANSMIT.total() < 165
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and "retransmissions" in failed.reason


def is_init(datagram: Datagram) -> bool:
    return parse_header(datagram.data).exchange_type == ExchangeType.IKE_SA_INIT


def test_the_request_with_a_cookie_keeps_the_usual_schedule(
    pki: Pki, pool: AddressPool[object]
) -> None:
    """Three first requests lost (a flood's draw); the fourth gets a COOKIE; the retry
    with it is lost once and goes again after strongSwan's 4 s."""
    link = make_link(pki, pool, half_open_threshold=0)
    link.tamper = lambda datagram, way, n: [] if way == "m->g" and n in (0, 1, 2, 4) else [datagram]
    start(link, pki)
    link.run()
    assert_up(link)
    inits = [t for t in link.log if t.direction == "m->g" and is_init(t.datagram)]
    with_cookie = [t for t in inits if parse_message(t.datagram.data).notify(NotifyType.COOKIE)]
    assert [t.time for t in inits[:4]] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [t.time for t in with_cookie] == pytest.approx([0.3, 4.3])
    assert len(inits) == 6 and link.gateway.counters["cookies_sent"] == 1


def test_give_up_during_ike_auth_releases_nothing(pki: Pki, pool: AddressPool[object]) -> None:
    link = make_link(pki, pool)
    link.tamper = lambda datagram, way, n: [datagram] if (way, n) != ("g->m", 1) or False else []
    # Lose every answer after IKE_SA_INIT: the gateway's half-open SA times out at 30 s.
    link.tamper = lambda datagram, way, n: [] if way == "g->m" and n >= 1 else [datagram]
    start(link, pki)
    link.run()
    assert link.of_type(IkeSaFailed, "mobile")
    (gateway_failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(gateway_failed, IkeSaFailed) and "half-open" in gateway_failed.reason
    assert pool.available(4) == pool.size(4)


@pytest.mark.parametrize("threshold", [0, 1])
def test_cookie_under_half_open_threshold(
    pki: Pki, pool: AddressPool[object], threshold: int
) -> None:
    link = make_link(pki, pool, half_open_threshold=threshold)
    if threshold:
        # Someone else holds a half-open SA, so our request crosses the threshold.
        other = Endpoint(random=seeded(7))
        other.initiate(initiator_config(ca=pki.ca.cert), ("192.0.2.99", 500), GATEWAY, 0.0)
        for datagram in other.datagrams_to_send(0.0):
            link.gateway.receive_datagram(datagram.data, datagram.src, datagram.dst, 0.0)
        link.gateway.datagrams_to_send(0.0)
        assert link.gateway.half_open_count() == 1
    start(link, pki)
    link.run(until=1.0)
    assert link.gateway.counters["cookies_sent"] == 1
    assert link.of_type(IkeSaEstablished, "gateway")
    assert link.of_type(IkeSaEstablished, "mobile")
    inits = [t.datagram.data for t in link.log if t.direction == "m->g"][:2]
    second = parse_header(inits[1])
    assert second.message_id == 0 and inits[1][28 + 4 : 28 + 8] == b"\x00\x00\x40\x06"


def test_invalid_ke_retry(pki: Pki, pool: AddressPool[object]) -> None:
    link = make_link(pki, pool, ike_text="aes128gcm16-prfsha256-ecp256")
    start(link, pki, ike_text="aes128gcm16-prfsha256-x25519-ecp256")
    link.run()
    assert_up(link)
    inits = [t for t in link.log if parse_header(t.datagram.data).exchange_type == 34]
    assert len(inits) == 4  # request, INVALID_KE, retried request, response
    assert link.gateway.counters["init_refused"] == 1


def test_a_late_invalid_ke_for_an_earlier_copy_is_left_alone(
    pki: Pki, pool: AddressPool[object]
) -> None:
    """Two copies with X25519 both get INVALID_KE_PAYLOAD(ECP-256): one retry."""
    held: list[Datagram] = []

    def hold_two(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if way == "g->m" and n in (0, 1):
            held.append(datagram)
            return []
        return [datagram]

    link = make_link(pki, pool, ike_text="aes128gcm16-prfsha256-ecp256")
    link.tamper = hold_two
    start(link, pki, ike_text="aes128gcm16-prfsha256-x25519-ecp256")
    link.run(until=0.15)
    assert len(held) == 2
    for datagram in held:
        link.mobile.receive_datagram(datagram.data, datagram.src, datagram.dst, link.now)
    link.run()
    assert_up(link)
    inits = [t for t in link.log if t.direction == "m->g" and is_init(t.datagram)]
    assert len(inits) == 3 and link.gateway.counters["init_refused"] == 2


def test_invalid_ke_for_a_group_never_proposed_is_refused(pki: Pki) -> None:
    mobile = Endpoint(random=seeded(1))
    sa = mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
    mobile.datagrams_to_send(0.0)
    header = IkeHeader(sa.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, int(HeaderFlag.RESPONSE), 0)
    answer = serialize_message(Message(header, (invalid_ke_notify(DhGroup.ECP384),)))
    mobile.receive_datagram(answer, GATEWAY, MOBILE, 0.1)
    failed = mobile.next_event()
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.INVALID_KE_PAYLOAD
    assert mobile.datagrams_to_send(0.1) == []


def test_lost_authentication_failure_is_resent_after_close(
    pki: Pki, pool: AddressPool[object]
) -> None:
    """The gateway closed the SA on EAP failure; the lost answer is still resent (§2.1)."""
    link = make_link(pki, pool)
    last_answer = 4  # INIT, IDr/AUTH/EAP, MSCHAPv2 challenge... the failure is answer 4

    def lose(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [] if (way, n) == ("g->m", last_answer) else [datagram]

    link.tamper = lose
    start(link, pki, password="wrong")
    link.run()
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert link.now == 4.0
    assert link.gateway.counters["retransmissions_answered_after_close"] == 1
    assert pool.available(4) == pool.size(4)


def test_lost_delete_answer_is_resent_after_close(pki: Pki, pool: AddressPool[object]) -> None:
    link = make_link(pki, pool)
    start(link, pki)
    link.run()
    answers = sum(1 for t in link.log if t.direction == "g->m")
    link.tamper = lambda datagram, way, n: [] if (way, n) == ("g->m", answers) else [datagram]
    (sa,) = link.mobile
    link.mobile.delete(sa.local_spi, link.now)
    link.run()
    assert link.of_type(IkeSaDeleted) and link.now == 4.0
    assert link.gateway.counters["retransmissions_answered_after_close"] == 1


def test_forged_malformed_request_is_not_answered(pki: Pki, pool: AddressPool[object]) -> None:
    """A request with the right SPIs and Message ID that does not even parse is a
    forgery as far as we know: no answer, and the Message ID does not move."""
    link = make_link(pki, pool)
    start(link, pki)
    link.run()
    (sa,) = link.gateway
    auth = next(t.datagram for t in link.log if t.direction == "m->g" and t.datagram.dst[1] == 4500)
    header = parse_header(auth.data)
    forged = bytearray(auth.data[:28])
    forged[16] = 41  # Notify first, then garbage
    forged[20:24] = (6).to_bytes(4, "big")  # the next Message ID of the mobile node
    forged += b"\x00\x00\x00\x03\xff"
    forged[24:28] = len(forged).to_bytes(4, "big")
    assert header.spi_r == sa.spi_r
    link.gateway.receive_datagram(bytes(forged), auth.src, auth.dst, 1.0)
    assert link.gateway.datagrams_to_send(1.0) == []
    assert sa.counters["dropped_integrity"] == 1
    (mobile_sa,) = link.mobile
    link.mobile.check_liveness(mobile_sa.local_spi, 1.0)
    link.run()
    assert link.of_type(LivenessConfirmed)
