"""``mpa-bench setup-rate``: IKE SA set-up rate, CPU and memory of mpa-gateway and charon.

Both gateways in the same run, one after the other, each measured the same way, on the
same proposals (IKE with AES-GCM and x25519, ECDSA P-256 gateway certificate,
EAP-MSCHAPv2 with local users; ``--proposal modp2048-rsa``: MODP-2048 and an RSA-2048
certificate; ``x25519-ecdsa-cbc``: AES-CBC with HMAC-SHA-256 instead of AES-GCM):

- Two namespaces on one veth link: the gateway in one, ``--initiators`` processes of
  our own initiator code (:mod:`mpa_bench.setup_rate_worker`, the sans-I/O core over
  UDP) in the other, each on an address of its own, each with many IKE SAs at once.
- The gateway is pinned to ``--gateway-cpu`` (core 0), the initiators and this
  process to ``--initiator-cpus`` (core 1): affinity is inherited, so charon's threads
  are all on the gateway's core. Where they ran is printed and kept in the JSON.
- mpa-gateway: ``datapath: userspace`` (a TUN device, ESP in the process); charon: the
  kernel-libipsec plugin (ESP in the process too, over a TUN device), so that both keep
  their CHILD SAs in userspace, and each installs it where its traffic would go. The
  CHILD SAs carry nothing. Both with their denial-of-service guards out of the way
  (mpa-gateway's ``half_open_threshold``, charon's ``cookie_threshold`` and
  ``block_threshold``, the latter 5 half-open SAs per address by default); charon's
  IKE SA table sized for thousands (``ikesa_table_size``); logging: SA events only
  (mpa-gateway ``info``, charon level 0).
- Every IKE SA: IKE_SA_INIT, IKE_AUTH with EAP-MSCHAPv2 (the gateway's certificate,
  EAP-Identity, the MSCHAPv2 challenge, response and success, AUTH), CP for an IPv4
  address from a /16 pool, one CHILD SA; a user of its own (``u<N>``, each a local user
  of both gateways: mpa-gateway's ``eap.users``, EAP secrets in charon's swanctl.conf).

The phases, for each gateway:

1. warm-up: a few IKE SAs set up and deleted;
2. saturation: closed loop, ``--concurrency`` set-ups in flight per initiator, each
   IKE SA deleted as soon as it is up and another started; over ``--duration`` seconds
   after ``--warmup``: IKE SAs up per second, and the gateway's CPU seconds (utime +
   stime of ``/proc/PID/stat``, every thread) divided by them. The CPU per SA includes
   the DELETE exchange of each. The gateway's and the initiators' core usage are
   reported: a gateway far from 100 % means the initiators were the limit;
3. latency: open loop at half the saturation rate, evenly spaced, for
   ``--latency-duration`` seconds; p50 and p99 of the time from the scheduled start to
   the IKE_AUTH response that brings the CHILD SA, as the initiator sees it;
4. memory, last (a gateway still deleting thousands of IKE SAs would slow the phases
   after it): ``--hold`` IKE SAs (each with its CHILD SA) set up and kept; the
   gateway's RSS (``/proc/PID/status``) before and with them held, the growth divided
   by their number (Python's allocator may keep memory it freed, so this is what the
   machine pays); then all deleted;
5. mpa-gateway only (not with ``--no-traced``): the gateway started again under
   ``python -X tracemalloc``, ``--hold`` IKE SAs set up and kept, and the growth of
   what Python's allocator traces (the control socket's ``memory``) divided by their
   number: the objects an IKE SA keeps, without the free lists and arenas RSS counts.
   Tracing slows the gateway, so no other figure is taken from that run.

This machine's speed may change by tens of percent within minutes, and the gateways are
measured one after the other. So a fixed piece of Python work (:func:`reference_work`)
runs on the gateway's core before its saturation phase and after its latency phase;
its CPU milliseconds are reported, and the CPU per IKE SA divided by their mean: a
second opinion where the machine's speed changed between gateways or runs (the work is
a snapshot at two moments, not a gauge over the phases).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from mpa_bench.setup_rate_stats import (
    GatewayResult,
    Phase,
    cpu_seconds,
    kib_per_sa,
    report,
    result,
    run_queue_wait,
    table,
)
from mpa_bench.setup_rate_worker import SETUP_TIMEOUT

GATEWAYS = ("mpa-gateway", "charon")
REFERENCE_ROUNDS = 200_000  # of reference_work
PROPOSALS = {  # name -> (IKE proposal, gateway key type)
    "x25519-ecdsa": ("aes128gcm16-prfsha256-x25519", "ecdsa"),
    "x25519-ecdsa-cbc": ("aes128-sha256-x25519", "ecdsa"),
    "modp2048-rsa": ("aes128gcm16-prfsha256-modp2048", "rsa"),
}
ESP = "aes128-sha256"
GATEWAY_ID = "gw.setup-rate.mpa-ike.test"
DOMAIN = "setup-rate.mpa-ike.test"
PASSWORD = "Bench-p4ss"
POOL = "10.128.0.0/16"
PROTECTED_NET = "10.1.0.0/24"
PROTECTED_ADDR = "10.1.0.1"
LEFT, RIGHT = "192.0.2.1/24", "192.0.2.2/24"
NO_GUARD = 1_000_000  # half-open IKE SAs before cookies: never, for both gateways
CHARON_SETTINGS = {
    "cookie_threshold": NO_GUARD,
    "block_threshold": NO_GUARD,
    "ikesa_table_size": 4096,
}
WARM_UP_SAS = 4  # per initiator
ANSWER_TIMEOUT = 120.0  # for any one command of an initiator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpa-bench setup-rate",
        description="IKE SA set-up rate, CPU and memory per SA: mpa-gateway beside charon.",
    )
    parser.add_argument("--initiators", type=int, default=4, help="initiator processes (4)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="set-ups in flight per initiator (16)"
    )
    parser.add_argument(
        "--duration", type=float, default=12.0, help="saturation window, seconds (12)"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="before each window (3)")
    parser.add_argument(
        "--latency-duration", type=float, default=10.0, help="latency window, seconds (10)"
    )
    parser.add_argument("--hold", type=int, default=10_000, help="IKE SAs held for memory (10000)")
    parser.add_argument(
        "--no-traced",
        action="store_true",
        help="skip mpa-gateway's second memory phase under tracemalloc",
    )
    parser.add_argument(
        "--hold-time",
        type=float,
        default=40.0,
        help="no IKE SA started for the memory phase after this many seconds (40)",
    )
    parser.add_argument("--proposal", choices=sorted(PROPOSALS), default="x25519-ecdsa")
    parser.add_argument(
        "--gateways", default=",".join(GATEWAYS), help="which, in order (mpa-gateway,charon)"
    )
    parser.add_argument("--gateway-cpu", default="0", help="cores of the gateway (0)")
    parser.add_argument(
        "--initiator-cpus", default="1", help="cores of the initiators and of this process (1)"
    )
    parser.add_argument("--json", type=Path, help="write the figures there")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


@dataclass(frozen=True)
class Settings:
    """What every gateway's measurement is given."""

    initiators: int
    concurrency: int
    duration: float
    warmup: float
    latency_duration: float
    hold: int
    hold_time: float
    ike: str
    key: str
    gateway_cpus: frozenset[int]
    initiator_cpus: frozenset[int]
    traced: bool = True

    @property
    def block(self) -> int:
        """Users per initiator: its share of the held SAs, or enough for the loops."""
        return max(math.ceil(self.hold / self.initiators), 8 * self.concurrency) + self.concurrency

    @property
    def users(self) -> int:
        return self.block * self.initiators


