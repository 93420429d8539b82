"""Address acquisition on the testbed's access networks: DHCPv4, router advertisements
and SLAAC, as on a real access network.

- :class:`DhcpServer`: Debian's ``dnsmasq`` (package ``dnsmasq-base``, no system service)
  in a router's namespace, on its access interface only: DHCPv4 from a range below the
  gateway's pool (``DHCP_HOSTS``; the pool is the upper half of the network; no ping
  check before an offer unless ``ping``), and router
  advertisements for the network's IPv6 prefix (``ra-only``: addresses by SLAAC;
  ``off_link``: the prefix announced without its on-link flag, so that a host has a
  route to it only once it installs one). No DNS (``port=0``); its lease file, pid
  file and log in the caller's work directory.
- :class:`DhcpClient`: ISC ``dhclient`` (package ``isc-dhcp-client``) on the mobile
  node's interface, started at the link event, with a script of our own
  (:data:`CLIENT_SCRIPT`): the address and the default route with ``ip``, nothing else
  (Debian's ``dhclient-script`` would rewrite the host's ``resolv.conf``). A fresh lease
  file per client: every acquisition is a full DISCOVER, OFFER, REQUEST, ACK.
- :func:`slaac`: the kernel's SLAAC on an interface, with duplicate address detection
  (the testbed turns DAD off everywhere) or optimistic DAD (RFC 4429:
  ``optimistic_dad`` and ``use_optimistic``); ``default_router=False`` leaves the
  default route to the host, and :func:`host_routes` installs it with the prefix's
  route once the address is usable, as a DHCP client's script does for IPv4.
- :class:`AddressWatch`: ``ip monitor address`` in a namespace, every event stamped on
  the monotonic clock: when an address appeared and when it became usable (DAD done).

Every process is started through :meth:`Testbed.popen`, so the testbed's ``down`` ends
it whatever happens to the caller.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpa_testbed.topology import Testbed

DHCP_HOSTS = (32, 120)  # first and last host number DHCP hands out (the pool is .128/25)
LEASE_TIME = "1h"
RA_INTERVAL = 10  # seconds between unsolicited router advertisements
START_TIMEOUT = 10.0

CLIENT_SCRIPT = """#!/bin/sh
# dhclient's script for the testbed: the lease's address and default route, nothing else.
case "$reason" in
PREINIT)
    ip link set dev "$interface" up ;;
BOUND|RENEW|REBIND|REBOOT)
    ip -4 addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
    for router in $new_routers; do
        ip -4 route replace default via "$router" dev "$interface"
        break
    done ;;
EXPIRE|FAIL|RELEASE|STOP)
    [ -n "$old_ip_address" ] && ip -4 addr del "$old_ip_address/$old_subnet_mask" \\
        dev "$interface" 2>/dev/null ;;
