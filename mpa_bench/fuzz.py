"""``mpa-bench fuzz``: malformed datagrams against a live mpa-gateway, with mobile nodes
connected throughout (as root: it builds network namespaces).

Two namespaces on one veth link (MTU 9000, so that kilobyte datagrams travel whole):
``gw`` runs ``mpa-gateway`` (userspace datapath, its LAN address 10.1.0.1 on lo, the
leases file in its own work directory); ``mn`` holds ``--mobiles`` mobile nodes built
from our core (:mod:`mpa_bench.fuzz_mobile`) and the fuzzer's ``--sources`` addresses,
each with ``--ports`` UDP sockets on random ports. The mobile nodes connect first (EAP-
MSCHAPv2, a CP address each); then the fuzzer sends ``--count`` datagrams at ``--rate``
per second (at most ``--duration`` seconds) built by :mod:`mpa_bench.fuzz_mutators`
from the recorded charon exchanges, messages of our codec and what the mobile nodes
sent, to the gateway's port 500, port 4500 behind the non-ESP marker and port 4500
without it (ESP in UDP), from source addresses and ports drawn at random. Meanwhile
every ``--echo-interval`` seconds each mobile node pings a host behind the gateway
through its CHILD SA and checks its IKE SA with a liveness check.

Checked, each a line of the verdict:

- the gateway process stayed alive, and its log holds no traceback;
- no warning or error line (by template: numbers, hex and addresses blanked) comes
  more often than once per second of the campaign plus one (logged once, or rate
  limited);
- the core's ``internal_errors`` counter (an exception on a datagram) stayed put, and
  the counters of dropped or refused messages moved;
- the mobile nodes' IKE SAs (name, addresses, SPIs), CHILD SAs and leases are those of
  before, their echoes and liveness checks were answered during the campaign and after;
- the RSS of the gateway (``/proc/PID/status``) after the campaign is within
  ``--rss-margin`` of the start;
- half-open IKE SAs are back to 0 within the half-open timeout (30 s) plus a margin.

The report gives datagrams sent by mutator and by route, the gateway's counters before
and after, the RSS curve (start, peak, end, samples) and the verdict; ``--json FILE``
writes it all. The exit code is 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import re
import select
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpa_bench import fuzz_mutators as mutators
from mpa_bench import gateway_rig
from mpa_bench.fuzz_mobile import MobileNode, Pump, inside, pump_until
from mpa_bench.gateway_rig import GW, GW_LAN, MN_NET, Check, Rig, mobile_node
from mpa_ike.node.control_client import ControlError

PROG = "mpa-bench fuzz"
REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors" / "charon"
SOURCE_FIRST = 64  # the fuzzer's sources: 192.0.2.64, .65, ...
MTU = 9000
HALF_OPEN_TIMEOUT = 30.0  # mpa_ike.ike_config.DEFAULT_HALF_OPEN_TIMEOUT
HALF_OPEN_STATES = {"INIT-DONE", "EAP"}
STATUS_EVERY = 2.0  # seconds between status and RSS samples during the campaign
DRAIN_EVERY = 256  # datagrams between reads of the answers
CONNECT_TIMEOUT = 20.0
ECHO_WAIT = 5.0
TEMPLATE = re.compile(r"\b[0-9a-f]{8,}\b|\d+(\.\d+)*|\[[^\]]*\]")
LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")
# Core counters that count what was dropped or refused (mpa_ike.node.metrics).
REFUSALS = ("init_refused", "init_malformed", "cookies_sent", "esp_dropped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Malformed datagrams against a live mpa-gateway."
    )
    parser.add_argument("--count", type=int, default=20_000, help="datagrams (20000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="datagrams per second (1000)")
    parser.add_argument("--seed", type=int, default=1, help="of the mutations (1)")
    parser.add_argument(
        "--duration", type=float, default=900.0, help="stop sending after so many seconds (900)"
    )
    parser.add_argument("--mobiles", type=int, default=2, help="mobile nodes connected (2)")
    parser.add_argument("--sources", type=int, default=32, help="fuzzer source addresses (32)")
    parser.add_argument("--ports", type=int, default=4, help="source ports per address (4)")
    parser.add_argument(
        "--echo-interval", type=float, default=1.0, help="seconds between echoes (1)"
    )
    parser.add_argument(
        "--rss-margin",
        type=float,
        default=0.10,
        help="RSS after the campaign may exceed the start by this fraction (0.10)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=HALF_OPEN_TIMEOUT + 10,
        help="seconds to wait for half-open SAs to time out (40)",
    )
    parser.add_argument("--vectors", type=Path, default=VECTORS, help="charon recordings")
    parser.add_argument("--workdir", type=Path, help="keep the gateway's files there")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    return parser


@dataclass
class Report:
    """What a campaign found; :meth:`verdict` is true when every check passed."""

    seed: int
    count: int
    rate_asked: float
    sent: int = 0
    seconds: float = 0.0
    send_errors: int = 0
    answers: int = 0
    by_mutator: dict[str, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    udp_before: dict[str, int] = field(default_factory=dict)
    udp_after: dict[str, int] = field(default_factory=dict)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    rss_start: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    half_open_peak: int = 0
    half_open_end_after: float | None = None
    mobiles: list[dict[str, Any]] = field(default_factory=list)
    log_templates: dict[str, int] = field(default_factory=dict)
    tracebacks: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def verdict(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, passed, detail))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = "pass" if self.verdict else "FAIL"
        data["rate"] = self.sent / self.seconds if self.seconds else 0.0
        return data


# --------------------------------------------------------------------------- set-up


@contextlib.contextmanager
def rig(workdir: Path, mobiles: int) -> Iterator[Rig]:
    """The gateway on a link of MTU 9000 (kilobyte datagrams travel whole), logging at
    info."""
    settings = {
        "log_level": "info",
        # Every mutated IKE_SA_INIT to the parser: the campaign sends from one address,
        # faster than the per-source rate limit lets through.
        "limits": {"init_rate": 0},
    }
    with gateway_rig.rig(workdir, mobiles, settings=settings, mtu=MTU) as found:
        yield found


def counters(status: dict[str, Any]) -> dict[str, int]:
    """The core's and sockets' counters, and the datapath's ESP drops by reason."""
    found = dict(status["counters"])
    for reason, count in status.get("datapath", {}).get("drops", {}).items():
        found[f"esp_{reason}"] = count
    return found


