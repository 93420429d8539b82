"""``mpa-bench handover``: handover outage and signalling on the namespace testbed.

Builds the testbed of ``deploy/testbed`` (``Testbed``; links emulated by ``linkemu``
where a delay, jitter, loss or rate is asked, veth pairs otherwise), runs ``--runs``
handovers of each method in turn (run 1 of every method, then run 2, ...: a load
change on the machine hits all alike) and reports per method, as median, p95 and
spread (min-max) over the runs: the outage (longest silence of the 1 ms probe flow
between the correspondent and the MN, the longer of the two directions, each also
shown), the lost packets each way, the signalling time (first IKE message the MN sent
after the link event to the answer that ended the handover) and the timeline of the
handover (link up, first IKE message, answer, first probe back), each time from the
link event; then, per method, the outage's parts (medians; every sample's in the JSON):
the link (carrier), address acquisition, AAA/EAP round trips (IKE_AUTH), the other IKE
round trips and processing (:mod:`mpa_bench.handover_parts`), and ``idle``, the flow's
longest silence in the seconds before the link event (no handover going on: on a
loaded machine the floor under every outage). The methods are described
in :mod:`mpa_bench.handover_methods`.

Methods: mpa (pre-authenticated: the handover request waits in the daemon, one
UPDATE_SA_ADDRESSES from the nCoA), mpa-cli (the same, asked for by running
``mpa-mobile handover ngw`` at the link event as a network manager's hook would: the
command's start-up counts), mobike (plain MOBIKE to the OS's address of B), reactive
(IKE_SA_INIT and IKE_AUTH with EAP on B), charon-mobike, charon-reauth (strongSwan).

``--dhcp``: B runs dnsmasq in the nGW's namespace (DHCPv4 and router advertisements)
and mobike, reactive and the charon methods acquire their address on B at the link
event (dhclient for IPv4, SLAAC with the kernel's DAD for IPv6) instead of a static
one; mpa and mpa-cli keep their nCoA from CP, without DAD. ``--optimistic-dad``:
optimistic DAD for SLAAC (RFC 4429). ``--dhcp-ping``: dnsmasq checks an address is
free before offering it (its default, off here: 3 s on a first offer).

``--aaa radius``: the nGW (mpa-gateway, and charon with its eap-radius plugin) relays
EAP to FreeRADIUS, which runs in a namespace of its own (``aaa``) behind the link
``aaa``; ``--delay aaa:25ms`` puts a one-way delay of 25 ms on that link, so that every
RADIUS exchange costs 50 ms more. The RADIUS exchanges are then the parts table's
AAA/EAP part (captured in the nGW's namespace; ``AAA n`` counts them; IKE_AUTH's own
hops count as IKE); without, EAP is answered by the nGW and ``AAA n`` counts IKE_AUTH
round trips. mpa pre-authenticates before the move: no AAA in its outage.

Link options take a value for their default links or a list of ``LINK:VALUE``::

    --delay 25ms                       one-way, both directions, on the core link ngw-core
    --delay core:25ms,access:10ms      ngw-core 25 ms, a and b 10 ms
    --loss 1%                          on the access links a and b, both directions
    --jitter 2ms  --rate 10mbit        jitter on the core link, rate on the access links

``LINK`` is a testbed link (``a``, ``b``, ``c``, ``ara-core``, ``ngw-core``,
``gwc-core``, ``cn-core``, ``aaa``), ``core`` (``ngw-core``), ``access`` (``a`` and ``b``) or
``all``. ``--delay`` and ``--loss`` may be repeated: each value is one configuration
(a testbed of its own), every delay with every loss, each with its own table; the
ratios to ``mpa`` are taken within a configuration.

Run as root from a repository checkout (charon is run by ``tests/harness``)::

    mpa-bench handover --runs 10 --delay 0 --delay 25ms --json h.json --plot h.png
    mpa-bench handover --runs 15 --dhcp --aaa radius --delay aaa:25ms
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from mpa_bench.handover_measure import Sample, summarise
from mpa_bench.handover_methods import (
    METHODS,
    RUNNERS,
    Context,
    Family,
    Unavailable,
    charon_available,
)
from mpa_bench.handover_parts import PART_TITLES, PARTS
from mpa_testbed.linkemu import parse_loss, parse_rate, parse_time
from mpa_testbed.topology import LINK_NAMES, Testbed, TestbedSpec

PROG = "mpa-bench handover"
EPILOG = ("Methods:" + (__doc__ or "").split("Methods:", 1)[-1]).split("Run as root")[0]
REPOSITORY = Path(__file__).resolve().parents[1]
ALIASES = {"core": ("ngw-core",), "access": ("a", "b"), "all": LINK_NAMES}
DEFAULT_LINKS = {
    "delay": ("ngw-core",),
    "jitter": ("ngw-core",),
    "loss": ("a", "b"),
    "rate": ("a", "b"),
}
PARSERS = {"delay": parse_time, "jitter": parse_time, "loss": parse_loss, "rate": parse_rate}


def parse_links(kind: str, text: str) -> dict[str, float]:
    """``"25ms"`` or ``"core:25ms,access:10ms"`` -> {link: value} (seconds, a fraction or
    bits per second), for ``kind`` delay, jitter, loss or rate."""
    parse = PARSERS[kind]
    result: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition(":")
        links = ALIASES.get(name, (name,)) if sep else DEFAULT_LINKS[kind]
        for link in links:
            if link not in LINK_NAMES:
                raise ValueError(f"--{kind}: no link {link!r} (links: {', '.join(LINK_NAMES)})")
            result[link] = parse(value)
    return result


@dataclass
class Configuration:
    """One testbed: impairments per link, both directions."""

    impairments: dict[str, dict[str, float]] = field(default_factory=dict)

    def label(self) -> str:
        if not self.impairments:
            return "no added delay or loss"
        parts = []
        for link, imp in sorted(self.impairments.items()):
            words = []
            if imp.get("delay"):
                words.append(f"{imp['delay'] * 1e3:g} ms")
            if imp.get("jitter"):
                words.append(f"±{imp['jitter'] * 1e3:g} ms")
            if imp.get("loss"):
                words.append(f"{imp['loss'] * 100:g}% loss")
            if imp.get("rate"):
                words.append(f"{imp['rate'] / 1e6:g} Mbit/s")
            if words:
                parts.append(f"{link} {' '.join(words)}")
        return ", ".join(parts) or "no added delay or loss"

    def added_delay(self) -> float:
        """Every delay and jitter asked, added up: more than any one path gets."""
        return sum(
            imp.get("delay", 0.0) + imp.get("jitter", 0.0) for imp in self.impairments.values()
        )

    def spec(self, family: str, realtime: bool = False) -> TestbedSpec:
        """The testbed: the access links always emulated, so that the layer-2 event is
        the same carrier loss at both ends whatever else is asked (on a veth pair the far
        end would go administratively down, taking the gateway's IPv6 address with it)."""
        spec = TestbedSpec(family="split" if family == "split" else "dual", realtime=realtime)
        spec.emulate("a", "b")
        for link, imp in self.impairments.items():
            if any(imp.values()):
                spec.emulate(link, **{kind: str(value) for kind, value in imp.items()})
        return spec


def configurations(args: argparse.Namespace) -> list[Configuration]:
    fixed: dict[str, dict[str, float]] = {}
    for kind in ("jitter", "rate"):
        value = getattr(args, kind)
        if value:
            for link, amount in parse_links(kind, value).items():
                fixed.setdefault(link, {})[kind] = amount
    result = []
    for delay, loss in itertools.product(args.delay or ["0"], args.loss or ["0"]):
        imps = {link: dict(values) for link, values in fixed.items()}
        for kind, text in (("delay", delay), ("loss", loss)):
            for link, amount in parse_links(kind, text).items():
                if amount:
                    imps.setdefault(link, {})[kind] = amount
        result.append(Configuration(imps))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Handover outage of mpa against reactive, MOBIKE and charon.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--runs", type=int, default=10, help="handovers per method (10)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated ({','.join(METHODS)})"
    )
    parser.add_argument(
        "--delay", action="append", help="one-way delay: 25ms (core link) or LINK:TIME,..."
    )
    parser.add_argument("--loss", action="append", help="loss: 1%% (access links) or LINK:P,...")
    parser.add_argument("--jitter", help="jitter: 2ms (core link) or LINK:TIME,...")
    parser.add_argument("--rate", help="rate: 10mbit (access links) or LINK:RATE,...")
    parser.add_argument(
        "--probe-interval", type=float, default=1.0, metavar="MS", help="probe interval (1 ms)"
    )
    parser.add_argument(
        "--dhcp",
        action="store_true",
        help="DHCP and RAs on B: mobike, reactive, charon acquire their address there",
    )
    parser.add_argument(
        "--optimistic-dad",
        action="store_true",
        help="with --dhcp and IPv6: optimistic DAD (optimistic_dad, use_optimistic)",
    )
    parser.add_argument(
        "--dhcp-ping", action="store_true", help="with --dhcp: dnsmasq's ping check before offers"
    )
    parser.add_argument("--eap", choices=("md5", "mschapv2"), default="mschapv2")
    parser.add_argument(
        "--aaa",
        choices=("local", "radius"),
        default="local",
        help="EAP answered by the nGW (local) or relayed to FreeRADIUS behind link aaa",
    )
    parser.add_argument(
        "--datapath",
        choices=("userspace", "xfrm"),
        default="userspace",
        help="mpa-mobile's and mpa-gateway's datapath (userspace; xfrm needs a kernel with "
        "ESP: deploy/uml/run mpa-bench handover --datapath xfrm ...)",
    )
    parser.add_argument("--family", choices=("4", "6", "split"), default="4")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="the link emulator and the probe flow under SCHED_FIFO (a loaded machine)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per handover, s (30)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="every raw sample as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="timeline and outages")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser


