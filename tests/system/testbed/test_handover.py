"""The MPA handover in the testbed: mpa-mobile and mpa-gateway as an operator runs them.

The mobile node pre-authenticates through network A with the gateway of B (and of C),
a 1 ms probe flow runs between the correspondent and the nCoA through the proactive
handover tunnel, then A goes down and B comes up: ``mpa-mobile handover`` moves the
nCoA onto the B interface and sends one UPDATE_SA_ADDRESSES, and the flow goes on over
the same SAs. Outage figures come from ``mpa-bench handover``; here the bound is loose
(a shared, loaded host), the point is that the flow survives and what moved.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mpa_testbed.probe import FlowReport, analyse
from mpa_testbed.programs import MpaPrograms, ProgramFamily
from mpa_testbed.topology import Testbed, TestbedSpec

pytestmark = pytest.mark.usefixtures("netns_env")

LINKS = {"ngw": "b", "gwc": "c"}
# Loose on purpose: a loaded CI machine stalls processes for tens of milliseconds.
MAX_GAP = 1.0
# The flow runs until AFTER seconds past the handover (however slow the commands are).
AFTER = 1.5
FLOW_LIMIT = 60.0


@pytest.fixture
def bed_for(tmp_path: Path) -> Iterator[Callable[..., tuple[Testbed, MpaPrograms]]]:
    beds: list[Testbed] = []

    def build(family: ProgramFamily = 4, **options: Any) -> tuple[Testbed, MpaPrograms]:
        bed = Testbed(TestbedSpec(family="split" if family == "split" else "dual")).up()
        beds.append(bed)
        return bed, bed.start_programs(tmp_path / bed.prefix, family=family, **options)

    yield build
    for bed in beds:
        bed.down()


def handover_with_flow(
    bed: Testbed, programs: MpaPrograms, gateway: str, command: bool = True
) -> tuple[str, FlowReport, float]:
    """A probe flow to the nCoA; the handover command in the background; the L2 event."""
    ncoa = programs.ncoa(gateway)
    flow = bed.probe("cn", "mn", ncoa, duration=FLOW_LIMIT).start()
    time.sleep(0.5)
    command_proc = programs.begin_handover(gateway) if command else None
    down = bed.handover("a", LINKS[gateway])
    answer = programs.end_handover(command_proc) if command_proc is not None else ""
    time.sleep(AFTER)
    report = analyse(flow.stop())
    return answer, report, down


def assert_flow_survived(report: FlowReport, down: float) -> None:
    for direction in (report.forward, report.reverse):
        assert direction.timeline, "no packet at all"
        assert direction.timeline[-1].received > down + 0.5, "the flow stopped at the handover"
        assert direction.longest < MAX_GAP


def assert_moved(programs: MpaPrograms, gateway: str, ncoa: str) -> None:
    mobile = programs.ike_sa(gateway)
    assert mobile is not None
    assert mobile["local"].startswith(f"{ncoa}[")
    gateway_sas = programs.status(gateway)["ike_sas"]
    assert [sa["remote"].split("[")[0] for sa in gateway_sas] == [ncoa]
    leases = programs.status(gateway)["leases"]
    assert [lease["address"] for lease in leases] == [ncoa]


@pytest.mark.parametrize("family", [4, 6, "split"])
def test_flow_keeps_running_through_preauth_and_handover(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]], family: ProgramFamily
) -> None:
    bed, programs = bed_for(family)
    answer = programs.preauth("ngw")
    ncoa = programs.ncoa("ngw")
    assert f"ngw: pre-authenticated, address {ncoa}" in answer
    pool = bed.pool("ngw", programs.inner_version)
    assert ncoa.startswith(pool.split("/")[0].rsplit("." if "." in pool else ":", 1)[0])
    moved, report, down = handover_with_flow(bed, programs, "ngw")
    assert moved.startswith(f"ngw: moved to {ncoa} on mn-b")
    assert_flow_survived(report, down)
    assert_moved(programs, "ngw", ncoa)
    timeline = programs.status()["handovers"][0]
    assert timeline["link_up"] <= timeline["update_sent"] <= timeline["answered"]
    # The nCoA left the TUN device for the interface, without DAD.
    device = programs.status()["datapath"]["device"]
    assert ncoa not in bed.ip("mn", "addr", "show", "dev", device)
    assert ncoa in bed.ip("mn", "addr", "show", "dev", "mn-b")
    if programs.inner_version == 4:  # with CP's netmask: the pool's prefix, on-link on B
        assert f"{ncoa}/{ipaddress.ip_network(pool).prefixlen} " in bed.ip(
            "mn", "addr", "show", "dev", "mn-b"
        )
        assert pool in bed.ip("mn", "-4", "route", "show", "dev", "mn-b")


@pytest.mark.parametrize("target", ["ngw", "gwc"])
def test_two_candidates_and_a_move_to_either(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]], target: str
) -> None:
    bed, programs = bed_for(4, gateways=("ngw", "gwc"))
    programs.preauth("ngw")
    programs.preauth("gwc")
    phts = {p["gateway"]: p for p in programs.status()["phts"]}
    assert set(phts) == {"ngw", "gwc"} and phts["ngw"]["table"] != phts["gwc"]["table"]
    # Both tunnels carry their own nCoA's traffic at once.
    for gateway in ("ngw", "gwc"):
        flow = bed.probe("cn", "mn", programs.ncoa(gateway), count=50).start()
        assert analyse(flow.wait(20)).forward.lost == 0
    ncoa = programs.ncoa(target)
    _, report, down = handover_with_flow(bed, programs, target)
    assert_flow_survived(report, down)
    assert_moved(programs, target, ncoa)
    other = "gwc" if target == "ngw" else "ngw"
    assert programs.ike_sa(other) is None  # the unused PHT was deleted


def test_auto_handover_on_the_link_event(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    bed, programs = bed_for(4, handover="auto")
    programs.preauth("ngw")
    ncoa = programs.ncoa("ngw")
    _, report, down = handover_with_flow(bed, programs, "ngw", command=False)
    assert_flow_survived(report, down)
    assert_moved(programs, "ngw", ncoa)


def test_refused_move_falls_back_to_a_full_exchange(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    """The gateway only takes moves into 10.2.0.0/26 (not its pool): UNACCEPTABLE_ADDRESSES;
    the MN connects anew from its own address on B and gets a fresh lease."""
    bed, programs = bed_for(4, address_policy=["10.2.0.0/26"])
    programs.preauth("ngw")
    ncoa = programs.ncoa("ngw")
    bed.ip("mn", "addr", "add", "10.2.0.50/24", "dev", "mn-b")
    command = programs.begin_handover("ngw")
    bed.handover("a", "b")
    answer = programs.end_handover(command)
    assert "connected anew from 10.2.0.50" in answer and "UNACCEPTABLE_ADDRESSES" in answer
    sa = programs.ike_sa("ngw")
    assert sa is not None and sa["local"].startswith("10.2.0.50[")
    assert ncoa not in bed.ip("mn", "addr", "show", "dev", "mn-b")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        gateway = programs.status("ngw")
        if len(gateway["ike_sas"]) == 1:
            break
        time.sleep(0.1)
    assert [s["remote"].split("[")[0] for s in gateway["ike_sas"]] == ["10.2.0.50"]
    assert len(gateway["leases"]) == 1  # the refused SA's lease went with it


def test_handover_without_a_live_pht_connects_anew(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    """The PHT is gone (deleted, expired) by the time of the move: a full exchange from
    the MN's own address on B, and traffic flows on the new IKE SA."""
    bed, programs = bed_for(4)
    programs.preauth("ngw")
    programs.disconnect("ngw")
    bed.ip("mn", "addr", "add", "10.2.0.60/24", "dev", "mn-b")
    command = programs.begin_handover("ngw")
    bed.handover("a", "b")
    answer = programs.end_handover(command)
    assert "connected anew from 10.2.0.60: no pre-authentication" in answer
    address = programs.ncoa("ngw")
    flow = bed.probe("cn", "mn", address, count=100).start()
    assert analyse(flow.wait(20)).forward.received > 90


