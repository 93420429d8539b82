"""The MPA handover on the testbed with the kernel's XFRM as both daemons' datapath.

The mobile node pre-authenticates with the gateway of B through A, a probe flow runs
between the correspondent and the nCoA through the proactive handover tunnel (kernel
ESP), then A goes down and B comes up: the CHILD SA's states move in place in both
kernels (XFRM_MSG_MIGRATE: the same SPIs, the counters going on) and the flow goes on.
"""

from __future__ import annotations

import time
from pathlib import Path

from mpa_testbed.probe import analyse
from mpa_testbed.programs import MpaPrograms, ProgramError
from mpa_testbed.topology import Testbed, TestbedSpec
from tests.system.kernel.kernelhelp import parse_sa_counters

FLOW_LIMIT = 60.0
PREAUTH_TIMEOUT = 60.0


def preauth(programs: MpaPrograms) -> None:
    """``preauth ngw``, waiting on when UML outlasts the command's wait (still trying)."""
    try:
        programs.preauth("ngw")
    except ProgramError as error:
        if "still trying" not in str(error):
            raise
        deadline = time.monotonic() + PREAUTH_TIMEOUT
        while programs.ike_sa("ngw") is None:
            assert time.monotonic() < deadline, f"{error}\n{programs.log_tail('ngw')}"
            time.sleep(0.5)


def test_handover_moves_kernel_sas_in_place(tmp_path: Path) -> None:
    bed = Testbed(TestbedSpec(family="dual")).up()
    try:
        programs = bed.start_programs(tmp_path / bed.prefix, family=4, datapath="xfrm")
        preauth(programs)
        ncoa = programs.ncoa("ngw")
        flow = bed.probe("cn", "mn", ncoa, duration=FLOW_LIMIT).start()
        time.sleep(1.0)
        before = parse_sa_counters(bed.ip("ngw", "-s", "xfrm", "state"))
        proc = programs.begin_handover("ngw", timeout=40)
        down = bed.handover("a", "b")
        answer = programs.end_handover(proc)
        time.sleep(2.0)
        report = analyse(flow.stop())
        after = parse_sa_counters(bed.ip("ngw", "-s", "xfrm", "state"))
        print(f"{answer}\nbefore {before}\nafter {after}")
        print(f"forward {report.forward.longest:.3f} s, reverse {report.reverse.longest:.3f} s")
        assert answer.startswith(f"ngw: moved to {ncoa} on mn-b")
        assert set(after) == set(before)  # the same SPIs
        for spi, sa in after.items():
            assert sa.packets > before[spi].packets  # the counters went on
            assert ncoa in (sa.src, sa.dst)  # the mobile node's end is the nCoA now
        for direction in (report.forward, report.reverse):
            assert direction.timeline and direction.timeline[-1].received > down + 0.5
    finally:
        bed.down()
