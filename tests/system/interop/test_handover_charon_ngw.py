"""MPA handover of mpa-mobile to a charon nGW (strongSwan 5.9.8, kernel-libipsec).

The testbed of ``deploy/testbed`` with charon as the gateway and access router of
network B (``tests/harness/charon_ngw.py``): pool 10.2.0.128/25, local traffic
selector the correspondent's network, EAP-MSCHAPv2 for the MN and a PSK for charon,
MOBIKE on, any new address accepted. The MN, on A, pre-authenticates with charon
through A (``mpa-mobile preauth ngw``) and gets its nCoA on a TUN device; a 1 ms probe
flow runs between the correspondent and the nCoA through the proactive handover
tunnel; ``mpa-mobile handover ngw`` is started, then the layer-2 handover (A down, B
up). mpa-mobile moves the nCoA onto mn-b and sends UPDATE_SA_ADDRESSES; charon moves
the IKE SA to the nCoA and, its kernel-libipsec being unable to update an SA, rekeys
the CHILD SA at once, often before it answers the update. The flow must go on
through the new CHILD SA, whose SPIs both sides show.

Two link models: veth pairs, where the layer-2 event takes ngw-b administratively
down and up, and carrier loss (emulated links), where charon sees nothing. With veth,
charon notices its interface coming back and 100 ms later sends the MN an address list
update; were the MN's update not in by then, that request would go to the MN's old
address and the CHILD SA rekey would wait behind it for charon's 4 s retransmission.

charon with kernel-libipsec needs two settings here (see the harness): an address
inside its local traffic selector, without which it installs no route into its TUN
device and refuses the CHILD SA, and an fwmark on its own packets, because after the
move the MN's outer address is its inner one and the tunnel's route to the nCoA would
swallow charon's answer to the update. The test checks that route before and after.
The outage figures (longest gap, lost probes per direction) are printed with ``-s``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mpa_harness.charon import ChildSa, IkeSa
from mpa_harness.charon_ngw import CHILD, CharonNgw, MobileAgainstCharon
from mpa_testbed.probe import FlowReport, GapReport, ProbeFlow, analyse
from mpa_testbed.topology import Testbed, TestbedSpec

pytestmark = [pytest.mark.netns, pytest.mark.charon, pytest.mark.usefixtures("charon_env")]

GATEWAY = "ngw"
FLOW_SECONDS = 4.0  # the probe flow: before, across and a few seconds after the handover
BEFORE_HANDOVER = 1.0  # seconds of flow through the PHT before the link changes
HANDOVER_TIMEOUT = 15.0
# The flow must come back within this after the link event.
MAX_GAP = 1.0
CHARON_LATE = (
    "an outage of about 4 s is charon's retransmission timeout: its CHILD SA rekey "
    "waited behind an address list update sent to the MN's old address (see charon.log)"
)


@dataclass
class Setup:
    bed: Testbed
    ngw: CharonNgw
    mobile: MobileAgainstCharon


@contextlib.contextmanager
def mobile_and_charon_ngw(workdir: Path, spec: TestbedSpec) -> Iterator[Setup]:
    """The testbed, charon in ``ngw`` and mpa-mobile in ``mn``; all gone on exit."""
    with Testbed(spec) as bed, CharonNgw(bed, workdir / "charon") as ngw:
        mobile = MobileAgainstCharon(bed, workdir / "mpa", log_level="debug")
        try:
            mobile.start()
            yield Setup(bed, ngw, mobile)
        except BaseException:
            print(mobile.log_tail("mn", 80))
            print(ngw.diagnostics(150))
            for node in ("mn", "ngw"):
                print(f"--- {node}: rules and routes")
                print(bed.ip(node, "rule") + bed.ip(node, "route", "show", "table", "all"))
            raise
        finally:
            mobile.stop()


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def command_connected(bed: Testbed, control: Path) -> bool:
    """Whether a CLI is connected to the daemon's control socket (the daemon's end of
    the connection, ESTAB on that path, shows in ``mn``'s unix sockets).

    Python takes a few hundred milliseconds to start the CLI here: a link that came up
    before the daemon got the command would leave nothing for it to wait for.
    """
    out = bed.exec("mn", ["ss", "-xHn", "state", "established", "src", str(control)]).stdout
    return bool(out.strip())


def our_children(mobile: MobileAgainstCharon) -> list[dict[str, Any]]:
    sa = mobile.ike_sa(GATEWAY)
    assert sa is not None, "mpa-mobile lost its IKE SA"
    return list(sa["child_sas"])


def pair(child: ChildSa) -> tuple[str, str]:
    """charon's CHILD SA as mpa-mobile names it: (our inbound SPI, our outbound SPI)."""
    return child.spi_out, child.spi_in


