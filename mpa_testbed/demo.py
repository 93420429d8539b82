"""The main job, end to end in network namespaces: an MPA handover from network A to B.

Builds the testbed of ``deploy/testbed`` (MN on network A, the nGW as access router of
network B, a correspondent node behind the core), starts ``mpa-gateway`` in the nGW and
``mpa-mobile`` in the MN, and then, as an operator would type them:

1. ``mpa-mobile preauth ngw``: pre-authentication through A (IKE_SA_INIT, IKE_AUTH with
   EAP, CP: the nCoA, a tunnel-mode CHILD SA: the proactive handover tunnel);
2. a 1 ms probe flow between the correspondent and the nCoA, through the tunnel;
3. ``mpa-mobile handover ngw``, then the layer-2 handover (A goes down, B comes up): the
   nCoA moves onto the B interface and one UPDATE_SA_ADDRESSES moves the SAs;
4. the flow's longest gap, and both sides' status.

Everything is torn down at the end, also on Ctrl-C.
Run as root from the repository: ``./deploy/demo.sh`` (or ``python3 -m mpa_testbed.demo``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpa_testbed.probe import FlowReport, analyse
from mpa_testbed.programs import ProgramError
from mpa_testbed.topology import Testbed, TestbedSpec

FLOW_SECONDS = 2.5


def run_demo(method: str, workdir: Path) -> int:
    with Testbed(TestbedSpec()) as bed:
        print(f"testbed {bed.prefix}: MN on network A ({bed.addr('mn', 'mn-a')}),")
        print(f"  nGW {bed.addr('ngw', 'ngw-b')} serving network B, pool {bed.pool('ngw')}")
        programs = bed.start_programs(workdir, eap=method)
        try:
            started = time.monotonic()
            answer = programs.preauth("ngw")
            elapsed_ms = (time.monotonic() - started) * 1e3
            print(f"pre-authentication through A (EAP-{method.upper()}): {answer}")
            print(f"  preauth command answered in {elapsed_ms:.1f} ms")
            ncoa = programs.ncoa("ngw")
            print(f"probe flow: correspondent <-> nCoA {ncoa}, 1 ms, {FLOW_SECONDS} s")
            flow = bed.probe("cn", "mn", ncoa, duration=FLOW_SECONDS).start()
            time.sleep(0.8)
            command = programs.begin_handover("ngw")
            bed.handover("a", "b")
            print("layer-2 handover: link A down, link B up")
            print(f"handover: {programs.end_handover(command)}")
            report = analyse(flow.wait(FLOW_SECONDS + 15))
            print("mpa-mobile status:")
            print(programs.cli("mn", "status"))
            print("mpa-gateway status:")
            print(programs.cli("ngw", "status"))
            return print_flow(report)
        except ProgramError as error:
            for node in ("mn", "ngw"):
                print(f"--- {node} log (last lines)\n{programs.log_tail(node)}", file=sys.stderr)
            raise RuntimeError(str(error)) from None
        finally:
            programs.stop()


def print_flow(report: FlowReport) -> int:
    for name, direction in (("cn -> nCoA", report.forward), ("nCoA -> cn", report.reverse)):
        print(
            f"  {name}: {direction.received}/{direction.expected} received, "
            f"longest gap {direction.longest * 1e3:.1f} ms"
        )
    survived = all(
        d.timeline and d.trailing < 0.1 and d.received > d.expected // 2
        for d in (report.forward, report.reverse)
    )
    print("the flow went on through the handover" if survived else "THE FLOW DID NOT SURVIVE")
    return 0 if survived else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpa_testbed.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--eap", choices=["md5", "mschapv2"], default="mschapv2")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mpa-demo-"))
    try:
        return run_demo(args.eap, workdir)
    except (RuntimeError, subprocess.SubprocessError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    sys.exit(main())
