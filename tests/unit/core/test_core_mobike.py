"""MOBIKE (RFC 4555) back to back: the mobile node's UPDATE_SA_ADDRESSES and the
gateway's address policy (issue 5: ``allocated``, ``any``, prefixes), NO_NATS_ALLOWED,
COOKIE2, retransmission to the new address, restart, return routability."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

import pytest
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
from mpa_ike import mobike
from mpa_ike.constants import ExchangeType, NotifyType
from mpa_ike.datagram import Address, Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import (
    AddressUpdateRefused,
    ChildSaAddressesUpdated,
    ChildSaEstablished,
    IkeSaAddressesUpdated,
    IkeSaEstablished,
    IkeSaFailed,
    LivenessConfirmed,
    PeerAddressesAnnounced,
)
from mpa_ike.ike_sa import IkeSa
from mpa_ike.mobike import AddressPolicy, AddressPolicyMode, IkeSaInfo
from mpa_ike.retransmit import UPDATE_RETRANSMIT
from mpa_ike.wire import Message, NotifyPayload, Payload, parse_header, parse_message
from mpa_ike.wire.notify import additional_address_notify, cookie2_notify

PSK = b"a pre-shared key for the gateway"
LEASE: Address = ("10.10.0.1", 4500)  # the first address of the test pool
ELSEWHERE: Address = ("192.0.2.99", 4500)


def up(pool: AddressPool[object], *, mobile: dict[str, Any] | None = None, **gw: Any) -> Link:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, psk=PSK, **gw))
    link = Link(Endpoint(random=seeded(1)), gateway)
    link.mobile.initiate(initiator_config(psk=PSK, **(mobile or {})), MOBILE, GATEWAY, 0.0)
    link.run(until=10.0)
    assert link.of_type(IkeSaEstablished) and link.of_type(ChildSaEstablished, "gateway")
    return link


def sas(link: Link) -> tuple[IkeSa, IkeSa]:
    (mobile,) = link.mobile
    (gateway,) = link.gateway
    return mobile, gateway


def move(link: Link, new_local: Address, *, until: float = 100.0) -> None:
    mobile, _ = sas(link)
    link.mobile_events.clear()
    link.gateway_events.clear()
    link.mobile.update_addresses(mobile.local_spi, new_local, link.now)
    link.run(until=link.now + until)


def test_update_to_the_lease_is_accepted_under_allocated(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    assert gateway.assigned_addresses == (IPv4Address("10.10.0.1"),)
    move(link, LEASE)
    assert gateway.remote == LEASE and mobile.local == LEASE
    assert gateway.counters["updates_accepted"] == 1
    # Both sides tell the glue to move the IKE SA and every CHILD SA.
    for side, sa in (("mobile", mobile), ("gateway", gateway)):
        (ike,) = link.of_type(IkeSaAddressesUpdated, side)
        assert isinstance(ike, IkeSaAddressesUpdated)
        (child_event,) = link.of_type(ChildSaAddressesUpdated, side)
        assert isinstance(child_event, ChildSaAddressesUpdated)
        (child,) = sa.children.values()
        assert (child_event.spi_in, child_event.spi_out) == (child.spi_in, child.spi_out)
        assert child_event.encap is False
    update = [t for t in link.log if t.direction == "m->g"][-1]
    assert update.datagram.src == LEASE and update.datagram.dst == (GATEWAY[0], 4500)
    answer = [t for t in link.log if t.direction == "g->m"][-1]
    assert answer.datagram.dst == LEASE
    # The lease stays with the IKE SA; the SA works at the new address.
    assert pool.lease_of(gateway.local_spi) == IPv4Address("10.10.0.1")
    link.mobile.check_liveness(mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    assert link.of_type(LivenessConfirmed)
    assert link.log[-1].datagram.dst == LEASE


def test_update_from_another_address_is_refused(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    before = (gateway.local, gateway.remote)
    move(link, ELSEWHERE)
    assert (gateway.local, gateway.remote) == before  # nothing moved
    assert not link.of_type(IkeSaAddressesUpdated, "gateway")
    assert not link.of_type(ChildSaAddressesUpdated, "gateway")
    (refused,) = link.of_type(AddressUpdateRefused, "gateway")
    assert isinstance(refused, AddressUpdateRefused)
    assert refused.notify == NotifyType.UNACCEPTABLE_ADDRESSES and not refused.by_peer
    assert refused.address == ELSEWHERE
    # The answer reaches the mobile node where it is; it learns to fall back.
    (told,) = link.of_type(AddressUpdateRefused, "mobile")
    assert isinstance(told, AddressUpdateRefused) and told.by_peer
    assert told.notify == NotifyType.UNACCEPTABLE_ADDRESSES
    assert [t.datagram.dst for t in link.log if t.direction == "g->m"][-1] == ELSEWHERE
    # The SA is still usable at the old address.
    mobile.local = (MOBILE[0], 4500)
    link.mobile.check_liveness(mobile.local_spi, link.now)
    link.gateway.check_liveness(gateway.local_spi, link.now)
    link.run(until=link.now + 10)
    assert link.of_type(LivenessConfirmed, "mobile") and link.of_type(LivenessConfirmed, "gateway")
    assert pool.lease_of(gateway.local_spi) == IPv4Address("10.10.0.1")


def test_policy_any_accepts_every_address(pool: AddressPool[object]) -> None:
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    _, gateway = sas(link)
    move(link, ELSEWHERE)
    assert gateway.remote == ELSEWHERE
    assert link.of_type(ChildSaAddressesUpdated, "gateway")


def test_prefix_policy(pool: AddressPool[object]) -> None:
    policy = AddressPolicy(AddressPolicyMode.PREFIXES, (ip_network("192.0.2.64/26"),))
    link = up(pool, address_policy=policy)
    _, gateway = sas(link)
    move(link, ("192.0.2.10", 4500))  # outside the prefix
    assert gateway.remote == (MOBILE[0], 4500)
    assert link.of_type(AddressUpdateRefused, "gateway")
    move(link, ELSEWHERE)  # 192.0.2.99 is inside
    assert gateway.remote == ELSEWHERE


def test_policy_is_any_callable(pool: AddressPool[object]) -> None:
    seen: list[tuple[IkeSaInfo, object]] = []

    def policy(info: IkeSaInfo, address: object) -> bool:
        seen.append((info, address))
        return True

    link = up(pool, address_policy=policy)
    _, gateway = sas(link)
    move(link, ELSEWHERE)
    ((info, address),) = seen
    assert info.ike_sa == gateway.local_spi and info.peer_identity == "alice"
    assert info.assigned_addresses == (IPv4Address("10.10.0.1"),)
    assert address == IPv4Address(ELSEWHERE[0])


def test_no_nats_allowed_mismatch(pool: AddressPool[object]) -> None:
    """§3.9: a NAT rewrote the source: UNEXPECTED_NAT_DETECTED, nothing moves."""
    link = up(pool, mobile={"no_nats_allowed": True})
    _mobile, gateway = sas(link)

    def nat(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if way == "m->g" and datagram.src == LEASE:
            return [Datagram(datagram.data, ("10.10.0.1", 31000), datagram.dst)]
        return [datagram]

    link.tamper = nat
    move(link, LEASE)
    assert gateway.remote == (MOBILE[0], 4500)
    (refused,) = link.of_type(AddressUpdateRefused, "gateway")
    assert isinstance(refused, AddressUpdateRefused)
    assert refused.notify == NotifyType.UNEXPECTED_NAT_DETECTED
    (told,) = link.of_type(AddressUpdateRefused, "mobile")
    assert isinstance(told, AddressUpdateRefused)
    assert told.notify == NotifyType.UNEXPECTED_NAT_DETECTED


def test_no_nats_allowed_matching_is_accepted(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"no_nats_allowed": True})
    _, gateway = sas(link)
    move(link, LEASE)
    assert gateway.remote == LEASE
    update = parse_message(
        [t for t in link.log if t.direction == "m->g"][-1].datagram.data
    )  # the SK part is opaque, but the header says INFORMATIONAL
    assert update.header.exchange_type == ExchangeType.INFORMATIONAL


def test_forged_and_replayed_updates_change_nothing(pool: AddressPool[object]) -> None:
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    mobile, gateway = sas(link)
    move(link, LEASE)
    update = [t.datagram for t in link.log if t.direction == "m->g"][-1]
    assert gateway.remote == LEASE
    # Replayed later from another address (an attacker's): the stored answer goes
    # there, but the SA stays where it is.
    gateway_events = len(link.gateway_events)
    link.gateway.receive_datagram(update.data, ("203.0.113.66", 4500), update.dst, link.now)
    link.run(until=link.now + 1)
    assert gateway.remote == LEASE
    assert len(link.gateway_events) == gateway_events
    # An even older request (the IKE_AUTH or a previous Message ID): dropped.
    first = [t.datagram for t in link.log if t.direction == "m->g"][1]
    link.gateway.receive_datagram(first.data, ("203.0.113.66", 4500), first.dst, link.now)
    assert gateway.remote == LEASE
    # Forged: a flipped bit in the ICV, or a fresh Message ID without valid SK.
    forged = bytearray(update.data)
    forged[-1] ^= 1
    header = parse_header(update.data)
    forged[20:24] = (header.message_id + 1).to_bytes(4, "big")
    link.gateway.receive_datagram(bytes(forged), ("203.0.113.66", 4500), update.dst, link.now)
    link.run(until=link.now + 1)
    assert gateway.remote == LEASE
    assert gateway.counters["dropped_integrity"] >= 1
    assert len(link.gateway_events) == gateway_events
    assert mobile.local == LEASE


def test_lost_update_is_retransmitted_to_the_new_address(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    sent_before = sum(1 for t in link.log if t.direction == "m->g")

    def lose_first_update(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [] if (way, n) == ("m->g", sent_before) else [datagram]

    link.tamper = lose_first_update
    start = link.now
    move(link, LEASE)
    updates = [t for t in link.log if t.direction == "m->g"][sent_before:]
    assert len(updates) == 2
    assert all(t.datagram.src == LEASE for t in updates)
    assert updates[1].datagram.data == updates[0].datagram.data  # §2.1: bit-identical
    # Sooner than strongSwan's 4 s: the node has just moved and waits for nothing else.
    assert updates[1].time == start + UPDATE_RETRANSMIT.timeout
    assert gateway.remote == LEASE and mobile.counters["retransmitted"] == 1


def test_an_update_never_answered_backs_off_then_the_sa_fails(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, _ = sas(link)
    sent_before = sum(1 for t in link.log if t.direction == "m->g")

    def lose_updates(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [] if way == "m->g" and n >= sent_before else [datagram]

    link.tamper = lose_updates
    start = link.now
    link.mobile.update_addresses(mobile.local_spi, LEASE, link.now)
    link.run(until=start + 120)
    times = [round(t.time - start, 3) for t in link.log if t.direction == "m->g"][sent_before:]
    assert times == [0.0, 0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4]
    failed = link.of_type(IkeSaFailed)
    assert failed and UPDATE_RETRANSMIT.total() == pytest.approx(51.0)


def test_address_change_before_the_answer_restarts(pool: AddressPool[object]) -> None:
    """§3.5: the update in flight is resent from the newest address and a fresh
    update follows its answer."""
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    mobile, gateway = sas(link)
    sent_before = sum(1 for t in link.log if t.direction == "m->g")

    def lose_first_update(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        return [] if (way, n) == ("m->g", sent_before) else [datagram]

    link.tamper = lose_first_update
    link.mobile.update_addresses(mobile.local_spi, ELSEWHERE, link.now)
    link._pump_once()
    link.mobile.update_addresses(mobile.local_spi, LEASE, link.now)
    link.run(until=link.now + 100)
    assert gateway.remote == LEASE and mobile.local == LEASE
    updates = [t for t in link.log if t.direction == "m->g"][sent_before:]
    assert [t.datagram.src for t in updates] == [ELSEWHERE, LEASE, LEASE]
    assert mobile.counters["updates_sent"] == 2
    assert gateway.counters["updates_accepted"] == 2
    assert not link.of_type(IkeSaFailed)


def test_cookie2_mismatch_closes_the_ike_sa(
    pool: AddressPool[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§3.7: an answer that does not echo our COOKIE2 closes the IKE SA."""
    link = up(pool)
    mobile, _ = sas(link)

    def wrong_cookie(message: Message) -> list[Payload]:
        return [cookie2_notify(b"\x00" * 16)]

    monkeypatch.setattr(mobike, "cookie2_echo", wrong_cookie)
    move(link, LEASE)
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and "COOKIE2" in failed.reason
    assert mobile.closed


