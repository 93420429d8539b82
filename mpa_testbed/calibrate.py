"""What the link emulator adds, measured here: ``python3 -m mpa_testbed.calibrate`` (root).

Two namespaces are joined once by a veth pair (the reference) and once by an emulated
link; probe flows then measure the latency the emulator adds with no impairment, the
error of a configured delay, the loss ratio against the one asked for, and the traffic
it carries when flooded. Figures depend on the machine's load: run it before trusting a
benchmark on a new machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from mpa_testbed.linkemu import Control, EmulatorProcess, LinkSpec
from mpa_testbed.probe import FlowReport, ProbeFlow, analyse
from mpa_testbed.topology import new_prefix, state_dir, teardown

_X, _Y = "10.9.0.1", "10.9.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def link_pair(
    emulated: bool, *, realtime: bool = False
) -> Iterator[tuple[str, str, Control | None]]:
    """Namespaces x and y on one link (veth or emulated); removed on exit."""
    prefix = new_prefix()
    x, y = f"{prefix}-x", f"{prefix}-y"
    emu: EmulatorProcess | None = None
    try:
        for ns in (x, y):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        if emulated:
            sock = str(state_dir() / f"{prefix}.sock")
            spec = LinkSpec("l", x, "e0", y, "e0", seed=1)
            emu = EmulatorProcess([spec], sock, tap_prefix=prefix, tag=prefix, realtime=realtime)
        else:
            _ip("link", "add", "e0", "netns", x, "type", "veth", "peer", "e0", "netns", y)
            for ns in (x, y):
                _ip("-n", ns, "link", "set", "e0", "up")
        _ip("-n", x, "addr", "add", f"{_X}/24", "dev", "e0")
        _ip("-n", y, "addr", "add", f"{_Y}/24", "dev", "e0")
        yield x, y, emu.control if emu else None
    finally:
        if emu is not None:
            emu.terminate()
        teardown(prefix)


def _flow(x: str, y: str, **options: Any) -> FlowReport:
    options.setdefault("linger", 0.2)
    flow = ProbeFlow(["ip", "netns", "exec", x], ["ip", "netns", "exec", y], _Y, **options)
    return analyse(flow.start().wait(120))


def _ms(value: float | None) -> float:
    return round((value or 0.0) * 1e3, 3)


def _flood(x: str, y: str, size: int, seconds: float) -> dict[str, float]:
    report = _flow(x, y, interval=0.0, duration=seconds, size=size, echo=False)
    timeline = report.forward.timeline
    span = timeline[-1].received - timeline[0].received if len(timeline) > 1 else 0.0
    pps = (len(timeline) - 1) / span if span else 0.0
    frame = size + 8 + 20 + 14
    return {
        "sent": report.forward.expected,
        "received": report.forward.received,
        "pps": round(pps),
        "mbit_s": round(pps * frame * 8 / 1e6, 1),
    }


def calibrate(
    count: int = 1000, flood_seconds: float = 1.0, *, realtime: bool = False
) -> dict[str, Any]:
    """Run the measurements; every figure in milliseconds, ratios, or per second."""
    results: dict[str, Any] = {}
    with link_pair(emulated=False) as (x, y, _):
        _flow(x, y, count=20)
        base = _flow(x, y, count=count).forward
        results["veth"] = {"median_ms": _ms(base.delay_median), "p95_ms": _ms(base.delay_p95)}
        results["veth_flood_1400"] = _flood(x, y, 1400, flood_seconds)
    with link_pair(emulated=True, realtime=realtime) as (x, y, control):
        assert control is not None
        _flow(x, y, count=20)
        zero = _flow(x, y, count=count).forward
        results["emu_0"] = {
            "median_ms": _ms(zero.delay_median),
            "p95_ms": _ms(zero.delay_p95),
            "added_median_ms": _ms((zero.delay_median or 0) - (base.delay_median or 0)),
        }
        control.configure("l", "a2b", delay="20ms")
        delayed = _flow(x, y, count=count).forward
        results["emu_20ms"] = {
            "median_ms": _ms(delayed.delay_median),
            "p95_ms": _ms(delayed.delay_p95),
            "error_median_ms": _ms((delayed.delay_median or 0) - (zero.delay_median or 0) - 0.02),
        }
        control.configure("l", "a2b", delay=0, loss="10%")
        lossy = _flow(x, y, count=2 * count).forward
        results["emu_loss_10pct"] = {"measured": round(lossy.lost / lossy.expected, 4)}
        control.configure("l", "a2b", loss=0)
        results["emu_flood_64"] = _flood(x, y, 64, flood_seconds)
        results["emu_flood_1400"] = _flood(x, y, 1400, flood_seconds)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m mpa_testbed.calibrate")
    parser.add_argument("--count", type=int, default=1000, help="probes per delay figure")
    parser.add_argument("--flood-seconds", type=float, default=1.0)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--realtime", action="store_true", help="emulator under SCHED_FIFO")
    args = parser.parse_args(argv)
    results = calibrate(args.count, args.flood_seconds, realtime=args.realtime)
    for name, figures in results.items():
        print(f"{name:16} " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
