"""Traffic through the negotiated SAs: a UDP echo between a LAN host and the mobile node.

Three namespaces: the mobile node (``mn``), the gateway (``gw``, 192.0.2.2 towards the
mobile node, 10.1.0.1 on its LAN) and a host on that LAN (``lan``, 10.1.0.10, routed
through the gateway). The mobile node gets its address from the gateway's pool by CP;
a UDP echo runs both ways between that address and the LAN host, through
(a) mpa-mobile and mpa-gateway, (b) mpa-mobile and a charon gateway with
kernel-libipsec, (c) a charon initiator (``encap = yes``, kernel-libipsec) and
mpa-gateway. Each side's CHILD SA counters must show exactly the echo's packets, and
the two sides must agree on the bytes. Then tampered, replayed and wrong-SPI ESP sent
to the gateway's port 4500 must be dropped and counted by reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servicehelp import REPO, Daemon, cli, edited, write_yaml

from mpa_harness import guards
from mpa_harness.charon import Charon, ChildSa
from mpa_harness.netns import Netns, TwoHosts, add_veth, netns, two_hosts
from mpa_harness.pcap import capture, classify, read_udp
from mpa_harness.pki import KeyType, make_ca, make_cert
from mpa_harness.scenarios import CHILD, CONN, Scenario, responder_config
from tests.system.interop.charon_setup import CharonAndGateway, charon_and_gateway, diagnosed
from tests.system.interop.test_mobile_vs_gateway import (
    GATEWAY_ID,
    POOL,
    PROTECTED_NET,
    gateway_yaml,
    mobile_yaml,
    start_daemon,
    status,
    wait_listening,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]

ECHO = REPO / "tests" / "system" / "esp" / "udp_echo.py"
GW_LAN = "10.1.0.1"
LAN_HOST = "10.1.0.10"
GW_LAN6 = "fd01::1"
LAN_HOST6 = "fd01::10"
LAN_NET6 = "fd01::/64"
POOL6 = "fd03::/120"
COUNT = 5
# Each echo crosses the tunnel once each way per datagram, and it runs both ways.
PACKETS = 2 * COUNT
METHOD, IKE = "eap-mschapv2", "aes256gcm16-prfsha384-x25519"
KEY: KeyType = "ecdsa"


@pytest.fixture
def traffic_env() -> None:
    """Namespaces and TUN devices need root: skip without it, fail when CI=true."""
    guards.require(guards.namespaces_unavailable(), "the traffic tests")


# --------------------------------------------------------------------------- topology


@dataclass
class Net:
    hosts: TwoHosts
    lan: Netns

    @property
    def mn(self) -> Netns:
        return self.hosts.left

    @property
    def gw(self) -> Netns:
        return self.hosts.right


@contextlib.contextmanager
def three_hosts() -> Iterator[Net]:
    """mn -- gw -- lan; the LAN host's default route is the gateway."""
    with two_hosts() as hosts, netns("lan") as lan:
        add_veth(
            hosts.right,
            lan,
            [f"{GW_LAN}/24", f"{GW_LAN6}/64"],
            [f"{LAN_HOST}/24", f"{LAN_HOST6}/64"],
        )
        lan.ip("route", "add", "default", "via", GW_LAN)
        lan.ip("-6", "route", "add", "default", "via", GW_LAN6)
        yield Net(hosts, lan)


@contextlib.contextmanager
def charon_that_moves(
    workdir: Path, net: Net, address_policy: str, **options: Any
) -> Iterator[CharonAndGateway]:
    """charon from ``%any`` (free to move) to the gateway's IPv4 address, the gateway
    on the userspace datapath with ``mobike: {address_policy: ...}``."""
    link = net.hosts.link
    with charon_and_gateway(
        workdir,
        net.hosts,
        METHOD,
        IKE,
        KEY,
        listen=[link.b.addr(4)],
        charon_local="%any",
        charon_remote=link.b.addr(4),
        datapath="userspace",
        mobike={"address_policy": address_policy},
        **options,
    ) as setup:
        yield setup


# --------------------------------------------------------------------------- echo


