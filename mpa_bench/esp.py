"""``mpa-bench esp``: UDP through the tunnel, mpa-gateway against charon (not a timed test).

Run as root from a repository checkout, with charon and iperf3 installed: the charon
harness lives in ``tests/harness``. Each set-up gets fresh namespaces of one shape,
``mn -- gw -- lan`` (veth links; the LAN, 10.1.0.0/24, is the gateway's traffic
selector; the mobile node gets its inner address from the pool 10.3.0.0/24), and is
torn down before the next:

- ``charon`` : charon MN (kernel-libipsec, ``encap = yes``) -- charon gateway
  (kernel-libipsec), the reference;
- ``mpa-gw`` : charon MN -- mpa-gateway (``datapath: userspace``);
- ``mpa-mn-gw``: mpa-mobile -- mpa-gateway (both userspace, ESP in UDP), when the
  daemons carry traffic (otherwise left out with a note).

For each, iperf3 in UDP mode from lan to the MN's inner address and from the MN to
lan, at each ``--sizes`` UDP payload. The figure is the rate delivered at the receiver
(packets/s, and Mbit/s of UDP payload), the median of ``--runs`` runs of ``--seconds``,
at the highest offered load found with less than 1% loss (``--load search``, the
default: from the rate that arrives when the sender goes as fast as it can, steps of
10% up or down) or at a fixed one (``--load saturate``, ``-b 0`` unless ``--offered``
says otherwise). On a machine with few cores a saturating sender takes a whole core
from the tunnel endpoints, hence the search. The CPU time of the gateway process
(charon or mpa-gateway) per second of each run is printed too. The default large
payload is 1372 bytes, a 1400-byte inner packet: both TUN devices have an MTU of 1400,
so a larger one would measure IP fragmentation instead of ESP.

``--profile`` runs the mpa-gateway set-up once more with the gateway under
pyinstrument (if installed) or cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from mpa_harness import daemon as daemon_process
from mpa_ike.node.control_client import call

PROG = "mpa-bench esp"
MN_ADDR, GW_ADDR = "192.0.2.1", "192.0.2.2"
LAN_GW, LAN_HOST = "10.1.0.254", "10.1.0.1"
METHOD = "eap-md5"
KEY: Final = "ecdsa"
DAEMON_START = 20.0
SETTLE = 0.5  # between runs, for queues to drain
MAX_LOSS = 0.01
STEP = 0.1
SEARCH_STEPS = 8
RETRIES = 3
SCENARIOS = {
    "charon": "charon MN -- charon gw (kernel-libipsec)",
    "mpa-gw": "charon MN -- mpa-gateway (userspace)",
    "mpa-mn-gw": "mpa-mobile -- mpa-gateway (userspace)",
    "charon-kernel": "charon MN -- charon gw (kernel-netlink: the kernel's ESP)",
    "mpa-gw-xfrm": "charon MN (kernel-netlink) -- mpa-gateway (datapath: xfrm)",
    "mpa-gw-us": "charon MN (kernel-netlink) -- mpa-gateway (userspace)",
}
#: ``--datapath``: the set-ups compared, the first the reference of the ratios.
DATAPATH_SCENARIOS = {
    "userspace": ("charon", "mpa-gw", "mpa-mn-gw"),
    "xfrm": ("charon-kernel", "mpa-gw-xfrm", "mpa-gw-us"),
}
KERNEL_CHARON = ("charon-kernel", "mpa-gw-xfrm", "mpa-gw-us")  # charon on kernel-netlink
DIRECTIONS = ("lan->mn", "mn->lan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="UDP throughput through the tunnel: mpa-gateway against charon.",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, median (3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a run (3)")
    parser.add_argument(
        "--sizes", default="64,1372", help="UDP payload sizes in bytes (64,1372: inner 92, 1400)"
    )
    parser.add_argument(
        "--load",
        choices=("search", "saturate"),
        default="search",
        help="search: the highest load with <1%% loss (default); saturate: -b --offered",
    )
    parser.add_argument(
        "--offered",
        default="0",
        help="with --load saturate: iperf3 -b (0: as fast as the sender can)",
    )
    parser.add_argument("--esp", default="aes128gcm16", help="ESP proposal (aes128gcm16)")
    parser.add_argument("--ike", default="aes128-sha256-x25519", help="IKE proposal")
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"which set-ups, comma-separated ({','.join(SCENARIOS)}; default: --datapath's)",
    )
    parser.add_argument(
        "--datapath",
        choices=tuple(DATAPATH_SCENARIOS),
        default="userspace",
        help="userspace: against charon's kernel-libipsec (default); xfrm: our XFRM and "
        "userspace datapaths against charon's kernel-netlink, the kernel's own ESP "
        "(needs a kernel with ESP: deploy/uml/run)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile mpa-gateway under load (pyinstrument or cProfile)",
    )
    parser.add_argument("--top", type=int, default=25, help="functions in the profile (25)")
    return parser


@dataclass
class Run:
    """One iperf3 run: what the receiver got in ``seconds``, and what was sent."""

    packets: int
    lost: int
    sent: int
    seconds: float
    bits_per_second: float
    gateway_cpu: float = 0.0  # CPU seconds of the gateway process per second of the run
    offered: str = "0"  # iperf3 -b

    @property
    def loss(self) -> float:
        return self.lost / self.packets if self.packets else 1.0

    @property
    def pps(self) -> float:
        return (self.packets - self.lost) / self.seconds if self.seconds else 0.0


@dataclass
class Figure:
    runs: list[Run] = field(default_factory=list)

    @property
    def pps(self) -> float:
        return statistics.median(r.pps for r in self.runs) if self.runs else 0.0

    @property
    def mbps(self) -> float:
        return statistics.median(r.bits_per_second for r in self.runs) / 1e6 if self.runs else 0.0

    @property
    def offered_pps(self) -> float:
        if not self.runs:
            return 0.0
        return statistics.median(r.sent / r.seconds if r.seconds else 0.0 for r in self.runs)

    @property
    def loss(self) -> float:
        return statistics.median(r.loss for r in self.runs) if self.runs else 1.0

    @property
    def gateway_cpu(self) -> float:
        return statistics.median(r.gateway_cpu for r in self.runs) if self.runs else 0.0

    @property
    def gateway_us(self) -> float:
        """Gateway CPU microseconds per delivered packet."""
        return self.gateway_cpu / self.pps * 1e6 if self.pps else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "gateway_cpu": round(self.gateway_cpu, 3),
            "gateway_us_per_packet": round(self.gateway_us, 2),
            "loss": round(self.loss, 5),
            "pps": round(self.pps, 1),
            "mbit_per_s": round(self.mbps, 3),
            "offered_pps": round(self.offered_pps, 1),
            "runs": [vars(r) for r in self.runs],
        }


Results = dict[str, dict[tuple[str, int], Figure]]  # scenario -> (direction, size) -> figure


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    from mpa_harness.charon import charon_available

    reason = charon_available()
    if reason is None and shutil.which("iperf3") is None:
        reason = "iperf3 is not installed (deploy/setup.sh installs it)"
    if reason is not None:
        print(f"{PROG}: {reason}", file=sys.stderr)
        return 1
    chosen = args.scenarios or ",".join(DATAPATH_SCENARIOS[args.datapath])
    wanted = [s for s in chosen.split(",") if s]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        print(f"{PROG}: unknown set-up {', '.join(unknown)}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    results: Results = {}
    notes: list[str] = []
    # In UML /tmp is the host's (hostfs): sockets and charon's files go on a tmpfs there.
    scratch = "/dev/shm" if os.environ.get("MPA_UML") == "1" else "/tmp"
    workdir = Path(tempfile.mkdtemp(prefix="mpa-bench-esp-", dir=scratch))
    try:
        for name in wanted:
            print(f"# {SCENARIOS[name]} ...", file=sys.stderr, flush=True)
            try:
                with scenario(name, workdir / name, args) as topo:
                    results[name] = measure(topo, args, sizes)
            except NoTraffic as error:
                notes.append(f"{name} ({SCENARIOS[name]}) left out: {error}")
                print(f"# {notes[-1]}", file=sys.stderr, flush=True)
        print_table(args, sizes, results, notes)
        if args.json is not None:
            write_json(args.json, args, sizes, results, notes)
        if args.profile:
            profile(workdir / "profile", args, sizes[0])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


class NoTraffic(RuntimeError):
    """The set-up came up but carries no traffic (or did not come up)."""


# ---------------------------------------------------------------------------
# Topology and set-ups


@dataclass
class Topology:
    mn: Any  # mpa_harness.netns.Netns
    gw: Any
    lan: Any
    inner: str = ""  # the MN's inner address (the CP / virtual IP)
    gateway_pid: int = 0


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """Namespaces mn -- gw -- lan, forwarding on in gw; always deleted."""
    from mpa_harness.netns import add_veth, netns
    from mpa_harness.scenarios import POOL

    with netns("mn") as mn, netns("gw") as gw, netns("lan") as lan:
        add_veth(mn, gw, [f"{MN_ADDR}/24"], [f"{GW_ADDR}/24"])
        add_veth(gw, lan, [f"{LAN_GW}/24"], [f"{LAN_HOST}/24"])
        lan.add_route(POOL, via=LAN_GW)
        gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield Topology(mn, gw, lan)


@contextlib.contextmanager
def scenario(name: str, workdir: Path, args: argparse.Namespace) -> Iterator[Topology]:
    """The topology with the set-up ``name`` connected and an iperf3 server on lan."""
    workdir.mkdir(parents=True)
    with topology() as topo, contextlib.ExitStack() as stack:
        ca_file = workdir / "ca.pem"
        kernel = "netlink" if name in KERNEL_CHARON else "libipsec"
        if name in ("charon", "charon-kernel"):
            stack.enter_context(charon_gateway(topo, workdir, args, kernel))
        else:
            datapath = "xfrm" if name == "mpa-gw-xfrm" else "userspace"
            stack.enter_context(mpa_gateway(topo, workdir, args, ca_file, datapath=datapath))
        if name == "mpa-mn-gw":
            topo.inner = stack.enter_context(mpa_mobile(topo, workdir, args, ca_file))
        else:
            topo.inner = stack.enter_context(charon_mobile(topo, workdir, args, ca_file, kernel))
        stack.enter_context(iperf3_server(topo))
        check_traffic(topo)
        yield topo


def _scenario_config(args: argparse.Namespace) -> Any:
    from mpa_harness.scenarios import Scenario

    return Scenario(METHOD, ike_proposal=args.ike, esp_proposal=args.esp, gateway_key=KEY)


@contextlib.contextmanager
def charon_gateway(
    topo: Topology, workdir: Path, args: argparse.Namespace, kernel: Any = "libipsec"
) -> Iterator[None]:
    """charon on gw; it writes its CA to ``workdir / "ca.pem"`` for the MN."""
    from mpa_harness.charon import Charon
    from mpa_harness.pki import make_ca, make_cert
    from mpa_harness.scenarios import GATEWAY_ID, responder_config

    with Charon(topo.gw, workdir / "charon-gw", kernel=kernel) as charon:
        ca = make_ca(key_type=KEY)
        cert = charon.add_cert(make_cert(ca, GATEWAY_ID, KEY, san_ip=[GW_ADDR]), "gw")
        ca.write(workdir / "ca.pem")
        charon.configure(responder_config(_scenario_config(args), GW_ADDR, cert))
        charon.start()
        charon.load()
        topo.gateway_pid = _charon_pid(topo.gw)
        yield


def _charon_pid(ns: Any) -> int:
    for pid in subprocess.run(
        ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
    ).stdout.split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "charon":
                return int(pid)
    return 0


@contextlib.contextmanager
def mpa_gateway(
    topo: Topology,
    workdir: Path,
    args: argparse.Namespace,
    ca_file: Path,
    profiler: list[str] | None = None,
    datapath: str = "userspace",
) -> Iterator[None]:
    """mpa-gateway on gw with ``datapath``; ``profiler`` prefixes its command."""
    from mpa_harness.pki import make_ca, make_cert
    from mpa_harness.scenarios import (
        EAP_PASSWORD,
        EAP_USER,
        GATEWAY_ID,
        POOL,
        PROTECTED_NET,
    )

    ca = make_ca(key_type=KEY)
    make_cert(ca, GATEWAY_ID, KEY, san_ip=[GW_ADDR]).write(workdir / "gw.pem", workdir / "gw.key")
    ca.write(ca_file)
    config = _write(
        workdir / "gateway.yaml",
        {
            "listen": [GW_ADDR],
            "id": GATEWAY_ID,
            "certificate": "gw.pem",
            "private_key": "gw.key",
            "ike": [args.ike],
            "esp": [args.esp],
            "pool": [POOL],
            "local_ts": [PROTECTED_NET],
            "eap": {"method": METHOD.removeprefix("eap-"), "users": {EAP_USER: EAP_PASSWORD}},
            "control_socket": "gw.sock",
            "leases": "leases.sqlite3",
            "datapath": datapath,
        },
    )
    with daemon("gateway.cli", config, topo.gw, workdir / "gw.sock", profiler) as process:
        topo.gateway_pid = process.pid
        yield


@contextlib.contextmanager
def charon_mobile(
    topo: Topology, workdir: Path, args: argparse.Namespace, ca_file: Path, kernel: Any = "libipsec"
) -> Iterator[str]:
    """charon on mn, connected with a virtual IP; yields that address."""
    from mpa_harness.charon import Charon
    from mpa_harness.scenarios import CHILD, initiator_config

    with Charon(topo.mn, workdir / "charon-mn", kernel=kernel) as charon:
        shutil.copy(ca_file, charon.swanctl_dir / "x509ca" / "ca.pem")
        charon.configure(initiator_config(_scenario_config(args), MN_ADDR, GW_ADDR))
        charon.start()
        charon.load()
        try:
            charon.initiate(CHILD, timeout=10)
            sa = charon.wait_established(CHILD)
        except Exception as error:
            raise NoTraffic(f"charon did not connect: {error}") from None
        yield sa.local_vips[0]


@contextlib.contextmanager
def mpa_mobile(
    topo: Topology, workdir: Path, args: argparse.Namespace, ca_file: Path
) -> Iterator[str]:
    """mpa-mobile on mn (userspace datapath, ESP in UDP), connected; yields its address."""
    from mpa_harness.scenarios import CLIENT_ID, EAP_PASSWORD, EAP_USER, GATEWAY_ID, PROTECTED_NET

    config = _write(
        workdir / "mobile.yaml",
        {
            "identity": CLIENT_ID,
            "eap": {
                "method": METHOD.removeprefix("eap-"),
                "password": EAP_PASSWORD,
                "identity": EAP_USER,
            },
            "control_socket": "mn.sock",
            "datapath": "userspace",
            "gateways": {
                "gw": {
                    "address": GW_ADDR,
                    "id": GATEWAY_ID,
                    "ca": str(ca_file),
                    "ike": [args.ike],
                    "esp": [args.esp],
                    "remote_ts": [PROTECTED_NET],
                    "encap": True,
                }
            },
        },
    )
    try:
        started = daemon("mobile.cli", config, topo.mn, workdir / "mn.sock")
        with started:
            socket = workdir / "mn.sock"
            try:
                call(socket, "connect", {"name": "gw"})
                [sa] = call(socket, "status")["ike_sas"]
                inner = str(sa["address"])
            except Exception as error:
                raise NoTraffic(f"mpa-mobile did not connect: {error}") from None
            yield inner
    except RuntimeError as error:
        if isinstance(error, NoTraffic):
            raise
        raise NoTraffic(str(error)) from None


def check_traffic(topo: Topology) -> None:
    """A short, slow iperf3 UDP run from the MN's inner address to lan, or :class:`NoTraffic`.

    (The iperf3 server must run; its TCP control connection goes through the tunnel too.)
    """
    cmd = ["iperf3", "-c", LAN_HOST, "-B", topo.inner, "-u", "-J", "-b", "1M", "-t", "1"]
    proc = topo.mn.run([*cmd, "--connect-timeout", "3000"], check=False, timeout=20)
    try:
        received = json.loads(proc.stdout)["end"]["sum_received"]
        delivered = int(received["packets"]) - int(received["lost_packets"])
    except (ValueError, KeyError):
        delivered = 0
    if delivered <= 0:
        raise NoTraffic(f"no UDP through the tunnel from {topo.inner} to {LAN_HOST}")


# ---------------------------------------------------------------------------
# Measurement


@contextlib.contextmanager
def iperf3_server(topo: Topology) -> Iterator[None]:
    server = topo.lan.popen(
        ["iperf3", "-s", "-B", LAN_HOST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while topo.lan.run(["ss", "-ltn", "sport = :5201"], check=False).stdout.count("\n") < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def iperf3(
    topo: Topology, direction: str, size: int, args: argparse.Namespace, offered: str = "0"
) -> Run:
    """One UDP run at ``offered`` (iperf3's ``-b``: payload bits/s, 0 for as fast as it can).

    ``lan->mn`` is iperf3's reverse mode (the server on lan sends).
    """
    cmd = ["iperf3", "-c", LAN_HOST, "-B", topo.inner, "-u", "-J"]
    cmd += ["-b", offered, "-l", str(size), "-t", str(args.seconds)]
    if direction == "lan->mn":
        cmd.append("-R")
    cpu_before, start = cpu_seconds(topo.gateway_pid), time.monotonic()
    proc = topo.mn.run(cmd, check=False, timeout=args.seconds + 30)
    cpu = (cpu_seconds(topo.gateway_pid) - cpu_before) / (time.monotonic() - start)
    try:
        end = json.loads(proc.stdout)["end"]
        got, sent = end["sum_received"], end["sum_sent"]
    except (ValueError, KeyError) as error:
        raise RuntimeError(f"iperf3 failed ({error}): {proc.stdout[-400:]} {proc.stderr}") from None
    return Run(
        packets=int(got["packets"]),
        lost=int(got["lost_packets"]),
        sent=int(sent["packets"]),
        seconds=float(got["seconds"]),
        bits_per_second=float(got["bits_per_second"]),
        gateway_cpu=cpu,
        offered=offered,
    )


def measure(topo: Topology, args: argparse.Namespace, sizes: list[int]) -> dict[Any, Figure]:
    figures: dict[tuple[str, int], Figure] = {}
    for direction in DIRECTIONS:
        for size in sizes:
            if args.load == "search":
                figure = figures[direction, size] = searched(topo, direction, size, args)
            else:
                figure = figures[direction, size] = runs(topo, direction, size, args, args.offered)
            offered = figure.runs[0].offered
            print(
                f"#   {direction} {size} B: {figure.pps:,.0f} packets/s, {figure.mbps:.1f} Mbit/s, "
                f"loss {figure.loss:.2%} at -b {offered}",
                file=sys.stderr,
                flush=True,
            )
    return figures


def runs(
    topo: Topology, direction: str, size: int, args: argparse.Namespace, offered: str
) -> Figure:
    figure = Figure()
    for _ in range(args.runs):
        figure.runs.append(iperf3(topo, direction, size, args, offered))
        time.sleep(SETTLE)
    return figure


def searched(topo: Topology, direction: str, size: int, args: argparse.Namespace) -> Figure:
    """``--runs`` runs at the load :func:`search` finds, 10% lower while their median loss
    is still 1% or more (a single probe of the search can be lucky)."""
    offered = int(search(topo, direction, size, args))
    for _ in range(RETRIES):
        figure = runs(topo, direction, size, args, str(offered))
        if figure.loss < MAX_LOSS:
            break
        offered = int(offered * (1 - STEP))
    return figure


def search(topo: Topology, direction: str, size: int, args: argparse.Namespace) -> str:
    """The highest offered load (iperf3 ``-b``) found with less than ``MAX_LOSS`` lost.

    Starts from what arrives at a saturating load, then steps up while the loss stays
    under the bound, or down until it does, by ``STEP`` each time.
    """

    def bits(pps: float) -> str:
        return str(max(int(pps * size * 8), 8 * size))

    def ok(pps: float) -> bool:
        run = iperf3(topo, direction, size, args, bits(pps))
        time.sleep(SETTLE)
        return run.loss < MAX_LOSS

    rate = iperf3(topo, direction, size, args).pps
    time.sleep(SETTLE)
    if ok(rate):
        for _ in range(SEARCH_STEPS):
            if not ok(rate * (1 + STEP)):
                break
            rate *= 1 + STEP
    else:
        for _ in range(SEARCH_STEPS):
            rate *= 1 - STEP
            if ok(rate):
                break
    return bits(rate)


# ---------------------------------------------------------------------------
# Output


def reference_of(results: Results) -> str:
    """The set-up the others are divided by: charon on the kernel's ESP when measured."""
    return "charon-kernel" if "charon-kernel" in results else "charon"


def print_table(
    args: argparse.Namespace, sizes: list[int], results: Results, notes: list[str]
) -> None:
    if args.load == "search":
        how = "at the highest offered load found with <1% loss"
    elif args.offered == "0":
        how = "at a saturating offered load (-b 0)"
    else:
        how = f"at an offered load of -b {args.offered}"
    print(
        f"UDP through the tunnel, ESP {args.esp} in UDP, IKE {args.ike}, iperf3: delivered "
        f"rate at the receiver {how}, median of {args.runs} x {args.seconds:g} s"
    )
    names = list(results)
    ref = reference_of(results)
    header = f"{'direction':<9} {'payload':>7}"
    for name in names:
        header += f" | {name + ' pps':>15} {'Mbit/s':>8}"
    others = [n for n in names if n != ref]
    if ref in results:
        for name in others:
            header += f" | {name + '/' + ref:>24}"
    print(header)
    print("-" * len(header))
    for direction in DIRECTIONS:
        for size in sizes:
            line = f"{direction:<9} {size:>6}B"
            for name in names:
                fig = results[name][direction, size]
                line += f" | {fig.pps:>15,.0f} {fig.mbps:>8.1f}"
            if ref in results:
                reference = results[ref][direction, size].pps
                for name in others:
                    ratio = results[name][direction, size].pps / reference if reference else 0.0
                    line += f" | {ratio:>24.2f}"
            print(line)
    for name in names:
        print(f"  {name}: {SCENARIOS[name]}")
    print(
        "  medians of offered packets/s / loss / gateway process CPU in cores / "
        "gateway CPU per delivered packet in us:"
    )
    for name in names:
        offered_line = ", ".join(
            f"{d} {s}B {fig.offered_pps:,.0f}/{fig.loss:.1%}/{fig.gateway_cpu:.2f}/"
            f"{fig.gateway_us:.1f}"
            for d in DIRECTIONS
            for s in sizes
            if (fig := results[name][d, s])
        )
        print(f"    {name}: {offered_line}")
    for note in notes:
        print(f"  note: {note}")


def write_json(
    file: Path, args: argparse.Namespace, sizes: list[int], results: Results, notes: list[str]
) -> None:
    data: dict[str, Any] = {
        "esp": args.esp,
        "ike": args.ike,
        "load": args.load,
        "offered": args.offered,
        "seconds": args.seconds,
        "runs": args.runs,
        "sizes": sizes,
        "measure": (
            "delivered rate at the receiver, median, at the highest offered load found with "
            "<1% loss"
            if args.load == "search"
            else "delivered rate at the receiver under the offered load, median"
        ),
        "scenarios": {name: SCENARIOS[name] for name in results},
        "results": {
            name: {f"{d} {s}": fig.to_json() for (d, s), fig in figs.items()}
            for name, figs in results.items()
        },
        "notes": notes,
    }
    ref = reference_of(results)
    if ref in results:
        data["reference"] = ref
        data["ratio_to_charon"] = {
            name: {
                f"{d} {s}": round(fig.pps / pps, 3) if (pps := results[ref][d, s].pps) else None
                for (d, s), fig in figs.items()
            }
            for name, figs in results.items()
            if name != ref
        }
    file.write_text(json.dumps(data, indent=2) + "\n")


def _ratio(ours: float, reference: float) -> float | None:
    return round(ours / reference, 3) if reference else None


# ---------------------------------------------------------------------------
# Profile


def profile(workdir: Path, args: argparse.Namespace, size: int) -> None:
    """charon MN -- mpa-gateway again, the gateway under a profiler, both directions."""
    workdir.mkdir(parents=True)
    output = workdir / "gateway.prof"
    use_pyinstrument = _has_module("pyinstrument")
    if use_pyinstrument:
        profiler = ["-m", "pyinstrument", "-r", "text", "-o", str(output)]
    else:
        profiler = ["-m", "cProfile", "-o", str(output)]
    ca_file = workdir / "ca.pem"
    with topology() as topo, contextlib.ExitStack() as stack:
        stack.enter_context(mpa_gateway(topo, workdir, args, ca_file, profiler))
        topo.inner = stack.enter_context(charon_mobile(topo, workdir, args, ca_file))
        stack.enter_context(iperf3_server(topo))
        check_traffic(topo)
        for direction in DIRECTIONS:
            run = iperf3(topo, direction, size, args)
            print(f"# profiled {direction} {size} B: {run.pps:,.0f} packets/s", file=sys.stderr)
    tool = "pyinstrument" if use_pyinstrument else "cProfile"
    print(f"\nmpa-gateway under {tool}, {size}-byte payloads, lan->mn then mn->lan:")
    if not output.exists():
        print("  (no profile written)")
        return
    if use_pyinstrument:
        print(output.read_text())
        return
    for sort in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(str(output), stream=text)
        stats.strip_dirs().sort_stats(sort).print_stats(args.top)
        print(f"-- top {args.top} by {sort}")
        print(_stats_body(text.getvalue()))


def _stats_body(text: str) -> str:
    """The table of a pstats report, without its preamble."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("ncalls"):
            return "\n".join(lines[i:]).rstrip()
    return text.rstrip()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def daemon(
    module: str, config: Path, ns: Any, socket: Path, profiler: list[str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m module run -c config`` in ``ns`` until its control socket answers."""
    argv = ns.exec_args(daemon_process.command(module, config, profiler or ()))
    with daemon_process.running(argv, socket, config.parent / f"{module}.log") as process:
        yield process


def _write(file: Path, data: dict[str, Any]) -> Path:
    file.write_text(yaml.safe_dump(data))
    return file


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
