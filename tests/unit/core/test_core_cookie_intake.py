"""The COOKIE answer from the octets (RFC 7296 §2.6): under load, a new IKE_SA_INIT
request without a COOKIE is answered by ``Endpoint._answered_with_cookie`` on what
``mpa_ike.admission.read_new_init_request`` reads. It must answer, drop and count
exactly as the full intake does, whatever the requests and in whatever order, and read
any octets without raising."""

from __future__ import annotations

from core_harness import GATEWAY, POOL, initiator_config, responder_config, seeded
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pool import AddressPool
from mpa_ike.admission import read_new_init_request
from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address, Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import CodecError
from mpa_ike.ike_config import AdmissionLimits, Lifetimes
from mpa_ike.wire import IkeHeader, Message, NoncePayload, parse_message, serialize_message
from mpa_ike.wire.notify import cookie_notify

PSK = b"cookie intake key"
QUIET = Lifetimes(ike_rekey_time=None, child_rekey_time=None)
SOURCES = ("192.0.2.7", "192.0.2.8", "198.18.0.1", "2001:db8::7")


class FullIntake(Endpoint):
    """The endpoint without the quick answer: every request through the full intake."""

    def _answered_with_cookie(self, data: bytes, src: Address, dst: Address, now: float) -> bool:
        return False


def template(seed: int) -> Message:
    node = Endpoint(random=seeded(seed))
    node.initiate(initiator_config(psk=PSK, lifetimes=QUIET), ("192.0.2.7", 500), GATEWAY, 0.0)
    (datagram,) = node.datagrams_to_send(0.0)
    return parse_message(datagram.data)


TEMPLATES = [template(seed) for seed in (1, 2)]


def gateways(threshold: int, limit: int, burst: int) -> tuple[Endpoint, Endpoint]:
    limits = AdmissionLimits(half_open_limit=limit, init_burst=burst, init_rate=1.0)
    found = []
    for kind in (Endpoint, FullIntake):
        config = responder_config(AddressPool([POOL]), psk=PSK, lifetimes=QUIET, limits=limits)
        found.append(kind(random=seeded(5), responder=config, half_open_threshold=threshold))
    return found[0], found[1]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """An IKE_SA_INIT request of our initiator with its SPIi, nonce and payload order
    drawn, maybe a COOKIE first, maybe a few octets changed."""
    message = draw(st.sampled_from(TEMPLATES))
    nonce = NoncePayload(draw(st.binary(min_size=16, max_size=64)))
    payloads = [nonce if isinstance(p, NoncePayload) else p for p in message.payloads]
    payloads = draw(st.permutations(payloads))
    if draw(st.booleans()):
        payloads = [cookie_notify(draw(st.binary(min_size=1, max_size=40))), *payloads]
    spi = draw(st.binary(min_size=8, max_size=8))
    old = message.header
    header = IkeHeader(spi, bytes(8), old.exchange_type, old.flags, old.message_id)
    data = bytearray(serialize_message(Message(header, tuple(payloads))))
    for _ in range(draw(st.integers(0, 2))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(requests(), st.sampled_from(SOURCES), st.booleans()), max_size=8),
    st.integers(0, 2),
    st.integers(2, 4),
    st.integers(1, 3),
)
def test_the_quick_answer_is_the_full_intakes(
    sent: list[tuple[bytes, str, bool]], threshold: int, limit: int, burst: int
) -> None:
    quick, full = gateways(threshold, limit, burst)
    now, previous = 1.0, b""
    for data, source, again in sent:
        data = previous if again and previous else data  # a retransmission
        previous = data
        datagram = Datagram(data, (source, 500), GATEWAY)
        for gateway in (quick, full):
            gateway.receive_datagram(datagram.data, datagram.src, datagram.dst, now)
        assert quick.datagrams_to_send(now) == full.datagrams_to_send(now)
        assert quick.counters == full.counters
        assert quick.half_open_count() == full.half_open_count()
        now += 0.25


def test_a_flood_under_load_takes_the_quick_answer() -> None:
    quick, _ = gateways(threshold=0, limit=10, burst=20)
    data = serialize_message(TEMPLATES[0])
    quick.receive_datagram(data, ("198.18.0.1", 500), GATEWAY, 1.0)
    (answer,) = quick.datagrams_to_send(1.0)
    assert quick.counters["cookies_sent"] == 1
    assert answer.data[:8] == data[:8] and answer.dst == ("198.18.0.1", 500)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120) | requests())
def test_reading_never_raises_and_agrees_with_the_parser(data: bytes) -> None:
    found = read_new_init_request(data)
    if found is None:
        return
    assert found.spi_i == data[:8]
    try:
        message = parse_message(data)
    except CodecError:
        return
    nonce = message.find(NoncePayload)
    assert nonce is not None and found.scan.nonce == nonce.data


def test_reading_skips_what_is_no_new_request() -> None:
    data = bytearray(serialize_message(TEMPLATES[0]))
    assert read_new_init_request(bytes(data)) is not None
    for at, value in ((8, 1), (18, 35), (19, 0x20), (19, 0x28), (23, 1)):
        changed = bytearray(data)
        changed[at] = value
        assert read_new_init_request(bytes(changed)) is None, (at, value)
    assert read_new_init_request(bytes(data[:40])) is None


def test_a_request_again_with_its_nonce_gets_its_answer_again() -> None:
    """§2.1: the same SPIi and Ni from the same address, in other octets, is the
    half-open SA's request again; under load too, it gets that SA's answer."""
    first = serialize_message(TEMPLATES[0])
    payloads = TEMPLATES[0].payloads
    again = serialize_message(Message(TEMPLATES[0].header, (*payloads[1:], payloads[0])))
    assert again != first
    answers = []
    for gateway in gateways(threshold=1, limit=10, burst=20):
        gateway.receive_datagram(first, ("192.0.2.7", 500), GATEWAY, 1.0)
        gateway.receive_datagram(again, ("192.0.2.7", 500), GATEWAY, 1.1)
        answers.append(gateway.datagrams_to_send(1.1))
        assert gateway.counters["cookies_sent"] == 0
    quick, full = answers
    assert quick == full and len(quick) == 2 and quick[0] == quick[1]


def test_under_load_only_a_valid_cookie_takes_a_token() -> None:
    """A spoofed flood is answered without state and leaves the rate table empty; the
    requests that return their COOKIE are limited per source."""
    quick, _ = gateways(threshold=0, limit=10, burst=1)
    for n in range(50):
        data = bytes([n]) * 8 + serialize_message(TEMPLATES[0])[8:]
        quick.receive_datagram(data, (f"198.18.0.{n}", 500), GATEWAY, 1.0)
    assert len(quick.datagrams_to_send(1.0)) == 50
    assert len(quick._init_rate) == 0 and quick.counters["dropped_init_rate"] == 0
    for attempt in range(2):
        first = serialize_message(TEMPLATES[attempt])
        quick.receive_datagram(first, ("192.0.2.7", 500), GATEWAY, 1.0)
        (answer,) = quick.datagrams_to_send(1.0)
        notify = parse_message(answer.data).notify(NotifyType.COOKIE)
        assert notify is not None
        cookie = notify.data
        message = parse_message(first)
        again = Message(message.header, (cookie_notify(cookie), *message.payloads))
        quick.receive_datagram(serialize_message(again), ("192.0.2.7", 500), GATEWAY, 1.0)
        quick.datagrams_to_send(1.0)
    assert len(quick._init_rate) == 1 and quick.counters["dropped_init_rate"] == 1
    assert quick.half_open_count() == 1