def settings(args: argparse.Namespace) -> Settings:
    ike, key = PROPOSALS[args.proposal]
    return Settings(
        initiators=args.initiators,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        latency_duration=args.latency_duration,
        hold=args.hold,
        hold_time=args.hold_time,
        ike=ike,
        key=key,
        gateway_cpus=cpus(args.gateway_cpu),
        initiator_cpus=cpus(args.initiator_cpus),
        traced=not args.no_traced,
    )


def cpus(text: str) -> frozenset[int]:
    """``0`` or ``1,2`` or ``0-3``, limited to the cores this process may use."""
    wanted: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        wanted.update(range(int(low), int(high or low) + 1))
    usable = os.sched_getaffinity(0)
    if not wanted & usable:
        raise SystemExit(f"mpa-bench setup-rate: no usable core in {text} ({sorted(usable)})")
    return frozenset(wanted & usable)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    from mpa_harness.charon import charon_available, charon_version

    reason = charon_available()
    if reason is not None:
        print(f"mpa-bench setup-rate: {reason}", file=sys.stderr)
        return 1
    names = [name.strip() for name in args.gateways.split(",") if name.strip()]
    if unknown := set(names) - set(GATEWAYS):
        print(f"mpa-bench setup-rate: unknown gateways {sorted(unknown)}", file=sys.stderr)
        return 2
    setup = settings(args)
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, setup.initiator_cpus)
    workdir = Path(tempfile.mkdtemp(prefix="mpa-bench-rate-", dir="/tmp"))
    figures: dict[str, GatewayResult] = {}
    try:
        pki = make_pki(workdir, setup.key)
        for name in names:
            figures[name] = measure(name, setup, pki, workdir / name)
    finally:
        os.sched_setaffinity(0, home)
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    described = describe(setup, args.proposal, charon_version())
    print(headline(described))
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(report(figures, described), indent=2) + "\n")
    return 0


