"""Network namespaces joined by veth pairs, driven through the ``ip`` command.

Every name carries a per-process tag (``TAG``) so parallel test runs never
collide; every object is created by a context manager that always removes it.
Interface names are limited to 15 characters by the kernel, hence the short tag.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

TAG = f"{os.getpid() % 0xFFFF:04x}{secrets.token_hex(1)}"
_counter = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A name unique to this process: ``<prefix><tag><n>``, at most 15 characters."""
    name = f"{prefix[:4]}{TAG}{next(_counter)}"
    if len(name) > 15:
        raise ValueError(f"name too long for an interface: {name}")
    return name


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a command on the host, capturing text output; raise with stderr on failure."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd), proc.stdout, proc.stderr)
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *args], check=check)


@dataclass
class Netns:
    """A network namespace owned by this process."""

    name: str
    links: list[str] = field(default_factory=list)

    def exec_args(self, cmd: Sequence[str]) -> list[str]:
        """The argv that runs ``cmd`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        return run(self.exec_args(cmd), check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a command inside the namespace; the caller owns the process."""
        return subprocess.Popen(self.exec_args(cmd), **kwargs)  # type: ignore[call-overload, no-any-return]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _ip("-n", self.name, *args, check=check)

    def add_addr(self, dev: str, cidr: str) -> None:
        """Add an address; IPv6 gets ``nodad`` so it is usable at once."""
        iface = ipaddress.ip_interface(cidr)
        extra = ["nodad"] if iface.version == 6 else []
        self.ip("addr", "add", cidr, "dev", dev, *extra)

    def del_addr(self, dev: str, cidr: str) -> None:
        self.ip("addr", "del", cidr, "dev", dev)

    def set_link(self, dev: str, up: bool) -> None:
        self.ip("link", "set", dev, "up" if up else "down")

    def add_route(self, dest: str, via: str | None = None, dev: str | None = None) -> None:
        args = ["route", "add", dest]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*args)

    def addrs(self, dev: str) -> list[str]:
        """Global addresses on ``dev`` in CIDR form."""
        out = self.ip("-o", "addr", "show", "dev", dev, "scope", "global").stdout
        return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


def _create_netns(prefix: str) -> Netns:
    ns = Netns(unique_name(prefix))
    _ip("netns", "add", ns.name)
    try:
        ns.set_link("lo", True)
        # Keep IPv6 on (some images disable it by default in new namespaces).
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"], check=False)
    except BaseException:
        _ip("netns", "del", ns.name, check=False)
        raise
    return ns


def delete_netns(ns: Netns) -> None:
    """Kill what still runs inside and delete the namespace (its veth ends go with it)."""
    pids = run(["ip", "netns", "pids", ns.name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    _ip("netns", "del", ns.name, check=False)


@contextlib.contextmanager
def netns(prefix: str = "ns") -> Iterator[Netns]:
    """A fresh namespace with ``lo`` up, deleted on exit whatever happens."""
    ns = _create_netns(prefix)
    try:
        yield ns
    finally:
        delete_netns(ns)


@dataclass(frozen=True)
class VethEnd:
    ns: Netns
    dev: str
    addrs: tuple[str, ...]

    def addr(self, version: int = 4) -> str:
        """The first address of the given IP version, without prefix length."""
        for cidr in self.addrs:
            iface = ipaddress.ip_interface(cidr)
            if iface.version == version:
                return str(iface.ip)
        raise LookupError(f"no IPv{version} address on {self.dev}")


@dataclass(frozen=True)
class Veth:
    a: VethEnd
    b: VethEnd


def add_veth(
    ns_a: Netns,
    ns_b: Netns,
    addrs_a: Sequence[str] = (),
    addrs_b: Sequence[str] = (),
    *,
    prefix: str = "ve",
) -> Veth:
    """Create a veth pair between two namespaces, address both ends, bring them up.

    The pair disappears when either namespace is deleted; ``del_veth`` removes it earlier.
    """
    dev_a, dev_b = unique_name(prefix + "a"), unique_name(prefix + "b")
    _ip("link", "add", dev_a, "netns", ns_a.name, "type", "veth", "peer", dev_b, "netns", ns_b.name)
    ns_a.links.append(dev_a)
    ns_b.links.append(dev_b)
    for ns, dev, addrs in ((ns_a, dev_a, addrs_a), (ns_b, dev_b, addrs_b)):
        for cidr in addrs:
            ns.add_addr(dev, cidr)
        ns.set_link(dev, True)
    return Veth(VethEnd(ns_a, dev_a, tuple(addrs_a)), VethEnd(ns_b, dev_b, tuple(addrs_b)))


def del_veth(veth: Veth) -> None:
    veth.a.ns.ip("link", "del", veth.a.dev, check=False)


@contextlib.contextmanager
def veth(
    ns_a: Netns, ns_b: Netns, addrs_a: Sequence[str] = (), addrs_b: Sequence[str] = ()
) -> Iterator[Veth]:
    """``add_veth`` as a context manager."""
    pair = add_veth(ns_a, ns_b, addrs_a, addrs_b)
    try:
        yield pair
    finally:
        del_veth(pair)


@dataclass(frozen=True)
class TwoHosts:
    """Two namespaces on one veth link, the usual shape of a charon-to-peer test."""

    left: Netns
    right: Netns
    link: Veth


@contextlib.contextmanager
def two_hosts(
    left_addrs: Sequence[str] = ("192.0.2.1/24", "2001:db8::1/64"),
    right_addrs: Sequence[str] = ("192.0.2.2/24", "2001:db8::2/64"),
) -> Iterator[TwoHosts]:
    """Namespaces ``left`` and ``right`` joined by one veth pair with the given addresses."""
    with netns("l") as left, netns("r") as right:
        link = add_veth(left, right, left_addrs, right_addrs)
        yield TwoHosts(left, right, link)
