"""Helpers of the lease tests: a fake clock, and a lease file filled with many leases.

``python tests/unit/leases/leasehelp.py FILE [COUNT]`` fills FILE with COUNT (1000)
active leases, as a gateway with :data:`FILL_POOL` would leave them when killed, for a
restart test that starts ``mpa-gateway`` with ``leases: FILE``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

from gateway.leases import LeaseStore
from gateway.pool import FAMILIES, AddressPool, Family, IPAddress, IPNetwork

FILL_POOL: tuple[IPNetwork, ...] = (ip_network("10.200.0.0/16"), ip_network("2001:db8:200::/112"))


@dataclass
class Clock:
    """Stands in for the wall clock; tests move it by hand."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def identity(n: int) -> str:
    return f"user{n}@mpa-ike.test"


def spi(n: int) -> bytes:
    return n.to_bytes(8, "big")


def fill(
    file: Path,
    count: int = 1000,
    networks: Sequence[IPNetwork] = FILL_POOL,
    families: Sequence[Family] = FAMILIES,
    now: float = 1_000_000.0,
) -> list[tuple[str, IPAddress]]:
    """``count`` active leases in ``file``: peer n (identity(n), IKE SA spi(n)) holds
    one address of each of ``families``. Returns (identity, address) in order."""
    pool: AddressPool[bytes] = AddressPool(networks, store=LeaseStore.open(file), clock=Clock(now))
    leased: list[tuple[str, IPAddress]] = []
    try:
        for n in range(count):
            peer = n // len(families)
            address = pool.acquire(spi(peer), families[n % len(families)], identity=identity(peer))
            if address is None:
                raise ValueError(f"the pool holds fewer than {count} leases")
            leased.append((identity(peer), address))
    finally:
        pool.close()
    return leased


if __name__ == "__main__":
    started = time.monotonic()
    target = Path(sys.argv[1])
    leases = fill(target, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    print(f"{len(leases)} leases in {target} ({time.monotonic() - started:.1f} s)")
