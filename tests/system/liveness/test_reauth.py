"""Re-authentication (RFC 4478) of a live mobile node with a 1 ms probe flow running.

Three namespaces: mpa-mobile (``mn``), mpa-gateway (``gw``, both on the userspace
datapath) and a host on the gateway's LAN (``lan``); the daemons and the flow run at a
higher priority than the machine's other work. The gateway's ``reauth_time`` is a
few seconds: it sends that in AUTH_LIFETIME and would delete the IKE SA then. A probe
flow runs between the LAN host and the mobile node's CP address through the tunnel, one
datagram a millisecond each way; a margin before the deadline the mobile node sets a new
IKE SA up (IKE_SA_INIT, IKE_AUTH with EAP, its CHILD SA), asking for its address, and
the old one goes once the new one is up. The new IKE SA has new SPIs, the address is the
same, the gateway holds one IKE SA and one lease, and no gap in the flow, either way,
reaches 50 ms. The longest gaps are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servicehelp import Daemon, cli

from mpa_harness import guards
from mpa_testbed.probe import GapReport, ProbeFlow, analyse
from tests.system.interop.test_mobile_vs_gateway import (
    gateway_yaml,
    mobile_yaml,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import (
    IKE,
    KEY,
    METHOD,
    OurPair,
    cp_address,
    three_hosts,
    with_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_env")]

REAUTH_TIME = 4.0  # the gateway's reauth_time: AUTH_LIFETIME 4, the node's margin 0.8 s
MAX_GAP = 0.050  # what the flow may lose, either way, while the node re-authenticates
PORT = 9300
# The daemons and the probe flow run before the machine's other work (the suite runs
# other tests beside this one on two cores): the gap measured is the re-authentication's.
NICE = ["chrt", "--rr", "20"]


def priority_prefix() -> list[str]:
    """Real-time round robin where the kernel grants it, else the highest nice level."""
    try:
        granted = subprocess.run([*NICE, "true"], capture_output=True).returncode == 0
    except OSError:
        granted = False
    return NICE if granted else ["nice", "-n", "-20"]


@pytest.fixture
def netns_env() -> None:
    guards.require(guards.namespaces_unavailable(), "re-authentication of the daemons")


@contextlib.contextmanager
def connected(workdir: Path) -> Iterator[OurPair]:
    """mpa-gateway (reauth_time REAUTH_TIME) and mpa-mobile, userspace datapaths, up."""
    with three_hosts() as net, contextlib.ExitStack() as stack:
        link = net.hosts.link
        gw_config, _ = gateway_yaml(
            workdir,
            [link.b.addr(4)],
            METHOD,
            IKE,
            KEY,
            datapath="userspace",
            reauth_time=REAUTH_TIME,
        )
        with_settings(gw_config, log_level="info")
        gateway = start_daemon_in(net.gw.name, "gateway.cli", gw_config)
        stack.callback(lambda: print(gateway.stop()))
        wait_listening(gw_config)
        mn_config = mobile_yaml(workdir, link.b.addr(4), METHOD, IKE, ca=workdir / "ca.pem")
        with_settings(mn_config, datapath="userspace", log_level="info")
        mobile = start_daemon_in(net.mn.name, "mobile.cli", mn_config)
        stack.callback(lambda: print(mobile.stop()))
        result = cli("mobile.cli", "connect", "gw", "-c", mn_config)
        assert result.returncode == 0, result.stderr
        yield OurPair(net, gateway, gw_config, mobile, mn_config)


def exec_in(name: str) -> list[str]:
    return ["ip", "netns", "exec", name, *priority_prefix()]


def start_daemon_in(ns_name: str, module: str, config: Path) -> Daemon:
    socket = config.parent / ("gw.sock" if module == "gateway.cli" else "mn.sock")
    return Daemon(module, socket, "-c", config, prefix=exec_in(ns_name))


def mobile_sa(pair: OurPair) -> dict[str, Any]:
    (sa,) = status("mobile.cli", pair.mobile_config)["ike_sas"]
    assert isinstance(sa, dict)
    return sa


def longest_gap_in(gaps: GapReport, start: float, end: float) -> tuple[float, float]:
    """The longest silence between arrivals that overlaps [start, end]: how long, and
    when it began after ``start``."""
    pairs = itertools.pairwise(gaps.timeline)
    return max(
        (
            (b.received - a.received, a.received - start)
            for a, b in pairs
            if b.received >= start and a.received <= end
        ),
        default=(0.0, 0.0),
    )


def test_reauthentication_keeps_the_address_and_the_flow(short_tmp: Path) -> None:
    with connected(short_tmp) as pair:
        up = time.monotonic()
        address = cp_address(pair)
        first = mobile_sa(pair)
        flow = ProbeFlow(exec_in(pair.net.lan.name), exec_in(pair.net.mn.name), address, port=PORT)
        with flow:
            deadline = up + REAUTH_TIME + 2.0
            while not status("mobile.cli", pair.mobile_config)["reauthenticated"]:
                assert time.monotonic() < deadline, "the mobile node did not re-authenticate"
                time.sleep(0.05)
            time.sleep(0.3)  # the flow goes on through the new CHILD SA for a while
            log = flow.stop()
        report = analyse(log)
        mobile = status("mobile.cli", pair.mobile_config)
        (done,) = mobile["reauthenticated"]
        (sa,) = mobile["ike_sas"]
        # From when the node started the new IKE SA to a little after the old one went.
        start, end = done["started"], done["finished"] + 0.1
        forward, forward_at = longest_gap_in(report.forward, start, end)
        reverse, reverse_at = longest_gap_in(report.reverse, start, end)
        print(
            f"re-authenticated in {done['seconds'] * 1e3:.1f} ms; longest gap meanwhile"
            f" LAN->MN {forward * 1e3:.1f} ms (from +{forward_at * 1e3:.1f} ms),"
            f" MN->LAN {reverse * 1e3:.1f} ms (from +{reverse_at * 1e3:.1f} ms); over the whole"
            f" flow {report.forward.longest * 1e3:.1f} ms ({report.forward.lost} lost) and"
            f" {report.reverse.longest * 1e3:.1f} ms ({report.reverse.lost} lost),"
            f" {report.forward.received} probes"
        )
        assert done["old"] != done["new"][0]  # a new IKE SA (new SPIs) ...
        assert sa["address"] == address  # ... with the same address
        (child,) = sa["child_sas"]
        assert child["spi_in"] != first["child_sas"][0]["spi_in"]
        assert child["packets_in"] > 0 and child["packets_out"] > 0  # the flow moved over
        gateway = status("gateway.cli", pair.gateway_config)
        (gw_sa,) = gateway["ike_sas"]
        assert gateway["leases"] == [{"address": address, "ike_sa": gw_sa["name"]}]
        assert report.forward.received > 1000 and report.reverse.received > 1000
        assert forward < MAX_GAP and reverse < MAX_GAP, report.summary()