def installed(sa: IkeSa) -> list[ChildSa]:
    return [c for c in sa.children if c.name == CHILD and c.state == "INSTALLED"]


def packets(child: ChildSa) -> tuple[int, int]:
    return int(child.raw.get("packets-in", 0)), int(child.raw.get("packets-out", 0))


def handover_gap(gaps: GapReport, t_down: float) -> float:
    """The longest silence ending after the link event (a busy machine may show longer
    ones elsewhere in the flow)."""
    after = [g.duration for g in gaps.gaps if t_down < g.after.received < t_down + 5]
    return max(after, default=0.0)


def figures(report: FlowReport, t_down: float) -> dict[str, Any]:
    return {
        direction: {
            "handover_gap_ms": round(handover_gap(gaps, t_down) * 1e3, 1),
            "longest_gap_ms": round(gaps.longest * 1e3, 1),
            "lost": gaps.lost,
            "expected": gaps.expected,
        }
        for direction, gaps in (("cn->mn", report.forward), ("mn->cn", report.reverse))
    }


def through_tunnel(ngw: CharonNgw, ncoa: str) -> bool:
    """charon routes the correspondent's packets to the nCoA into ipsec0 (table 220)."""
    return any(line.split()[:3] == [ncoa, "dev", "ipsec0"] for line in ngw.routes().splitlines())


def addresses_of(bed: Testbed, address: str) -> list[str]:
    """The MN's devices that hold ``address``."""
    out = bed.ip("mn", "-o", "addr", "show", "to", address)
    return [line.split()[1] for line in out.splitlines()]


def route_to_cn(setup: Setup) -> str:
    """How the MN routes from its nCoA to the correspondent (``ip route get``)."""
    cn = setup.bed.addr("cn", "cn-core")
    ncoa = setup.mobile.ncoa(GATEWAY)
    return setup.bed.exec("mn", ["ip", "route", "get", cn, "from", ncoa]).stdout.strip()


def preauthenticate(setup: Setup) -> tuple[str, ChildSa]:
    """``mpa-mobile preauth`` through A: the nCoA from charon's pool, the PHT up."""
    bed, ngw, mobile = setup.bed, setup.ngw, setup.mobile
    answer = mobile.preauth(GATEWAY)
    ncoa = mobile.ncoa(GATEWAY)
    assert ncoa in answer
    assert ipaddress.ip_address(ncoa) in ipaddress.ip_network(bed.pool("ngw"))
    sa = ngw.wait_established(CHILD)
    assert (sa.remote_host, sa.remote_vips) == (bed.addr("mn", "mn-a"), [ncoa])
    [pht] = installed(sa)
    assert [(c["spi_in"], c["spi_out"]) for c in our_children(mobile)] == [pair(pht)]
    assert through_tunnel(ngw, ncoa), ngw.routes()
    tun = mobile.status()["datapath"]["device"]
    assert addresses_of(bed, ncoa) == [tun]
    return ncoa, pht


def hand_over(setup: Setup) -> tuple[str, float]:
    """``mpa-mobile handover`` in the background, then A down and B up; its answer and
    the time of the link event."""
    bed, mobile = setup.bed, setup.mobile
    handover = mobile.background("handover", GATEWAY)
    control = mobile.workdir / "mn.sock"
    wait_for("the handover command", lambda: command_connected(bed, control))
    time.sleep(0.05)  # the command read; the daemon waits for mn-b's link
    assert handover.poll() is None, handover.communicate()
    t_down = bed.handover("a", "b")
    out, err = handover.communicate(timeout=HANDOVER_TIMEOUT)
    assert handover.returncode == 0, err or out
    return out.strip(), t_down