def mobile_nodes(rig: Rig, count: int) -> list[MobileNode]:
    """``count`` initiators, each on its own address, connected with a CHILD SA."""
    nodes = [mobile_node(rig, k) for k in range(count)]
    now = time.monotonic()
    for node in nodes:
        node.start(now)
    pump_until(nodes, lambda: all(n.up for n in nodes), CONNECT_TIMEOUT)
    return nodes


# --------------------------------------------------------------------------- sending


@dataclass
class Sources:
    """The fuzzer's sockets in the mobile nodes' namespace, on addresses .64 and up."""

    sockets: list[socket.socket]
    answers: int = 0

    @classmethod
    def open(cls, rig: Rig, addresses: int, ports: int, rng: random.Random) -> Sources:
        net = ipaddress.ip_network(MN_NET)
        sockets = []
        with inside(rig.mn.name):
            for n in range(addresses):
                address = str(net[SOURCE_FIRST + n])
                rig.mn.add_addr(rig.mn.links[0], f"{address}/32")
                for _ in range(ports):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    bind_somewhere(sock, address, rng)
                    sock.setblocking(False)
                    sockets.append(sock)
        return cls(sockets)

    def drain(self) -> None:
        """Read (and count) what the gateway answered."""
        ready, _, _ = select.select(self.sockets, [], [], 0)
        for sock in ready:
            with contextlib.suppress(OSError):
                while True:
                    sock.recv(65535)
                    self.answers += 1

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def bind_somewhere(sock: socket.socket, address: str, rng: random.Random) -> None:
    """Bind to a random high port (500 and 4500 included now and then: the gateway
    treats a peer's port 4500 as NAT-T)."""
    for _ in range(20):
        port = rng.choice([500, 4500, rng.randint(1024, 65000)])
        try:
            sock.bind((address, port))
            return
        except OSError:
            continue
    sock.bind((address, 0))