def test_ipv4_to_ipv6_move(pool: AddressPool[object]) -> None:
    """Cross-family: pre-authenticated over IPv4, moved to an IPv6 address."""
    v6_pool: AddressPool[object] = AddressPool(
        [ip_network("10.10.0.0/28"), ip_network("2001:db8:b::/120")]
    )
    link = up(v6_pool, mobile={"virtual_ip_families": (4, 6)})
    mobile, gateway = sas(link)
    lease6 = next(a for a in gateway.assigned_addresses if a.version == 6)
    assert isinstance(lease6, IPv6Address)
    link.mobile_events.clear()
    link.mobile.update_addresses(
        mobile.local_spi, (str(lease6), 4500), link.now, ("2001:db8::1", 4500)
    )
    link.run(until=link.now + 10)
    assert gateway.remote == (str(lease6), 4500) and gateway.local == ("2001:db8::1", 4500)
    (moved,) = link.of_type(ChildSaAddressesUpdated, "gateway")
    assert isinstance(moved, ChildSaAddressesUpdated) and moved.local == ("2001:db8::1", 4500)
    assert not link.of_type(IkeSaFailed)


def test_return_routability_check_before_children_move(pool: AddressPool[object]) -> None:
    link = up(pool, return_routability=True)
    _mobile, gateway = sas(link)
    move(link, LEASE)
    kinds = [type(e).__name__ for e in link.gateway_events]
    assert kinds == ["IkeSaAddressesUpdated", "ChildSaAddressesUpdated"]
    # The check is a gateway request answered by the mobile node at the new address.
    checks = [
        t
        for t in link.log
        if t.direction == "g->m" and not parse_header(t.datagram.data).is_response
    ]
    assert checks and checks[-1].datagram.dst == LEASE
    assert gateway.remote == LEASE


