"""A real ``mpa-gateway`` killed with SIGKILL and started again over its lease file.

The gateway runs in its own namespace (userspace datapath, ``leases:`` in the test's
directory); the mobile nodes are our sans-I/O core as initiator, pumped over real UDP
sockets in the other namespace (:class:`MobileNode` of the MOBIKE checks), one IKE SA
per identity. After the restart a new IKE SA of an identity that held an address before
the crash gets that address again, and another identity never gets one of them; those
not taken back return to the pool after ``lease_grace``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servicehelp import Daemon

from mpa_harness import guards
from mpa_harness.netns import TwoHosts, two_hosts
from mpa_ike.events import IkeSaEstablished
from mpa_ike.ike_config import InitiatorConfig
from tests.system.interop.test_gateway_mobike_checks import (
    GW,
    MN,
    NAT_T,
    MobileNode,
    initiator_config,
)
from tests.system.interop.test_mobile_vs_gateway import (
    CLIENT_ID,
    EAP_PASSWORD,
    EAP_USER,
    gateway_yaml,
    start_daemon,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import IKE, KEY, METHOD

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_env")]

POOL = "10.78.0.128/28"  # .129 to .142
SIZE = 14
USERS = {EAP_USER: EAP_PASSWORD, "dave": "dave-Secret-1", "frank": "frank-Secret-2"}


@pytest.fixture
def netns_env() -> None:
    """Namespaces and the TUN device need root: skip without it, fail when CI=true."""
    guards.require(guards.namespaces_unavailable(), "the lease restart tests")


def peer(workdir: Path, user: str) -> InitiatorConfig:
    """The initiator of ``user``: carol is CLIENT_ID, the others user@mpa-ike.test."""
    base = initiator_config(workdir)
    if user == EAP_USER:
        return base
    return dataclasses.replace(
        base, identity=f"{user}@mpa-ike.test", eap_identity=user, eap_password=USERS[user]
    )


@dataclass
class Site:
    """The gateway's side: its namespace pair, configuration, lease file and process."""

    hosts: TwoHosts
    workdir: Path
    config: Path
    gateway: Daemon

    @property
    def leases(self) -> Path:
        return self.workdir / "state" / "leases.sqlite3"

    def status(self) -> dict[str, Any]:
        return status("gateway.cli", self.config)

    def kill_and_restart(self) -> None:
        """SIGKILL (no DELETE, no release), then the same configuration again."""
        self.gateway.process.send_signal(signal.SIGKILL)
        self.gateway.process.wait(timeout=10)
        self.gateway.stop()
        self.gateway = start_daemon("gateway.cli", self.config, self.hosts.right.name)
        wait_listening(self.config)

    def rows(self) -> dict[str, tuple[str | None, str]]:
        """address -> (identity, state), as another reader of the file sees them."""
        with contextlib.closing(sqlite3.connect(self.leases)) as db:
            found = db.execute("SELECT address, identity, state FROM leases").fetchall()
        return {address: (identity, state) for address, identity, state in found}


@contextlib.contextmanager
def site(workdir: Path, grace: int) -> Iterator[Site]:
    with two_hosts() as hosts:
        config, _ = gateway_yaml(
            workdir,
            [GW],
            METHOD,
            IKE,
            KEY,
            pool=[POOL],
            datapath="userspace",
            eap={"method": METHOD.removeprefix("eap-"), "users": USERS},
            leases="state/leases.sqlite3",
            lease_grace=grace,
        )
        running = Site(
            hosts, workdir, config, start_daemon("gateway.cli", config, hosts.right.name)
        )
        try:
            wait_listening(config)
            yield running
        finally:
            print(running.gateway.stop())


@contextlib.contextmanager
def mobile_node(at: Site) -> Iterator[MobileNode]:
    mobile = MobileNode(at.hosts.left)
    try:
        for port in (500, NAT_T):
            mobile.bind(MN, port)
        yield mobile
    finally:
        mobile.close()


