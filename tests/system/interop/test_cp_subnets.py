"""CP's netmask and protected subnets (RFC 7296 §3.15.1, §3.15.2) honoured by mpa-mobile
(userspace datapath): the CP address on the TUN device with the netmask's prefix (and no
prefix route), only the gateway's subnets routed into the tunnel, a UDP echo with a LAN
host through it, everything gone on disconnect. The gateway is (a) mpa-gateway with
``subnets:``, (b) charon with its attr plugin (``netmask`` and ``subnet``), on the
namespaces of test_traffic.py (mn -- gw -- lan).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servicehelp import cli

from mpa_harness import guards
from mpa_harness.charon import PLUGIN_DIR, PLUGINS, Charon
from mpa_harness.pki import make_ca, make_cert
from mpa_harness.scenarios import CHILD, Scenario, responder_config
from tests.system.interop.test_mobile_vs_gateway import (
    GATEWAY_ID,
    POOL,
    gateway_yaml,
    mobile_yaml,
    start_daemon,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import (
    IKE,
    KEY,
    LAN_HOST,
    METHOD,
    Net,
    devices,
    echo_both_ways,
    three_hosts,
    with_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]

SUBNET = "10.1.0.0/25"  # within PROTECTED_NET, the LAN host in it
NETMASK = "255.255.255.0"  # POOL's


@pytest.fixture
def traffic_env() -> None:
    guards.require(guards.namespaces_unavailable(), "the CP subnet tests")


def routes(net: Net) -> list[str]:
    return net.mn.ip("-4", "route", "show").stdout.splitlines()


def check_honoured(net: Net, config: Path) -> str:
    """The MN's status, address and routes as the CP attributes say; its CP address."""
    [sa] = status("mobile.cli", config)["ike_sas"]
    assert (sa["netmask"], sa["subnets"]) == (NETMASK, [SUBNET])
    address = str(sa["address"])
    assert ipaddress.ip_address(address) in ipaddress.ip_network(POOL)
    [tun] = devices(net.mn)
    assert f"inet {address}/24 " in net.mn.ip("-o", "addr", "show", "dev", tun).stdout
    through_tun = [r for r in routes(net) if f"dev {tun}" in r]
    # Only the subnet goes into the tunnel: not the whole TSr, not the pool's prefix.
    assert [r.split()[0] for r in through_tun] == [SUBNET], through_tun
    assert tun in net.mn.ip("route", "get", LAN_HOST).stdout
    return address


def check_gone(net: Net, config: Path, address: str) -> None:
    result = cli("mobile.cli", "disconnect", "gw", "-c", config)
    assert result.returncode == 0, result.stderr
    [tun] = devices(net.mn)
    assert address not in net.mn.ip("-o", "addr", "show").stdout
    assert not [r for r in routes(net) if f"dev {tun}" in r]


def test_mobile_honours_our_gateways_netmask_and_subnet(short_tmp: Path) -> None:
    with three_hosts() as net, contextlib.ExitStack() as stack:
        link = net.hosts.link
        extra: dict[str, Any] = {"datapath": "userspace", "subnets": [SUBNET]}
        gw_config, _ = gateway_yaml(short_tmp, [link.b.addr(4)], METHOD, IKE, KEY, **extra)
        gateway = start_daemon("gateway.cli", gw_config, net.gw.name)
        stack.callback(lambda: print(gateway.stop()))
        wait_listening(gw_config)
        config = mobile_yaml(short_tmp, link.b.addr(4), METHOD, IKE, ca=short_tmp / "ca.pem")
        with_settings(config, datapath="userspace")
        mobile = start_daemon("mobile.cli", config, net.mn.name)
        stack.callback(lambda: print(mobile.stop()))
        result = cli("mobile.cli", "connect", "gw", "-c", config)
        assert result.returncode == 0, result.stderr
        [gw_sa] = status("gateway.cli", gw_config)["ike_sas"]
        assert (gw_sa["netmask"], gw_sa["subnets"]) == (NETMASK, [SUBNET])

        address = check_honoured(net, config)
        echo_both_ways(net, address)
        check_gone(net, config, address)


@contextlib.contextmanager
def charon_gateway(net: Net, workdir: Path) -> Iterator[Charon]:
    """charon in gw with kernel-libipsec, its pool POOL and the attr plugin's netmask and
    subnet (strongswan.conf ``charon.plugins.attr``)."""
    plugin = PLUGIN_DIR / "libstrongswan-attr.so"
    missing = None if plugin.exists() else f"{plugin} missing (Debian's libstrongswan)"
    guards.require(missing, "charon's attr plugin")
    net.gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    gw_ip = net.hosts.link.b.addr(4)
    attr = {"load": f"{PLUGINS} attr", "plugins": {"attr": {"netmask": NETMASK, "subnet": SUBNET}}}
    with Charon(net.gw, workdir / "charon", settings=attr) as charon:
        ca = make_ca(key_type=KEY)
        cert_file = charon.add_cert(make_cert(ca, GATEWAY_ID, KEY, san_ip=[gw_ip]), "gw")
        ca.write(workdir / "ca.pem")
        charon.configure(
            responder_config(Scenario(METHOD, ike_proposal=IKE, gateway_key=KEY), gw_ip, cert_file)
        )
        charon.start()
        charon.load()
        try:
            yield charon
        except BaseException:
            print(charon.diagnostics())
            raise


@pytest.mark.charon
@pytest.mark.usefixtures("charon_env")
def test_mobile_honours_charons_attr_plugin(short_tmp: Path) -> None:
    with three_hosts() as net, charon_gateway(net, short_tmp) as charon:
        gw_ip = net.hosts.link.b.addr(4)
        config = mobile_yaml(short_tmp, gw_ip, METHOD, IKE, ca=short_tmp / "ca.pem")
        # kernel-libipsec does ESP in UDP only (strongswan-interop.md).
        with_settings(config, datapath="userspace", gateways__gw__encap=True)
        mobile = start_daemon("mobile.cli", config, net.mn.name)
        try:
            result = cli("mobile.cli", "connect", "gw", "-c", config)
            assert result.returncode == 0, result.stderr
            [vip] = charon.wait_established(CHILD).remote_vips
            address = check_honoured(net, config)
            assert address == vip
            echo_both_ways(net, address)
            check_gone(net, config, address)
        finally:
            print(mobile.stop())