def test_return_routability_failure_moves_no_child(pool: AddressPool[object]) -> None:
    link = up(pool, return_routability=True)
    _, gateway = sas(link)

    def unreachable(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        header = parse_header(datagram.data)
        if way == "g->m" and not header.is_response:
            return []
        return [datagram]

    link.tamper = unreachable
    move(link, LEASE, until=1000)
    assert not link.of_type(ChildSaAddressesUpdated, "gateway")
    assert gateway.closed  # §2.4: the peer never answered the check


def test_additional_addresses_each_list_replaces_the_last(pool: AddressPool[object]) -> None:
    link = up(pool)
    mobile, gateway = sas(link)
    first: list[IPv4Address | IPv6Address] = [
        IPv4Address("192.0.2.20"),
        IPv6Address("2001:db8::20"),
    ]
    link.mobile.send_additional_addresses(mobile.local_spi, first, link.now)
    link.run(until=link.now + 10)
    assert gateway.peer_additional_addresses == tuple(first)
    link.mobile.send_additional_addresses(mobile.local_spi, [], link.now)
    link.run(until=link.now + 10)
    assert gateway.peer_additional_addresses == ()
    announced = link.of_type(PeerAddressesAnnounced, "gateway")
    assert [e.addresses for e in announced if isinstance(e, PeerAddressesAnnounced)] == [
        tuple(first),
        (),
    ]


def test_path_probe_from_another_address_is_answered_there(pool: AddressPool[object]) -> None:
    """charon probes paths with empty INFORMATIONALs before it updates: answer at the
    probe's source, move nothing (only UPDATE_SA_ADDRESSES moves, §3.5)."""
    link = up(pool)
    mobile, gateway = sas(link)
    mobile.local = ELSEWHERE  # the probe leaves from another interface
    link.mobile.check_liveness(mobile.local_spi, link.now)
    link.run(until=link.now + 10)
    assert link.of_type(LivenessConfirmed)
    assert [t.datagram.dst for t in link.log if t.direction == "g->m"][-1] == ELSEWHERE
    assert gateway.remote == (MOBILE[0], 4500)


def test_update_without_mobike_is_not_sent(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"mobike": False})
    mobile, _gateway = sas(link)
    move(link, LEASE)
    assert not link.of_type(IkeSaAddressesUpdated) and mobile.counters["updates_sent"] == 0