def live_of(rig: Rig, nodes: Sequence[MobileNode]) -> mutators.Live:
    """The mobile nodes' IKE SPIs and the gateway's inbound ESP SPIs, from status."""
    esp = [
        bytes.fromhex(child["spi_in"])
        for sa in rig.status()["ike_sas"]
        for child in sa.get("child_sas", [])
    ]
    return mutators.Live(tuple(n.spi_pair for n in nodes), tuple(esp))


def seeds(vectors: Path, nodes: Sequence[MobileNode]) -> list[mutators.Seed]:
    found = mutators.core_seeds()
    if vectors.is_dir():
        found += mutators.charon_seeds(vectors)
    found += mutators.seeds_from(
        (f"mobile:{node.name}:{n}", data) for node in nodes for n, data in enumerate(node.sent)
    )
    return found


def campaign(
    rig: Rig,
    nodes: list[MobileNode],
    pump: Pump,
    args: argparse.Namespace,
    report: Report,
    sample: Callable[[], None],
) -> None:
    """Send ``args.count`` probes paced at ``args.rate``; sample status and RSS."""
    rng = random.Random(args.seed ^ 0x5EED)
    sources = Sources.open(rig, args.sources, args.ports, rng)
    with pump.lock:
        generator = mutators.Generator(seeds(args.vectors, nodes), args.seed, live_of(rig, nodes))
    by_mutator: Counter[str] = Counter()
    by_route: Counter[str] = Counter()
    start = time.monotonic()
    next_sample = start + STATUS_EVERY
    try:
        for n in range(args.count):
            probe = next(generator)
            sock = rng.choice(sources.sockets)
            try:
                sock.sendto(probe.payload, (GW, probe.port))
            except OSError:
                report.send_errors += 1
            by_mutator[probe.mutator] += 1
            by_route[probe.route] += 1
            if n % DRAIN_EVERY == 0:
                sources.drain()
                now = time.monotonic()
                if now >= next_sample:
                    sample()
                    next_sample = now + STATUS_EVERY
                    if not rig.alive() or now - start > args.duration:
                        report.sent = n + 1
                        break
            ahead = start + (n + 1) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        else:
            report.sent = args.count
    finally:
        report.seconds = time.monotonic() - start
        report.by_mutator = dict(sorted(by_mutator.items()))
        report.by_route = dict(sorted(by_route.items()))
        sources.drain()
        report.answers = sources.answers
        sources.close()


# --------------------------------------------------------------------------- checks


def mobile_view(status: dict[str, Any], nodes: Sequence[MobileNode]) -> dict[str, Any]:
    """What must not change: each mobile node's IKE SA as the gateway shows it (name,
    state, addresses, peer identity, CHILD SAs with their SPIs), its lease, and the IKE
    SPIs its own core holds (the gateway's status does not show IKE SPIs)."""
    view: dict[str, Any] = {}
    for node in nodes:
        sas = [sa for sa in status["ike_sas"] if sa["remote"].startswith(f"{node.address}[")]
        view[node.name] = {
            "spis": (node.spi_pair[0].hex(), node.spi_pair[1].hex()),
            "ike_sas": [
                {
                    "name": sa["name"],
                    "state": sa["state"],
                    "local": sa["local"],
                    "remote": sa["remote"],
                    "remote_id": sa["remote_id"],
                    "address": sa["address"],
                    "child_sas": [(c["spi_in"], c["spi_out"], c["state"]) for c in sa["child_sas"]],
                    "leases": [x["address"] for x in status["leases"] if x["ike_sa"] == sa["name"]],
                }
                for sa in sas
            ],
        }
    return view


def half_open(status: dict[str, Any]) -> int:
    return sum(1 for sa in status["ike_sas"] if str(sa["state"]).upper() in HALF_OPEN_STATES)


def template(message: str) -> str:
    return TEMPLATE.sub("#", message)


