"""``mpa-bench connect``: time from ``connect`` to CHILD SA established (not a timed test).

Three set-ups in network namespaces on one veth link (as root, with charon installed,
from a repository checkout: the charon harness lives in ``tests/harness``), measured in
the same run with the same proposals, EAP method and gateway key type:

- mpa-mobile -> charon: the ``connect`` command on mpa-mobile's control socket, from
  the request to its answer (the daemon answers when the CHILD SA is established);
- mpa-mobile -> mpa-gateway: the same against our gateway;
- charon -> charon: ``swanctl --initiate`` (it returns when the CHILD SA is up), raw and
  less the median of ``swanctl --stats`` (process start and a vici round trip).

Beside each, the same connections on the wire (tcpdump on the initiator's link): from
the first IKE_SA_INIT request to the last IKE_AUTH response, a figure independent of
how each program is commanded. Each figure is the median of ``--runs`` connections
after one warm-up; the SAs are deleted between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from mpa_harness import daemon
from mpa_ike.constants import ExchangeType
from mpa_ike.node.control_client import call
from mpa_ike.wire import HEADER_LENGTH, parse_header

METHODS = ("eap-md5", "eap-mschapv2")
KEY_TYPES = ("rsa", "ecdsa")
ESP = "aes128-sha256"
DAEMON_START = 20.0
Timings = tuple[list[float], list[float]]  # (command, wire) in seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpa-bench connect", description="Time from connect to CHILD SA established."
    )
    parser.add_argument("--runs", type=int, default=7, help="connections per set-up (7)")
    parser.add_argument("--method", choices=METHODS, default="eap-mschapv2")
    parser.add_argument("--ike", default="aes128-sha256-modp2048", help="IKE proposal")
    parser.add_argument("--key", choices=KEY_TYPES, default="rsa", help="gateway key type")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    from mpa_harness.charon import charon_available

    reason = charon_available()
    if reason is not None:
        print(f"mpa-bench connect: {reason}", file=sys.stderr)
        return 1
    figures: dict[str, Timings] = {}
    workdir = Path(tempfile.mkdtemp(prefix="mpa-bench-", dir="/tmp"))
    try:
        figures["charon -> charon (swanctl)"], baseline = charon_to_charon(workdir / "cc", args)
        figures["mpa-mobile -> charon"] = mobile_to(workdir / "mc", args, charon_gateway=True)
        figures["mpa-mobile -> mpa-gateway"] = mobile_to(workdir / "mg", args, charon_gateway=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(args, figures, baseline)
    return 0


def print_table(args: argparse.Namespace, figures: dict[str, Timings], baseline: float) -> None:
    print(
        f"connect to CHILD SA established, {args.method}, IKE {args.ike}, ESP {ESP}, "
        f"{args.key} gateway certificate, median of {args.runs} (ms)"
    )
    print(f"{'set-up':<28} {'command':>8} {'min':>7} {'max':>7} {'wire':>7} {'min':>7} {'max':>7}")
    for name, (command, wire) in figures.items():
        print(f"{name:<28} {_stats(command)} {_stats(wire)}")
        if name.startswith("charon -> charon"):
            adjusted = (statistics.median(command) - baseline) * 1000
            label = f"  less swanctl start ({baseline * 1000:.1f})"
            print(f"{label:<28} {adjusted:8.1f}")


def _stats(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>7} {'-':>7}"
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):8.1f} {min(ms):7.1f} {max(ms):7.1f}"


# ---------------------------------------------------------------------------
# Set-ups


def charon_to_charon(workdir: Path, args: argparse.Namespace) -> tuple[Timings, float]:
    from mpa_harness.scenarios import CHILD, CONN, Scenario, charon_pair

    sc = Scenario(args.method, ike_proposal=args.ike, esp_proposal=ESP, gateway_key=args.key)
    with charon_pair(sc, workdir) as pair:
        baseline = statistics.median(
            _timed(lambda: pair.initiator.swanctl("--stats")) for _ in range(args.runs)
        )

        def once() -> float:
            took = _timed(lambda: pair.initiator.initiate(CHILD, timeout=5))
            pair.initiator.terminate(ike=CONN, timeout=5)
            pair.responder.wait_for(lambda sas: not sas)
            return took

        return _runs(once, args.runs, pair.hosts), baseline


def mobile_to(workdir: Path, args: argparse.Namespace, *, charon_gateway: bool) -> Timings:
    from mpa_harness.netns import two_hosts

    workdir.mkdir(parents=True)
    with two_hosts() as hosts, contextlib.ExitStack() as stack:
        gw_ip = hosts.link.b.addr(4)
        ca_file = workdir / "ca.pem"
        if charon_gateway:
            peer_empty = stack.enter_context(_charon_gateway(hosts, workdir, args, ca_file))
        else:
            peer_empty = stack.enter_context(_our_gateway(hosts, workdir, args, ca_file))
        config = _mobile_config(workdir, gw_ip, args, ca_file)
        socket = stack.enter_context(_daemon("mobile.cli", config, hosts.left.name))

        def once() -> float:
            took = _timed(lambda: call(socket, "connect", {"name": "gw"}))
            call(socket, "disconnect", {"name": "gw"})
            _wait(peer_empty)
            return took

        return _runs(once, args.runs, hosts)


@contextlib.contextmanager
def _charon_gateway(
    hosts: Any, workdir: Path, args: argparse.Namespace, ca_file: Path
) -> Iterator[Callable[[], bool]]:
    from mpa_harness.charon import Charon
    from mpa_harness.pki import make_ca, make_cert
    from mpa_harness.scenarios import GATEWAY_ID, PROTECTED_ADDR, Scenario, responder_config

    sc = Scenario(args.method, ike_proposal=args.ike, esp_proposal=ESP, gateway_key=args.key)
    hosts.right.add_addr("lo", f"{PROTECTED_ADDR}/32")
    gw_ip = hosts.link.b.addr(4)
    with Charon(hosts.right, workdir / "charon") as charon:
        ca = make_ca(key_type=args.key)
        cert = charon.add_cert(make_cert(ca, GATEWAY_ID, args.key, san_ip=[gw_ip]), "gw")
        ca.write(ca_file)
        charon.configure(responder_config(sc, gw_ip, cert))
        charon.start()
        charon.load()
        yield lambda: not charon.list_sas()


@contextlib.contextmanager
def _our_gateway(
    hosts: Any, workdir: Path, args: argparse.Namespace, ca_file: Path
) -> Iterator[Callable[[], bool]]:
    from mpa_harness.pki import make_ca, make_cert
    from mpa_harness.scenarios import EAP_PASSWORD, EAP_USER, GATEWAY_ID, POOL, PROTECTED_NET

    gw_ip = hosts.link.b.addr(4)
    ca = make_ca(key_type=args.key)
    make_cert(ca, GATEWAY_ID, args.key, san_ip=[gw_ip]).write(
        workdir / "gw.pem", workdir / "gw.key"
    )
    ca.write(ca_file)
    config = _write(
        workdir / "gateway.yaml",
        {
            "listen": [gw_ip],
            "id": GATEWAY_ID,
            "certificate": "gw.pem",
            "private_key": "gw.key",
            "ike": [args.ike],
            "esp": [ESP],
            "pool": [POOL],
            "local_ts": [PROTECTED_NET],
            "eap": {"method": args.method.removeprefix("eap-"), "users": {EAP_USER: EAP_PASSWORD}},
            "control_socket": "gw.sock",
            "leases": "leases.sqlite3",
        },
    )
    with _daemon("gateway.cli", config, hosts.right.name) as socket:
        _wait(lambda: bool(call(socket, "status").get("listening")))
        yield lambda: not call(socket, "status")["ike_sas"]


def _mobile_config(workdir: Path, gw_ip: str, args: argparse.Namespace, ca_file: Path) -> Path:
    from mpa_harness.scenarios import (
        CLIENT_ID,
        EAP_PASSWORD,
        EAP_USER,
        GATEWAY_ID,
        PROTECTED_NET,
    )

    method = args.method.removeprefix("eap-")
    return _write(
        workdir / "mobile.yaml",
        {
            "identity": CLIENT_ID,
            "eap": {"method": method, "password": EAP_PASSWORD, "identity": EAP_USER},
            "control_socket": "mn.sock",
            "gateways": {
                "gw": {
                    "address": gw_ip,
                    "id": GATEWAY_ID,
                    "ca": str(ca_file),
                    "ike": [args.ike],
                    "esp": [ESP],
                    "remote_ts": [PROTECTED_NET],
                }
            },
        },
    )


# ---------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _daemon(module: str, config: Path, netns: str) -> Iterator[Path]:
    """``python -m module run -c config`` in ``netns``; yields its control socket."""
    socket = config.parent / ("gw.sock" if module == "gateway.cli" else "mn.sock")
    argv = ["ip", "netns", "exec", netns, *daemon.command(module, config)]
    with daemon.running(argv, socket, config.parent / f"{module}.log"):
        yield socket


def _write(file: Path, data: dict[str, Any]) -> Path:
    file.write_text(yaml.safe_dump(data))
    return file


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _runs(once: Callable[[], float], runs: int, hosts: Any) -> Timings:
    """The command times of ``runs`` connections after a warm-up, and their wire times."""
    from mpa_harness.pcap import capture

    once()  # warm-up: first sockets, imports, caches
    file = Path(tempfile.mkdtemp(prefix="mpa-bench-cap-", dir="/tmp")) / "connect.pcap"
    try:
        with capture(hosts.left, hosts.link.a.dev, file, "udp port 500 or udp port 4500"):
            command = [once() for _ in range(runs)]
        return command, wire_times(file)
    finally:
        shutil.rmtree(file.parent, ignore_errors=True)


def wire_times(file: Path) -> list[float]:
    """Per IKE SA: first IKE_SA_INIT request to last IKE_AUTH response, in start order."""
    from mpa_harness.pcap import classify, read_udp

    starts: dict[bytes, float] = {}
    ends: dict[bytes, float] = {}
    for datagram in read_udp(file):
        kind, data, _ = classify(datagram)
        if kind != "ike" or len(data) < HEADER_LENGTH:
            continue
        header = parse_header(data)
        if header.exchange_type == ExchangeType.IKE_SA_INIT and not header.is_response:
            starts.setdefault(header.spi_i, datagram.time)
        elif header.exchange_type == ExchangeType.IKE_AUTH and header.is_response:
            ends[header.spi_i] = datagram.time
    ordered = sorted(starts.items(), key=lambda item: item[1])
    return [ends[spi] - start for spi, start in ordered if spi in ends]


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the peer did not settle in time")
        time.sleep(0.01)