def test_malformed_cookie2_is_answered_with_invalid_syntax(pool: AddressPool[object]) -> None:
    """§2.21.2: authenticated but malformed (COOKIE2 must be 8-64 octets): the error
    is the answer, nothing moves, the IKE SA survives."""
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    mobile, gateway = sas(link)
    answers: list[list[NotifyType]] = []

    def on_response(message: Message, now: float) -> None:
        answers.append([n.notify_type for n in message.find_all(NotifyPayload)])
        mobile._exchanges.finish(now)

    mobile.local = ELSEWHERE
    payloads = [NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES), NotifyPayload(NotifyType.COOKIE2)]
    # Through the endpoint's command path, which knows the SA has something to send.
    link.mobile._command(
        mobile.local_spi,
        lambda sa: sa._exchanges.request(
            ExchangeType.INFORMATIONAL, payloads, on_response, link.now
        ),
    )
    link.run(until=link.now + 10)
    assert answers == [[NotifyType.INVALID_SYNTAX]]
    assert gateway.remote == (MOBILE[0], 4500) and gateway.established


def test_update_behind_a_nat_turns_on_encapsulation(pool: AddressPool[object]) -> None:
    """§3.5: NAT detection is recomputed from the update; the CHILD SAs move to the
    NAT's public address with ESP in UDP."""
    link = up(pool, address_policy=AddressPolicy(AddressPolicyMode.ANY))
    _mobile, gateway = sas(link)
    assert not (gateway.nat_local or gateway.nat_remote)
    link.nat = True
    move(link, ("192.168.1.20", 4500))
    assert gateway.remote == (NAT_PUBLIC, 14500)
    (moved,) = link.of_type(ChildSaAddressesUpdated, "gateway")
    assert isinstance(moved, ChildSaAddressesUpdated) and moved.encap
    assert moved.remote == (NAT_PUBLIC, 14500)
    # The mobile node learns of the NAT from the answer's NAT-D and re-announces.
    mobile_moves = [
        e for e in link.of_type(ChildSaAddressesUpdated) if isinstance(e, ChildSaAddressesUpdated)
    ]
    assert [e.encap for e in mobile_moves] == [False, True]