def describe(setup: Settings, proposal: str, charon: str) -> dict[str, Any]:
    return {
        "proposal": proposal,
        "ike": setup.ike,
        "esp": ESP,
        "gateway_key": setup.key,
        "eap": "mschapv2",
        "initiators": setup.initiators,
        "concurrency": setup.concurrency,
        "duration_s": setup.duration,
        "warmup_s": setup.warmup,
        "latency_duration_s": setup.latency_duration,
        "hold": setup.hold,
        "hold_time_s": setup.hold_time,
        "users": setup.users,
        "gateway_cpus": sorted(setup.gateway_cpus),
        "initiator_cpus": sorted(setup.initiator_cpus),
        "cores": os.cpu_count(),
        "charon": charon,
        "datapaths": {"mpa-gateway": "userspace", "charon": "kernel-libipsec"},
        "python": sys.version.split()[0],
        "load_average_at_start": os.getloadavg()[0],
    }


def headline(described: dict[str, Any]) -> str:
    return (
        f"IKE SA set-up: IKE {described['ike']}, ESP {described['esp']}, "
        f"{described['gateway_key']} gateway certificate, EAP-MSCHAPv2, CP, one CHILD SA; "
        f"{described['initiators']} initiators x {described['concurrency']} in flight; "
        f"gateway on cores {described['gateway_cpus']}, initiators on "
        f"{described['initiator_cpus']}; {described['charon']}"
    )


# ---------------------------------------------------------------------------
# One gateway


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Any  # mpa_harness.pki.Credential, made once for both gateways


def make_pki(workdir: Path, key: str) -> Pki:
    from mpa_harness.pki import make_ca, make_cert

    ca = make_ca(key_type=key)  # type: ignore[arg-type]
    ca.write(workdir / "ca.pem")
    cert = make_cert(ca, GATEWAY_ID, key, san_ip=[RIGHT.split("/")[0]])  # type: ignore[arg-type]
    return Pki(workdir / "ca.pem", cert)


def measure(name: str, setup: Settings, pki: Pki, workdir: Path) -> GatewayResult:
    from mpa_harness.netns import two_hosts

    workdir.mkdir(parents=True)
    say = progress(name)
    with two_hosts((LEFT,), (RIGHT,)) as hosts:
        hosts.right.add_addr("lo", f"{PROTECTED_ADDR}/32")
        for n in range(setup.initiators):
            hosts.left.add_addr(hosts.link.a.dev, f"192.0.2.{10 + n}/24")
        gateway_ip = RIGHT.split("/")[0]
        starter = start_mpa_gateway if name == "mpa-gateway" else start_charon
        with initiators(hosts.left.name, setup, pki, gateway_ip, workdir, say) as workers:
            say("starting the gateway")
            with (
                pinned(setup.gateway_cpus),
                starter(hosts.right, workdir, setup, pki, gateway_ip) as pid,
            ):
                say(f"gateway pid {pid} on cores {sorted(os.sched_getaffinity(pid))}")
                figures = phases(workers, pid, setup, say)
            if name == "mpa-gateway" and setup.traced:
                traced = workdir / "traced"
                traced.mkdir()
                say("memory traced: the gateway again, under -X tracemalloc")
                with (
                    pinned(setup.gateway_cpus),
                    start_mpa_gateway(hosts.right, traced, setup, pki, gateway_ip, traced=True),
                ):
                    figures.traced_kib_per_sa = traced_hold(workers, traced / "gw.sock", setup, say)
        return figures