# -- progress and table -----------------------------------------------------------------


class Progress:
    """A bar on stderr, rewritten in place on a terminal, one line per run otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _ms(stats: dict[str, float] | None, key: str = "median") -> str:
    return "-" if stats is None else f"{stats[key] * 1e3:.1f}"


def _n(stats: dict[str, float] | None, key: str = "median") -> str:
    return "-" if stats is None else f"{stats[key]:g}"


def table(label: str, summaries: dict[str, dict[str, Any]], notes: dict[str, str]) -> str:
    """The terminal table of one configuration (times in ms)."""
    lines = [f"handover, {label} (ms; median, p95, min-max over the runs that completed)"]
    head = (
        f"{'method':<14}{'ok':>6} {'outage':>7} {'p95':>7} {'min-max':>13} {'x mpa':>6}"
        f" {'fwd':>6} {'rev':>6} {'lost f/r':>9} {'signal':>7} {'p95':>6}"
        f" | {'link up':>7} {'IKE 1st':>7} {'answer':>7} {'data':>7}"
    )
    lines += [head, "-" * len(head)]
    mpa = summaries.get("mpa", {}).get("outage")
    for method, summary in summaries.items():
        if method in notes:
            lines.append(f"{method:<14}  not available: {notes[method]}")
            continue
        outage = summary.get("outage")
        ratio = "-"
        if outage is not None and mpa is not None and mpa["median"] > 0:
            ratio = f"{outage['median'] / mpa['median']:.1f}"
        spread = "-" if outage is None else f"{_ms(outage, 'low')}-{_ms(outage, 'high')}"
        lost = f"{_n(summary.get('lost_forward'))}/{_n(summary.get('lost_reverse'))}"
        lines.append(
            f"{method:<14}{summary['ok']:>3}/{summary['runs']:<2} {_ms(outage):>7}"
            f" {_ms(outage, 'p95'):>7} {spread:>13} {ratio:>6}"
            f" {_ms(summary.get('outage_forward')):>6} {_ms(summary.get('outage_reverse')):>6}"
            f" {lost:>9} {_ms(summary.get('signalling')):>7}"
            f" {_ms(summary.get('signalling'), 'p95'):>6}"
            f" | {_ms(summary.get('link_up')):>7} {_ms(summary.get('ike_first')):>7}"
            f" {_ms(summary.get('ike_answer')):>7} {_ms(summary.get('data_forward')):>7}"
        )
    for method, summary in summaries.items():
        for error in summary.get("errors", []):
            lines.append(f"  {method}: {error}")
    return "\n".join(lines)


def parts_table(summaries: dict[str, dict[str, Any]], notes: dict[str, str]) -> str:
    """The outage's parts per method (medians, ms; round trips counted): each median
    is its own, so a row's parts need not add up to its outage median. ``idle``: the
    flow's longest silence in the seconds before the link event, with no handover going
    on: the floor the machine's load puts under every outage."""
    titles = [PART_TITLES[p] for p in PARTS]
    head = f"{'parts (median)':<14} {'outage':>7} " + " ".join(f"{t:>10}" for t in titles)
    head += f" {'AAA n':>6} {'IKE n':>6} {'idle':>6}"
    lines = [head, "-" * len(head)]
    for method, summary in summaries.items():
        if method in notes or summary.get("part_link") is None:
            continue
        cells = " ".join(f"{_ms(summary.get(f'part_{p}')):>10}" for p in PARTS)
        lines.append(
            f"{method:<14} {_ms(summary.get('outage')):>7} {cells}"
            f" {_n(summary.get('aaa_round_trips')):>6} {_n(summary.get('ike_round_trips')):>6}"
            f" {_ms(summary.get('idle')):>6}"
        )
    return "\n".join(lines)