def read_log(log_file: Path) -> tuple[Counter[str], list[str]]:
    """Warning and error lines by template, and every traceback (with its line)."""
    templates: Counter[str] = Counter()
    tracebacks: list[str] = []
    lines = log_file.read_text(errors="replace").splitlines()
    for n, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = n + 1
            while end < len(lines) and not LOG_LINE.match(lines[end]):
                end += 1
            tracebacks.append("\n".join(lines[max(0, n - 1) : end]))
        match = LOG_LINE.match(line)
        if match and match["level"] in ("WARNING", "ERROR", "CRITICAL"):
            templates[f"{match['level']} {match['logger']}: {template(match['message'])}"] += 1
    return templates, tracebacks


def echo_round(nodes: list[MobileNode], pump: Pump, timeout: float = ECHO_WAIT) -> bool:
    """One more echo and liveness check through each node; true if all were answered."""
    with pump.lock:
        before = [(n.echo.answered, n.liveness_checks) for n in nodes]
        now = time.monotonic()
        for node in nodes:
            node.send_echo(GW_LAN, now)
            node.check_liveness(now)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pump.lock:
            if all(n.echo.answered > b[0] for n, b in zip(nodes, before, strict=True)):
                return all(not n.endpoint.sas[n.spi].closed for n in nodes if n.spi)
        time.sleep(0.05)
    return False


def judge(report: Report, rig: Rig, nodes: list[MobileNode], before: dict[str, Any]) -> None:
    after = rig.status()
    report.counters_after = counters(after)
    report.udp_after = rig.udp_counters()
    report.check("gateway alive", rig.alive())
    templates, tracebacks = read_log(rig.log_file)
    report.log_templates = dict(templates.most_common())
    report.tracebacks = tracebacks
    report.check("no traceback in the gateway's log", not tracebacks, f"{len(tracebacks)} found")
    limit = int(report.seconds) + 1
    noisy = {t: c for t, c in templates.items() if c > limit}
    report.check(
        f"each warning/error logged at most {limit} times (once a second)",
        not noisy,
        "; ".join(f"{c}x {t}" for t, c in noisy.items()),
    )
    errors = after["counters"].get("internal_errors", 0) - before["counters"].get(
        "internal_errors", 0
    )
    report.check("no internal error of the core", errors == 0, f"{errors} datagrams")
    moved = {
        k: report.counters_after.get(k, 0) - report.counters_before.get(k, 0)
        for k in report.counters_after
        if k.startswith(("dropped_", "udp_", "esp_")) or k in REFUSALS
    }
    report.check(
        "drop and refusal counters moved",
        sum(v for v in moved.values() if v > 0) > 0,
        ", ".join(f"{k}+{v}" for k, v in sorted(moved.items()) if v),
    )
    view_before, view_after = mobile_view(before, nodes), mobile_view(after, nodes)
    report.check(
        "mobile nodes' IKE SAs, CHILD SAs and leases untouched",
        view_before == view_after and all(len(v["ike_sas"]) == 1 for v in view_after.values()),
        "" if view_before == view_after else f"before {view_before} after {view_after}",
    )
    failures = [f"{n.name}: {f}" for n in nodes for f in n.failures]
    report.check("no mobile node lost its IKE SA", not failures, "; ".join(failures))


def mobile_figures(nodes: Sequence[MobileNode]) -> list[dict[str, Any]]:
    return [
        {
            "name": n.name,
            "address": n.address,
            "leased": n.leased,
            "spi_i": n.spi_pair[0].hex(),
            "spi_r": n.spi_pair[1].hex(),
            "echo_sent": n.echo.sent,
            "echo_answered": n.echo.answered,
            "liveness_checks": n.liveness_checks,
        }
        for n in nodes
    ]


