"""``mpa-bench handover`` end to end on the testbed, and the links it asks for, measured.

The emulator's own delay, jitter, loss and rate are measured in
``tests/testbed/test_linkemu.py``; here the benchmark's link options are checked to
land on the links they name, with the delay and loss asked for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mpa_bench.handover import configurations
from mpa_testbed.probe import analyse
from mpa_testbed.topology import Testbed

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.usefixtures("netns_env")
def test_link_options_delay_and_drop_what_they_say() -> None:
    args = argparse.Namespace(delay=["core:10ms"], loss=["access:10%"], jitter=None, rate=None)
    (conf,) = configurations(args)
    with Testbed(conf.spec("4")) as bed:
        # CN to the nGW crosses the core link ngw-core only: 10 ms each way, no loss.
        gateway = bed.probe("cn", "ngw", bed.addr("ngw", "ngw-b"), count=500, linger=0.3)
        report = analyse(gateway.start().wait(30))
        assert report.forward.lost == 0 and report.reverse.lost == 0, report.summary()
        for direction in (report.forward, report.reverse):
            assert direction.delay_median is not None
            assert 0.0095 < direction.delay_median < 0.0115, report.summary()
        # CN to the MN on A crosses access link a: 10% lost each way, no added delay.
        # First the neighbours (a lost ARP request is retried a second later).
        bed.probe("cn", "mn", bed.addr("mn", "mn-a"), count=1500, linger=0.1).start().wait(30)
        mobile = bed.probe("cn", "mn", bed.addr("mn", "mn-a"), count=2000, linger=0.3)
        report = analyse(mobile.start().wait(30))
        forward = report.forward.lost / report.forward.expected
        reverse = report.reverse.lost / report.reverse.expected
        assert 0.06 < forward < 0.14 and 0.06 < reverse < 0.14, report.summary()
        assert report.forward.delay_median is not None
        assert report.forward.delay_median < 0.002, report.summary()


def _bench(tmp_path: Path, *args: str, label: str = "no added delay or loss") -> dict[str, Any]:
    out = tmp_path / "handover.json"
    command = [sys.executable, "-m", "mpa_bench.cli", "handover", "--runs", "1"]
    proc = subprocess.run(
        [*command, "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"handover, {label}" in proc.stdout, proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.usefixtures("netns_env")
def test_smoke_charon_mobike(tmp_path: Path) -> None:
    from mpa_harness.charon import require_charon

    require_charon()
    plot = tmp_path / "handover.png"
    data = _bench(tmp_path, "--methods", "charon-mobike", "--plot", str(plot))
    assert data["environment"]["charon"].startswith("Linux strongSwan")
    (conf,) = data["configurations"]
    (sample,) = conf["samples"]["charon-mobike"]
    assert sample["ok"], sample["error"]
    # charon waits 100 ms after a netlink event before it acts.
    assert 0.09 < sample["outage_s"] < 2.0
    assert sample["timeline_s"]["ike_first"] > 0.09
    assert sample["ike"] and sample["flow"]["sent"]
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.usefixtures("netns_env")
@pytest.mark.parametrize("method", ["mpa", "mobike"])
def test_smoke_ours(tmp_path: Path, method: str) -> None:
    data = _bench(tmp_path, "--methods", method)
    (conf,) = data["configurations"]
    if method in conf["unavailable"]:
        pytest.fail(conf["unavailable"][method])
    (sample,) = conf["samples"][method]
    assert sample["ok"], sample["error"]
    assert sample["outage_s"] < 0.5
    assert sample["timeline_s"]["ike_first"] is not None


@pytest.mark.usefixtures("netns_env")
def test_smoke_dhcp(tmp_path: Path) -> None:
    """With DHCP on B the methods that need the OS's address pay its acquisition (the
    DHCP exchange is in their parts), mpa does not, and mpa-cli runs the installed
    command at the link event."""
    methods = "mpa,mobike,reactive,mpa-cli"
    data = _bench(tmp_path, "--dhcp", "--methods", methods)
    (conf,) = data["configurations"]
    assert not conf["unavailable"], conf["unavailable"]
    samples = {m: ss[0] for m, ss in conf["samples"].items()}
    for method, sample in samples.items():
        assert sample["ok"], (method, sample["error"])
        parts = sample["breakdown"]["parts_s"]
        assert sum(parts.values()) == pytest.approx(sample["outage_s"], abs=1e-6)
    for method in ("mobike", "reactive"):
        # The kernel's own router solicitation on B may come first (IPv6 is on there).
        kinds = [m["kind"] for m in samples[method]["addressing"] if m["sent"]]
        assert [k for k in kinds if k != "RS"][:2] == ["DISCOVER", "REQUEST"], kinds
        acks = [m for m in samples[method]["addressing"] if m["kind"] == "ACK"]
        assert acks and acks[0]["address"].startswith("10.2.0."), acks
        assert samples[method]["breakdown"]["parts_s"]["address"] > 0
        # The IKE exchange starts only once the address is there.
        first_ike = samples[method]["timeline_s"]["ike_first"]
        assert first_ike > acks[0]["time"] - samples[method]["t0"]
    assert samples["reactive"]["breakdown"]["aaa_round_trips"] >= 2
    for method in ("mpa", "mpa-cli"):
        # The kernel may solicit a router on the new link by itself (IPv6 is on in B);
        # mpa sends no DHCP and its outage has no address part.
        sent = {m["kind"] for m in samples[method]["addressing"] if m["sent"]}
        assert not sent - {"RS"}, sent
        assert samples[method]["breakdown"]["parts_s"]["address"] == 0
    # mpa's outage does not pay the acquisition: shorter than the time to the ACK of
    # the methods that waited for it.
    ack_after = min(
        samples[m]["breakdown"]["address_s"][1] - samples[m]["t0"] for m in ("mobike", "reactive")
    )
    assert samples["mpa"]["outage_s"] < max(ack_after, 0.02) + 0.05
    cli = samples["mpa-cli"]["extra"]
    assert cli["command_kind"] in ("console script", "python -m mobile.cli")
    assert cli["command_started_s"] < samples["mpa-cli"]["timeline_s"]["ike_first"]
    assert "moved to" in cli["answer"]


@pytest.mark.usefixtures("netns_env")
def test_aaa_radius_round_trips_in_reactive_not_in_mpa(tmp_path: Path) -> None:
    """With FreeRADIUS 25 ms one-way behind the nGW, reactive's outage holds the RADIUS
    exchanges of its EAP (each 50 ms and more, seen at the nGW); mpa, pre-authenticated,
    has none in its outage."""
    from mpa_harness.freeradius import require_freeradius

    require_freeradius()
    args = ("--aaa", "radius", "--delay", "aaa:25ms", "--methods", "mpa,reactive")
    data = _bench(tmp_path, *args, label="aaa 25 ms; AAA by RADIUS")
    (conf,) = data["configurations"]
    assert not conf["unavailable"], conf["unavailable"]
    samples = {m: ss[0] for m, ss in conf["samples"].items()}
    for method, sample in samples.items():
        assert sample["ok"], (method, sample["error"])
    reactive = samples["reactive"]["breakdown"]
    start, end = reactive["window_s"]
    inside = [(a, b) for a, b in reactive["aaa_s"] if start <= a and b <= end]
    assert len(inside) >= 2, reactive
    assert all(b - a >= 0.050 for a, b in inside), reactive
    assert reactive["aaa_round_trips"] == len(reactive["aaa_s"])
    assert reactive["parts_s"]["aaa"] >= 0.100, reactive
    mpa = samples["mpa"]["breakdown"]
    assert mpa["aaa_round_trips"] == 0 and mpa["aaa_s"] == [], mpa
    assert mpa["parts_s"]["aaa"] == 0
    assert samples["mpa"]["outage_s"] < 0.05