@contextlib.contextmanager
def echo_server(ns: Netns, host: str, port: int) -> Iterator[None]:
    proc = ns.popen(
        [sys.executable, str(ECHO), "serve", host, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", proc.stderr.read() if proc.stderr else line
        yield
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def echoes(ns: Netns, host: str, port: int, src: str, count: int = COUNT) -> int:
    """How many of ``count`` datagrams from ``src`` came back from ``host``."""
    cmd = [sys.executable, str(ECHO), "client", host, str(port), str(count), src]
    return int(ns.run(cmd, timeout=30).stdout.strip())


def echo_both_ways(net: Net, address: str, lan_host: str = LAN_HOST) -> None:
    """The mobile node's address to the LAN host and back, then the other way round."""
    with echo_server(net.lan, lan_host, 7001), echo_server(net.mn, address, 7002):
        assert echoes(net.mn, lan_host, 7001, address) == COUNT
        assert echoes(net.lan, address, 7002, lan_host) == COUNT


# --------------------------------------------------------------------------- daemons


def our_child(module: str, config: Path) -> dict[str, Any]:
    [sa] = status(module, config)["ike_sas"]
    [child] = sa["child_sas"]
    assert isinstance(child, dict)
    return child


def charon_child(charon: Charon, ours: dict[str, Any]) -> ChildSa:
    """charon's half of our CHILD SA (a rekey leaves two for a moment)."""
    sa = charon.wait_established(CHILD)
    [child] = [c for c in sa.children if c.spi_out == ours["spi_in"]]
    assert child.spi_in == ours["spi_out"]
    return child


def charon_counts(child: ChildSa) -> dict[str, int]:
    raw = child.raw
    return {
        "bytes_in": int(raw["bytes-in"]),
        "bytes_out": int(raw["bytes-out"]),
        "packets_in": int(raw["packets-in"]),
        "packets_out": int(raw["packets-out"]),
    }


def assert_counts_match(
    ours: dict[str, Any], theirs: dict[str, Any], packets: int = PACKETS
) -> None:
    """Each side saw the echo's packets each way, and the other side's bytes."""
    assert ours["packets_in"] == ours["packets_out"] == packets, ours
    assert theirs["packets_in"] == theirs["packets_out"] == packets, theirs
    assert ours["bytes_out"] == theirs["bytes_in"] > 0, (ours, theirs)
    assert ours["bytes_in"] == theirs["bytes_out"] > 0, (ours, theirs)


def with_settings(config: Path, **settings: object) -> Path:
    data = yaml.safe_load(config.read_text())
    for path, value in settings.items():
        data = edited(data, path.replace("__", "."), value)
    return write_yaml(config, data)


@dataclass
class OurDaemons:
    gateway: Daemon
    gateway_config: Path
    mobile: Daemon
    mobile_config: Path


@contextlib.contextmanager
def our_daemons(
    workdir: Path,
    gw: Netns,
    mn: Netns,
    listen: list[str],
    gateway_address: str,
    *,
    gateway: dict[str, object],
    mobile: dict[str, object],
) -> Iterator[OurDaemons]:
    """mpa-gateway in ``gw`` listening on ``listen``, and mpa-mobile in ``mn`` with its
    gateway ``gw`` at ``gateway_address``, not yet connected;
    ``gateway`` and ``mobile`` set keys of their files (``a__b`` for ``a.b``). Each
    daemon's log is printed when it stops."""
    with contextlib.ExitStack() as stack:
        gw_config, _ = gateway_yaml(workdir, listen, METHOD, IKE, KEY, **gateway)
        gateway_daemon = start_daemon("gateway.cli", gw_config, gw.name)
        stack.callback(lambda: print(gateway_daemon.stop()))
        wait_listening(gw_config)
        mn_config = mobile_yaml(workdir, gateway_address, METHOD, IKE, ca=workdir / "ca.pem")
        with_settings(mn_config, **mobile)
        mobile_daemon = start_daemon("mobile.cli", mn_config, mn.name)
        stack.callback(lambda: print(mobile_daemon.stop()))
        yield OurDaemons(gateway_daemon, gw_config, mobile_daemon, mn_config)


@dataclass
class OurPair:
    net: Net
    gateway: Daemon
    gateway_config: Path
    mobile: Daemon
    mobile_config: Path


@contextlib.contextmanager
def mobile_and_gateway(
    workdir: Path,
    family: int = 4,
    encap: bool = False,
    dual_stack: bool = False,
    gw_datapath: str = "userspace",
) -> Iterator[OurPair]:
    """mpa-gateway in gw, mpa-mobile in mn, both with the userspace datapath, connected.

    ``dual_stack``: an IPv4 and an IPv6 CP address, the LAN's IPv4 and IPv6 networks.
    """
    with three_hosts() as net:
        link = net.hosts.link
        listen = [link.b.addr(4), link.b.addr(6)]
        extra: dict[str, object] = {"datapath": gw_datapath}
        mobile: dict[str, object] = {"datapath": "userspace", "gateways__gw__encap": encap}
        if dual_stack:
            extra.update(pool=[POOL, POOL6], local_ts=[PROTECTED_NET, LAN_NET6])
            mobile.update(gateways__gw__remote_ts=[PROTECTED_NET, LAN_NET6])
        address = link.b.addr(family)
        with our_daemons(
            workdir, net.gw, net.mn, listen, address, gateway=extra, mobile=mobile
        ) as ours:
            result = cli("mobile.cli", "connect", "gw", "-c", ours.mobile_config)
            assert result.returncode == 0, result.stderr
            yield OurPair(net, ours.gateway, ours.gateway_config, ours.mobile, ours.mobile_config)


def cp_address(pair: OurPair) -> str:
    [sa] = status("mobile.cli", pair.mobile_config)["ike_sas"]
    address = str(sa["address"])
    assert ipaddress.ip_address(address) in ipaddress.ip_network(POOL)
    return address


def devices(ns: Netns, kind: str = "tun") -> list[str]:
    out = ns.ip("-o", "link", "show", "type", kind, check=False).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]


# --------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("family", [4, 6], ids=["outer-ipv4", "outer-ipv6"])
def test_echo_through_mobile_and_gateway(family: int, short_tmp: Path) -> None:
    with mobile_and_gateway(short_tmp, family) as pair:
        address = cp_address(pair)
        net = pair.net
        # The CP address is on the mobile node's TUN device, the LAN routed into it.
        [mn_tun] = devices(net.mn)
        # With the pool's netmask (INTERNAL_IP4_NETMASK), no prefix route into the device.
        assert f"{address}/24" in net.mn.ip("-o", "addr", "show", "dev", mn_tun).stdout
        assert mn_tun in net.mn.ip("route", "get", LAN_HOST).stdout
        assert devices(net.gw)[0] in net.gw.ip("route", "get", address).stdout

        echo_both_ways(net, address)

        mobile = our_child("mobile.cli", pair.mobile_config)
        gateway = our_child("gateway.cli", pair.gateway_config)
        assert_counts_match(mobile, gateway)
        assert mobile["drops"] == gateway["drops"] == {}

        result = cli("mobile.cli", "disconnect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 0, result.stderr
        # The address and the routes went with the IKE SA; the device stays until stop.
        assert address not in net.mn.ip("-o", "addr", "show", "dev", mn_tun).stdout
        assert mn_tun not in net.mn.ip("route", "show").stdout


def test_echo_over_inner_ipv6(short_tmp: Path) -> None:
    """Dual-stack CP: an IPv6 echo through the same CHILD SA as an IPv4 one."""
    with mobile_and_gateway(short_tmp, dual_stack=True) as pair:
        [sa] = status("mobile.cli", pair.mobile_config)["ike_sas"]
        [child] = sa["child_sas"]
        [address6] = [
            ts.split("/")[0] for ts in child["local_ts"] if ipaddress.ip_network(ts).version == 6
        ]
        assert ipaddress.ip_address(address6) in ipaddress.ip_network(POOL6)
        echo_both_ways(pair.net, address6, LAN_HOST6)
        echo_both_ways(pair.net, cp_address(pair), LAN_HOST)
        mobile = our_child("mobile.cli", pair.mobile_config)
        gateway = our_child("gateway.cli", pair.gateway_config)
        assert_counts_match(mobile, gateway, 2 * PACKETS)


def test_stop_removes_devices_routes_and_forwarding(short_tmp: Path) -> None:
    with mobile_and_gateway(short_tmp) as pair:
        net = pair.net
        address = cp_address(pair)
        assert net.gw.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
        assert len(devices(net.mn)) == len(devices(net.gw)) == 1
        pair.mobile.stop()
        pair.gateway.stop()
        assert devices(net.mn) == devices(net.gw) == []
        assert address not in net.mn.ip("-o", "addr", "show").stdout
        assert address not in net.gw.ip("route", "show").stdout
        assert "10.1.0.0/24" not in net.mn.ip("route", "show").stdout
        # Forwarding was off in the new namespace: the gateway turned it on, and off again.
        assert net.gw.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"


# --------------------------------------------------------------------------- (b)


@pytest.mark.charon
@pytest.mark.usefixtures("charon_env")
@pytest.mark.parametrize("family", [4, 6], ids=["outer-ipv4", "outer-ipv6"])
def test_echo_through_mobile_and_charon_gateway(family: int, short_tmp: Path) -> None:
    sc = Scenario(METHOD, ike_proposal=IKE, gateway_key=KEY)
    with three_hosts() as net, contextlib.ExitStack() as stack:
        net.gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        gw_ip = net.hosts.link.b.addr(family)
        charon = stack.enter_context(Charon(net.gw, short_tmp / "charon"))
        ca = make_ca(key_type=KEY)
        cert_file = charon.add_cert(make_cert(ca, GATEWAY_ID, KEY, san_ip=[gw_ip]), "gw")
        ca.write(short_tmp / "ca.pem")
        charon.configure(responder_config(sc, gw_ip, cert_file))
        charon.start()
        charon.load()
        config = mobile_yaml(short_tmp, gw_ip, METHOD, IKE, ca=short_tmp / "ca.pem")
        # kernel-libipsec does ESP in UDP only (strongswan-interop.md).
        with_settings(config, datapath="userspace", gateways__gw__encap=True)
        mobile = start_daemon("mobile.cli", config, net.mn.name)
        stack.callback(lambda: print(mobile.stop()))
        with diagnosed(charon):
            result = cli("mobile.cli", "connect", "gw", "-c", config)
            assert result.returncode == 0, result.stderr
            [vip] = charon.wait_established(CHILD).remote_vips

            echo_both_ways(net, vip)

            ours = our_child("mobile.cli", config)
            theirs = charon_counts(charon_child(charon, ours))
            assert_counts_match(ours, theirs)
            assert ours["drops"] == {}


# --------------------------------------------------------------------------- (c)


@pytest.mark.charon
@pytest.mark.usefixtures("charon_env")
@pytest.mark.parametrize("family", [4, 6], ids=["outer-ipv4", "outer-ipv6"])
def test_echo_through_charon_initiator_and_gateway(family: int, short_tmp: Path) -> None:
    with (
        three_hosts() as net,
        charon_and_gateway(
            short_tmp, net.hosts, METHOD, IKE, KEY, family=family, datapath="userspace"
        ) as setup,
    ):
        charon, gw_config = setup.charon, setup.gateway_config
        charon.initiate(CHILD, timeout=5)
        [vip] = charon.wait_established(CHILD).local_vips

        echo_both_ways(net, vip)

        ours = our_child("gateway.cli", gw_config)
        theirs = charon_counts(charon_child(charon, ours))
        assert_counts_match(ours, theirs)
        assert ours["drops"] == {}

        # charon rekeys the CHILD SA: the new pair carries the traffic, the old is gone.
        old_spi = ours["spi_in"]
        charon.rekey(child=CHILD)

        def rekeyed() -> bool:
            children = status("gateway.cli", gw_config)["ike_sas"][0]["child_sas"]
            return [child["spi_in"] for child in children] not in ([], [old_spi])

        wait_for(rekeyed)
        wait_for(lambda: len(status("gateway.cli", gw_config)["ike_sas"][0]["child_sas"]) == 1)
        assert status("gateway.cli", gw_config)["datapath"]["child_sas"] == 1
        echo_both_ways(net, vip)
        ours = our_child("gateway.cli", gw_config)
        assert ours["spi_in"] != old_spi
        assert_counts_match(ours, charon_counts(charon_child(charon, ours)))

        # An IKE SA rekey hands the CHILD SA to the new IKE SA, whose deletion
        # then takes it out of the datapath.
        old_ike = charon.wait_established(CHILD).initiator_spi
        charon.rekey(ike=CONN)
        charon.wait_for(lambda sas: bool(sas) and sas[0].initiator_spi != old_ike)
        echo_both_ways(net, vip)
        charon.terminate(ike=CONN, timeout=5)
        wait_for(lambda: not status("gateway.cli", gw_config)["ike_sas"])
        assert status("gateway.cli", gw_config)["datapath"]["child_sas"] == 0
        assert vip not in net.gw.ip("route", "show").stdout


# --------------------------------------------------------------------------- injection


def inject(ns: Netns, packets: list[bytes], dst: str) -> None:
    """Send each packet as one UDP datagram to ``dst`` port 4500 from inside ``ns``."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for h in sys.argv[2:]: s.sendto(bytes.fromhex(h), (sys.argv[1], 4500))\n"
    )
    ns.run([sys.executable, "-c", code, dst, *(p.hex() for p in packets)])


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_tampered_replayed_and_unknown_esp_are_dropped(short_tmp: Path) -> None:
    with mobile_and_gateway(short_tmp, encap=True) as pair:
        net = pair.net
        address = cp_address(pair)
        gw_ip = net.hosts.link.b.addr(4)
        pcap = short_tmp / "esp.pcap"
        with capture(net.gw, net.hosts.link.b.dev, pcap, "udp port 4500"):
            echo_both_ways(net, address)
        esp = [
            data
            for dgram in read_udp(pcap)
            if dgram.dst == gw_ip
            for kind, data, _ in [classify(dgram)]
            if kind == "esp"
        ]
        assert len(esp) == PACKETS
        before = our_child("gateway.cli", pair.gateway_config)

        original = esp[-1]
        seq = int.from_bytes(original[4:8], "big")
        tampered = bytearray(original)
        tampered[4:8] = (seq + 100).to_bytes(4, "big")  # fresh, so the ICV is what fails
        tampered[20] ^= 0x01
        wrong_spi = b"\xde\xad\xbe\xef" + original[4:]
        assert wrong_spi[:4] != original[:4]
        inject(net.mn, [bytes(tampered), original, wrong_spi], gw_ip)

        def dropped() -> bool:
            drops = status("gateway.cli", pair.gateway_config)["datapath"]["drops"]
            return bool(drops.get("unknown-spi"))

        wait_for(dropped)
        after = our_child("gateway.cli", pair.gateway_config)
        assert after["drops"] == {"bad-icv": 1, "replay": 1}
        counted = ("bytes_in", "bytes_out", "packets_in", "packets_out")
        assert {k: after[k] for k in counted} == {k: before[k] for k in counted}
        datapath = status("gateway.cli", pair.gateway_config)["datapath"]
        assert datapath["drops"].get("unknown-spi") == 1

        # The SA still carries traffic after the drops.
        with echo_server(net.lan, LAN_HOST, 7003):
            assert echoes(net.mn, LAN_HOST, 7003, address, 1) == 1


def test_xfrm_gateway_still_gets_ike_on_4500(short_tmp: Path) -> None:
    """``datapath: xfrm`` marks the 4500 sockets for the kernel's ESP (UDP_ENCAP, as
    charon does); IKE behind the non-ESP marker must still reach the daemon. Where the
    kernel has no ESP states (as on these machines) the install is refused, logged and
    counted, and the CHILD SA deleted (it would carry nothing); the IKE SA stands."""
    with mobile_and_gateway(short_tmp, encap=True, gw_datapath="xfrm") as pair:
        gateway = status("gateway.cli", pair.gateway_config)
        [sa] = gateway["ike_sas"]
        assert sa["state"] == "ESTABLISHED" and sa["local"].endswith("[4500]")
        datapath = gateway["datapath"]
        assert datapath["kind"] == "xfrm"
        if datapath["errors"] == 0:  # a kernel with ESP states
            assert datapath["child_sas"] == 1
            return
        assert datapath["errors"] == 1 and datapath["child_sas"] == 0

        def children(module: str, config: Path) -> list[Any]:
            [sa] = status(module, config)["ike_sas"]
            return list(sa["child_sas"])

        wait_for(lambda: not children("gateway.cli", pair.gateway_config))
        wait_for(lambda: not children("mobile.cli", pair.mobile_config))
        assert status("mobile.cli", pair.mobile_config)["datapath"]["child_sas"] == 0


@pytest.mark.charon
@pytest.mark.usefixtures("charon_env")
def test_echo_goes_on_after_charon_moves(short_tmp: Path) -> None:
    """charon's address changes; after its UPDATE_SA_ADDRESSES (and the CHILD SA rekey
    kernel-libipsec does after a move) the gateway sends to the new address."""
    with three_hosts() as net:
        link = net.hosts.link
        # "any", as strongSwan: the new address is not one we allocated.
        with charon_that_moves(short_tmp, net, "any") as setup:
            charon, gw_config = setup.charon, setup.gateway_config
            charon.initiate(CHILD, timeout=5)
            [vip] = charon.wait_established(CHILD).local_vips
            echo_both_ways(net, vip)
            # (The other way round, the new address would go with the old primary one.)
            net.mn.del_addr(link.a.dev, "192.0.2.1/24")
            net.mn.add_addr(link.a.dev, "192.0.2.3/24")

            def moved() -> bool:
                [sa] = status("gateway.cli", gw_config)["ike_sas"]
                return bool(sa["remote"].startswith("192.0.2.3["))

            wait_for(moved, timeout=5)
            charon.wait_for(lambda sas: bool(sas) and sas[0].local_host == "192.0.2.3", timeout=5)
            time.sleep(0.3)  # the rekey kernel-libipsec starts after a move
            echo_both_ways(net, vip)
            wait_for(lambda: status("gateway.cli", gw_config)["datapath"]["child_sas"] == 1)
            ours = our_child("gateway.cli", gw_config)
            theirs = charon_counts(charon_child(charon, ours))
            assert ours["bytes_out"] == theirs["bytes_in"] and ours["drops"] == {}
            assert ours["packets_out"] == theirs["packets_in"] >= COUNT
