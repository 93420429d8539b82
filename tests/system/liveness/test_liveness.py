"""Liveness and recovery with the real daemons, each in its own network namespace.

- A mobile node whose namespace is deleted (it vanishes without a DELETE): mpa-gateway's
  DPD finds it dead and frees its IKE SA and lease within dpd_delay + dpd_timeout.
- mpa-gateway killed with SIGKILL and started again over its lease file: three live
  mpa-mobile nodes learn it from the INVALID_IKE_SPI answering their next DPD, set up
  new IKE SAs by themselves and get their own addresses back; how long it took is
  printed (``recovered in``).
- A charon road warrior with dpd_delay against mpa-gateway (both probing) stays up over
  a 30 s run.

Every gateway keeps its leases in the test's own directory.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servicehelp import Daemon, cli, write_yaml

from mpa_harness import guards
from mpa_harness.netns import Netns, add_veth, delete_netns, netns
from mpa_harness.pki import KeyType
from tests.system.interop.test_mobile_vs_gateway import (
    GATEWAY_ID,
    POOL,
    PROTECTED_NET,
    gateway_yaml,
    start_daemon,
    status,
    wait_listening,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_env")]

METHOD = "eap-mschapv2"
IKE = "aes128gcm16-prfsha256-x25519"
KEY: KeyType = "ecdsa"
USERS = {"carol": "Ch4ng3-me-Not!", "dave": "dave-Secret-1", "frank": "frank-Secret-2"}
DPD_DELAY = 2.0
DPD_TIMEOUT = 3.0


@pytest.fixture
def netns_env() -> None:
    guards.require(guards.namespaces_unavailable(), "liveness of the daemons")


@dataclass
class Node:
    """One mobile node: its namespace (on a link of its own to the gateway), its user."""

    ns: Netns
    user: str
    gateway_ip: str
    workdir: Path
    daemon: Daemon | None = None
    config: Path = field(default=Path())

    def status(self) -> dict[str, Any]:
        return status("mobile.cli", self.config)

    def sa(self) -> dict[str, Any] | None:
        found = [sa for sa in self.status()["ike_sas"] if sa["state"] == "ESTABLISHED"]
        return found[0] if len(found) == 1 else None


@dataclass
class Site:
    gw_ns: Netns
    workdir: Path
    config: Path
    gateway: Daemon
    nodes: list[Node]

    def status(self) -> dict[str, Any]:
        return status("gateway.cli", self.config)

    def kill_and_restart(self) -> None:
        """SIGKILL (no DELETE, no release), then the same configuration again."""
        self.gateway.process.send_signal(signal.SIGKILL)
        self.gateway.process.wait(timeout=10)
        self.gateway.stop()
        self.gateway = start_daemon("gateway.cli", self.config, self.gw_ns.name)
        wait_listening(self.config)


def mobile_yaml(node: Node, ca: Path) -> Path:
    data: dict[str, Any] = {
        "identity": f"{node.user}@mpa-ike.test",
        "eap": {"method": "mschapv2", "password": USERS[node.user], "identity": node.user},
        "control_socket": "mn.sock",
        "log_level": "debug",
        "datapath": "userspace",
        "gateways": {
            "gw": {
                "address": node.gateway_ip,
                "id": GATEWAY_ID,
                "ca": str(ca),
                "ike": [IKE],
                "esp": ["aes128gcm16"],
                "remote_ts": [PROTECTED_NET],
                "dpd_delay": DPD_DELAY,
            }
        },
    }
    return write_yaml(node.workdir / "mobile.yaml", data)


@contextlib.contextmanager
def site(workdir: Path, users: list[str], **gateway_extra: object) -> Iterator[Site]:
    """The gateway's namespace, one namespace per mobile node on a /24 of its own."""
    with contextlib.ExitStack() as stack:
        gw_ns = stack.enter_context(netns("g"))
        nodes = []
        for index, user in enumerate(users):
            ns = stack.enter_context(netns(f"m{index}"))
            net = f"192.0.{10 + index}"
            add_veth(ns, gw_ns, [f"{net}.1/24"], [f"{net}.2/24"])
            (workdir / user).mkdir()
            nodes.append(Node(ns, user, f"{net}.2", workdir / user))
        config, _ = gateway_yaml(
            workdir,
            [node.gateway_ip for node in nodes],
            METHOD,
            IKE,
            KEY,
            datapath="userspace",
            esp=["aes128gcm16"],
            eap={"method": "mschapv2", "users": USERS},
            leases="leases.sqlite3",
            **gateway_extra,
        )
        gateway = start_daemon("gateway.cli", config, gw_ns.name)
        running = Site(gw_ns, workdir, config, gateway, nodes)
        stack.callback(lambda: print(running.gateway.stop()))
        wait_listening(config)
        for node in nodes:
            node.config = mobile_yaml(node, workdir / "ca.pem")
            node.daemon = start_daemon("mobile.cli", node.config, node.ns.name)
            stack.callback(stop, node)
        yield running


