"""Who the peer is, where EAP ran: the identity EAP authenticated (charon's
get_other_eap_id), not the IDi the peer chose. The uniqueness policy, INITIAL_CONTACT
and the lease go by it; the core hands it to the address allocator."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded

from gateway.pool import AddressPool, IPAddress, IPNetwork
from mpa_ike.config_payload import LeaseRequest
from mpa_ike.datagram import Address
from mpa_ike.eap import EapAnswer, EapResult
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import IkeSaReplaced
from mpa_ike.ike_config import Lifetimes
from mpa_ike.ike_sa import IkeSa

PSK = b"a pre-shared key for the gateway"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
QUIET = Lifetimes(ike_rekey_time=None, child_rekey_time=None)
OTHER_HOST: Address = ("192.0.2.11", 500)


class RecordingAllocator:
    """An AddressPool that remembers the identity each acquire was told."""

    def __init__(self) -> None:
        self.pool: AddressPool[Hashable] = AddressPool([ip_network("10.10.0.0/28")])
        self.identities: list[str | None] = []

    def lease(self, request: LeaseRequest) -> IPAddress | None:
        self.identities.append(request.identity)
        return self.pool.lease(request)

    def network_of(self, address: IPAddress) -> IPNetwork | None:
        return self.pool.network_of(address)

    def release(self, owner: Hashable) -> tuple[IPAddress, ...]:
        return self.pool.release(owner)


def ip_network(text: str) -> Any:
    from ipaddress import ip_network as parse

    return parse(text)


def gateway(allocator: RecordingAllocator, unique: str = "replace") -> Endpoint:
    config = responder_config(allocator.pool, psk=PSK, lifetimes=QUIET, unique=unique)
    config = dataclasses.replace(
        config, allocator=allocator, eap_users=lambda name: USERS.get(name.decode())
    )
    return Endpoint(random=seeded(2), responder=config)


def connect(link: Link, idi: str, user: str, local: Address = MOBILE) -> IkeSa:
    config = initiator_config(psk=PSK, lifetimes=QUIET, eap_identity=user, password=USERS[user])
    config = dataclasses.replace(config, identity=idi)
    sa = link.mobile.initiate(config, local, GATEWAY, link.now)
    link.run(until=link.now + 10.0)
    assert sa.established
    return sa


def responder_of(link: Link, sa: IkeSa) -> IkeSa:
    (found,) = [g for g in link.gateway if g.spi_i == sa.spi_i]
    return found


def test_the_allocator_is_told_the_eap_identity() -> None:
    allocator = RecordingAllocator()
    link = Link(Endpoint(random=seeded(1)), gateway(allocator))
    sa = connect(link, "laptop.alice.example", "alice")
    theirs = responder_of(link, sa)
    assert str(theirs.peer_identity) == "laptop.alice.example"
    assert theirs.eap_identity == "alice" and theirs.unique_identity == "alice"
    assert allocator.identities == ["alice"]


def test_uniqueness_compares_the_eap_identity() -> None:
    """Another IDi, the same EAP user: replaced; the same IDi, another user: both stay."""
    allocator = RecordingAllocator()
    link = Link(Endpoint(random=seeded(1)), gateway(allocator))
    first = responder_of(link, connect(link, "laptop", "alice"))
    second = responder_of(link, connect(link, "phone", "alice"))
    assert first.closed and not second.closed
    (replaced,) = link.of_type(IkeSaReplaced, "gateway")
    assert isinstance(replaced, IkeSaReplaced) and "uniqueness" in replaced.reason
    third = responder_of(link, connect(link, "phone", "bob"))
    assert not second.closed and not third.closed


def test_initial_contact_goes_by_the_eap_identity() -> None:
    """A restarted node (INITIAL_CONTACT) with another IDi ends its user's older IKE SA,
    not another user's of the same IDi (unique=no: only INITIAL_CONTACT closes)."""
    allocator = RecordingAllocator()
    link = Link(Endpoint(random=seeded(1)), gateway(allocator, unique="no"))
    alice = responder_of(link, connect(link, "shared-device", "alice"))
    bob = responder_of(link, connect(link, "shared-device", "bob", OTHER_HOST))
    restarted = Link(Endpoint(random=seeded(7)), link.gateway, now=link.now)
    again = connect(restarted, "another-device", "alice")
    assert again.initial_contact
    assert alice.closed and not bob.closed


def test_the_aaa_user_name_is_the_identity() -> None:
    """An external authenticator's answer names the identity it authenticated."""
    answer = EapAnswer(b"\x03\x01\x00\x04", EapResult.SUCCESS, identity=b"alice")
    assert answer.identity == b"alice"