def connect(mobile: MobileNode, workdir: Path, user: str) -> str:
    """A new IKE SA of ``user``; the address the gateway leased to it."""
    sa = mobile.endpoint.initiate(peer(workdir, user), (MN, 500), (GW, 500), time.monotonic())

    def established() -> list[IkeSaEstablished]:
        return [e for e in mobile.of_type(IkeSaEstablished) if e.ike_sa == sa.local_spi]

    mobile.pump(lambda: bool(established()))
    [event] = established()
    [address] = event.assigned_addresses
    assert ipaddress.ip_address(address) in ipaddress.ip_network(POOL)
    return str(address)


def held(report: dict[str, Any]) -> dict[str, str]:
    """address -> the status line of each lease held from the last run."""
    return {
        lease["address"]: lease["ike_sa"]
        for lease in report["leases"]
        if lease["ike_sa"].startswith("held for ")
    }


def test_after_a_crash_an_identity_gets_its_address_and_no_other_does(
    short_tmp: Path,
) -> None:
    with site(short_tmp, grace=300) as gw:
        with mobile_node(gw) as mobile:
            before = {user: connect(mobile, short_tmp, user) for user in (EAP_USER, "dave")}
        assert len(set(before.values())) == 2
        assert gw.rows() == {
            # The identity EAP authenticated, not the IDi.
            before[EAP_USER]: (EAP_USER, "active"),
            before["dave"]: ("dave", "active"),
        }

        gw.kill_and_restart()

        report = gw.status()
        assert report["ike_sas"] == []
        assert held(report) == {
            before[EAP_USER]: f"held for {EAP_USER} (IKE SA {ike_sa(gw, before[EAP_USER])}"
            " of an earlier run)",
            before["dave"]: f"held for dave (IKE SA {ike_sa(gw, before['dave'])}"
            " of an earlier run)",
        }
        assert report["pool"]["ipv4"] == {"size": SIZE, "available": SIZE - 2}

        with mobile_node(gw) as mobile:
            # Another identity first: it must not get either address held for its owner.
            other = connect(mobile, short_tmp, "frank")
            assert other not in before.values()
            again = connect(mobile, short_tmp, EAP_USER)
            assert again == before[EAP_USER]
            report = gw.status()
            assert list(held(report)) == [before["dave"]]  # dave has not come back (yet)
            leased = {lease["address"]: lease["ike_sa"] for lease in report["leases"]}
            assert leased[again] == CLIENT_ID  # the new IKE SA's name: its peer
            assert report["pool"]["ipv4"]["available"] == SIZE - 3

        gw.kill_and_restart()  # twice: what was taken back is held again, under the new SA
        with mobile_node(gw) as mobile:
            assert connect(mobile, short_tmp, "dave") == before["dave"]
            assert connect(mobile, short_tmp, "frank") == other
            assert connect(mobile, short_tmp, EAP_USER) == before[EAP_USER]


def test_leases_not_taken_back_return_after_the_grace_time(short_tmp: Path) -> None:
    with site(short_tmp, grace=2) as gw:
        with mobile_node(gw) as mobile:
            first = connect(mobile, short_tmp, EAP_USER)

        gw.kill_and_restart()
        assert list(held(gw.status())) == [first]
        time.sleep(2.2)
        report = gw.status()  # the status reclaims what is due
        assert held(report) == {} and report["leases"] == []
        assert report["pool"]["ipv4"]["available"] == SIZE
        assert gw.rows()[first] == (EAP_USER, "released")

        with mobile_node(gw) as mobile:
            assert connect(mobile, short_tmp, "frank") != first  # fresh addresses first
            assert connect(mobile, short_tmp, EAP_USER) == first  # free: hers again


def ike_sa(gw: Site, address: str) -> str:
    """The ike_sa column (the gateway's SPI) of the lease of ``address``."""
    with contextlib.closing(sqlite3.connect(gw.leases)) as db:
        (spi,) = db.execute("SELECT ike_sa FROM leases WHERE address = ?", (address,)).fetchone()
    assert isinstance(spi, str)
    return spi