# -- environment and output ---------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    charon = None
    if charon_available() is None:
        from mpa_harness.charon import charon_version

        charon = charon_version()
    commit = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "charon": charon,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "commit": commit or None,
        "modified": [line[3:] for line in dirty if line.strip()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


@dataclass
class Result:
    configuration: Configuration
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {m: summarise(s) for m, s in self.samples.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.configuration.label(),
            "impairments": self.configuration.impairments,
            "unavailable": self.unavailable,
            "summary": self.summaries(),
            "samples": {m: [s.to_json() for s in ss] for m, ss in self.samples.items()},
        }


# -- running ------------------------------------------------------------------------------


def run_configuration(
    conf: Configuration,
    methods: Sequence[str],
    args: argparse.Namespace,
    workdir: Path,
    progress: Progress,
) -> Result:
    result = Result(conf, {m: [] for m in methods})
    with Testbed(conf.spec(args.family, args.realtime)) as bed:
        family: Family = "split" if args.family == "split" else (6 if args.family == "6" else 4)
        ctx = Context(
            bed,
            workdir,
            family=family,
            eap=args.eap,
            interval=args.probe_interval / 1e3,
            timeout=args.timeout,
            settle=2 * conf.added_delay(),
            dhcp=args.dhcp,
            optimistic_dad=args.optimistic_dad,
            dhcp_ping=args.dhcp_ping,
            datapath=args.datapath,
            aaa=args.aaa,
        )
        if args.dhcp:
            ctx.dhcp_server().start()  # a process of the testbed: ended with it
        with contextlib.ExitStack() as stack:
            if args.aaa == "radius":
                stack.enter_context(ctx.aaa_server())
            for run in range(args.runs):
                for method in methods:
                    if method in result.unavailable:
                        progress.step(f"{method}: not available")
                        continue
                    sample = _one(ctx, method, run, result)
                    progress.step(_progress_text(conf, method, run, sample))
    return result


def _one(ctx: Context, method: str, run: int, result: Result) -> Sample | None:
    try:
        sample = RUNNERS[method](ctx, run)
    except Unavailable as why:
        result.unavailable[method] = str(why)
        return None
    except Exception as error:
        sample = Sample(method, run, ok=False, error=f"{type(error).__name__}: {error}")
    result.samples[method].append(sample)
    return sample


def addressing_label(args: argparse.Namespace) -> str:
    """How the OS's address on B comes and who answers EAP, for the tables' titles."""
    label = "; AAA by RADIUS" if args.aaa == "radius" else ""
    if not args.dhcp:
        return label
    v6 = args.family in ("6", "split")
    how = ("SLAAC, optimistic DAD" if args.optimistic_dad else "SLAAC, DAD") if v6 else "DHCP"
    return f"; B by {how}{label}"


def _progress_text(conf: Configuration, method: str, run: int, sample: Sample | None) -> str:
    if sample is None:
        return f"{method}: not available"
    figure = "failed" if not sample.ok else f"{(sample.outage or 0) * 1e3:.1f} ms"
    return f"{conf.label()}: {method} run {run + 1}: {figure}"


def check_environment(aaa: str = "local") -> str | None:
    """Why the testbed cannot run here, or None."""
    if aaa == "radius":
        from mpa_harness.freeradius import freeradius_available

        reason = freeradius_available()
        if reason is not None:
            return f"--aaa radius: {reason}"
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices, tcpdump)"
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or args.runs < 1:
        print(f"{PROG}: unknown method {', '.join(unknown)}; runs >= 1", file=sys.stderr)
        return 2
    try:
        confs = configurations(args)
    except ValueError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    reason = check_environment(args.aaa)
    if reason is not None:
        print(f"{PROG}: {reason}", file=sys.stderr)
        return 1
    # SIGTERM (or SIGINT where a background start left it ignored) tears down as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    # Under user-mode-linux /tmp is the host's (hostfs): the work files on its own tmpfs.
    scratch = "/dev/shm" if os.environ.get("MPA_UML") == "1" else "/tmp"
    workdir = Path(tempfile.mkdtemp(prefix="mpa-bench-handover-", dir=scratch))
    progress = Progress(len(confs) * len(methods) * args.runs)
    results: list[Result] = []
    try:
        for conf in confs:
            confdir = workdir / f"c{len(results)}"
            confdir.mkdir()
            results.append(run_configuration(conf, methods, args, confdir, progress))
    except KeyboardInterrupt:
        progress.close()
        print(f"{PROG}: interrupted; the testbed was torn down", file=sys.stderr)
        return 130
    finally:
        progress.close()
        if args.keep:
            print(f"{PROG}: work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for result in results:
        label = result.configuration.label() + addressing_label(args)
        summaries = result.summaries()
        print(table(label, summaries, result.unavailable))
        print(parts_table(summaries, result.unavailable))
        print()
    if args.json:
        data = {"environment": environment(args), "configurations": [r.to_json() for r in results]}
        args.json.write_text(json.dumps(data, indent=1))
    if args.plot:
        from mpa_bench.handover_plot import plot

        plot(results, args.plot)
    ok = all(s.ok for r in results for ss in r.samples.values() for s in ss)
    return 0 if ok else 1
