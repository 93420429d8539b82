"""The CP address pool: which addresses it leases, to whom, and that none is leased twice."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.pool import AddressPool, Family, IPAddress, IPNetwork
from mpa_ike.config_payload import AddressAllocator, LeaseRequest


def pool(*cidrs: str, reserved: tuple[str, ...] = ()) -> AddressPool[str]:
    return AddressPool(
        [ip_network(cidr) for cidr in cidrs], [ip_address(address) for address in reserved]
    )


def drain(addresses: AddressPool[str], family: Family) -> list[str]:
    leased: list[str] = []
    while (address := addresses.acquire(f"sa{len(leased)}", family)) is not None:
        leased.append(str(address))
    return leased


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.0.0.0/30", ["10.0.0.1", "10.0.0.2"]),
        ("10.0.0.0/31", ["10.0.0.0", "10.0.0.1"]),
        ("10.0.0.7/32", ["10.0.0.7"]),
        ("2001:db8::/126", ["2001:db8::1", "2001:db8::2", "2001:db8::3"]),
        ("2001:db8::/127", ["2001:db8::", "2001:db8::1"]),
    ],
)
def test_leasable_addresses(cidr: str, expected: list[str]) -> None:
    addresses = pool(cidr)
    family: Family = 4 if "." in cidr else 6
    assert addresses.size(family) == len(expected)
    assert drain(addresses, family) == expected


def test_reserved_addresses_are_never_leased() -> None:
    addresses = pool("10.0.0.0/29", reserved=("10.0.0.1", "10.0.0.5", "192.0.2.1"))
    assert addresses.size(4) == 4
    assert drain(addresses, 4) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.6"]
    assert addresses.acquire("x", 4, ip_address("10.0.0.1")) is None


def test_exhaustion_then_release() -> None:
    addresses = pool("10.0.0.0/30")
    assert addresses.acquire("a", 4) == IPv4Address("10.0.0.1")
    assert addresses.acquire("b", 4) == IPv4Address("10.0.0.2")
    assert addresses.acquire("c", 4) is None
    assert addresses.release("a") == (IPv4Address("10.0.0.1"),)
    assert addresses.acquire("c", 4) == IPv4Address("10.0.0.1")
    assert addresses.release("nobody") == ()


def test_fresh_addresses_first_then_oldest_released() -> None:
    addresses = pool("10.0.0.0/29")  # .1 to .6
    for owner in "abc":
        addresses.acquire(owner, 4)
    addresses.release("b")
    addresses.release("a")
    assert addresses.acquire("d", 4) == IPv4Address("10.0.0.4")
    drain_rest = [addresses.acquire(owner, 4) for owner in "ef"]
    assert drain_rest == [IPv4Address("10.0.0.5"), IPv4Address("10.0.0.6")]
    assert addresses.acquire("g", 4) == IPv4Address("10.0.0.2")  # released first
    assert addresses.acquire("h", 4) == IPv4Address("10.0.0.1")


def test_requested_address_is_honoured_if_free() -> None:
    addresses = pool("10.0.0.0/24", "2001:db8::/64")
    assert addresses.acquire("a", 4, ip_address("10.0.0.77")) == IPv4Address("10.0.0.77")
    assert addresses.acquire("b", 4, ip_address("10.0.0.77")) == IPv4Address("10.0.0.1")
    assert addresses.acquire("c", 4, ip_address("10.0.1.1")) == IPv4Address("10.0.0.2")
    assert addresses.acquire("d", 4, ip_address("10.0.0.0")) == IPv4Address("10.0.0.3")
    assert addresses.acquire("e", 6, ip_address("10.0.0.9")) == IPv6Address("2001:db8::1")
    assert addresses.acquire("f", 6, ip_address("2001:db8::2")) == IPv6Address("2001:db8::2")


def test_the_pointer_skips_requested_leases() -> None:
    addresses = pool("10.0.0.0/29")
    addresses.acquire("a", 4, ip_address("10.0.0.2"))
    assert addresses.acquire("b", 4) == IPv4Address("10.0.0.1")
    assert addresses.acquire("c", 4) == IPv4Address("10.0.0.3")


def test_an_address_released_ahead_of_the_pointer_is_leased_once_after_the_fresh() -> None:
    addresses = pool("10.0.0.0/29")
    addresses.acquire("a", 4, ip_address("10.0.0.3"))
    addresses.release("a")
    assert drain(addresses, 4) == [f"10.0.0.{n}" for n in (1, 2, 4, 5, 6, 3)]


def test_an_identity_gets_its_last_address_back_if_free() -> None:
    addresses = pool("10.0.0.0/29", "2001:db8::/125")
    assert addresses.acquire("a", 4, identity="carol") == IPv4Address("10.0.0.1")
    assert addresses.acquire("a", 6) == IPv6Address("2001:db8::1")  # carol's too
    addresses.acquire("b", 4, identity="dave")
    addresses.release("a")
    assert addresses.acquire("c", 4, identity="carol") == IPv4Address("10.0.0.1")
    assert addresses.acquire("c", 6, identity="carol") == IPv6Address("2001:db8::1")
    addresses.release("c")
    addresses.acquire("d", 4, ip_address("10.0.0.1"), identity="erin")
    assert addresses.acquire("e", 4, identity="carol") == IPv4Address("10.0.0.3")


def test_a_successor_ike_sa_keeps_the_identity_of_the_lease_it_takes_over() -> None:
    """The core releases the old IKE SA's lease and acquires it for the new one at once
    (RFC 7296 §2.18), without an identity: the identity moves along."""
    addresses = pool("10.0.0.0/29")
    lease = addresses.acquire("old", 4, identity="carol")
    addresses.release("old")
    assert addresses.acquire("new", 4, lease) == lease
    addresses.release("new")
    addresses.acquire("x", 4)
    assert addresses.acquire("y", 4, identity="carol") == lease


def test_the_pool_is_the_cores_allocator() -> None:
    pool: AddressPool[bytes] = AddressPool([ip_network("10.0.0.0/30"), ip_network("fd00::/120")])
    allocator: AddressAllocator = AddressPool([ip_network("10.0.0.0/30")])
    leased = allocator.lease(LeaseRequest(b"sa", 4, identity="carol"))
    assert leased == pool.acquire(b"sa", 4)
    assert allocator.network_of(IPv4Address("10.0.0.2")) == ip_network("10.0.0.0/30")
    assert pool.network_of(IPv6Address("fd00::7")) == ip_network("fd00::/120")
    assert pool.network_of(IPv4Address("10.0.1.1")) is None


def test_one_lease_per_family_per_owner() -> None:
    addresses = pool("10.0.0.0/24", "2001:db8::/64")
    v4 = addresses.acquire("sa", 4)
    v6 = addresses.acquire("sa", 6)
    assert addresses.acquire("sa", 4, ip_address("10.0.0.99")) == v4
    assert addresses.lease_of("sa") == v4
    assert addresses.lease_of("sa", 6) == v6
    assert addresses.leases_of("sa") == (v4, v6)
    assert v4 is not None and v6 is not None
    assert addresses.owner_of(v4) == "sa"
    assert addresses.owner_of(v6) == "sa"
    assert list(addresses.leases()) == [(v4, "sa"), (v6, "sa")]
    assert addresses.release("sa") == (v4, v6)
    assert addresses.lease_of("sa") is None
    assert addresses.owner_of(v4) is None


def test_membership_and_availability() -> None:
    addresses = pool("10.0.0.0/24", reserved=("10.0.0.1",))
    assert ip_address("10.0.0.200") in addresses
    assert ip_address("10.0.1.1") not in addresses
    assert ip_address("::1") not in addresses
    assert addresses.available(4) == 253
    addresses.acquire("a", 4)
    assert addresses.available(4) == 252
    assert addresses.acquire("a", 6) is None


def test_overlapping_networks_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        pool("10.0.0.0/24", "10.0.0.128/25")


def test_large_pools_do_not_scan() -> None:
    addresses: AddressPool[int] = AddressPool(
        [ip_network("10.0.0.0/8"), ip_network("2001:db8::/64")]
    )
    started = time.perf_counter()
    for n in range(20_000):
        addresses.acquire(n, 4 if n % 2 else 6)
    for n in range(0, 20_000, 2):
        addresses.release(n)
    assert time.perf_counter() - started < 2.0
    assert addresses.size(6) == 2**64 - 1


FAMILIES: tuple[Family, ...] = (4, 6)
OWNERS = [f"sa{n}" for n in range(12)]
NETWORKS: list[IPNetwork] = [
    ip_network("10.0.0.0/29"),
    ip_network("10.0.1.0/30"),
    ip_network("2001:db8::/125"),
]
RESERVED = [ip_address("10.0.0.3"), ip_address("2001:db8::5")]
# Inside and outside the networks, reserved, network addresses, of both families.
CANDIDATE_TEXTS = "10.0.0.0 10.0.0.3 10.0.0.6 10.0.1.2 10.0.2.1 2001:db8:: 2001:db8::5 2001:db8::7"
CANDIDATES: list[IPAddress] = [ip_address(text) for text in CANDIDATE_TEXTS.split()]


class PoolMachine(RuleBasedStateMachine):
    """Random acquire/release sequences against a model of who holds what."""

    @initialize()
    def setup(self) -> None:
        self.pool: AddressPool[str] = AddressPool(NETWORKS, RESERVED)
        self.model: dict[str, dict[Family, IPAddress]] = {}

    def leased_count(self, family: Family) -> int:
        return sum(1 for held in self.model.values() if family in held)

    @rule(
        owner=st.sampled_from(OWNERS),
        family=st.sampled_from(FAMILIES),
        requested=st.none() | st.sampled_from(CANDIDATES),
    )
    def acquire(self, owner: str, family: Family, requested: IPAddress | None) -> None:
        held = self.model.get(owner, {}).get(family)
        requested_free = (
            requested is not None
            and requested.version == family
            and requested in self.pool
            and requested not in RESERVED
            and self.pool.owner_of(requested) is None
        )
        address = self.pool.acquire(owner, family, requested)
        if held is not None:
            assert address == held
        elif address is None:
            assert self.leased_count(family) == self.pool.size(family)
        else:
            if requested_free:
                assert address == requested
            self.model.setdefault(owner, {})[family] = address

    @rule(owner=st.sampled_from(OWNERS))
    def release(self, owner: str) -> None:
        held = self.model.pop(owner, {})
        assert sorted(self.pool.release(owner), key=str) == sorted(held.values(), key=str)

    @invariant()
    def no_address_is_leased_twice(self) -> None:
        leased = [address for address, _ in self.pool.leases()]
        assert len(leased) == len(set(leased))

    @invariant()
    def leases_match_the_model(self) -> None:
        for owner, held in self.model.items():
            for family, address in held.items():
                assert self.pool.lease_of(owner, family) == address
                assert self.pool.owner_of(address) == owner
                assert address in self.pool and address not in RESERVED
        for family in FAMILIES:
            free = self.pool.size(family) - self.leased_count(family)
            assert self.pool.available(family) == free

    @invariant()
    def no_network_or_broadcast_address(self) -> None:
        for address, _ in self.pool.leases():
            for network in NETWORKS:
                if address.version == 4 and address in network:
                    assert address not in (network.network_address, network.broadcast_address)


PoolMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_pool_state_machine = PoolMachine.TestCase