def traced_hold(
    workers: Workers, socket: Path, setup: Settings, say: Callable[[str], None]
) -> float:
    """KiB that Python's allocator holds per IKE SA, ``--hold`` of them up (tracemalloc:
    what the objects take, without the allocator's free lists and arenas)."""
    from mpa_ike.node.control_client import call

    warm_up(workers)
    time.sleep(0.5)
    before = call(socket, "memory")["traced_kib"]
    held = hold(workers, setup, setup.hold_time * 3)
    time.sleep(1.0)
    with_them = call(socket, "memory")["traced_kib"]
    say(f"memory traced: {held['kept']} held, {before / 1024:.1f} -> {with_them / 1024:.1f} MiB")
    release(workers, setup)
    return kib_per_sa(before, with_them, held["kept"])


def warm_up(workers: Workers) -> int:
    """A few IKE SAs set up and deleted; how many failed."""
    warm = {"cmd": "hold", "count": WARM_UP_SAS, "concurrency": 2, "seconds": 10}
    failed: int = workers.command(warm)["failed"]
    workers.command({"cmd": "release"})
    return failed


def hold(workers: Workers, setup: Settings, seconds: float) -> dict[str, Any]:
    """``--hold`` IKE SAs up and kept, none started after ``seconds``."""
    command = {"cmd": "hold", "concurrency": setup.concurrency, "seconds": seconds}
    return workers.command(command, per_worker={"count": split(setup.hold, setup.initiators)})


def release(workers: Workers, setup: Settings) -> None:
    workers.command({"cmd": "release", "concurrency": 4 * setup.concurrency})


def reference_work() -> None:
    """Python's own kind of work (a loop, dictionary look-ups, small strings, some
    hashing), about 0.05-0.08 s on this machine."""
    table: dict[int, int] = {}
    total = 0
    for n in range(REFERENCE_ROUNDS):
        table[n & 1023] = n
        total += table.get(n & 511, 0) ^ len(str(n))
    for _ in range(REFERENCE_ROUNDS // 100):
        total += hashlib.sha256(total.to_bytes(32, "big")).digest()[0]


def reference_ms(cores: frozenset[int]) -> float:
    """CPU ms of :func:`reference_work` on ``cores`` (the least of three runs)."""
    with pinned(cores):
        runs = []
        for _ in range(3):
            started = time.thread_time()
            reference_work()
            runs.append((time.thread_time() - started) * 1000)
    return min(runs)


def phases(
    workers: Workers, pid: int, setup: Settings, say: Callable[[str], None]
) -> GatewayResult:
    say("warm-up")
    failed = warm_up(workers)
    reference_before = reference_ms(setup.gateway_cpus)
    say(f"saturation: closed loop, {setup.initiators} x {setup.concurrency} in flight")
    saturated = timed_phase(
        workers, pid, setup.warmup, setup.duration, {"mode": "closed"}, setup, say
    )
    failed += saturated.failed
    half = saturated.rate / 2
    say(f"saturation: {saturated.rate:.1f} IKE SAs/s; latency at {half:.1f}/s, open loop")
    latency = timed_phase(
        workers,
        pid,
        1.0,
        setup.latency_duration,
        {"mode": "open", "rate": max(half, 0.5) / setup.initiators},
        setup,
        say,
    )
    failed += latency.failed
    reference_after = reference_ms(setup.gateway_cpus)
    say(f"reference work: {reference_before:.1f} ms before, {reference_after:.1f} ms after")
    time.sleep(0.5)
    before = rss(pid)
    say(f"memory: holding {setup.hold} IKE SAs (RSS {before / 1024:.1f} MiB)")
    started = time.monotonic()
    answers = hold(workers, setup, setup.hold_time)
    hold_seconds = time.monotonic() - started
    failed += answers["failed"]
    held = answers["kept"]
    time.sleep(1.0)
    held_rss = rss(pid)
    say(
        f"memory: {held} held after {hold_seconds:.1f} s, RSS {held_rss / 1024:.1f} MiB; "
        "deleting them"
    )
    release(workers, setup)
    figures = result(saturated, latency, half, (before, held_rss, held), failed)
    figures.hold_seconds = hold_seconds
    figures.reference_ms = (reference_before, reference_after)
    return figures


def timed_phase(
    workers: Workers,
    pid: int,
    warmup: float,
    duration: float,
    mode: dict[str, Any],
    setup: Settings,
    say: Callable[[str], None],
) -> Phase:
    """One ``run`` of every initiator; the window is its last ``duration`` seconds."""
    start = time.monotonic() + 0.3
    window = (start + warmup, start + warmup + duration)
    command = {"cmd": "run", "start": start, "end": window[1], "keep": False, **mode}
    command["concurrency"] = setup.concurrency * (1 if mode["mode"] == "closed" else 8)
    phases_ = [n / setup.initiators for n in range(setup.initiators)]
    samples: list[tuple[float, float, float]] = []

    def sample_at(when: float) -> None:
        time.sleep(max(0.0, when - time.monotonic()))
        samples.append((cpu_of(pid), sum(cpu_of(w) for w in workers.pids), waited(pid)))

    def sample() -> None:
        for when in window:
            sample_at(when)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers = workers.command(command, per_worker={"phase": phases_}, lists=True)
    sampler.join(timeout=5)
    if len(samples) != 2:
        raise RuntimeError("the CPU samples were not taken")
    pairs = sorted(zip(answers["completions"], answers["latencies"], strict=True))
    inside = [(t, lat) for t, lat in pairs if window[0] <= t < window[1]]
    return Phase(
        start=window[0],
        end=window[1],
        completions=[t for t, _ in pairs],
        latencies=[lat for _, lat in inside],
        failed=answers["failed"],
        gateway_cpu=samples[1][0] - samples[0][0],
        initiator_cpu=samples[1][1] - samples[0][1],
        gateway_wait=samples[1][2] - samples[0][2],
    )


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by at most one."""
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


def cpu_of(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def waited(pid: int) -> float:
    texts = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            texts.append((task / "schedstat").read_text())
    return run_queue_wait(texts)


def rss(pid: int) -> int:
    from mpa_bench.setup_rate_stats import rss_kib

    return rss_kib(Path(f"/proc/{pid}/status").read_text())


def progress(name: str) -> Callable[[str], None]:
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {name}: {text}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def pinned(cores: frozenset[int]) -> Iterator[None]:
    """This process (and what it starts meanwhile, which inherits it) on ``cores``."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


# ---------------------------------------------------------------------------
# The gateways


@contextlib.contextmanager
def start_mpa_gateway(
    ns: Any, workdir: Path, setup: Settings, pki: Pki, gateway_ip: str, *, traced: bool = False
) -> Iterator[int]:
    from mpa_harness import daemon
    from mpa_ike.node.control_client import call

    pki.cert.write(workdir / "gw.pem", workdir / "gw.key")
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump(mpa_gateway_config(setup, gateway_ip)))
    python = ("-X", "tracemalloc") if traced else ()
    argv = ns.exec_args(daemon.command("gateway.cli", config, python))
    socket = workdir / "gw.sock"
    with daemon.running(argv, socket, workdir / "gateway.log") as process:
        deadline = time.monotonic() + 10
        while not call(socket, "status").get("listening"):
            if time.monotonic() > deadline:
                raise RuntimeError("mpa-gateway does not listen")
            time.sleep(0.05)
        yield process.pid