def test_nat_fails_the_allocated_policy(pool: AddressPool[object]) -> None:
    """Under ``allocated`` a NAT in front of the nCoA hides it: refused."""
    link = up(pool)
    _, gateway = sas(link)
    link.nat = True
    move(link, LEASE)
    assert gateway.remote == (MOBILE[0], 4500)
    assert link.of_type(AddressUpdateRefused, "gateway")


def test_mobile_awaits_the_answer_before_moving_children(pool: AddressPool[object]) -> None:
    link = up(pool, mobile={"return_routability": True})
    _, gateway = sas(link)
    move(link, LEASE)
    kinds = [type(e).__name__ for e in link.mobile_events]
    assert kinds == ["IkeSaAddressesUpdated", "ChildSaAddressesUpdated", "AddressUpdateAccepted"]
    assert gateway.remote == LEASE
    # Refused: the CHILD SAs never left the old path.
    move(link, ELSEWHERE)
    kinds = [type(e).__name__ for e in link.mobile_events]
    assert kinds == ["IkeSaAddressesUpdated", "AddressUpdateRefused"]


def test_refusal_of_an_address_already_left_is_not_final(pool: AddressPool[object]) -> None:
    """The update from a refused address is answered while the mobile node has moved
    on to its lease: it asks again from there, and the gateway accepts."""
    link = up(pool)
    mobile, gateway = sas(link)
    lost: list[Datagram] = []

    def lose_the_refusal(datagram: Datagram, way: str, n: int) -> list[Datagram]:
        if way == "g->m" and not lost and parse_header(datagram.data).is_response:
            lost.append(datagram)
            return []
        return [datagram]

    link.tamper = lose_the_refusal
    link.mobile.update_addresses(mobile.local_spi, ELSEWHERE, link.now)
    link._pump_once()
    link.mobile.update_addresses(mobile.local_spi, LEASE, link.now)
    link.run(until=link.now + 100)
    assert lost and gateway.remote == LEASE
    assert not link.of_type(AddressUpdateRefused, "mobile")
    assert gateway.counters["updates_refused"] == 1 and gateway.counters["updates_accepted"] == 1