def run(args: argparse.Namespace, workdir: Path) -> Report:
    report = Report(args.seed, args.count, args.rate)
    with rig(workdir, args.mobiles) as found:
        nodes = mobile_nodes(found, args.mobiles)
        pump = Pump(nodes, GW_LAN, args.echo_interval)
        pump.start()
        try:
            report.check("echo through every mobile node before", echo_round(nodes, pump))
            before = found.status()
            report.counters_before = counters(before)
            report.udp_before = found.udp_counters()
            start = time.monotonic()

            def sample() -> None:
                report.rss_kib.append((round(time.monotonic() - start, 1), found.rss_kib()))
                with contextlib.suppress(ControlError):
                    report.half_open_peak = max(report.half_open_peak, half_open(found.status()))

            sample()
            report.rss_start = report.rss_kib[0][1]
            echoes = [(n.echo.answered, n.liveness_checks) for n in nodes]
            campaign(found, nodes, pump, args, report, sample)
            with pump.lock:
                during = all(n.echo.answered > e[0] for n, e in zip(nodes, echoes, strict=True))
            report.check("mobile nodes' echoes answered during the campaign", during)
            settle(found, report, args.settle, sample)
            report.rss_end = found.rss_kib()
            report.rss_kib.append((round(time.monotonic() - start, 1), report.rss_end))
            report.rss_peak = max(r for _, r in report.rss_kib)
            allowed = report.rss_start * (1 + args.rss_margin)
            report.check(
                f"RSS flat (end within {args.rss_margin:.0%} of start)",
                report.rss_end <= allowed,
                f"start {report.rss_start} KiB, peak {report.rss_peak}, end {report.rss_end}",
            )
            report.check("echo through every mobile node after", echo_round(nodes, pump))
            if pump.error is not None:
                report.check("mobile node pump", False, repr(pump.error))
            judge(report, found, nodes, before)
            report.mobiles = mobile_figures(nodes)
        finally:
            pump.stop()
            for node in nodes:
                node.close()
    return report


def settle(rig: Rig, report: Report, limit: float, sample: Callable[[], None]) -> None:
    """Wait for the half-open SAs to time out (RFC 7296 §2.6's purpose, charon's 30 s)."""
    start = time.monotonic()
    while time.monotonic() - start < limit and rig.alive():
        if half_open(rig.status()) == 0:
            report.half_open_end_after = round(time.monotonic() - start, 1)
            break
        sample()
        time.sleep(1)
    report.check(
        "half-open IKE SAs back to 0",
        report.half_open_end_after is not None,
        f"after {report.half_open_end_after} s (peak {report.half_open_peak})",
    )


# --------------------------------------------------------------------------- output


def print_report(report: Report) -> None:
    data = report.to_json()
    print(
        f"sent {report.sent} datagrams in {report.seconds:.1f} s "
        f"({data['rate']:.0f}/s, asked {report.rate_asked:.0f}/s), seed {report.seed}, "
        f"{report.answers} answers, {report.send_errors} send errors"
    )
    print("by mutator: " + ", ".join(f"{k} {v}" for k, v in report.by_mutator.items()))
    print("by route:   " + ", ".join(f"{k} {v}" for k, v in report.by_route.items()))
    keys = sorted(set(report.counters_before) | set(report.counters_after))
    print("gateway counters (before -> after):")
    for key in keys:
        old, new = report.counters_before.get(key, 0), report.counters_after.get(key, 0)
        print(f"  {key:<40} {old:>9} -> {new:>9}")
    lost = report.udp_after.get("RcvbufErrors", 0) - report.udp_before.get("RcvbufErrors", 0)
    print(f"gateway namespace UDP RcvbufErrors during the run: {lost}")
    print(
        f"RSS (KiB): start {report.rss_start}, peak {report.rss_peak}, end {report.rss_end} "
        f"({len(report.rss_kib)} samples); half-open peak {report.half_open_peak}, "
        f"back to 0 after {report.half_open_end_after} s"
    )
    for mobile in report.mobiles:
        print(
            f"{mobile['name']}: {mobile['leased']} SPIs {mobile['spi_i']}/{mobile['spi_r']}, "
            f"echo {mobile['echo_answered']}/{mobile['echo_sent']}"
        )
    for template_, count in list(report.log_templates.items())[:15]:
        print(f"log {count:>7}x {template_}")
    for traceback in report.tracebacks[:3]:
        print(traceback)
    for check in report.checks:
        mark = "ok  " if check.passed else "FAIL"
        print(f"{mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
    print(f"verdict: {data['verdict']}")


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    from mpa_harness import guards

    reason = guards.namespaces_unavailable()
    if reason is not None:
        print(f"{PROG}: {reason}", file=sys.stderr)
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mpa-fuzz-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.verdict else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
