"""mpa-gateway killed with SIGKILL over a lease file of 1000 leases, three live
mpa-mobile nodes behind it.

The lease file is filled beforehand (``tests/unit/leases/leasehelp.py``: 1000 active
leases of other identities in the gateway's pool, as a gateway killed with that many
mobile nodes would leave it); the three nodes connect and get the next addresses. The
gateway is killed (no DELETE reaches anyone) and started again over the same file: each
node learns it from the INVALID_IKE_SPI answering its next DPD (within its dpd_delay of
the crash, or the DPD's retransmission 4 s later if it went out while the gateway was
down), sets a new IKE SA up by itself and gets its own address back; nobody gets an
address held for another (zero double allocations), and the 1000 leases stay held. The
detection and recovery times are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import sqlite3
import time
from pathlib import Path

import pytest

from mpa_ike.retransmit import RetransmitPolicy
from tests.system.interop.test_mobile_vs_gateway import wait_until
from tests.system.liveness.test_liveness import DPD_DELAY, USERS, Node, connect, site
from tests.unit.leases.leasehelp import fill

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_env")]

FILLED = 1000
POOL = "10.200.0.0/16"


@pytest.fixture
def netns_env() -> None:
    from mpa_harness import guards

    guards.require(guards.namespaces_unavailable(), "the gateway's restart over its leases")


def active_leases(file: Path) -> dict[str, str | None]:
    """address -> identity of every active row, as another reader of the file sees it."""
    with contextlib.closing(sqlite3.connect(file)) as db:
        rows = db.execute("SELECT address, identity FROM leases WHERE state = 'active'")
        return {address: identity for address, identity in rows.fetchall()}


def node_address(node: Node) -> str | None:
    sa = node.sa()
    return sa["address"] if sa is not None and sa["child_sas"] else None


def test_restart_over_1000_leases_gives_each_node_its_address(short_tmp: Path) -> None:
    leases = short_tmp / "leases.sqlite3"
    filled = {
        str(address): who
        for who, address in fill(leases, FILLED, [ipaddress.ip_network(POOL)], (4,))
    }
    with site(short_tmp, list(USERS), pool=[POOL], lease_grace=300) as running:
        before = {node.user: connect(node)["address"] for node in running.nodes}
        assert len(set(before.values())) == len(before)
        assert not set(before.values()) & set(filled)  # held for their identities
        assert len(active_leases(leases)) == FILLED + len(before)
        time.sleep(0.3)  # a DPD's silence starts with the last message (the connect)
        killed = time.monotonic()
        running.kill_and_restart()
        restarted = time.monotonic()

        def back(node: Node) -> bool:
            recovered = node.status()["recovered"]
            return bool(recovered) and node_address(node) is not None

        wait_until(lambda: all(back(node) for node in running.nodes), timeout=DPD_DELAY + 10.0)
        done = time.monotonic()
        detected, took = [], []
        for node in running.nodes:
            (recovered,) = node.status()["recovered"]
            assert recovered["why"] == "INVALID_IKE_SPI"
            detected.append(recovered["started"] - killed)
            took.append(recovered["seconds"])
            assert node_address(node) == before[node.user]  # its own address again
        print(
            f"gateway restarted over {FILLED + len(before)} leases in"
            f" {(restarted - killed) * 1e3:.0f} ms; the nodes learnt it"
            f" {', '.join(f'{d:.2f}' for d in sorted(detected))} s after the crash"
            f" (dpd_delay {DPD_DELAY:g} s), re-established"
            f" {', '.join(f'{t:.2f}' for t in sorted(took))} s after that,"
            f" all back {max(d + t for d, t in zip(detected, took, strict=True)):.2f} s"
            f" after the crash (seen by polling after {done - killed:.2f} s)"
        )
        # A DPD sent while the gateway was down goes unanswered until its retransmission:
        # each node learns it at its first DPD (or retransmission) after the restart.
        assert max(detected) <= (restarted - killed) + DPD_DELAY + RetransmitPolicy().timeout
        gateway = running.status()
        leased = [lease["address"] for lease in gateway["leases"]]
        assert len(leased) == len(set(leased)) == FILLED + len(before)  # no address twice
        assert sorted(sa["address"] for sa in gateway["ike_sas"]) == sorted(before.values())
        rows = active_leases(leases)
        assert {a: rows[a] for a in filled} == filled  # still held for their identities
        for user, address in before.items():
            assert rows[address] == user  # the identity EAP authenticated