def test_address_list_in_ike_auth(
    pool: AddressPool[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§3.4: a list sent in IKE_AUTH (charon does, with several addresses) is kept."""
    from mpa_ike.handshake_initiator import InitiatorHandshake

    original = InitiatorHandshake._first_auth_payloads
    extra = IPv6Address("2001:db8::10")

    def with_address_list(handshake: InitiatorHandshake) -> list[Payload]:
        return [*original(handshake), additional_address_notify(extra)]

    monkeypatch.setattr(InitiatorHandshake, "_first_auth_payloads", with_address_list)
    link = up(pool)
    _, gateway = sas(link)
    assert gateway.peer_additional_addresses == (extra,)
    names = [type(e).__name__ for e in link.gateway_events]
    assert names.index("PeerAddressesAnnounced") > names.index("IkeSaEstablished")


def _updates(link: Link) -> list[bytes]:
    return [t.datagram.data for t in link.log if t.direction == "m->g"]


def test_a_prepared_update_leaves_as_built(pool: AddressPool[object]) -> None:
    """Built while the new link is down, the update leaves at the move without being
    built again (the same bytes), and the gateway accepts it."""
    link = up(pool)
    mobile, gateway = sas(link)
    link.mobile.prepare_update(mobile.local_spi, LEASE)
    assert not link.mobile.datagrams_to_send(link.now)  # nothing goes out yet
    (prepared,) = [mobile._mobike._prepared]
    assert prepared is not None
    before = len(_updates(link))
    move(link, LEASE)
    assert _updates(link)[before] == prepared.sealed[1][0]
    assert gateway.remote == LEASE and gateway.counters["updates_accepted"] == 1
    assert mobile.counters["updates_sent"] == 1


def test_a_prepared_update_is_built_anew_when_stale(pool: AddressPool[object]) -> None:
    """Another request went out after it was built (its Message ID is taken), or the
    move goes elsewhere: the update is built anew, and accepted."""
    link = up(pool)
    mobile, gateway = sas(link)
    link.mobile.prepare_update(mobile.local_spi, LEASE)
    prepared = mobile._mobike._prepared
    assert prepared is not None
    link.mobile.send_additional_addresses(mobile.local_spi, [], link.now)
    link.run(until=link.now + 10)
    move(link, LEASE)
    assert prepared.sealed[1][0] not in _updates(link)
    assert gateway.remote == LEASE and gateway.counters["updates_accepted"] == 1
    # Prepared for one path, moved along another: built for the path taken.
    link.mobile.prepare_update(mobile.local_spi, ELSEWHERE)
    prepared = mobile._mobike._prepared
    assert prepared is not None
    move(link, (LEASE[0], 500))
    assert prepared.sealed[1][0] not in _updates(link)
    assert gateway.remote == (LEASE[0], 500)
