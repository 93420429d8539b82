"""The MPA handover topology in network namespaces.

::

                        cn
                        |  cn-core          (10.0.9.0/24, fd00:ff:9::/64)
                       core
        ara-core /      |  ngw-core  \\ gwc-core
               ara     ngw --- aaa   gwc     (10.0.{1,2,3}.0/24, fd00:ff:{1,2,3}::/64)
      network A |       | network B   | network C     aaa: 10.0.10.0/24, fd00:ff:10::/64
                 \\      |            /
                  mn-a  mn-b       mn-c      (10.{1,2,3}.0.0/24, fd00:{1,2,3}::/64)
                           mn

The mobile node (``mn``) has one interface per access network; ``ara`` is the access
router of A, ``ngw`` the gateway and access router of B, ``gwc`` a second candidate
gateway on C, ``core`` joins them, and ``cn`` (the correspondent) sits behind ``core``.
``aaa`` is the nGW's AAA server's host (FreeRADIUS, when a benchmark runs one), on a
link of its own behind ``ngw`` (link ``aaa``), so that its delay is the AAA path's only.
Each gateway's address pool is the upper half of its network (``POOLS``); ``core``
routes each access network, pool included, to its router. ``family="split"`` makes A
IPv4-only and B IPv6-only; core links always carry both families. Only these
namespaces ever see the addresses.

Every link has ends ``a`` and ``b`` with ``a`` on the mobile node's side, so ``a2b`` is
uplink. A link is a veth pair, or emulated by ``linkemu`` (delay, jitter, loss, rate).
``Testbed.link(name).set_down()`` is the layer-2 event: an emulated link carries no
frames and drops the carrier of its ``a`` end, the mobile node's (interfaces stay UP
with their addresses), while the router's end keeps its carrier as an access point's
port does when a station leaves; a veth link has its ``b`` end set administratively
down, which the ``a`` end sees as NO-CARRIER. Networks B and C
start down, the mobile node being attached to A.

Namespaces are named ``<prefix>-<node>`` with a fresh prefix per testbed, so runs never
collide; ``teardown(prefix)`` removes everything of a prefix even after a crash.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mpa_testbed.linkemu import Carrier, Control, EmulatorProcess, Impairment, LinkSpec
from mpa_testbed.probe import ProbeFlow

if TYPE_CHECKING:
    from mpa_testbed.programs import MpaPrograms

NODES = ("mn", "ara", "ngw", "gwc", "core", "cn", "aaa")
ROUTERS = ("ara", "ngw", "gwc", "core")
PREFIX_RE = re.compile(r"^tb[0-9a-f]{6}$")
REALTIME_PRIORITY = 10  # SCHED_FIFO priority of the probe flow (the emulator's too)
STATION_END: Carrier = "a"  # the end that loses carrier when a link goes down (the MN's)

Family = Literal["dual", "split"]


@dataclass(frozen=True)
class LinkPlan:
    """A link of the topology: ends (node, device, host number) and its subnets."""

    name: str
    a: str
    a_dev: str
    a_host: int | None
    b: str
    b_dev: str
    b_host: int | None
    v4: str | None
    v6: str | None

    def ends(self) -> tuple[tuple[str, str, int | None], tuple[str, str, int | None]]:
        return (self.a, self.a_dev, self.a_host), (self.b, self.b_dev, self.b_host)


def _core_link(router: str, n: int) -> LinkPlan:
    return LinkPlan(
        f"{router}-core", router, f"{router}-core", 2, "core", f"core-{router}", 1,
        f"10.0.{n}.0/24", f"fd00:ff:{n}::/64",
    )  # fmt: skip


_LINKS = (
    LinkPlan("a", "mn", "mn-a", 100, "ara", "ara-a", 1, "10.1.0.0/24", "fd00:1::/64"),
    LinkPlan("b", "mn", "mn-b", None, "ngw", "ngw-b", 1, "10.2.0.0/24", "fd00:2::/64"),
    LinkPlan("c", "mn", "mn-c", None, "gwc", "gwc-c", 1, "10.3.0.0/24", "fd00:3::/64"),
    _core_link("ara", 1),
    _core_link("ngw", 2),
    _core_link("gwc", 3),
    LinkPlan("cn-core", "core", "core-cn", 1, "cn", "cn-core", 2, "10.0.9.0/24", "fd00:ff:9::/64"),
    LinkPlan("aaa", "ngw", "ngw-aaa", 1, "aaa", "aaa-ngw", 2, "10.0.10.0/24", "fd00:ff:10::/64"),
)
LINK_NAMES = tuple(plan.name for plan in _LINKS)

POOLS: dict[str, tuple[str, str]] = {
    "ngw": ("10.2.0.128/25", "fd00:2::1:0/112"),
    "gwc": ("10.3.0.128/25", "fd00:3::1:0/112"),
}


@dataclass
class LinkConf:
    """How one link is built: veth, or emulated with per-direction impairments."""

    emulated: bool = False
    a2b: Impairment = field(default_factory=Impairment)
    b2a: Impairment = field(default_factory=Impairment)
    up: bool = True


def _default_links() -> dict[str, LinkConf]:
    """Veth pairs, but the candidate networks' access links are emulated (without
    impairment): their going down is a carrier loss that leaves the gateway's interface
    up, as at a real access point. An administratively down veth end would take the
    gateway's IPv6 addresses with it, and the gateway listens on them."""
    links = {name: LinkConf() for name in LINK_NAMES}
    links["b"].up = links["c"].up = False
    links["b"].emulated = links["c"].emulated = True
    return links


