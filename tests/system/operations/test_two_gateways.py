"""Two mpa-gateway instances on one host keep their kernel state apart.

One gateway namespace runs two instances (different listen addresses, control sockets
and pools, the userspace datapath, default ``routing:``), each with an mpa-mobile in a
namespace of its own, and a LAN host behind the gateway. A UDP echo runs between the
LAN host and each mobile node's CP address through its tunnel. Stopping the first
instance (the one that turned forwarding on) removes its rules and only its rules: the
second one's echo still goes both ways. Stopping the second leaves no rule behind.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servicehelp import Daemon, cli

from mpa_harness.netns import Netns, add_veth, netns
from mpa_ike.io.policy_routing import Routing
from tests.system.interop.test_mobile_vs_gateway import (
    gateway_yaml,
    start_daemon,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import (
    COUNT,
    GW_LAN,
    IKE,
    KEY,
    LAN_HOST,
    METHOD,
    echo_server,
    echoes,
    our_daemons,
    traffic_env,
    with_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]
__all__ = ["traffic_env"]


@dataclass
class Instance:
    """One gateway instance and its mobile node."""

    workdir: Path
    gateway: Daemon
    mobile: Daemon
    mn: Netns
    address: str  # the mobile node's CP address
    port: int  # of the echo servers of this pair

    @property
    def routing(self) -> Routing:
        return Routing.derived(str(self.workdir / "gw.sock"))

    def echo_both_ways(self, lan: Netns) -> None:
        with echo_server(lan, LAN_HOST, self.port), echo_server(self.mn, self.address, self.port):
            assert echoes(self.mn, LAN_HOST, self.port, self.address) == COUNT
            assert echoes(lan, self.address, self.port, LAN_HOST) == COUNT


def rules(ns: Netns) -> str:
    return ns.ip("rule", "show").stdout + ns.ip("-6", "rule", "show").stdout


def has_rules(text: str, routing: Routing) -> bool:
    return (
        f"{routing.priority}:\tfrom all lookup {routing.table}" in text
        and f"{routing.bypass_priority}:\tfrom all fwmark {routing.mark:#x} lookup main" in text
    )


@contextlib.contextmanager
def instance(workdir: Path, gw: Netns, subnet: str, pool: str, port: int) -> Iterator[Instance]:
    """mpa-gateway on ``subnet``.2 in ``gw``, mpa-mobile on ``subnet``.1, connected."""
    workdir.mkdir()
    with netns("mn") as mn:
        add_veth(mn, gw, [f"{subnet}.1/24"], [f"{subnet}.2/24"])
        listen = f"{subnet}.2"
        settings = {"datapath": "userspace", "log_level": "info"}
        with our_daemons(
            workdir, gw, mn, [listen], listen, gateway={"pool": [pool], **settings}, mobile=settings
        ) as ours:
            result = cli("mobile.cli", "connect", "gw", "-c", ours.mobile_config)
            assert result.returncode == 0, result.stderr
            [sa] = status("mobile.cli", ours.mobile_config)["ike_sas"]
            yield Instance(workdir, ours.gateway, ours.mobile, mn, str(sa["address"]), port)


def test_stopping_one_gateway_leaves_the_others_traffic_flowing(short_dir: Path) -> None:
    with netns("gw") as gw, netns("lan") as lan:
        add_veth(gw, lan, [f"{GW_LAN}/24"], [f"{LAN_HOST}/24"])
        lan.ip("route", "add", "default", "via", GW_LAN)
        with (
            instance(short_dir / "a", gw, "192.0.2", "10.3.0.0/24", 7011) as first,
            instance(short_dir / "b", gw, "198.51.100", "10.4.0.0/24", 7012) as second,
        ):
            assert first.routing != second.routing
            for one in (first, second):
                shown = status("gateway.cli", one.workdir / "gateway.yaml")["datapath"]["routing"]
                assert Routing(**shown) == one.routing
            before = rules(gw)
            assert has_rules(before, first.routing) and has_rules(before, second.routing)
            first.echo_both_ways(lan)
            second.echo_both_ways(lan)

            stderr = first.gateway.stop()
            assert "Traceback" not in stderr, stderr
            after = rules(gw)
            assert not has_rules(after, first.routing)
            assert has_rules(after, second.routing)
            assert after.count(f"lookup {second.routing.table}") == 2  # IPv4 and IPv6
            assert gw.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
            second.echo_both_ways(lan)

            assert "Traceback" not in second.gateway.stop()
            left = {line.split(":")[0] for line in rules(gw).splitlines()}
            assert left == {"0", "32766", "32767"}  # the kernel's own rules only


def test_a_second_instance_with_the_same_table_refuses_to_start(short_dir: Path) -> None:
    """One line naming ``routing.table``, a non-zero exit, and the running instance's
    rules untouched."""
    with netns("gw") as gw:
        configs = []
        for name, address in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
            (short_dir / name).mkdir()
            config, _ = gateway_yaml(short_dir / name, [address], METHOD, IKE, KEY)
            configs.append(with_settings(config, datapath="userspace", routing={"table": 4096}))
        first = start_daemon("gateway.cli", configs[0], gw.name)
        try:
            wait_listening(configs[0])
            argv = [sys.executable, "-m", "gateway.cli", "run", "-c", str(configs[1])]
            second = gw.run(argv, check=False, timeout=30)
            assert second.returncode == 1
            assert second.stderr.splitlines()[-1] == (
                "mpa-gateway: routing.table: table 4096 is held by another running instance "
                "in this network namespace (set routing: {table, priority, mark})"
            )
            assert "Traceback" not in second.stderr
            assert "lookup 4096" in rules(gw)
        finally:
            assert "Traceback" not in first.stop()
        assert "lookup 4096" not in rules(gw)
