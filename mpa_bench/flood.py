"""``mpa-bench flood``: a flood of IKE_SA_INIT from random SPIs and source addresses
against a live mpa-gateway, while legitimate mobile nodes pre-authenticate (as root: it
builds network namespaces).

Two namespaces on one veth link: ``gw`` runs ``mpa-gateway`` with its default limits
(COOKIE above ``half_open_threshold``, the half-open cap, the per-source rate limit;
userspace datapath); the other holds the mobile nodes (our initiator core,
:mod:`mpa_bench.fuzz_mobile`, EAP-MSCHAPv2 and a CP address each) and ``--senders``
flooding processes (:mod:`mpa_bench.flood_sender`: a raw socket, source addresses drawn
from ``--subnet``, as fast as they can unless ``--rate``). The gateway routes the
subnet back over the link, so that its COOKIE answers leave and are dropped on the
other side. The gateway is pinned to ``--gateway-cpu``, the senders and this process to
``--sender-cpus``.

Measured: the flood's rate as sent, the gateway's counters (COOKIEs sent, IKE_SA_INIT
dropped by the per-source rate or the half-open cap), the namespace's UDP receive
buffer drops, the time each mobile node started every ``--mobile-every`` seconds during
the flood takes from its first IKE_SA_INIT to its CHILD SA (each deleted again; each of
its datagrams leaves once the flood has refilled the gateway's queue, see
:func:`set_up`), its retransmissions, the share of the flood answered, and the
gateway's RSS before the flood, at its peak and ``--settle`` seconds after (half-open
SAs expire after 30 s). Checked, each a line of the verdict: every mobile node up within
``--setup-limit`` (1 s), COOKIEs sent, the RSS after within ``--rss-margin`` of the
start, no half-open SA left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpa_bench import gateway_rig
from mpa_bench.fuzz_mobile import MobileNode, pump_once
from mpa_bench.gateway_rig import GW, Check, Rig, mobile_node
from mpa_ike.node.control_client import ControlError

PROG = "mpa-bench flood"
SUBNET = "198.18.0.0/15"  # RFC 2544's benchmarking addresses
SAMPLE_EVERY = 0.5
HALF_OPEN_THRESHOLD = 30  # gateway.config's default half_open_threshold
HALF_OPEN_TIMEOUT = 30.0  # mpa_ike.ike_config.DEFAULT_HALF_OPEN_TIMEOUT
REFILL = 0.02  # s after a mobile node's own work before it sends (see set_up)
CONNECT_TIMEOUT = 15.0  # IKE_SA_INIT sent 15 times by then (mpa_ike.retransmit.INIT_RETRANSMIT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="IKE_SA_INIT flood against a live mpa-gateway."
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="of flood (60)")
    parser.add_argument("--rate", type=float, default=0.0, help="per sender per s (0: max)")
    parser.add_argument("--senders", type=int, default=1, help="flooding processes (1)")
    parser.add_argument("--subnet", default=SUBNET, help=f"source addresses ({SUBNET})")
    parser.add_argument(
        "--mobile-every", type=float, default=2.0, help="s between mobile node set-ups (2)"
    )
    parser.add_argument("--setup-limit", type=float, default=1.0, help="s per set-up (1)")
    parser.add_argument("--settle", type=float, default=35.0, help="s after the flood (35)")
    parser.add_argument("--rss-margin", type=float, default=0.10, help="RSS growth (0.10)")
    parser.add_argument("--gateway-cpu", type=int, default=0, help="(0)")
    parser.add_argument(
        "--gateway-nice",
        type=int,
        default=0,
        help="the gateway's nice value (0; below 0 it takes its core from other load)",
    )
    parser.add_argument("--sender-cpus", default="1", help="list for taskset (1)")
    parser.add_argument("--workdir", type=Path, help="keep the gateway's files there")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.epilog = (
        "mpa-bench flood --blocking [--rounds N]: no flood, how long each request of a "
        "set-up holds the gateway's loop (mpa_bench.flood_blocking)"
    )
    return parser


@dataclass
class Report:
    seconds_asked: float
    sent: int = 0
    send_errors: int = 0
    flood_seconds: float = 0.0
    setups: list[float] = field(default_factory=list)  # seconds, each mobile node
    setup_failures: list[str] = field(default_factory=list)
    retransmissions: list[int] = field(default_factory=list)  # each mobile node up
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    udp_rcvbuf_errors: int = 0
    gateway_cpu_seconds: float = 0.0  # during the flood
    gateway_wait_seconds: float = 0.0  # runnable but without a core, during the flood
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    rss_start: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    half_open_peak: int = 0
    half_open_end: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.flood_seconds if self.flood_seconds else 0.0

    @property
    def verdict(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def counter(self, name: str) -> int:
        return self.counters_after.get(name, 0) - self.counters_before.get(name, 0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(rate=self.rate, verdict="pass" if self.verdict else "FAIL")
        return data


@contextlib.contextmanager
def rig(workdir: Path, users: int, subnet: str, gateway_cpu: int, nice: int = 0) -> Iterator[Rig]:
    """The gateway pinned to ``gateway_cpu`` at ``nice``, routing ``subnet`` (the flood's
    sources) back over the link: its COOKIEs to them leave and are dropped."""
    launcher = ["nice", "-n", str(nice), "taskset", "-c", str(gateway_cpu)]
    with gateway_rig.rig(workdir, users, route=subnet, launcher=launcher) as found:
        yield found


def rcvbuf_errors(rig: Rig) -> int:
    return rig.udp_counters().get("RcvbufErrors", 0)


def set_up(rig: Rig, k: int, timeout: float, report: Report | None = None) -> float:
    """One mobile node from its first IKE_SA_INIT to its CHILD SA; then deleted.

    The mobile nodes share the senders' core: while one works (its address added by a
    subprocess, its request built, a response read), the flood stops and the gateway's
    queue empties, and a datagram sent right after would find room that a flood from
    elsewhere does not leave (41 of 41 first requests answered against 39-45% of the
    flood's). So what a mobile node has to send waits REFILL seconds after its work,
    for the flood to fill the queue again, and then only its sendto runs; the time it
    held its datagrams so is not counted."""
    node = mobile_node(rig, k)
    try:
        node.start(time.monotonic())
        start = time.monotonic()
        held = pump_fairly(node, timeout)
        took = time.monotonic() - start - held
        sa = node.endpoint.sas.get(node.spi)
        if report is not None and sa is not None:
            report.retransmissions.append(sa.counters.get("retransmitted", 0))
        node.endpoint.delete(node.spi, time.monotonic())
        end = time.monotonic() + 1.0
        while time.monotonic() < end and any(not sa.closed for sa in node.endpoint):
            pump_once([node], 0.02)
        return took
    finally:
        node.close()


def pump_fairly(node: MobileNode, timeout: float) -> float:
    """Drive ``node`` until it is up, each datagram it sends held REFILL seconds after
    it was made; the seconds so held."""
    deadline = time.monotonic() + timeout
    held = 0.0
    while not node.up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.name} not up within {timeout} s")
        outgoing = node.prepare(time.monotonic())
        if outgoing:
            time.sleep(REFILL)
            held += REFILL
            node.transmit(outgoing)
        ready, _, _ = select.select(list(node.sockets.values()), [], [], 0.02)
        for sock in ready:
            node.received(sock, time.monotonic())
    return held


class Sampler(threading.Thread):
    """RSS and half-open SAs every SAMPLE_EVERY seconds while the flood runs."""

    def __init__(self, rig: Rig, report: Report, started: float) -> None:
        super().__init__(daemon=True)
        self.rig, self.report, self.started = rig, report, started
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_EVERY):
            rss = self.rig.rss_kib()
            self.report.rss_kib.append((round(time.monotonic() - self.started, 2), rss))
            self.report.rss_peak = max(self.report.rss_peak, rss)
            with contextlib.suppress(ControlError, OSError):
                found = half_open(self.rig.status())
                self.report.half_open_peak = max(self.report.half_open_peak, found)


def half_open(status: dict[str, Any]) -> int:
    states = [str(sa.get("state", "")).upper() for sa in status.get("ike_sas", [])]
    return sum(1 for state in states if state in ("INIT-DONE", "EAP"))


def start_senders(rig: Rig, args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    senders = []
    for n in range(args.senders):
        command = [sys.executable, "-m", "mpa_bench.flood_sender", "--gateway", GW]
        command += ["--subnet", args.subnet, "--seconds", str(args.seconds)]
        command += ["--rate", str(args.rate), "--seed", str(n + 1)]
        argv = ["taskset", "-c", args.sender_cpus, *rig.mn.exec_args(command)]
        senders.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
    return senders


def campaign(rig: Rig, args: argparse.Namespace, report: Report) -> None:
    set_up(rig, 0, CONNECT_TIMEOUT)  # warm-up: every code path of a set-up loaded
    time.sleep(1.0)
    report.rss_start = report.rss_peak = rig.rss_kib()
    report.counters_before = dict(rig.status()["counters"])
    rcvbuf, cpu, waited = rcvbuf_errors(rig), rig.cpu_seconds(), rig.run_queue_wait()
    started = time.monotonic()
    sampler = Sampler(rig, report, started)
    sampler.start()
    senders = start_senders(rig, args)
    try:
        k = 1
        time.sleep(min(0.5, args.seconds / 4))  # the flood is on
        while time.monotonic() - started < args.seconds - args.setup_limit:
            try:
                took = set_up(rig, k, CONNECT_TIMEOUT, report)
                report.setups.append(round(took, 4))
                print(f"{PROG}: mobile node {k} up in {took * 1000:.0f} ms", flush=True)
            except TimeoutError:
                report.setup_failures.append(f"mn{k}: not up within {CONNECT_TIMEOUT} s")
                print(f"{PROG}: mobile node {k} not up", flush=True)
            k += 1
            pause = args.mobile_every - (time.monotonic() - started) % args.mobile_every
            time.sleep(pause)
    finally:
        for sender in senders:
            out, _ = sender.communicate(timeout=args.seconds + 30)
            with contextlib.suppress(ValueError):
                result = json.loads(out.decode().strip().splitlines()[-1])
                report.sent += int(result["sent"])
                report.send_errors += int(result["errors"])
                report.flood_seconds = max(report.flood_seconds, float(result["seconds"]))
    report.udp_rcvbuf_errors = rcvbuf_errors(rig) - rcvbuf
    report.gateway_cpu_seconds = round(rig.cpu_seconds() - cpu, 2)
    report.gateway_wait_seconds = round(rig.run_queue_wait() - waited, 2)
    print(f"{PROG}: flood over, {report.sent} sent; settling {args.settle:g} s", flush=True)
    time.sleep(args.settle)
    sampler.halt.set()
    sampler.join()
    report.rss_end = rig.rss_kib()
    status = rig.status()
    report.counters_after = dict(status["counters"])
    report.half_open_end = half_open(status)


def judge(report: Report, args: argparse.Namespace) -> None:
    slow = [t for t in report.setups if t >= args.setup_limit]
    report.checks.append(
        Check(
            f"mobile nodes up (within {CONNECT_TIMEOUT:g} s)",
            bool(report.setups) and not report.setup_failures,
            f"{len(report.setups)} up, {len(report.setup_failures)} failed",
        )
    )
    report.checks.append(
        Check(
            f"mobile nodes up within {args.setup_limit:g} s during the flood",
            bool(report.setups) and not slow and not report.setup_failures,
            f"{len(report.setups)} set-ups, slowest {max(report.setups, default=0):.3f} s, "
            f"{len(report.setup_failures)} failed",
        )
    )
    cookies = report.counter("cookies_sent")
    report.checks.append(Check("COOKIEs sent", cookies > 0, f"{cookies}"))
    limit = report.rss_start * (1 + args.rss_margin)
    report.checks.append(
        Check(
            f"RSS back within {args.rss_margin:.0%} of the start",
            report.rss_end <= limit,
            f"start {report.rss_start} KiB, peak {report.rss_peak} KiB, end {report.rss_end} KiB",
        )
    )
    # The spoofed requests before the COOKIEs began are half-open SAs until they expire;
    # after that, only a request returning a COOKIE makes one (and a mobile node's).
    report.checks.append(
        Check(
            "half-open SAs held at the COOKIE threshold",
            report.half_open_peak <= HALF_OPEN_THRESHOLD + 1,
            f"peak {report.half_open_peak}",
        )
    )
    if args.settle >= HALF_OPEN_TIMEOUT:
        report.checks.append(
            Check("no half-open SA left", report.half_open_end == 0, f"{report.half_open_end}")
        )


def print_report(report: Report) -> None:
    setups = sorted(report.setups)
    median = setups[len(setups) // 2] if setups else 0.0
    print(f"flood: {report.sent} IKE_SA_INIT in {report.flood_seconds:.1f} s", end="")
    print(f" = {report.rate:,.0f}/s sent ({report.send_errors} send errors)")
    answered = report.counter("cookies_sent") / report.sent if report.sent else 0.0
    print(f"  answered: {answered:.1%} of the flood (a new initiator's first request's chance)")
    cpu = report.gateway_cpu_seconds
    cookies = report.counter("cookies_sent")
    print(
        f"gateway: {cpu:.1f} CPU s during the flood ({cookies / cpu if cpu else 0:,.0f} COOKIEs"
        f" per CPU s), {report.gateway_wait_seconds:.1f} s runnable waiting for a core;"
        f" UDP receive buffer drops {report.udp_rcvbuf_errors}"
    )
    for name in ("cookies_sent", "cookies_refused", "dropped_init_rate"):
        print(f"  {name}: {report.counter(name)}")
    print(f"  dropped_half_open_limit: {report.counter('dropped_half_open_limit')}")
    print(f"  half-open SAs: peak {report.half_open_peak}, at the end {report.half_open_end}")
    print(
        f"mobile nodes: {len(setups)} set-ups during the flood, median {median * 1000:.0f} ms,"
        f" max {max(setups, default=0) * 1000:.0f} ms, {len(report.setup_failures)} failed;"
        f" retransmissions each: {report.retransmissions}"
    )
    print(
        f"RSS: before {report.rss_start} KiB, peak {report.rss_peak} KiB, "
        f"after {report.rss_end} KiB"
    )
    for check in report.checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.name}: {check.detail}")


def run(args: argparse.Namespace) -> Report:
    report = Report(seconds_asked=args.seconds)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mpa-flood-"))
    users = 2 + int(args.seconds / max(args.mobile_every, 0.1)) + 2
    try:
        with rig(workdir, users, args.subnet, args.gateway_cpu, args.gateway_nice) as found:
            campaign(found, args, report)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    judge(report, args)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--blocking"]:  # no flood: how long each request holds the loop
        from mpa_bench import flood_blocking

        return flood_blocking.main(argv[1:])
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print(f"{PROG}: needs root (network namespaces)", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {int(c) for c in args.sender_cpus.split(",")})
    report = run(args)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.verdict else 1


if __name__ == "__main__":
    sys.exit(main())