@dataclass
class TestbedSpec:
    """What to build. ``emulate`` switches links to ``linkemu`` with impairments."""

    __test__ = False  # not a pytest test class, whatever its name

    family: Family = "dual"
    links: dict[str, LinkConf] = field(default_factory=_default_links)
    prefix: str | None = None
    seed: int = 1
    realtime: bool = False  # run the link emulator under SCHED_FIFO

    def emulate(self, *names: str, direction: str = "both", **impairment: Any) -> TestbedSpec:
        """Emulate ``names`` (all links when none), e.g. ``emulate("a", delay="10ms")``."""
        for name in names or LINK_NAMES:
            conf = self.links[name]
            conf.emulated = True
            if direction in ("a2b", "both"):
                conf.a2b = conf.a2b.updated(**impairment)
            if direction in ("b2a", "both"):
                conf.b2a = conf.b2a.updated(**impairment)
        return self

    def families(self, link: str) -> tuple[int, ...]:
        if self.family == "split" and link == "a":
            return (4,)
        if self.family == "split" and link == "b":
            return (6,)
        return (4, 6)


def state_dir() -> Path:
    """Where running testbeds leave their state (for ``status`` and crash cleanup)."""
    for base in (Path("/run/mpa-testbed"), Path(tempfile.gettempdir()) / "mpa-testbed"):
        with contextlib.suppress(OSError):
            base.mkdir(parents=True, exist_ok=True)
            if os.access(base, os.W_OK):
                return base
    raise OSError("no writable state directory for the testbed")


def new_prefix() -> str:
    return f"tb{secrets.token_hex(3)}"


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0, input: str = "") -> str:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False, input=input
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


def _host(subnet: str, host: int) -> str:
    net = ipaddress.ip_network(subnet)
    return f"{net.network_address + host}/{net.prefixlen}"


class TestbedLink:
    """Run-time control of one link: the layer-2 handover and, if emulated, impairments."""

    __test__ = False

    def __init__(self, bed: Testbed, plan: LinkPlan, conf: LinkConf) -> None:
        self.bed = bed
        self.plan = plan
        self.conf = conf

    @property
    def name(self) -> str:
        return self.plan.name

    def _control(self) -> Control:
        if not self.conf.emulated or self.bed.control is None:
            raise ValueError(f"link {self.name} is a veth pair, not emulated")
        return self.bed.control

    def set_down(self, carrier: Carrier = STATION_END) -> None:
        """Layer-2 down: no frames and the carrier off at ``carrier`` (emulated), or the
        ``b`` end administratively down (veth).

        The router's end keeps its carrier by default: a carrier coming back there is
        handled by the kernel's linkwatch, which may run after the first frames of the
        mobile node arrived and then drop the router's answers (an ARP reply lost is a
        second's wait)."""
        if self.conf.emulated:
            self._control().set_down(self.name, carrier)
        else:
            self.bed.ip(self.plan.b, "link", "set", "dev", self.plan.b_dev, "down")

    def set_up(self) -> None:
        if self.conf.emulated:
            self._control().set_up(self.name)
        else:
            self.bed.ip(self.plan.b, "link", "set", "dev", self.plan.b_dev, "up")

    def configure(self, direction: Literal["a2b", "b2a", "both"] = "both", **imp: Any) -> None:
        """Change delay, jitter, loss, rate or queue of an emulated link at run time."""
        self._control().configure(self.name, direction, **imp)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._control().stats()[self.name]
        return stats