def moved_and_rekeyed(ngw: CharonNgw, ncoa: str, pht: ChildSa) -> ChildSa:
    """charon's IKE SA on the nCoA with one CHILD SA, not the PHT's: the rekey done."""

    def done() -> ChildSa | None:
        sa = ngw.ike_sa()
        if sa is None or sa.remote_host != ncoa:
            return None
        children = installed(sa)
        if len(children) != 1 or pair(children[0]) == pair(pht):
            return None
        assert sa.local_host == ngw.bed.addr("ngw", "ngw-b") and sa.remote_vips == [ncoa]
        return children[0]

    new: ChildSa = wait_for("charon's move and rekey", done, timeout=10)
    assert new.encap
    return new


def veth_links() -> TestbedSpec:
    """A and B as veth pairs: the layer-2 event takes ngw-b administratively down and
    up. charon sees its interface come back and, 100 ms later, sends the MN an address
    list update (to the MN's address on A, if the MN's update is not in yet)."""
    spec = TestbedSpec()
    for name in ("a", "b"):
        spec.links[name].emulated = False
    return spec


def carrier_links() -> TestbedSpec:
    """A and B emulated: a carrier loss at both ends, ngw-b staying up, as a radio link
    is lost. charon sees nothing of it."""
    return TestbedSpec().emulate("a", "b")


LINKS = {"veth": veth_links, "carrier": carrier_links}


@pytest.mark.parametrize("links", list(LINKS))
def test_mpa_handover_to_charon_ngw_and_its_rekey(links: str, short_tmp: Path) -> None:
    with mobile_and_charon_ngw(short_tmp, LINKS[links]()) as setup:
        ngw, mobile = setup.ngw, setup.mobile
        ncoa, pht = preauthenticate(setup)

        flow: ProbeFlow = setup.bed.probe("cn", "mn", ncoa, duration=FLOW_SECONDS).start()
        try:
            time.sleep(BEFORE_HANDOVER)
            [pht] = installed(ngw.wait_established(CHILD))
            assert min(packets(pht)) > 0.5 * BEFORE_HANDOVER / flow.interval, pht.raw

            answer, t_down = hand_over(setup)
            new = moved_and_rekeyed(ngw, ncoa, pht)
            t_rekeyed = time.monotonic()
            # mpa-mobile followed the rekey: only the new pair is left.
            wait_for(
                "mpa-mobile's new CHILD SA",
                lambda: [(c["spi_in"], c["spi_out"]) for c in our_children(mobile)] == [pair(new)],
            )
            ours = mobile.ike_sa(GATEWAY)
            assert ours is not None and ours["address"] == ncoa
            assert ours["local"] == f"{ncoa}[4500]"
            assert addresses_of(setup.bed, ncoa) == ["mn-b"]
            assert through_tunnel(ngw, ncoa), ngw.routes()
        finally:
            log = flow.wait(timeout=FLOW_SECONDS + 10)

        # The flow went on through the new CHILD SA, both ways.
        [new_now] = installed(ngw.wait_established(CHILD))
        [our_new] = our_children(mobile)
        assert pair(new_now) == pair(new)
        route = route_to_cn(setup)
        assert packets(new_now)[1] > 0, ("charon sent nothing on the new CHILD SA", new_now.raw)
        assert our_new["packets_out"] > 0 and packets(new_now)[0] > 0, (
            "mpa-mobile sent nothing on the new CHILD SA",
            our_new,
            new_now.raw,
            route,
        )
        assert our_new["packets_in"] > 0, our_new
        report = analyse(log)
        result = {
            "answer": answer,
            "rekey_seen_ms": round((t_rekeyed - t_down) * 1e3, 1),
            **figures(report, t_down),
        }
        print(f"charon nGW handover ({links}):", json.dumps(result))
        for gap in (report.forward, report.reverse):
            assert gap.timeline and gap.timeline[-1].received > t_rekeyed, result
            assert gap.longest < MAX_GAP, (result, CHARON_LATE)
