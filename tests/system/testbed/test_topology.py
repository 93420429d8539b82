"""The handover topology comes up, routes what it should, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpa_testbed.probe import analyse
from mpa_testbed.topology import (
    NODES,
    Testbed,
    TestbedSpec,
    list_netns,
    running_prefixes,
    teardown,
)

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[3]


def _echoed(bed: Testbed, src: str, dst: str, target: str, count: int = 50) -> bool:
    report = analyse(bed.probe(src, dst, target, count=count, linger=0.2).start().wait(30))
    return report.forward.lost == 0 and report.reverse.lost == 0


def _wait_flags(bed: Testbed, dev: str, *flags: str, timeout: float = 3.0) -> bool:
    """Whether ``dev`` of the MN shows ``flags`` within ``timeout``.

    The kernel's linkwatch may report a carrier change up to a second late when link
    events follow each other closely.
    """
    deadline = time.monotonic() + timeout
    while True:
        shown = json.loads(bed.ip("mn", "-j", "link", "show", "dev", dev))[0]["flags"]
        if all(flag in shown for flag in flags):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _gone(prefix: str) -> bool:
    return not any(ns.startswith(prefix + "-") for ns in list_netns())


def test_dual_stack_topology(netns_env: None) -> None:
    with Testbed(TestbedSpec().emulate("a", "ngw-core")) as bed:
        assert sorted(ns for ns in list_netns() if ns.startswith(bed.prefix)) == sorted(
            bed.ns(n) for n in NODES
        )
        # CN reaches MN through arA, IPv4 and IPv6: ICMP echo and a UDP echo flow.
        assert bed.ping("cn", bed.addr("mn", "mn-a", 4))
        assert bed.ping("cn", bed.addr("mn", "mn-a", 6))
        assert not bed.ping("cn", "10.1.0.99", count=1)  # nobody there
        assert _echoed(bed, "cn", "mn", bed.addr("mn", "mn-a", 4))
        assert _echoed(bed, "cn", "mn", bed.addr("mn", "mn-a", 6))
        # Echoes leave from the probed address, not the one the route would prefer.
        bed.ip("mn", "addr", "add", "10.1.0.101/24", "dev", "mn-a")
        bed.ip("mn", "addr", "add", "fd00:1::101/64", "dev", "mn-a", "nodad")
        assert _echoed(bed, "cn", "mn", "10.1.0.101", count=20)
        assert _echoed(bed, "cn", "mn", "fd00:1::101", count=20)
        # MN on A reaches both gateways through arA and core.
        assert _echoed(bed, "mn", "ngw", bed.addr("ngw", "ngw-core", 4))
        assert _echoed(bed, "mn", "gwc", bed.addr("gwc", "gwc-core", 6))
        # CN reaches the nGW's pool (part of network B) via the nGW.
        pool4 = bed.pool("ngw", 4).split("/")[0].rsplit(".", 1)[0] + ".130"
        bed.ip("ngw", "addr", "add", f"{pool4}/32", "dev", "lo")
        assert _echoed(bed, "cn", "ngw", pool4, count=20)
        # Networks B and C start down: the MN is attached to A.
        links = json.loads(bed.ip("mn", "-j", "link", "show"))
        flags = {link["ifname"]: link["flags"] for link in links}
        assert "NO-CARRIER" not in flags["mn-a"]
        assert "NO-CARRIER" in flags["mn-b"] and "NO-CARRIER" in flags["mn-c"]
        # The layer-2 handover: A goes down (emulated carrier), B comes up (veth).
        bed.link("a").set_down()
        bed.link("b").set_up()
        assert _wait_flags(bed, "mn-a", "NO-CARRIER", "UP")
        assert _wait_flags(bed, "mn-b", "LOWER_UP")
        bed.link("a").set_up()
        prefix = bed.prefix
    assert _gone(prefix)
    assert prefix not in running_prefixes()


def test_split_families_and_emulated_delay(netns_env: None) -> None:
    spec = TestbedSpec(family="split").emulate("cn-core", direction="a2b", delay="5ms")
    with Testbed(spec) as bed:
        assert bed.addresses("mn")["mn-a"] == ["10.1.0.100/24"]
        assert bed.addresses("ngw")["ngw-b"] == ["fd00:2::1/64"]
        with pytest.raises(LookupError):
            bed.addr("mn", "mn-a", 6)
        report = analyse(
            bed.probe("cn", "mn", bed.addr("mn", "mn-a", 4), count=100, linger=0.2).start().wait(30)
        )
        assert report.forward.lost == 0
        # cn-core's a end is core: a2b is core -> cn, the reverse direction of this flow.
        assert report.reverse.delay_median is not None
        assert abs(report.reverse.delay_median - 0.005) < 0.0015
        assert report.forward.delay_median is not None and report.forward.delay_median < 0.002
        # Moved onto B by hand (what mpa-mobile will do): IPv6 only there.
        bed.link("a").set_down()
        bed.link("b").set_up()
        bed.ip("mn", "addr", "add", "fd00:2::1:5/64", "dev", "mn-b", "nodad")
        bed.ip("mn", "route", "add", "default", "via", "fd00:2::1", "dev", "mn-b")
        assert _echoed(bed, "cn", "mn", "fd00:2::1:5", count=20)
        assert bed.link("cn-core").stats()["a2b"]["delivered"] > 0


def test_teardown_after_a_crash(netns_env: None) -> None:
    bed = Testbed(TestbedSpec().emulate("a")).up()
    assert bed.emulator is not None
    pid = bed.emulator.pid
    # As if the test process had died: only the prefix is known.
    teardown(bed.prefix)
    assert _gone(bed.prefix)
    assert not Path(f"/proc/{pid}").exists() or bed.emulator.proc.wait(3) is not None
    bed.down()  # harmless afterwards


def test_command_line(netns_env: None) -> None:
    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "mpa_testbed", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    prefix = cli("up", "--emu", "a:delay=1ms,loss=0", "--family", "split").split()[0]
    try:
        assert not _gone(prefix)
        states = {s["prefix"]: s for s in json.loads(cli("status"))}
        assert states[prefix]["emulated"] == ["a", "b", "c"]  # b and c are by default
        assert states[prefix]["emulator_pids"]
        cli("link", prefix, "a", "down")
        out = cli("exec", prefix, "mn", "--", "ip", "-j", "link", "show", "mn-a")
        assert "LOWER_UP" not in json.loads(out)[0]["flags"]
        cli("link", prefix, "b", "up")
    finally:
        cli("down", prefix)
    assert _gone(prefix)
    assert prefix not in {s["prefix"] for s in json.loads(cli("status"))}


def test_parallel_testbeds_do_not_collide(netns_env: None) -> None:
    spec = TestbedSpec().emulate("a")
    with Testbed(spec) as one, Testbed(TestbedSpec().emulate("a")) as two:
        assert one.prefix != two.prefix
        assert _echoed(one, "cn", "mn", one.addr("mn", "mn-a"), count=20)
        assert _echoed(two, "cn", "mn", two.addr("mn", "mn-a"), count=20)
        two.link("a").set_down(carrier="none")
        assert _echoed(one, "cn", "mn", one.addr("mn", "mn-a"), count=20)
        t_down = one.handover("a", "b")
        assert t_down <= time.monotonic()
        assert _wait_flags(one, "mn-b", "LOWER_UP")
    assert _gone(one.prefix) and _gone(two.prefix)


def test_delays_add_up_along_the_path(netns_env: None) -> None:
    # Every link emulated: 2 ms uplink on A and 3 ms on the core link to the CN.
    spec = TestbedSpec().emulate()
    spec.emulate("a", direction="a2b", delay="2ms").emulate("cn-core", direction="a2b", delay="3ms")
    with Testbed(spec) as bed:
        report = analyse(
            bed.probe("mn", "cn", bed.addr("cn"), count=300, linger=0.2).start().wait(30)
        )
        assert report.forward.lost == 0 and report.reverse.lost == 0
        assert report.forward.delay_median is not None
        assert report.reverse.delay_median is not None
        assert abs(report.forward.delay_median - 0.005) < 0.0015, report.summary()
        assert report.reverse.delay_median < 0.0015, report.summary()