esac
exit 0
"""

# Retransmit after a second, not dhclient's default 10 s: a lost DISCOVER under loss
# then costs what it costs a phone's DHCP client.
CLIENT_CONF = """initial-interval 1;
backoff-cutoff 2;
timeout 60;
retry 1;
request subnet-mask, broadcast-address, routers;
"""


class Unavailable(RuntimeError):
    """The program is not installed (the text says which and from which package)."""


def require(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        raise Unavailable(f"{program} not found (Debian package {package}, deploy/setup.sh)")
    return path


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dhcp_range(subnet: str) -> tuple[str, str]:
    """The first and last address DHCP hands out in ``subnet`` (below the pool)."""
    net = ipaddress.ip_network(subnet)
    return str(net.network_address + DHCP_HOSTS[0]), str(net.network_address + DHCP_HOSTS[1])


@dataclass
class DhcpServer:
    """dnsmasq on ``dev`` of ``node``: DHCPv4 for ``v4`` and RAs for ``v6`` (either None)."""

    bed: Testbed
    node: str
    dev: str
    workdir: Path
    v4: str | None = None
    v6: str | None = None
    ping: bool = False
    """dnsmasq's check that an address is free before offering it (its default): an
    ICMP echo whose ARP goes unanswered for 3 s on the first offer of each address."""
    off_link: bool = False
    """The IPv6 prefix advertised without the on-link flag: no route until the host's."""

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / f"dnsmasq-{self.node}.log"
        self.leases = self.workdir / f"dnsmasq-{self.node}.leases"

    def command(self) -> list[str]:
        cmd = [
            require("dnsmasq", "dnsmasq-base"),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            f"--interface={self.dev}",
            "--bind-interfaces",
            f"--pid-file={self.workdir / f'dnsmasq-{self.node}.pid'}",
            f"--dhcp-leasefile={self.leases}",
            f"--log-facility={self.log}",
            "--log-dhcp",
            "--dhcp-authoritative",
        ]
        if not self.ping:
            cmd.append("--no-ping")
        if self.v4 is not None:
            first, last = dhcp_range(self.v4)
            mask = ipaddress.ip_network(self.v4).netmask
            cmd.append(f"--dhcp-range={first},{last},{mask},{LEASE_TIME}")
        if self.v6 is not None:
            net = ipaddress.ip_network(self.v6)
            mode = "ra-only,off-link" if self.off_link else "ra-only"
            cmd += [
                "--enable-ra",
                f"--dhcp-range={net.network_address},{mode},{net.prefixlen}",
                f"--ra-param={self.dev},{RA_INTERVAL}",
            ]
        return cmd

    def start(self) -> DhcpServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.leases.touch()
        self.proc = self.bed.popen(
            self.node, self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dnsmasq in {self.node} exited: {err.strip()}")
            if self.log.exists() and "started, version" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"dnsmasq in {self.node} did not start")

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> DhcpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class DhcpClient:
    """dhclient for IPv4 on ``dev`` of ``node``; files in ``workdir`` named by ``name``."""

    bed: Testbed
    node: str
    dev: str
    workdir: Path
    name: str = "dhclient"

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.script = self.workdir / "dhclient-script"
        self.conf = self.workdir / "dhclient.conf"
        self.leases = self.workdir / f"{self.name}.leases"
        self.binary = require("dhclient", "isc-dhcp-client")

    def prepare(self) -> DhcpClient:
        """The script and configuration written ahead (not part of the acquisition)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.script.write_text(CLIENT_SCRIPT)
        self.script.chmod(0o755)
        self.conf.write_text(CLIENT_CONF)
        self.leases.unlink(missing_ok=True)
        return self

    def command(self) -> list[str]:
        return [
            self.binary,
            "-4",
            "-d",
            "-v",
            "-sf",
            str(self.script),
            "-cf",
            str(self.conf),
            "-lf",
            str(self.leases),
            "-pf",
            str(self.workdir / f"{self.name}.pid"),
            self.dev,
        ]

    def start(self) -> DhcpClient:
        """Start at once (in the background): the link event's first step."""
        log = (self.workdir / f"{self.name}.log").open("wb")
        self.proc = self.bed.popen(self.node, self.command(), stdout=log, stderr=log)
        log.close()
        return self

    def stop(self) -> None:
        """Ended without a RELEASE, as a client whose link went away: the server keeps
        the lease until it expires (the next run's fresh client gets another address)."""
        _stop(self.proc)
        self.proc = None


def slaac(
    bed: Testbed,
    node: str,
    dev: str,
    *,
    enable: bool,
    optimistic: bool = False,
    default_router: bool = True,
) -> None:
    """SLAAC on ``dev``: router advertisements accepted, DAD on (optimistic if asked),
    the advertising router the default route unless ``default_router`` is False;
    ``enable=False`` leaves RAs ignored and DAD off, as the testbed builds it."""
    on = "1" if enable else "0"
    opt = "1" if enable and optimistic else "0"
    router = "1" if enable and default_router else "0"
    keys = {"accept_ra": on, "autoconf": on, "accept_dad": on, "accept_ra_defrtr": router}
    # A kernel without CONFIG_IPV6_OPTIMISTIC_DAD (user-mode-linux's) has no such keys:
    # nothing to turn off there, and asking for them fails as it should.
    if optimistic or Path("/proc/sys/net/ipv6/conf/all/optimistic_dad").exists():
        keys.update(optimistic_dad=opt, use_optimistic=opt)
    bed.exec(node, ["sysctl", "-qw", *(f"net.ipv6.conf.{dev}.{k}={v}" for k, v in keys.items())])


def router_link_local(bed: Testbed, node: str, dev: str) -> str:
    """The link-local address of a router's interface (its advertisements' source)."""
    for line in bed.ip(node, "-6", "-o", "addr", "show", "dev", dev, "scope", "link").splitlines():
        words = line.split()
        if "inet6" in words:
            return words[words.index("inet6") + 1].split("/")[0]
    raise LookupError(f"no link-local address on {node} {dev}")