class Testbed:
    """The topology of ``TestbedSpec``: ``with Testbed(spec) as bed: ...`` or ``up()/down()``."""

    __test__ = False

    def __init__(self, spec: TestbedSpec | None = None) -> None:
        self.spec = spec or TestbedSpec()
        self.prefix = self.spec.prefix or new_prefix()
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix must look like tb + 6 hex digits: {self.prefix}")
        self.emulator: EmulatorProcess | None = None
        self.control: Control | None = None
        self.processes: list[subprocess.Popen[bytes]] = []
        self._links = {p.name: TestbedLink(self, p, self.spec.links[p.name]) for p in _LINKS}

    # naming and addresses

    def ns(self, node: str) -> str:
        """The namespace name of ``node`` (one of ``NODES``)."""
        if node not in NODES:
            raise KeyError(f"no node {node!r}; nodes are {NODES}")
        return f"{self.prefix}-{node}"

    def link(self, name: str) -> TestbedLink:
        return self._links[name]

    def addresses(self, node: str) -> dict[str, list[str]]:
        """Planned addresses of ``node`` per device, in CIDR form."""
        result: dict[str, list[str]] = {}
        for plan in _LINKS:
            for end, dev, host in plan.ends():
                if end != node:
                    continue
                cidrs = result.setdefault(dev, [])
                if host is None:
                    continue
                for family, subnet in ((4, plan.v4), (6, plan.v6)):
                    if subnet and family in self.spec.families(plan.name):
                        cidrs.append(_host(subnet, host))
        return result

    def addr(self, node: str, dev: str | None = None, version: int = 4) -> str:
        """An address of ``node`` (on ``dev``, else its first) without prefix length.

        ``addr("ngw", "ngw-core")`` is the gateway's address seen from network A.
        """
        for name, cidrs in self.addresses(node).items():
            if dev is not None and name != dev:
                continue
            for cidr in cidrs:
                iface = ipaddress.ip_interface(cidr)
                if iface.version == version:
                    return str(iface.ip)
        raise LookupError(f"no IPv{version} address on {node} {dev or ''}")

    def pool(self, gateway: str, version: int = 4) -> str:
        """The address pool of ``ngw`` or ``gwc``: the upper part of its access network."""
        return POOLS[gateway][0 if version == 4 else 1]

    # running things

    def exec(
        self, node: str, cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside ``node`` and wait; raise with its stderr on failure."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, list(cmd), proc.stdout, proc.stderr
            )
        return proc

    def popen(self, node: str, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside ``node``; it is killed by ``down``."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(node), *cmd], **kwargs
        )
        self.processes.append(proc)
        return proc

    def ip(self, node: str, *args: str) -> str:
        return _run(["ip", "-n", self.ns(node), *args])

    def probe(self, src: str, dst: str, target: str, **options: Any) -> ProbeFlow:
        """A probe flow from ``src`` to a reflector in ``dst`` listening on ``target``.

        Not started: call ``start()``, then ``wait()`` or ``stop()`` for the ``FlowLog``.
        With ``spec.realtime`` both ends run under SCHED_FIFO, as the link emulator does:
        the instrument keeps its timing on a loaded machine.
        """
        rt = ["chrt", "-f", str(REALTIME_PRIORITY)] if self.spec.realtime else []
        return ProbeFlow(
            [*rt, "ip", "netns", "exec", self.ns(src)],
            [*rt, "ip", "netns", "exec", self.ns(dst)],
            target,
            **options,
        )

    def handover(self, old: str = "a", new: str = "b", *, pause: float = 0.0) -> float:
        """The layer-2 handover: ``old`` goes down, ``pause`` seconds later ``new`` comes up.

        Returns the monotonic time of the down event, the origin of a handover timeline
        (all namespaces share the clock the probe uses).
        """
        return self.switch(old, new, pause=pause)[0]

    def switch(self, old: str = "a", new: str = "b", *, pause: float = 0.0) -> tuple[float, float]:
        """:meth:`handover`, with the monotonic times of both events: ``old`` down,
        ``new``'s carrier on.

        Two emulated links with no pause switch in one request to the emulator, which
        reports when it cut one and raised the other: no control round trip of this
        process (a millisecond or more on a busy machine) lies between the two, nor
        between the request and the time taken as the down event's.
        """
        down, up = self.link(old), self.link(new)
        control = self.control
        if not pause and down.conf.emulated and up.conf.emulated and control is not None:
            return control.switch(old, new, carrier=STATION_END)
        t_down = time.monotonic()
        down.set_down()
        if pause:
            time.sleep(pause)
        up.set_up()
        return t_down, time.monotonic()

    def ping(self, src: str, target: str, count: int = 3) -> bool:
        """ICMP echo from ``src`` to ``target`` (IPv4 or IPv6): all answered?"""
        cmd = [sys.executable, "-m", "mpa_testbed.probe", "ping", target]
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(src), *cmd, "--count", str(count)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return proc.returncode == 0

    def start_programs(self, workdir: Path | None = None, **options: Any) -> MpaPrograms:
        """Start ``mpa-gateway`` in the gateways and ``mpa-mobile`` in ``mn``
        (:class:`mpa_testbed.programs.MpaPrograms` with ``options``); ``down`` stops them."""
        from mpa_testbed.programs import MpaPrograms

        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"mpa-{self.prefix}-"))
        return MpaPrograms(self, workdir, **options).start()

    # building and removing

    def up(self) -> Testbed:
        """Build everything; on any failure remove what was built and re-raise."""
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        for node in NODES:
            _run(["ip", "netns", "add", self.ns(node)])
        self._save_state()
        for node in NODES:
            self._sysctls(node)
        emulated: list[LinkSpec] = []
        for plan in _LINKS:
            conf = self.spec.links[plan.name]
            if conf.emulated:
                emulated.append(
                    LinkSpec(
                        plan.name,
                        self.ns(plan.a),
                        plan.a_dev,
                        self.ns(plan.b),
                        plan.b_dev,
                        conf.a2b,
                        conf.b2a,
                        seed=self.spec.seed,
                    )
                )
            else:
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        plan.a_dev,
                        "netns",
                        self.ns(plan.a),
                        "type",
                        "veth",
                        "peer",
                        plan.b_dev,
                        "netns",
                        self.ns(plan.b),
                    ]
                )
        if emulated:
            control = str(state_dir() / f"{self.prefix}.sock")
            self.emulator = EmulatorProcess(
                emulated,
                control,
                tap_prefix=self.prefix,
                tag=self.prefix,
                realtime=self.spec.realtime,
                detach=True,
                log_path=str(state_dir() / f"{self.prefix}.log"),
            )
            self.control = self.emulator.control
            self._save_state()
        for node in NODES:
            self._configure(node)
        for name, link in self._links.items():
            if not self.spec.links[name].up:
                link.set_down()

    def _sysctls(self, node: str) -> None:
        forward = "1" if node in ROUTERS else "0"
        settings = [
            f"net.ipv4.ip_forward={forward}",
            f"net.ipv6.conf.all.forwarding={forward}",
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            # Addresses are usable at once and survive a link going down.
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.keep_addr_on_down=1",
            "net.ipv6.conf.default.keep_addr_on_down=1",
        ]
        self.exec(node, ["sysctl", "-qw", *settings])

    def _configure(self, node: str) -> None:
        lines = ["link set dev lo up"]
        for dev, cidrs in self.addresses(node).items():
            lines.append(f"link set dev {dev} up")
            for cidr in cidrs:
                extra = " nodad" if ipaddress.ip_interface(cidr).version == 6 else ""
                lines.append(f"addr add {cidr} dev {dev}{extra}")
        for dest, via in self._routes(node):
            lines.append(f"route add {dest} via {via}")
        _run(["ip", "-n", self.ns(node), "-batch", "-"], input="\n".join(lines) + "\n")

    _UPSTREAM = {
        "mn": ("a", "b"),
        "ara": ("ara-core", "b"),
        "ngw": ("ngw-core", "b"),
        "gwc": ("gwc-core", "b"),
        "cn": ("cn-core", "a"),
        "aaa": ("aaa", "a"),
    }

    def _gateway(self, link: str, end: str, family: int) -> str:
        plan = self._links[link].plan
        host = plan.a_host if end == "a" else plan.b_host
        subnet = plan.v4 if family == 4 else plan.v6
        assert host is not None and subnet is not None
        return _host(subnet, host).split("/")[0]

    def _routes(self, node: str) -> list[tuple[str, str]]:
        """(destination, next hop): hosts and access routers default towards ``core``
        (the MN through ``ara``); ``core`` routes each access network, pool included, to
        its router."""
        if node in self._UPSTREAM:
            link, end = self._UPSTREAM[node]
            return [("default", self._gateway(link, end, f)) for f in self.spec.families(link)]
        routes: list[tuple[str, str]] = []
        for access, router in (("a", "ara"), ("b", "ngw"), ("c", "gwc")):
            plan = self._links[access].plan
            for family in self.spec.families(access):
                subnet = plan.v4 if family == 4 else plan.v6
                if subnet:
                    routes.append((subnet, self._gateway(f"{router}-core", "a", family)))
        return routes

    def _save_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "family": self.spec.family,
            "emulated": [n for n, c in self.spec.links.items() if c.emulated],
            "emulator_pid": self.emulator.pid if self.emulator else None,
            "control": self.control.path if self.control else None,
            "created": time.time(),
        }
        (state_dir() / f"{self.prefix}.json").write_text(json.dumps(state))

    def down(self) -> None:
        """Stop everything started here and remove every namespace of the prefix."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.emulator is not None:
            self.emulator.terminate()
            self.emulator = None
            self.control = None
        teardown(self.prefix)

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


# -- finding and removing testbeds by prefix ---------------------------------------------


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def running_prefixes() -> list[str]:
    """Prefixes with namespaces or state left, whoever started them."""
    found = {ns.split("-")[0] for ns in list_netns() if PREFIX_RE.match(ns.split("-")[0])}
    found |= {p.stem for p in state_dir().glob("tb*.json") if PREFIX_RE.match(p.stem)}
    return sorted(found)


def _emulator_pids(prefix: str) -> list[int]:
    """Link emulator processes started for ``prefix`` (their command line carries it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpa_testbed.linkemu" in argv and prefix.encode() in argv:
            pids.append(int(proc.name))
    return pids


def teardown(prefix: str) -> None:
    """Remove the namespaces, processes and emulator of ``prefix``, even after a crash."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"not a testbed prefix: {prefix}")
    for pid in _emulator_pids(prefix):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for ns in list_netns():
        if not ns.startswith(prefix + "-"):
            continue
        for word in _run(["ip", "netns", "pids", ns], check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(word), signal.SIGKILL)
        _run(["ip", "netns", "del", ns], check=False)
    deadline = time.monotonic() + 3
    while _emulator_pids(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _emulator_pids(prefix):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for suffix in (".json", ".sock", ".log"):
        with contextlib.suppress(FileNotFoundError):
            (state_dir() / f"{prefix}{suffix}").unlink()


def status() -> list[dict[str, Any]]:
    """What is running: prefix, namespaces, emulated links and whether the emulator lives."""
    result = []
    spaces = list_netns()
    for prefix in running_prefixes():
        state_file = state_dir() / f"{prefix}.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        result.append(
            {
                "prefix": prefix,
                "namespaces": [ns for ns in spaces if ns.startswith(prefix + "-")],
                "family": state.get("family"),
                "emulated": state.get("emulated", []),
                "emulator_pids": _emulator_pids(prefix),
                "control": state.get("control"),
            }
        )
    return result