def mpa_gateway_config(setup: Settings, gateway_ip: str) -> dict[str, Any]:
    return {
        "listen": [gateway_ip],
        "id": GATEWAY_ID,
        "certificate": "gw.pem",
        "private_key": "gw.key",
        "ike": [setup.ike],
        "esp": [ESP],
        "pool": [POOL],
        "local_ts": [PROTECTED_NET],
        "eap": {"method": "mschapv2", "users": {f"u{n}": PASSWORD for n in range(setup.users)}},
        "datapath": "userspace",
        "half_open_threshold": NO_GUARD,
        # Nor a half-open cap, a per-source rate (each initiator process is one source
        # with many IKE SAs in flight) or a per-identity cap.
        "limits": {"half_open_limit": NO_GUARD, "init_rate": 0, "ike_sas_per_identity": 0},
        "control_socket": "gw.sock",
        "leases": "leases.sqlite3",
        "log_level": "info",
    }


@contextlib.contextmanager
def start_charon(
    ns: Any, workdir: Path, setup: Settings, pki: Pki, gateway_ip: str
) -> Iterator[int]:
    from mpa_harness.charon import Charon

    with Charon(ns, workdir, log_levels={"default": 0}, settings=CHARON_SETTINGS) as charon:
        cert = charon.add_cert(pki.cert, "gw")
        charon.configure(charon_config(setup, gateway_ip, cert))
        charon.start()
        charon.load()
        assert charon.proc is not None
        pid = charon.proc.pid
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        if comm != "charon":
            raise RuntimeError(f"process {pid} is {comm}, not charon")
        yield pid


