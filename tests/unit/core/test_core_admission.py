"""What the gateway admits (mpa_ike.admission, RFC 7296 §2.6, RFC 8019): the COOKIE
secret's schedule and grace, the hard cap on half-open SAs, the per-source rate limit
of IKE_SA_INIT and the cap of IKE SAs per identity, on the fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pool import AddressPool
from mpa_ike.admission import (
    CookieSecrets,
    IdentityIndex,
    InitScan,
    SourceRateLimiter,
    cookie_response,
    scan_init_request,
)
from mpa_ike.constants import ExchangeType, HeaderFlag, NotifyType
from mpa_ike.datagram import Address, Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import CodecError, ConfigError
from mpa_ike.events import IkeSaEstablished, IkeSaFailed
from mpa_ike.ike_config import AdmissionLimits, Lifetimes
from mpa_ike.ike_sa import IkeSa
from mpa_ike.retransmit import RetransmitPolicy
from mpa_ike.wire import (
    IkeHeader,
    Message,
    NoncePayload,
    NotifyPayload,
    parse_header,
    parse_message,
    serialize_message,
)
from mpa_ike.wire.notify import cookie_notify

PSK = b"admission test key"
QUIET = Lifetimes(ike_rekey_time=None, child_rekey_time=None)
LIMITS = AdmissionLimits(cookie_lifetime=60.0, cookie_grace=10.0)
MATERIAL = b"Ni" * 16 + b"\xc0\x00\x02\x0a" + b"S" * 8


def host(n: int) -> Address:
    return (f"192.0.2.{100 + n}", 500)


def gateway(
    pool: AddressPool[object], threshold: int = 30, unique: str = "replace", **limits: Any
) -> Endpoint:
    config = responder_config(
        pool, psk=PSK, lifetimes=QUIET, unique=unique, limits=AdmissionLimits(**limits)
    )
    return Endpoint(random=seeded(2), responder=config, half_open_threshold=threshold)


def initiate(link: Link, local: Address = MOBILE, **options: Any) -> IkeSa:
    config = initiator_config(psk=PSK, lifetimes=QUIET, **options)
    return link.mobile.initiate(config, local, GATEWAY, link.now)


def cookies_in(link: Link) -> list[bytes]:
    found = []
    for transmission in link.log:
        if transmission.direction != "g->m":
            continue
        message = parse_message(transmission.datagram.data)
        first = message.payloads[0] if message.payloads else None
        if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE:
            found.append(first.data)
    return found


# ---------------------------------------------------------------------- the COOKIE secret


def test_cookie_secret_changes_on_schedule_with_grace() -> None:
    secrets = CookieSecrets(seeded(5))
    first = secrets.make(MATERIAL, 0.0, LIMITS)  # the schedule starts here
    assert first[0] == 0 and len(first) == 33
    assert secrets.check(first, MATERIAL, 59.9, LIMITS)
    assert not secrets.check(first, MATERIAL + b"x", 1.0, LIMITS)
    second = secrets.make(MATERIAL, 60.0, LIMITS)  # changed at 60
    assert second[0] == 1 and second[1:] != first[1:] and secrets.changes == 1
    assert secrets.check(first, MATERIAL, 69.9, LIMITS)  # the previous, in its grace
    assert not secrets.check(first, MATERIAL, 70.0, LIMITS)
    assert secrets.check(second, MATERIAL, 70.0, LIMITS)
    # A forged version, or a right version with another secret's hash.
    assert not secrets.check(bytes([7]) + second[1:], MATERIAL, 70.0, LIMITS)
    assert not secrets.check(bytes([0]) + second[1:], MATERIAL, 65.0, LIMITS)
    assert not secrets.check(b"", MATERIAL, 70.0, LIMITS)


def test_cookie_schedule_stays_on_its_grid_after_a_quiet_spell() -> None:
    secrets = CookieSecrets(seeded(5))
    first = secrets.make(MATERIAL, 0.0, LIMITS)
    # Nothing asked between 60 and 250: the secret of 0 went at 60, its grace is over.
    later = secrets.make(MATERIAL, 250.0, LIMITS)
    assert secrets.changes == 1 and later[0] == 1
    assert not secrets.check(first, MATERIAL, 250.0, LIMITS)
    # The next change is at 300 (the grid of 60 s from 0), not at 310.
    assert secrets.make(MATERIAL, 299.0, LIMITS) == later
    assert secrets.make(MATERIAL, 300.0, LIMITS)[0] == 2


def test_cookie_secret_comes_from_the_injected_randomness() -> None:
    one, two = CookieSecrets(seeded(5)), CookieSecrets(seeded(5))
    for now in (0.0, 61.0, 125.0):
        assert one.make(MATERIAL, now, LIMITS) == two.make(MATERIAL, now, LIMITS)
    assert CookieSecrets(seeded(6)).make(MATERIAL, 0.0, LIMITS) != one.make(MATERIAL, 0.0, LIMITS)


def test_versions_wrap_without_matching_the_previous() -> None:
    secrets = CookieSecrets(seeded(5))
    limits = AdmissionLimits(cookie_lifetime=1.0, cookie_grace=0.5)
    for second in range(300):
        cookie = secrets.make(MATERIAL, float(second), limits)
        assert cookie[0] == second % 256
        assert secrets.check(cookie, MATERIAL, second + 0.1, limits)


@pytest.mark.parametrize(
    ("answered_at", "cookies_sent", "refused"),
    [(30.0, 1, 0), (65.0, 1, 0), (75.0, 2, 1), (400.0, 2, 1)],
)
def test_cookie_across_a_secret_change(
    pool: AddressPool[object], answered_at: float, cookies_sent: int, refused: int
) -> None:
    """A COOKIE made just before the secret changes is good for cookie_grace after; one
    older than that gets a fresh COOKIE, and the initiator's retry goes through."""
    held: list[Datagram] = []

    def hold_cookie(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if way == "g->m" and n == 0:
            held.append(datagram)
            return []
        return [datagram]

    link = Link(Endpoint(random=seeded(1)), gateway(pool, threshold=0))
    link.tamper = hold_cookie
    initiate(link, init_retransmit=RetransmitPolicy())  # no repeat before the answer
    link.run(until=0.5)
    assert len(held) == 1 and link.gateway.counters["cookies_sent"] == 1
    link.now = answered_at
    link.mobile.receive_datagram(held[0].data, held[0].src, held[0].dst, link.now)
    link.run(until=answered_at + 5.0)
    assert link.of_type(IkeSaEstablished, "gateway") and link.of_type(IkeSaEstablished)
    assert link.gateway.counters["cookies_sent"] == cookies_sent
    assert link.gateway.counters["cookies_refused"] == refused
    versions = [cookie[0] for cookie in cookies_in(link)]
    assert versions == ([0] if cookies_sent == 1 else [0, 1])


def holding(held: list[Datagram], answers: set[int]) -> Any:
    """A tamper that keeps the gateway's answers numbered ``answers`` in ``held``."""

    def tamper(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if way == "g->m" and n in answers:
            held.append(datagram)
            return []
        return [datagram]

    return tamper


def deliver_to_mobile(link: Link, datagram: Datagram) -> None:
    link.mobile.receive_datagram(datagram.data, datagram.src, datagram.dst, link.now)


def requests_with_cookie(link: Link) -> int:
    requests = [parse_message(t.datagram.data) for t in link.log if t.direction == "m->g"]
    return sum(1 for m in requests if m.notify(NotifyType.COOKIE) is not None)


def test_a_late_cookie_for_an_earlier_copy_is_left_alone(pool: AddressPool[object]) -> None:
    """Two copies of IKE_SA_INIT, both answered with the same COOKIE: one retry."""
    held: list[Datagram] = []
    link = Link(Endpoint(random=seeded(1)), gateway(pool, threshold=0))
    link.tamper = holding(held, {0, 1})
    initiate(link)
    link.run(until=0.15)
    assert len(held) == 2 and cookies_in(link)[0] == cookies_in(link)[1]
    for datagram in held:
        deliver_to_mobile(link, datagram)
    link.run(until=5.0)
    assert link.of_type(IkeSaEstablished, "gateway") and link.of_type(IkeSaEstablished)
    assert requests_with_cookie(link) == 1


def test_an_answer_that_may_be_to_the_copy_without_cookie(pool: AddressPool[object]) -> None:
    """The gateway asks the first copy for a COOKIE, then falls below its threshold and
    takes the second copy: the retry with the COOKIE gets that SA's answer again (same
    nonce, §2.1), and its AUTH covers the request the gateway did not keep. The failure
    says that a set-up at once may well succeed."""
    held: list[Datagram] = []
    link = Link(Endpoint(random=seeded(1)), gateway(pool, threshold=0))
    link.tamper = holding(held, {0, 1})
    initiate(link)
    link.run(until=0.05)
    link.gateway.half_open_threshold = 30
    link.run(until=0.15)
    assert len(held) == 2 and len(cookies_in(link)) == 1
    deliver_to_mobile(link, held[0])
    link.run(until=5.0)
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.retry
    assert failed.notify == NotifyType.AUTHENTICATION_FAILED and requests_with_cookie(link) == 1


# ---------------------------------------------------------------------- half-open cap


def init_request(seed: int, local: Address) -> Datagram:
    node = Endpoint(random=seeded(seed))
    node.initiate(initiator_config(psk=PSK, lifetimes=QUIET), local, GATEWAY, 0.0)
    (datagram,) = node.datagrams_to_send(0.0)
    return datagram


def send(gw: Endpoint, datagram: Datagram, now: float) -> list[Datagram]:
    gw.receive_datagram(datagram.data, datagram.src, datagram.dst, now)
    return gw.datagrams_to_send(now)


def test_half_open_limit_drops_and_counts(pool: AddressPool[object]) -> None:
    gw = gateway(pool, threshold=1000, half_open_limit=3)
    for n in range(3):
        (answer,) = send(gw, init_request(10 + n, host(n)), 0.0)
        assert parse_header(answer.data).exchange_type == ExchangeType.IKE_SA_INIT
    assert gw.half_open_count() == 3
    assert send(gw, init_request(20, host(9)), 0.1) == []
    assert gw.counters["dropped_half_open_limit"] == 1
    assert gw.half_open_count() == 3
    # A retransmission of a request the gateway holds is still answered.
    assert len(send(gw, init_request(10, host(0)), 0.2)) == 1
    # The half-open SAs expire (half_open_timeout, 30 s): room again.
    gw.handle_timer(30.5)
    gw.datagrams_to_send(30.5)
    assert gw.half_open_count() == 0
    assert len(send(gw, init_request(20, host(9)), 31.0)) == 1
    assert gw.half_open_count() == 1


def test_half_open_count_follows_established_and_failed_sas(pool: AddressPool[object]) -> None:
    link = Link(Endpoint(random=seeded(1)), gateway(pool))
    initiate(link)
    link.run(until=0.0)
    assert link.gateway.half_open_count() == 0  # up: no longer half-open
    assert link.of_type(IkeSaEstablished, "gateway")


# ---------------------------------------------------------------------- per-source rate


def test_init_rate_per_source(pool: AddressPool[object]) -> None:
    gw = gateway(pool, init_rate=2.0, init_burst=3)
    answered = [bool(send(gw, init_request(10 + n, host(0)), 0.0)) for n in range(5)]
    assert answered == [True, True, True, False, False]
    assert gw.counters["dropped_init_rate"] == 2
    assert send(gw, init_request(30, host(1)), 0.0)  # another source has its own bucket
    assert not send(gw, init_request(31, host(0)), 0.4)  # 0.8 of a token
    assert send(gw, init_request(32, host(0)), 0.5)  # one token back
    assert gw.counters["dropped_init_rate"] == 3


def test_rate_table_is_bounded_least_recent_first() -> None:
    limits = AdmissionLimits(init_rate=1.0, init_burst=1, rate_sources=2)
    table = SourceRateLimiter()
    assert table.allow("a", 0.0, limits) and table.allow("b", 0.0, limits)
    assert not table.allow("a", 0.1, limits)  # a is now the most recent
    assert table.allow("c", 0.1, limits)  # b goes
    assert len(table) == 2
    assert not table.allow("a", 0.2, limits)  # a was kept, still empty
    assert table.allow("b", 0.2, limits)  # b was forgotten: a full bucket
    assert all(table.allow(f"10.0.{n // 256}.{n % 256}", 1.0, limits) for n in range(5000))
    assert len(table) == 2


def test_rate_table_forgets_buckets_that_filled_up_again() -> None:
    limits = AdmissionLimits(init_rate=10.0, init_burst=20, rate_sources=4096)
    table = SourceRateLimiter()
    for n in range(1000):
        table.allow(f"10.0.{n // 256}.{n % 256}", n / 1000, limits)
    table.forget_full(1.5, limits)  # 2 s to refill: none full yet
    assert len(table) == 1000
    table.forget_full(2.5, limits)  # those last heard from at 0.5 s or before are full
    assert len(table) == 499
    table.forget_full(10.0, limits)
    assert len(table) == 0


def test_rate_limit_off() -> None:
    limits = AdmissionLimits(init_rate=0)
    table = SourceRateLimiter()
    assert all(table.allow("a", 0.0, limits) for _ in range(1000))
    assert len(table) == 0


# ---------------------------------------------------------------------- per identity


def connect_from(gw: Endpoint, local: Address, seed: int, now: float) -> Link:
    link = Link(Endpoint(random=seeded(seed)), gw, now=now)
    initiate(link, local)
    link.run(until=now + 10.0)
    return link


def test_ike_sas_per_identity(pool: AddressPool[object]) -> None:
    gw = gateway(pool, unique="never", ike_sas_per_identity=2)
    links = [connect_from(gw, host(n), 40 + n, 0.0) for n in range(3)]
    assert [bool(link.of_type(IkeSaEstablished)) for link in links] == [True, True, False]
    (failed,) = links[2].of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.AUTHENTICATION_FAILED
    (refused,) = links[2].of_type(IkeSaFailed, "gateway")
    assert isinstance(refused, IkeSaFailed) and "ike_sas_per_identity" in refused.reason
    assert gw.counters["refused_by_identity_limit"] == 1
    assert pool.available(4) == pool.size(4) - 2  # the refused one leased nothing
    # One goes: room for another.
    first = next(sa for sa in links[0].mobile if sa.established)
    links[0].mobile.delete(first.local_spi, links[0].now)
    links[0].run(until=links[0].now + 10.0)
    late = connect_from(gw, host(5), 50, links[0].now)
    assert late.of_type(IkeSaEstablished)
    assert gw.counters["refused_by_identity_limit"] == 1


def test_identity_cap_counts_after_replacement(pool: AddressPool[object]) -> None:
    """unique=replace: the new IKE SA takes the old one's place, within a cap of one."""
    gw = gateway(pool, ike_sas_per_identity=1)
    first = connect_from(gw, host(0), 40, 0.0)
    second = connect_from(gw, host(1), 41, first.now)
    assert first.of_type(IkeSaEstablished) and second.of_type(IkeSaEstablished)
    assert gw.counters["refused_by_identity_limit"] == 0
    assert len([sa for sa in gw if not sa.closed]) == 1


def test_identity_index() -> None:
    index: IdentityIndex[str] = IdentityIndex()
    index.add("alice", "sa1")
    index.inherit("sa1", "sa2")
    index.inherit("unknown", "sa3")
    assert sorted(index.of("alice")) == ["sa1", "sa2"] and len(index) == 2
    index.remove("sa1")
    index.remove("sa2")
    index.remove("sa2")
    assert index.of("alice") == [] and len(index) == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"half_open_limit": 0}, "half_open_limit"),
        ({"cookie_lifetime": 0}, "cookie_lifetime"),
        ({"cookie_grace": 61.0}, "cookie_grace"),
        ({"init_rate": -1.0}, "init_rate"),
        ({"init_burst": 0}, "init_burst"),
        ({"ike_sas_per_identity": -1}, "ike_sas_per_identity"),
    ],
)
def test_limits_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AdmissionLimits(**values)


