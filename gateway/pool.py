"""The address pool behind CP(CFG_REQUEST) / CFG_REPLY (RFC 7296 §3.15).

Each lease belongs to an owner, an opaque key of the IKE SA that holds it, and lasts
until :meth:`AddressPool.release`: the gateway releases it when the IKE SA ends, so
the mobile node keeps its nCoA across a MOBIKE move. An owner holds at most one IPv4
and one IPv6 lease.

Like strongSwan's pools, addresses never leased go out first, in order; released
addresses are reused oldest first, so a released address is not handed to someone else
at once. Nothing scans the pool: each family keeps a next pointer per range and a
queue of released addresses, so an /8 or a /64 costs no more than a /24.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, Literal, TypeVar

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Family = Literal[4, 6]
OwnerT = TypeVar("OwnerT", bound=Hashable)


@dataclass
class _Range:
    first: int
    last: int
    next: int  # lowest address of the range never handed out by the pointer


def usable_range(network: IPNetwork) -> tuple[int, int]:
    """First and last leasable address: without IPv4 network and broadcast addresses,
    nor the IPv6 Subnet-Router anycast address (RFC 4291 §2.6.1); /31, /32, /127 and
    /128 are used whole (RFC 3021)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.max_prefixlen - network.prefixlen < 2:
        return first, last
    if network.version == 4:
        return first + 1, last - 1
    return first + 1, last


class _FamilyPool(Generic[OwnerT]):
    """The addresses of one family, as integers."""

    def __init__(self, networks: Iterable[IPNetwork], reserved: set[int]) -> None:
        bounds = sorted(usable_range(network) for network in networks)
        for (_, last), (first, _) in itertools.pairwise(bounds):
            if first <= last:
                raise ValueError("pool networks overlap")
        self._ranges = [_Range(first, last, first) for first, last in bounds]
        self._starts = [first for first, _ in bounds]
        self._reserved = {value for value in reserved if self._range_of(value)}
        self.leased: dict[int, OwnerT] = {}
        self._released: set[int] = set()
        # Release order; may hold stale entries, _released is the truth.
        self._release_order: deque[int] = deque()

    def size(self) -> int:
        total = sum(r.last - r.first + 1 for r in self._ranges)
        return total - len(self._reserved)

    def contains(self, value: int) -> bool:
        return self._range_of(value) is not None

    def is_free(self, value: int) -> bool:
        if not self.contains(value) or value in self._reserved:
            return False
        return value not in self.leased

    def take(self, owner: OwnerT, requested: int | None) -> int | None:
        if requested is not None and self.is_free(requested):
            value: int | None = requested
        else:
            value = self._next_fresh()
            if value is None:
                value = self._oldest_released()
        if value is not None:
            self._released.discard(value)
            self.leased[value] = owner
        return value

    def give_back(self, value: int) -> None:
        del self.leased[value]
        self._released.add(value)
        self._release_order.append(value)

    def _range_of(self, value: int) -> _Range | None:
        index = bisect.bisect_right(self._starts, value) - 1
        if index >= 0 and value <= self._ranges[index].last:
            return self._ranges[index]
        return None

    def _next_fresh(self) -> int | None:
        for r in self._ranges:
            while r.next <= r.last:
                value = r.next
                r.next += 1
                # Requested leases may sit ahead of the pointer; released ones are
                # picked up here too and dropped from the release queue lazily.
                if value not in self.leased and value not in self._reserved:
                    return value
        return None

    def _oldest_released(self) -> int | None:
        while self._release_order:
            value = self._release_order.popleft()
            if value in self._released:
                return value
        return None


class AddressPool(Generic[OwnerT]):
    """IPv4 and IPv6 leases for IKE SAs, keyed by an opaque owner."""

    def __init__(self, networks: Iterable[IPNetwork], reserved: Iterable[IPAddress] = ()) -> None:
        """``reserved`` addresses (the gateway's own, say) are never leased.

        Raises ValueError if two networks of a family overlap.
        """
        networks = list(networks)
        reserved_ints = {4: set[int](), 6: set[int]()}
        for address in reserved:
            reserved_ints[address.version].add(int(address))
        self._families: dict[int, _FamilyPool[OwnerT]] = {
            family: _FamilyPool((n for n in networks if n.version == family), reserved_ints[family])
            for family in (4, 6)
        }
        self._owners: dict[OwnerT, dict[int, IPAddress]] = {}

    def acquire(
        self, owner: OwnerT, family: Family, requested: IPAddress | None = None
    ) -> IPAddress | None:
        """Lease an address of ``family`` to ``owner``; None if the pool is exhausted.

        A ``requested`` address is honoured if it is in the pool and free (RFC 7296
        §3.15.1 lets the initiator ask for one; strongSwan grants it); otherwise
        another is leased. An owner asking again gets the address it already holds.
        """
        held = self.lease_of(owner, family)
        if held is not None:
            return held
        wanted = int(requested) if requested is not None and requested.version == family else None
        value = self._families[family].take(owner, wanted)
        if value is None:
            return None
        leased = IPv4Address(value) if family == 4 else IPv6Address(value)
        self._owners.setdefault(owner, {})[family] = leased
        return leased

    def release(self, owner: OwnerT) -> tuple[IPAddress, ...]:
        """Return every address ``owner`` holds to the pool; they are returned."""
        held = self._owners.pop(owner, {})
        for family, address in held.items():
            self._families[family].give_back(int(address))
        return tuple(held.values())

    def lease_of(self, owner: OwnerT, family: Family | None = None) -> IPAddress | None:
        """The address ``owner`` holds of ``family`` (of either, IPv4 first, if None)."""
        held = self._owners.get(owner, {})
        if family is not None:
            return held.get(family)
        return held.get(4, held.get(6))

    def leases_of(self, owner: OwnerT) -> tuple[IPAddress, ...]:
        held = self._owners.get(owner, {})
        return tuple(held[family] for family in sorted(held))

    def owner_of(self, address: IPAddress) -> OwnerT | None:
        """Who leased ``address``; the MOBIKE address policy ``allocated`` asks this."""
        return self._families[address.version].leased.get(int(address))

    def leases(self) -> Iterator[tuple[IPAddress, OwnerT]]:
        for owner, held in self._owners.items():
            for family in sorted(held):
                yield held[family], owner

    def __contains__(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in the pool's networks (leased or not)."""
        return self._families[address.version].contains(int(address))

    def size(self, family: Family) -> int:
        """How many addresses of ``family`` can be leased in all."""
        return self._families[family].size()

    def available(self, family: Family) -> int:
        return self.size(family) - len(self._families[family].leased)
