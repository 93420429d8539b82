"""The address pool behind CP(CFG_REQUEST) / CFG_REPLY (RFC 7296 §3.15).

Each lease belongs to an owner, an opaque key of the IKE SA that holds it (its SPI),
and lasts until :meth:`AddressPool.release`: the gateway releases it when the IKE SA
ends, so the mobile node keeps its nCoA across a MOBIKE move. An owner holds at most
one IPv4 and one IPv6 lease.

Like strongSwan's pools, addresses never leased go out first, in order; released
addresses are reused oldest first, so a released address is not handed to someone else
at once. Nothing scans the pool: each family keeps a next pointer per range and a
queue of released addresses, so an /8 or a /64 costs no more than a /24.

With a :class:`~gateway.leases.LeaseStore` the leases outlive the process. Every change
is written (one transaction) before it takes effect, so what the database says was
leased is never handed to another. At start the leases active at the last run are
*held*: their IKE SAs died with the process, but their mobile nodes still use the
addresses. A peer of the same identity coming back gets its held lease again (or, if it
has none, the address it was last released, when that is free); nobody else does. A
new IKE SA of an identity that asks for the address another IKE SA of that identity
holds takes the lease over (a make-before-break re-authentication, RFC 4478). Held
leases whose peers do not come back are reclaimed ``grace`` seconds after the start,
lazily at the next allocation or when the service calls :meth:`AddressPool.reclaim`.

The pool reads no clock of its own: lease times come from the injected ``clock`` (the
gateway passes the wall clock, as the times outlive the process) or from ``now``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, Literal, TypeVar, cast

from gateway.leases import LeaseRow, LeaseState, LeaseStore, owner_key
from mpa_ike.config_payload import LeaseRequest
from mpa_ike.records import quick_init

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Family = Literal[4, 6]
OwnerT = TypeVar("OwnerT", bound=Hashable)
FAMILIES: tuple[Family, ...] = (4, 6)
# How long the leases of an earlier run stay held for their identities (seconds).
DEFAULT_GRACE = 300.0

log = logging.getLogger(__name__)


@quick_init
@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease of an IKE SA of an earlier run, kept from everyone but its identity
    until ``until``."""

    address: IPAddress
    identity: str | None
    ike_sa: str  # the owner key of that run (SPI in hex)
    until: float

    def __str__(self) -> str:
        who = self.identity if self.identity is not None else "an unknown peer"
        return f"held for {who} (IKE SA {self.ike_sa} of an earlier run)"


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
        self.held: dict[int, HeldLease] = {}
        self._held_of: dict[str, list[int]] = {}  # identity -> held; may hold stale entries
        self._previous: dict[str, int] = {}  # identity -> the address it was last released
        self._released: set[int] = set()
        # Release order; may hold stale entries, _released is the truth.
        self._release_order: deque[int] = deque()

    def size(self) -> int:
        total = sum(r.last - r.first + 1 for r in self._ranges)
        return total - len(self._reserved)

    def contains(self, value: int) -> bool:
        return self._range_of(value) is not None

    def manages(self, value: int) -> bool:
        """Whether ``value`` is one of the pool's leasable addresses."""
        return self.contains(value) and value not in self._reserved

    def is_free(self, value: int) -> bool:
        return self.manages(value) and value not in self.leased and value not in self.held

    def choose(self, identity: str | None, requested: int | None) -> int | None:
        """The address for a new lease: ``identity``'s held lease, ``requested`` if it
        is free, ``identity``'s last address if it is free, a fresh one, the oldest
        released one. :meth:`lease` takes it, :meth:`unchoose` puts it back."""
        if identity is not None and (value := self._own_held(identity)) is not None:
            return value
        if requested is not None and self.is_free(requested):
            return requested
        if identity is not None:
            previous = self._previous.get(identity)
            if previous is not None and self.is_free(previous):
                return previous
        value = self._next_fresh()
        return value if value is not None else self._oldest_released()

    def lease(self, value: int, owner: OwnerT) -> None:
        self._released.discard(value)
        self.held.pop(value, None)
        self.leased[value] = owner

    def unchoose(self, value: int) -> None:
        """A chosen address was not leased after all: it goes out next time."""
        if value in self.held:
            return
        if value in self._released:  # back at the head of the queue (a duplicate is stale)
            self._release_order.appendleft(value)
            return
        r = self._range_of(value)
        if r is not None and r.next == value + 1:
            r.next = value  # the pointer's last: it stays a fresh one
        else:
            self._released.add(value)
            self._release_order.appendleft(value)

    def give_back(self, value: int, identity: str | None) -> None:
        del self.leased[value]
        self._add_released(value, identity)

    def hold(self, lease: HeldLease) -> None:
        value = int(lease.address)
        self.held[value] = lease
        if lease.identity is not None:
            self._held_of.setdefault(lease.identity, []).append(value)

    def unhold(self, lease: HeldLease) -> None:
        """A held lease is reclaimed: the address goes back as released."""
        value = int(lease.address)
        del self.held[value]
        self._add_released(value, lease.identity)

    def load_released(self, value: int, identity: str | None) -> None:
        """A lease released in an earlier run (given oldest first)."""
        self._add_released(value, identity)

    def _add_released(self, value: int, identity: str | None) -> None:
        self._released.add(value)
        self._release_order.append(value)
        if identity is not None:
            self._previous[identity] = value

    def _own_held(self, identity: str) -> int | None:
        values = self._held_of.get(identity, [])
        while values:
            lease = self.held.get(values[0])
            if lease is not None and lease.identity == identity:
                return values[0]
            values.pop(0)
        self._held_of.pop(identity, None)
        return None

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
                # Requested, held and released addresses may sit ahead of the pointer:
                # the released ones wait in the release queue.
                if (
                    value not in self.leased
                    and value not in self._reserved
                    and value not in self.held
                    and value not in self._released
                ):
                    return value
        return None

    def _oldest_released(self) -> int | None:
        while self._release_order:
            value = self._release_order.popleft()
            if value in self._released:
                return value
        return None