def host_routes(bed: Testbed, node: str, dev: str, address: str, router: str) -> None:
    """What a host's address configuration does once an IPv6 address is usable (with
    an off-link prefix and no default router from the advertisement): its prefix's
    route and the default route through ``router``, in one ``ip`` run."""
    prefix = ipaddress.ip_interface(address).network
    lines = f"route replace {prefix} dev {dev}\nroute replace default via {router} dev {dev}\n"
    subprocess.run(
        ["ip", "-6", "-n", bed.ns(node), "-batch", "-"],
        input=lines,
        text=True,
        capture_output=True,
        check=True,
        timeout=10,
    )


# -- address events ------------------------------------------------------------------------


_STAMP = re.compile(r"^Timestamp: (?P<when>.+?) (?P<usec>\d+) usec$")
_EVENT = re.compile(
    r"^(?P<deleted>Deleted\s+)?\d+:\s+(?P<dev>\S+)\s+"
    r"(?P<family>inet6?)\s+(?P<address>\S+)(?P<rest>.*)$"
)


@dataclass(frozen=True)
class AddressEvent:
    """One RTM_NEWADDR / RTM_DELADDR, ``time`` on the monotonic clock."""

    time: float
    dev: str
    address: str  # CIDR
    deleted: bool
    flags: tuple[str, ...]

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version

    @property
    def is_global(self) -> bool:
        return "global" in self.flags

    @property
    def usable(self) -> bool:
        """Present and past DAD, or optimistic (RFC 4429: usable during DAD)."""
        if self.deleted or "dadfailed" in self.flags:
            return False
        return "tentative" not in self.flags or "optimistic" in self.flags


def parse_stamp(line: str) -> float | None:
    """The realtime of an ``ip -t monitor`` ``Timestamp:`` line, in seconds."""
    match = _STAMP.match(line.strip())
    if match is None:
        return None
    when = time.strptime(" ".join(match["when"].split()), "%a %b %d %H:%M:%S %Y")
    return time.mktime(when) + int(match["usec"]) / 1e6


def parse_event(line: str, stamp: float, offset: float) -> AddressEvent | None:
    """An ``ip -o monitor address`` line at realtime ``stamp``; ``offset`` is realtime
    minus monotonic (the event goes onto the monotonic clock)."""
    match = _EVENT.match(line.strip())
    if match is None:
        return None
    words = match["rest"].replace("\\", " ").split()
    flags = tuple(w for w in words if w.isalpha())
    return AddressEvent(
        stamp - offset, match["dev"], match["address"], bool(match["deleted"]), flags
    )


def parse_monitor(lines: Sequence[str], offset: float) -> list[AddressEvent]:
    """Events of ``ip -t -o monitor address`` output (a stamp line before each)."""
    events: list[AddressEvent] = []
    stamp: float | None = None
    for line in lines:
        new = parse_stamp(line)
        if new is not None:
            stamp = new
            continue
        event = None if stamp is None else parse_event(line, stamp, offset)
        if event is not None:
            events.append(event)
    return events


class AddressWatch:
    """``ip -t -o monitor address`` in ``node``, read in a thread."""

    def __init__(self, bed: Testbed, node: str, offset: float) -> None:
        self.offset = offset
        self.events: list[AddressEvent] = []
        self._cond = threading.Condition()
        self._proc = bed.popen(
            node,
            ["ip", "-t", "-o", "monitor", "address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        stamp: float | None = None
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace")
            new = parse_stamp(line)
            if new is not None:
                stamp = new
                continue
            event = None if stamp is None else parse_event(line, stamp, self.offset)
            if event is not None:
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

    def usable(self, dev: str, version: int, since: float) -> AddressEvent | None:
        with self._cond:
            return first_usable(self.events, dev, version, since)

    def wait_usable(
        self, dev: str, version: int, since: float, deadline: float
    ) -> AddressEvent | None:
        """The first global address of ``version`` on ``dev`` usable after ``since``."""
        with self._cond:
            while True:
                found = first_usable(self.events, dev, version, since)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._cond.wait(min(left, 0.05))

    def close(self) -> list[AddressEvent]:
        _stop(self._proc)
        if self._proc.stdout is not None:
            self._thread.join(2)
            self._proc.stdout.close()
        return list(self.events)


def first_usable(
    events: Sequence[AddressEvent], dev: str, version: int, since: float
) -> AddressEvent | None:
    for event in events:
        if event.time < since or event.dev != dev or event.version != version:
            continue
        if event.is_global and event.usable:
            return event
    return None
