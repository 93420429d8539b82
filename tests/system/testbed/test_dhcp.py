"""Address acquisition on the testbed's network B: dnsmasq in the nGW's namespace,
dhclient and SLAAC on the MN, the address events that time them, and nothing left once
the testbed is down."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mpa_bench.handover_measure import clock_offset
from mpa_harness import guards
from mpa_testbed.dhcp import AddressWatch, DhcpClient, DhcpServer, Unavailable, require, slaac
from mpa_testbed.topology import Testbed, TestbedSpec

pytestmark = pytest.mark.netns


def _pids(name: str, workdir: Path) -> set[int]:
    """Processes called ``name`` whose command line names ``workdir``: this test's own,
    not those of another testbed running beside it."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ours = str(workdir).encode() in (proc / "cmdline").read_bytes()
                if (proc / "comm").read_text().strip() == name and ours:
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.usefixtures("netns_env")
@pytest.mark.parametrize("optimistic", [False, True])
def test_dhcp_and_slaac_on_b(tmp_path: Path, optimistic: bool) -> None:
    try:
        require("dnsmasq", "dnsmasq-base")
        require("dhclient", "isc-dhcp-client")
    except Unavailable as why:
        guards.require(str(why), "the DHCP testbed")
    spec = TestbedSpec()
    spec.emulate("a", "b")
    with Testbed(spec) as bed:
        DhcpServer(bed, "ngw", "ngw-b", tmp_path, v4="10.2.0.0/24", v6="fd00:2::/64").start()
        slaac(bed, "mn", "mn-b", enable=True, optimistic=optimistic)
        watch = AddressWatch(bed, "mn", clock_offset())
        client = DhcpClient(bed, "mn", "mn-b", tmp_path).prepare()
        t0 = bed.handover("a", "b")
        client.start()
        v4 = watch.wait_usable("mn-b", 4, t0, t0 + 10)
        v6 = watch.wait_usable("mn-b", 6, t0, t0 + 10)
        events = watch.close()
        assert v4 is not None and v4.address.startswith("10.2.0."), events
        host = int(v4.address.split("/")[0].split(".")[-1])
        assert 32 <= host <= 120  # below the gateway's pool
        assert v4.time - t0 < 2.0  # no ping check, no lost DISCOVER
        assert v6 is not None and v6.address.startswith("fd00:2::"), events
        if optimistic:
            # Usable as soon as it appears, during its DAD; it appears once the RA
            # answers the RS, which the kernel sends after the link-local address's DAD.
            assert "optimistic" in v6.flags and v6.time - t0 < 2.0
        else:
            # DAD of the global address: a random delay up to a second, then a second's
            # wait for an answer; before it the link-local address's own DAD (the same
            # again) and the RS/RA exchange it waits for. Seen: 1.1 to 3.1 s.
            assert 1.0 <= v6.time - t0 < 4.5
        route = bed.ip("mn", "-4", "route", "show", "default")
        assert "via 10.2.0.1 dev mn-b" in route
        assert "10.2.0." in (tmp_path / "dnsmasq-ngw.leases").read_text()
        client.stop()
    time.sleep(0.1)
    assert not (_pids("dnsmasq", tmp_path) | _pids("dhclient", tmp_path))
    assert os.path.exists(tmp_path / "dhclient.leases")
