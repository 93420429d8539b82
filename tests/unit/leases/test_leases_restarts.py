"""Random acquisitions, releases, crashes and restarts against a model: across restarts
no address is leased twice, nor an address held for one identity to another."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from ipaddress import ip_network
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from leasehelp import Clock

from gateway.leases import LeaseStore, owner_key
from gateway.pool import FAMILIES, AddressPool, Family, IPAddress, IPNetwork

NETWORKS: list[IPNetwork] = [ip_network("10.0.0.0/29"), ip_network("2001:db8::/126")]
IDENTITIES = ["carol", "dave", "erin", "frank", "grace", "heidi", "ivan"]
GRACE = 100.0


class RestartMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="leases-"))
        self.file = self.dir / "leases.sqlite3"
        self.clock = Clock()
        self.next_spi = 0
        self.pool = self._open()
        # owner -> its identity and leases; address -> identity it is held for
        self.live: dict[bytes, tuple[str, dict[int, IPAddress]]] = {}
        self.held: dict[IPAddress, str] = {}
        self.held_until = 0.0

    def teardown(self) -> None:
        self.pool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _open(self) -> AddressPool[bytes]:
        store = LeaseStore.open(self.file)
        return AddressPool(NETWORKS, store=store, grace=GRACE, clock=self.clock)

    @rule(who=st.sampled_from(IDENTITIES), family=st.sampled_from(FAMILIES))
    def connect(self, who: str, family: Family) -> None:
        self.next_spi += 1
        owner = self.next_spi.to_bytes(8, "big")
        if self.clock.now >= self.held_until:
            self.held.clear()  # the pool reclaims them now
        own = [address for address, identity in self.held.items() if identity == who]
        address = self.pool.acquire(owner, family, identity=who)
        if address is None:
            return
        assert address not in self.held or self.held[address] == who
        if any(a.version == family for a in own):
            assert address in own  # its own held lease, before anything else
        self.held.pop(address, None)
        self.live[owner] = (who, {family: address})

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(sorted(self.live)))
        _, leases = self.live.pop(owner)
        assert set(self.pool.release(owner)) == set(leases.values())

    @rule()
    def crash_and_restart(self) -> None:
        # Held leases not yet reclaimed (reclaim is lazy) are still active in the file:
        # the next run holds them again, for another grace time.
        self.held = {lease.address: lease.identity or "" for lease in self.pool.held()}
        self.pool.close()
        for who, leases in self.live.values():
            for address in leases.values():
                self.held[address] = who
        self.live.clear()
        self.held_until = self.clock.now + GRACE
        self.pool = self._open()

    @rule(seconds=st.sampled_from([1.0, 50.0, 99.0, 100.0, 500.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def memory_matches_the_model(self) -> None:
        live = {address for _, leases in self.live.values() for address in leases.values()}
        pool_live = [address for address, owner in self.pool.leases() if isinstance(owner, bytes)]
        assert sorted(pool_live, key=str) == sorted(live, key=str)
        held = {lease.address: lease.identity for lease in self.pool.held()}
        if self.clock.now < self.held_until:
            assert held == self.held
        else:
            assert set(held) <= set(self.held)  # not yet reclaimed (lazily)
        for family in FAMILIES:
            used = sum(1 for a in live | set(held) if a.version == family)
            assert self.pool.available(family) == self.pool.size(family) - used

    @invariant()
    def the_file_matches_memory(self) -> None:
        with sqlite3.connect(self.file) as db:
            active = set(db.execute("SELECT address, ike_sa FROM leases WHERE state = 'active'"))
        expected = {
            (str(address), owner_key(owner))
            for owner, (_, leases) in self.live.items()
            for address in leases.values()
        }
        expected |= {(str(lease.address), lease.ike_sa) for lease in self.pool.held()}
        assert active == expected


RestartMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_restarts = RestartMachine.TestCase