def stop(node: Node) -> None:
    if node.daemon is not None:
        print(node.daemon.stop())


def connect(node: Node) -> dict[str, Any]:
    result = cli("mobile.cli", "connect", "gw", "-c", node.config)
    assert result.returncode == 0, result.stderr
    sa = node.sa()
    assert sa is not None and sa["address"]
    return sa


def test_vanished_mobile_node_loses_its_sa_and_lease(short_tmp: Path) -> None:
    with site(short_tmp, ["carol"], dpd_delay=DPD_DELAY, dpd_timeout=DPD_TIMEOUT) as running:
        (node,) = running.nodes
        sa = connect(node)
        gateway = running.status()
        assert [lease["address"] for lease in gateway["leases"]] == [sa["address"]]
        assert node.daemon is not None
        node.daemon.process.send_signal(signal.SIGKILL)
        node.daemon.process.wait(timeout=10)
        delete_netns(node.ns)  # the node and its link are gone, no DELETE sent
        gone = time.monotonic()
        wait_until(
            lambda: not running.status()["ike_sas"] and not running.status()["leases"],
            timeout=DPD_DELAY + DPD_TIMEOUT + 3.0,
        )
        elapsed = time.monotonic() - gone
        print(f"the gateway freed the vanished node's SA and lease in {elapsed:.2f} s")
        assert elapsed <= DPD_DELAY + DPD_TIMEOUT + 1.5
        counters = running.status()["counters"]
        assert counters.get("dpd_failed") == 1


def test_mobile_nodes_come_back_after_a_gateway_crash(short_tmp: Path) -> None:
    with site(short_tmp, list(USERS)) as running:
        before = {node.user: connect(node) for node in running.nodes}
        addresses = {user: sa["address"] for user, sa in before.items()}
        assert len(set(addresses.values())) == 3
        running.kill_and_restart()
        restarted = time.monotonic()

        def back(node: Node) -> bool:
            sa = node.sa()
            if sa is None or not sa["child_sas"]:
                return False
            return bool(sa["child_sas"][0]["spi_in"] != before[node.user]["child_sas"][0]["spi_in"])

        wait_until(lambda: all(back(node) for node in running.nodes), timeout=30.0)
        elapsed = time.monotonic() - restarted
        print(f"3 mobile nodes recovered in {elapsed:.2f} s after the gateway's restart")
        for node in running.nodes:
            mobile = node.status()
            (sa,) = mobile["ike_sas"]
            assert sa["address"] == addresses[node.user]  # its own address again
            (recovered,) = mobile["recovered"]
            assert recovered["why"] == "INVALID_IKE_SPI"
            print(f"{node.user}: re-established in {recovered['seconds']:.2f} s after the hint")
        gateway = running.status()
        assert sorted(sa["address"] for sa in gateway["ike_sas"]) == sorted(addresses.values())
        assert gateway["counters"].get("invalid_ike_spi_sent", 0) >= 3
        assert elapsed < DPD_DELAY + 10.0


def test_charon_with_dpd_stays_up(short_tmp: Path) -> None:
    from mpa_harness.charon import require_charon
    from mpa_harness.netns import two_hosts
    from mpa_harness.scenarios import CHILD
    from tests.system.interop.charon_setup import charon_and_gateway

    require_charon()
    with (
        two_hosts() as hosts,
        charon_and_gateway(
            short_tmp,
            hosts,
            METHOD,
            IKE,
            KEY,
            listen=[hosts.link.b.addr(4)],
            connection={"dpd_delay": "3s"},
            dpd_delay=DPD_DELAY,
        ) as found,
    ):
        charon, config = found.charon, found.gateway_config
        charon.initiate(CHILD, timeout=5)
        first = charon.wait_established(CHILD)
        time.sleep(30.0)
        (sa,) = charon.list_sas()
        assert sa.state == "ESTABLISHED" and sa.initiator_spi == first.initiator_spi
        (ours,) = status("gateway.cli", config)["ike_sas"]
        assert ours["state"] == "ESTABLISHED" and ours["address"] == first.local_vips[0]
        counters = status("gateway.cli", config)["counters"]
        assert counters.get("dpd_sent", 0) >= 1 and not counters.get("dpd_failed")
        assert ipaddress_in_pool(ours["address"])


def ipaddress_in_pool(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address) in ipaddress.ip_network(POOL)