def _address(family: int, value: int) -> IPAddress:
    return IPv4Address(value) if family == 4 else IPv6Address(value)


class AddressPool(Generic[OwnerT]):
    """IPv4 and IPv6 leases for IKE SAs, keyed by an opaque owner.

    ``store`` keeps them across restarts (it needs ``clock``, the source of lease
    times); ``grace`` is how long the leases of the last run stay held for their
    identities; ``identify`` names the peer of an owner when ``acquire`` is not told.
    """

    def __init__(
        self,
        networks: Iterable[IPNetwork],
        reserved: Iterable[IPAddress] = (),
        *,
        store: LeaseStore | None = None,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] | None = None,
        identify: Callable[[OwnerT], str | None] | None = None,
    ) -> None:
        """``reserved`` addresses (the gateway's own, say) are never leased.

        Raises ValueError if two networks of a family overlap, or for a store without
        a clock; LeaseStoreError if the store cannot be read.
        """
        networks = list(networks)
        self.networks = tuple(networks)
        reserved_ints = {4: set[int](), 6: set[int]()}
        for address in reserved:
            reserved_ints[address.version].add(int(address))
        self._families: dict[int, _FamilyPool[OwnerT]] = {
            family: _FamilyPool((n for n in networks if n.version == family), reserved_ints[family])
            for family in FAMILIES
        }
        self._owners: dict[OwnerT, dict[int, IPAddress]] = {}
        self._identities: dict[OwnerT, str] = {}
        # What the last release gave back, with its identity: a successor IKE SA takes
        # it over at once (RFC 7296 §2.18) and keeps the identity if it is not told.
        self._moving: dict[IPAddress, str] = {}
        self._store = store
        self._grace = grace
        self._clock = clock
        self._identify = identify
        self._reclaim_at: float | None = None
        if store is not None:
            if clock is None:
                raise ValueError("a lease store needs a clock")
            self._load(store.load(), clock())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------------ leases

    def lease(self, request: LeaseRequest) -> IPAddress | None:
        """The core's :class:`mpa_ike.config_payload.AddressAllocator` call: with the
        identity, a peer coming back after a restart gets its address again."""
        owner = cast(OwnerT, request.owner)  # the core's owners are what it files SAs by
        return self.acquire(owner, request.family, request.requested, identity=request.identity)

    def network_of(self, address: IPAddress) -> IPNetwork | None:
        """The pool network holding ``address`` (its netmask goes with the lease)."""
        return next((n for n in self.networks if address in n), None)

    def acquire(
        self,
        owner: OwnerT,
        family: Family,
        requested: IPAddress | None = None,
        *,
        identity: str | None = None,
    ) -> IPAddress | None:
        """Lease an address of ``family`` to ``owner``; None if the pool is exhausted
        (or the lease cannot be recorded).

        ``identity`` (the peer's) gets its held lease back, or its last address if
        free. A ``requested`` address is honoured if it is in the pool and free (RFC
        7296 §3.15.1 lets the initiator ask for one; strongSwan grants it); otherwise
        another is leased. An owner asking again gets the address it already holds.
        """
        held = self.lease_of(owner, family)
        if held is not None:
            return held
        now = self._now()
        self.reclaim(now)
        wanted = requested if requested is not None and requested.version == family else None
        identity = self._identity_of(owner, identity, wanted)
        if wanted is not None and self._take_over(owner, family, wanted, identity, now):
            return wanted
        pool = self._families[family]
        value = pool.choose(identity, int(wanted) if wanted is not None else None)
        if value is None:
            return None
        address = _address(family, value)
        if not self._record(owner, address, identity, now):
            pool.unchoose(value)
            return None
        pool.lease(value, owner)
        self._owners.setdefault(owner, {})[family] = address
        if identity is not None:
            self._identities[owner] = identity
        return address

    def _take_over(
        self, owner: OwnerT, family: Family, address: IPAddress, identity: str | None, now: float
    ) -> bool:
        """A peer that re-authenticates make-before-break (RFC 4478) asks its new IKE SA's
        address to be the one its old IKE SA still holds: like strongSwan's pools, which
        reassign an online lease to the same identity, the lease moves to ``owner``."""
        pool = self._families[family]
        previous = pool.leased.get(int(address))
        if identity is None or previous is None or previous == owner:
            return False
        if self._identities.get(previous) != identity:
            return False
        if not self._record(owner, address, identity, now):
            return False
        held = self._owners[previous]
        del held[family]
        if not held:
            del self._owners[previous]
            self._identities.pop(previous, None)
        pool.leased[int(address)] = owner
        self._owners.setdefault(owner, {})[family] = address
        self._identities[owner] = identity
        log.info("lease of %s moved to a new IKE SA of %s", address, identity)
        return True

    def release(self, owner: OwnerT) -> tuple[IPAddress, ...]:
        """Return every address ``owner`` holds to the pool; they are returned."""
        held = self._owners.pop(owner, {})
        identity = self._identities.pop(owner, None)
        released = tuple(held.values())
        self._moving = dict.fromkeys(released, identity) if identity is not None else {}
        if released and self._store is not None:
            try:
                self._store.release(owner_key(owner), released, self._now())
            except sqlite3.Error as error:
                # Still active in the file: held after a restart, then reclaimed.
                log.error("leases: cannot record the release of %s: %s", released, error)
        for family, address in held.items():
            self._families[family].give_back(int(address), identity)
        return released

    def reclaim(self, now: float) -> tuple[IPAddress, ...]:
        """Held leases whose grace is over by ``now`` go back to the pool, in one
        transaction; they are returned. Allocation calls this; the service may too."""
        if self._reclaim_at is None or now < self._reclaim_at:
            return ()
        due = [lease for lease in self.held() if lease.until <= now]
        if self._store is not None and due:
            try:
                self._store.reclaim([(lease.address, lease.ike_sa) for lease in due], now)
            except sqlite3.Error as error:
                log.error("leases: cannot record the reclaim of held leases: %s", error)
                return ()  # held a while longer: the next call tries again
        for lease in due:
            self._families[lease.address.version].unhold(lease)
        self._reclaim_at = min((lease.until for lease in self.held()), default=None)
        if due:
            log.info("reclaimed %d leases of IKE SAs that did not come back", len(due))
        return tuple(lease.address for lease in due)

    def next_reclaim(self) -> float | None:
        """When :meth:`reclaim` has something to do (None: nothing is held)."""
        return self._reclaim_at

    def mark_seen(self, now: float) -> None:
        """Every lease of a live IKE SA was in use at ``now`` (one transaction)."""
        if self._store is None:
            return
        live = [
            (address, owner_key(owner))
            for owner, held in self._owners.items()
            for address in held.values()
        ]
        try:
            self._store.mark_seen(live, now)
        except sqlite3.Error as error:
            log.error("leases: cannot record when leases were seen: %s", error)

    # ------------------------------------------------------------------ queries

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

    def leases(self) -> Iterator[tuple[IPAddress, OwnerT | HeldLease]]:
        """Every lease with its owner: the live IKE SAs', then the held ones."""
        for owner, held in self._owners.items():
            for family in sorted(held):
                yield held[family], owner
        for lease in self.held():
            yield lease.address, lease

    def held(self) -> Iterator[HeldLease]:
        """The leases of an earlier run not yet taken back nor reclaimed."""
        for family in FAMILIES:
            yield from list(self._families[family].held.values())

    def __contains__(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in the pool's networks (leased or not)."""
        return self._families[address.version].contains(int(address))

    def size(self, family: Family) -> int:
        """How many addresses of ``family`` can be leased in all."""
        return self._families[family].size()

    def available(self, family: Family) -> int:
        pool = self._families[family]
        return self.size(family) - len(pool.leased) - len(pool.held)

    # ------------------------------------------------------------------ inside

    def _now(self) -> float:
        return self._clock() if self._clock is not None else 0.0

    def _identity_of(
        self, owner: OwnerT, identity: str | None, requested: IPAddress | None
    ) -> str | None:
        """Who the peer is: as told, as known from the owner's other lease, as
        ``identify`` says, or as the lease being moved to this owner says."""
        if identity is None:
            identity = self._identities.get(owner)
        if identity is None and self._identify is not None:
            identity = self._identify(owner)
        if identity is None and requested is not None:
            identity = self._moving.pop(requested, None)
        return identity

    def _record(self, owner: OwnerT, address: IPAddress, identity: str | None, now: float) -> bool:
        if self._store is None:
            return True
        row = LeaseRow(address, identity, owner_key(owner), LeaseState.ACTIVE, now, now)
        try:
            self._store.allocate(row)
        except sqlite3.Error as error:
            log.error("leases: cannot record the lease of %s, not leased: %s", address, error)
            return False
        return True

    def _load(self, rows: Iterable[LeaseRow], now: float) -> None:
        """Rows of the last run: active ones held until ``now + grace``, released ones
        queued in release order. Rows outside the pool (another gateway's sharing the
        file, or an address reserved since) are left alone."""
        until = now + self._grace
        for row in rows:
            pool = self._families[row.family]
            value = int(row.address)
            if not pool.manages(value):
                continue
            if row.state is LeaseState.ACTIVE:
                pool.hold(HeldLease(row.address, row.identity, row.ike_sa, until))
            else:
                pool.load_released(value, row.identity)
        if any(self.held()):
            self._reclaim_at = until