# ---------------------------------------------------------------------- the COOKIE path


def cookie_retry(pool: AddressPool[object]) -> bytes:
    """The initiator's IKE_SA_INIT that returns a COOKIE."""
    link = Link(Endpoint(random=seeded(1)), gateway(pool, threshold=0))
    initiate(link)
    link.run(until=0.5)
    requests = [t.datagram.data for t in link.log if t.direction == "m->g"]
    return requests[1]


def test_scan_finds_what_the_parser_finds(pool: AddressPool[object]) -> None:
    for data in (init_request(3, host(0)).data, cookie_retry(pool)):
        message = parse_message(data)
        first = message.payloads[0]
        cookie = first.data if isinstance(first, NotifyPayload) else None
        nonce = message.find(NoncePayload)
        assert nonce is not None
        assert scan_init_request(data) == InitScan(cookie, nonce.data)
    assert scan_init_request(cookie_retry(pool)).cookie is not None  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_scan_never_raises_and_agrees_with_the_parser(data: st.DataObject) -> None:
    original = bytearray(init_request(3, host(0)).data)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(original) - 1))
        original[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    mutated = bytes(original[:cut])
    scan = scan_init_request(mutated)
    try:
        message = parse_message(mutated)
    except CodecError:
        return
    nonce = message.find(NoncePayload)
    if scan is not None and nonce is not None:
        assert scan.nonce == nonce.data


def test_cookie_response_is_what_the_codec_writes() -> None:
    spi, cookie = bytes(range(1, 9)), bytes([1]) + b"c" * 32
    header = IkeHeader(spi, bytes(8), ExchangeType.IKE_SA_INIT, int(HeaderFlag.RESPONSE), 0)
    expected = serialize_message(Message(header, (cookie_notify(cookie),)))
    assert cookie_response(spi, cookie) == expected


def test_flood_request_costs_no_parse_under_load(pool: AddressPool[object]) -> None:
    """Requests without a COOKIE under load are answered from the chain walk: a request
    the parser would refuse but whose chain adds up gets a COOKIE too, and nothing is
    created."""
    gw = gateway(pool, threshold=0)
    request = init_request(3, host(0))
    (answer,) = send(gw, request, 0.0)
    assert parse_message(answer.data).payloads[0].notify_type == NotifyType.COOKIE  # type: ignore[attr-defined]
    assert gw.half_open_count() == 0 and not list(gw)