def charon_config(setup: Settings, gateway_ip: str, cert: str) -> Any:
    from mpa_harness.charon import AuthRound, Child, Connection, Pool, Secret, SwanctlConfig

    conn = Connection(
        local_addrs=[gateway_ip],
        remote_addrs=["%any"],
        local=[AuthRound("pubkey", id=GATEWAY_ID, certs=[cert])],
        remote=[AuthRound("eap-mschapv2", id="%any", eap_id="%any")],
        children={"net": Child(local_ts=[PROTECTED_NET], esp_proposals=[ESP])},
        proposals=[setup.ike],
        pools=["pool4"],
    )
    return SwanctlConfig(
        connections={"rw": conn},
        secrets=[Secret("eap", PASSWORD, [f"u{n}"]) for n in range(setup.users)],
        pools={"pool4": Pool(POOL)},
    )


# ---------------------------------------------------------------------------
# The initiators


class Worker:
    """One initiator process; its answers (JSON lines) read by a thread of its own."""

    def __init__(self, argv: list[str], log: IO[bytes]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.progress = 0
        self.in_flight = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "progress" in message:
                self.progress, self.in_flight = message["progress"], message["in_flight"]
            else:
                self.answers.put(message)
        self.answers.put({"exited": self.process.wait()})

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any]:
        message = self.answers.get(timeout=timeout)
        if "exited" in message:
            raise RuntimeError(f"an initiator exited with {message['exited']}")
        return message

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send({"cmd": "quit"})
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Workers:
    """All initiator processes, given one command at once."""

    def __init__(self, workers: list[Worker], say: Callable[[str], None]) -> None:
        self.workers = workers
        self.say = say

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def command(
        self,
        command: dict[str, Any],
        per_worker: dict[str, list[Any]] | None = None,
        *,
        lists: bool = False,
    ) -> dict[str, Any]:
        """Send ``command`` (with each worker's own ``per_worker`` values) to all, wait
        for every answer, sum the counts (and join the lists when ``lists``)."""
        for n, worker in enumerate(self.workers):
            own = {key: values[n] for key, values in (per_worker or {}).items()}
            worker.send({**command, **own})
        answers = []
        deadline = time.monotonic() + ANSWER_TIMEOUT
        if command["cmd"] == "hold":
            deadline += command["seconds"] + SETUP_TIMEOUT
        last = 0.0
        for worker in self.workers:
            while True:
                try:
                    answers.append(worker.answer(timeout=1.0))
                    break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise RuntimeError("an initiator did not answer") from None
                if time.monotonic() - last >= 2:
                    last = time.monotonic()
                    up = sum(w.progress for w in self.workers)
                    busy = sum(w.in_flight for w in self.workers)
                    self.say(f"  {command['cmd']}: {up} IKE SAs up, {busy} in flight")
        merged: dict[str, Any] = {"completions": [], "latencies": []}
        for key in ("failed", "skipped", "deleted", "kept"):
            merged[key] = sum(a[key] for a in answers)
        if lists:
            for a in answers:
                merged["completions"] += a["completions"]
                merged["latencies"] += a["latencies"]
        return merged


@contextlib.contextmanager
def initiators(
    netns: str,
    setup: Settings,
    pki: Pki,
    gateway_ip: str,
    workdir: Path,
    say: Callable[[str], None],
) -> Iterator[Workers]:
    started: list[Worker] = []
    with open(workdir / "initiators.log", "wb") as log:
        try:
            with pinned(setup.initiator_cpus):
                for n in range(setup.initiators):
                    argv = [
                        "ip", "netns", "exec", netns, sys.executable, "-m",
                        "mpa_bench.setup_rate_worker",
                        "--local", f"192.0.2.{10 + n}",
                        "--gateway", gateway_ip,
                        "--gateway-id", GATEWAY_ID,
                        "--ca", str(pki.ca),
                        "--ike", setup.ike,
                        "--esp", ESP,
                        "--remote-ts", PROTECTED_NET,
                        "--domain", DOMAIN,
                        "--password", PASSWORD,
                        "--users", f"{n * setup.block}:{setup.block}",
                    ]  # fmt: skip
                    started.append(Worker(argv, log))
            for worker in started:
                worker.answer(timeout=30)  # ready
            say(f"{len(started)} initiators ready")
            yield Workers(started, say)
        finally:
            for worker in started:
                worker.stop()