@pytest.mark.parametrize("policy", ["any", "allocated"])
def test_connected_sa_moves_by_plain_mobike(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]], policy: str
) -> None:
    """Without pre-authentication, ``connect`` then ``handover``: the IKE SA follows the
    node to its own address on B (charon's MOBIKE); a gateway under ``allocated``
    refuses that address and the node connects anew from it."""
    bed, programs = bed_for(4, address_policy=policy)
    programs.connect("ngw")
    address = programs.ncoa("ngw")
    bed.ip("mn", "addr", "add", "10.2.0.70/24", "dev", "mn-b")
    _, report, down = handover_with_flow(bed, programs, "ngw")
    sa = programs.ike_sa("ngw")
    assert sa is not None and sa["local"].startswith("10.2.0.70[")
    if policy == "any":
        assert_flow_survived(report, down)
        assert programs.ncoa("ngw") == address
    else:
        assert programs.status("ngw")["counters"].get("updates_refused") == 1


def test_connected_sa_moves_by_plain_mobike_across_families(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    """A IPv4-only, B IPv6-only: the IKE SA made over IPv4 moves to the node's own IPv6
    address on B and the gateway's IPv6 address it announced (RFC 4555 §3.4)."""
    bed, programs = bed_for("split", address_policy="any")
    programs.connect("ngw")
    address = programs.ncoa("ngw")
    bed.ip("mn", "addr", "add", "fd00:2::70/64", "dev", "mn-b", "nodad")
    answer, report, down = handover_with_flow(bed, programs, "ngw")
    assert "moved to fd00:2::70 on mn-b" in answer
    sa = programs.ike_sa("ngw")
    assert sa is not None and sa["local"].startswith("fd00:2::70[")
    assert sa["remote"].startswith("fd00:2::1[")
    assert_flow_survived(report, down)
    assert programs.ncoa("ngw") == address
