"""The handover methods of ``mpa-bench handover``: set-up, trigger, and when each is done.

Every run starts from the same state: the MN attached to A only (link ``b`` down), fresh
daemons, nothing left on ``mn-b``. A probe flow from the correspondent runs for
``PRE`` seconds, the layer-2 handover happens (``Testbed.handover``: A down, B up; its
time is the origin ``t0``), the method's own completion is awaited, and the flow runs
``POST`` seconds more. A capture in the MN's namespace (``tcpdump -i any``, IKE on
500 and behind the non-ESP marker on 4500) gives the IKE timeline on the same clock.

- ``mpa``: mpa-mobile pre-authenticates with mpa-gateway through A (``preauth ngw``: the
  nCoA on a TUN device, the PHT up); the probe flow goes to the nCoA. The ``handover
  ngw`` request is sent on the control socket before the link event (no CLI start-up in
  the measurement); the daemon waits for ``mn-b``'s link, moves the nCoA onto it and
  sends UPDATE_SA_ADDRESSES; done when it answers.
- ``mpa-cli``: as ``mpa``, but the handover is asked for by running ``mpa-mobile
  handover ngw`` at the link event, as a network manager's link-up hook would
  (``deploy/hooks``: the daemon's control socket by its path, no configuration file
  read): the command's own start-up (interpreter, imports, control socket) is in the
  outage. The installed console script beside the interpreter (or on ``PATH``)
  is preferred to ``python -m mobile.cli``; the sample says which ran. It runs in the
  benchmark's own namespace: the control socket is a file, and ``ip netns exec``'s
  start-up is not the command's.
- ``mobike``: mpa-mobile connected from A (``connect ngw``: an address of the pool on
  its TUN device), moving by plain MOBIKE without pre-authentication to its static
  address of B, which is on ``mn-b`` before the link comes up (mpa-mobile keeps it out
  of use until then); the ``handover ngw`` request waits for the link as with ``mpa``;
  the gateway under ``address_policy: any``.
- ``reactive``: mpa-mobile on A, not connected; after the link event it is on B with a
  static address and runs a full ``connect ngw`` (IKE_SA_INIT, IKE_AUTH with EAP, CP)
  at once (the request is sent on the control socket when the link is up, as a
  link-up handler would). The flow before the handover goes to its A address; a second
  flow runs all along to the address the gateway will give (fresh daemons, so the first
  of the pool, checked afterwards); the two are joined into one logical flow
  (``merge_flows``), switching after the last packet the old address received.
- ``charon-mobike`` / ``charon-reauth``: strongSwan's charon (kernel-libipsec, ESP in
  UDP) as MN and as nGW, the MN connecting from A with a virtual IP from the nGW's pool
  in B (the probe flow goes to it); ``mobike = yes`` or ``no``. The MN's static B
  address is on ``mn-b`` before the link comes up; charon notices the change itself
  (netlink; it waits 100 ms after an event). With MOBIKE it sends UPDATE_SA_ADDRESSES
  (after probing the path); without, it re-authenticates with charon's defaults
  (``make_before_break = no``: break-before-make, a new IKE SA with EAP that asks for
  the same virtual IP, then the old one is deleted). Done when the MN's IKE SA is
  ESTABLISHED from the B address with its CHILD SA INSTALLED.

For the methods that rely on the OS for addresses (charon, mobike, reactive) the
benchmark acts as a connection manager the moment the link event is over
(``ConnectionManager``): A's addresses removed, the static address of B added; with
``mpa`` the daemon moves its nCoA onto ``mn-b`` itself and A is left as it is.

With ``dhcp`` (``--dhcp``) B runs dnsmasq in the nGW's namespace (DHCPv4 and router
advertisements, :mod:`mpa_testbed.dhcp`) and those methods acquire their address on B
as a host does: the connection manager starts ``dhclient`` at the link event (IPv4),
or the kernel's SLAAC answers the advertisement (IPv6; DAD unless ``optimistic_dad``),
and no static address is configured. For IPv6 the prefix is advertised off-link and
the router is not taken as default: the prefix's route and the default route come with
the address once it is usable, as the IPv4 client's script adds them with its lease.
charon acts on the first route over B: with the advertisement's routes it took B's
link-local address as its source while the new one was in DAD, and its
re-authentication's DELETE, unable to leave from there, held the new IKE SA back
for minutes. ``mobike`` and ``reactive`` are told (the
``handover`` / ``connect`` request) once the address is usable, as a DHCP client's
hook would; charon sees it by netlink. ``mpa`` and ``mpa-cli`` keep the nCoA from CP,
put on ``mn-b`` without DAD; SLAAC is off on ``mn-b`` for them.

With ``aaa="radius"`` (``--aaa radius``) the nGW, mpa-gateway as charon, relays EAP to
FreeRADIUS in the testbed's ``aaa`` namespace behind the link ``aaa`` (whose delay
``--delay aaa:25ms`` sets): mpa-gateway by ``eap: {method: radius}``, charon by its
eap-radius plugin. The RADIUS exchanges are captured in the nGW's namespace and are the
AAA part of the outage (:func:`mpa_bench.handover_parts.radius_round_trips`).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mpa_bench.handover_measure import (
    Sample,
    clock_offset,
    ike_messages,
    measure,
    merge_flows,
    trim,
)
from mpa_bench.handover_parts import (
    RADIUS_AUTH_PORT,
    address_messages,
    frames,
    radius_round_trips,
)
from mpa_ike.node.control_client import call
from mpa_testbed.dhcp import (
    AddressWatch,
    DhcpClient,
    DhcpServer,
    host_routes,
    router_link_local,
    slaac,
)
from mpa_testbed.probe import FlowLog, ProbeFlow
from mpa_testbed.programs import CN_NETWORKS, EAP_PASSWORD, EAP_USER, MpaPrograms, ProgramError
from mpa_testbed.topology import Testbed

if TYPE_CHECKING:
    from mpa_harness.freeradius import FreeRadius

METHODS = ("mpa", "mpa-cli", "mobike", "reactive", "charon-mobike", "charon-reauth")
PRE = 0.6  # seconds of flow before the link event
POST = 0.6  # seconds of flow after the method says it is done
HEARTBEAT = 0.05  # how often the probe sender tells of its newest echo
TAIL = 0.3  # the flow's last seconds, left out (still in flight when it is stopped)
CATCH_UP_LIMIT = 5.0  # the longest wait for a flow's echoes to catch up before it stops
PROBE_PORT = 9000
STATIC_HOST = 0x50  # the MN's static address on B: .80 / ::50, outside the pool
IKE_FILTER = (
    "udp port 500 or (udp port 4500 and ((ip and udp[8:4] = 0) or (ip6 and ip6[48:4] = 0)))"
)
# DHCPv4, and router solicitations, advertisements and neighbour solicitations (DAD):
# ND messages carry no extension header, their type is the first octet after IPv6's.
ADDRESS_FILTER = "udp port 67 or udp port 68 or (icmp6 and ip6[40] >= 133 and ip6[40] <= 135)"
CAPTURE_FILTER = f"{IKE_FILTER} or {ADDRESS_FILTER}"
CHARON_IKE = "aes128-sha256-x25519"
CHARON_ESP = "aes128gcm16"
CHARON_LOG = {"ike": 1, "cfg": 2, "net": 1, "knl": 2, "chd": 2, "enc": 0}
GATEWAY_ID = "ngw.mpa-ike.test"
CLIENT_ID = f"{EAP_USER}@mpa-ike.test"
RADIUS_SECRET = "mpa-ike-testbed-radius"
RADIUS_FILTER = f"udp port {RADIUS_AUTH_PORT}"

Family = Literal[4, 6, "split"]


class Unavailable(RuntimeError):
    """The method cannot run here (the text says why); its other runs are skipped."""


@dataclass
class Context:
    """What every run of every method shares."""

    bed: Testbed
    workdir: Path
    family: Family = 4
    eap: str = "mschapv2"
    interval: float = 0.001
    timeout: float = 30.0
    settle: float = 0.0  # added to POST and TAIL: twice the delay the links add
    dhcp: bool = False  # B runs DHCP and RAs; the OS's address on B is acquired
    optimistic_dad: bool = False
    dhcp_ping: bool = False
    aaa: str = "local"  # "radius": the nGW relays EAP to FreeRADIUS in ``aaa``
    datapath: str = "userspace"  # mpa-mobile's and mpa-gateway's datapath (or xfrm)
    cache: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def lossless(self) -> Iterator[None]:
        """No loss on the access links while a method sets itself up (connects through
        A): the handover is measured under loss, not the start."""
        changed = []
        for name in ("a", "b"):
            link = self.bed.link(name)
            if link.conf.emulated and (link.conf.a2b.loss or link.conf.b2a.loss):
                link.configure("both", loss=0)
                changed.append(link)
        try:
            yield
        finally:
            for link in changed:
                link.configure("a2b", loss=link.conf.a2b.loss)
                link.configure("b2a", loss=link.conf.b2a.loss)

    @property
    def outer(self) -> int:
        return 4 if self.family == "split" else int(self.family)

    @property
    def inner(self) -> int:
        return 6 if self.family == "split" else int(self.family)

    def gateway_address(self) -> str:
        """Where the MN starts IKE (as ``MpaPrograms.gateway_address``)."""
        if self.family == "split":
            return self.bed.addr("ngw", "ngw-core", 4)
        return self.bed.addr("ngw", "ngw-b", self.outer)

    def gateway_addresses(self) -> list[str]:
        """Every address of the nGW the MN may exchange IKE with."""
        addresses = []
        for dev in ("ngw-b", "ngw-core"):
            for version in (4, 6):
                with contextlib.suppress(LookupError):
                    addresses.append(self.bed.addr("ngw", dev, version))
        return addresses

    def static_b(self) -> str:
        """The MN's static address on B in the inner family (B's only one with split)."""
        version = 6 if self.family == "split" else self.inner
        plan = self.bed.addresses("ngw")["ngw-b"]
        net = next(
            ipaddress.ip_interface(c).network
            for c in plan
            if ipaddress.ip_interface(c).version == version
        )
        return f"{net.network_address + STATIC_HOST}/{net.prefixlen}"

    @property
    def b_version(self) -> int:
        """The family of the OS's address on B (B is IPv6-only with split)."""
        return 6 if self.family == "split" else int(self.family)

    def dhcp_server(self) -> DhcpServer:
        """dnsmasq on ``ngw-b`` for B's IPv4 network (not with split) and IPv6 prefix."""
        plan = self.bed.addresses("ngw")["ngw-b"]
        nets = {i.version: str(i.network) for i in map(ipaddress.ip_interface, plan)}
        v4 = None if self.family == "split" else nets.get(4)
        return DhcpServer(
            self.bed,
            "ngw",
            "ngw-b",
            self.workdir,
            v4=v4,
            v6=nets.get(6),
            ping=self.dhcp_ping,
            off_link=True,
        )

    def radius_address(self) -> str:
        """FreeRADIUS's address: the ``aaa`` host's end of link ``aaa`` (IPv4)."""
        return self.bed.addr("aaa", "aaa-ngw", 4)

    def aaa_server(self) -> FreeRadius:
        """FreeRADIUS in ``aaa`` knowing the MN's user, for the nGW's end of link
        ``aaa`` as its client; it proposes ``eap``'s method."""
        from mpa_harness.freeradius import FreeRadius, RadiusClientSpec, RadiusUser

        client = self.bed.addresses("ngw")["ngw-aaa"][0]
        return FreeRadius(
            self.workdir / "freeradius",
            clients=[RadiusClientSpec(str(ipaddress.ip_interface(client).network), RADIUS_SECRET)],
            users=[RadiusUser(EAP_USER, EAP_PASSWORD)],
            address=self.radius_address(),
            exec_prefix=["ip", "netns", "exec", self.bed.ns("aaa")],
            default_eap_type=self.eap,
        )

    def gateway_eap(self) -> dict[str, Any]:
        """mpa-gateway's ``eap:`` with ``aaa="radius"``; empty for its own users."""
        if self.aaa != "radius":
            return {}
        server = {"address": self.radius_address(), "port": 1812, "secret": RADIUS_SECRET}
        return {"eap": {"method": "radius", "radius": {"servers": [server]}}}

    def first_of_pool(self) -> str:
        """The address a fresh gateway leases first (the pool's first usable one)."""
        return str(ipaddress.ip_network(self.bed.pool("ngw", self.inner))[1])


# -- the MN's state between runs ------------------------------------------------------


def reset_mn(ctx: Context, *, acquire: bool = False) -> None:
    """Back to the start: attached to A, nothing on ``mn-b``, no stale neighbours;
    ``acquire``: the OS acquires its address on B (with ``--dhcp``: SLAAC on for IPv6)."""
    bed = ctx.bed
    bed.link("b").set_down()
    if ctx.dhcp:
        # Without carrier, down and up: the kernel then takes the next carrier as a new
        # link (IPv6: link-local DAD, a router solicitation), as at the first run; a
        # carrier back on a link it had configured only renews its multicast reports.
        bed.ip("mn", "link", "set", "dev", "mn-b", "down")
        bed.ip("mn", "link", "set", "dev", "mn-b", "up")
    slaac(
        bed,
        "mn",
        "mn-b",
        enable=ctx.dhcp and acquire and ctx.b_version == 6,
        optimistic=ctx.optimistic_dad,
        default_router=False,
    )
    bed.link("a").set_up()
    bed.ip("mn", "addr", "flush", "dev", "mn-b", "scope", "global")
    for cidr in bed.addresses("mn")["mn-a"]:
        extra = ["nodad"] if ":" in cidr else []
        bed.ip("mn", "addr", "replace", cidr, "dev", "mn-a", *extra)
    for flag in ("-4", "-6"):
        with contextlib.suppress(RuntimeError):
            bed.ip("mn", flag, "route", "flush", "dev", "mn-b")
    for version in (4, 6):
        with contextlib.suppress(LookupError, RuntimeError):
            via = bed.addr("ara", "ara-a", version)
            bed.ip("mn", f"-{version}", "route", "replace", "default", "via", via, "dev", "mn-a")
    for node, dev in (("mn", None), ("ara", "ara-a"), ("ngw", "ngw-b")):
        args = ["neigh", "flush", "all"] if dev is None else ["neigh", "flush", "dev", dev]
        with contextlib.suppress(RuntimeError):
            bed.ip(node, *args)
    for node in ("mn", "ngw"):
        clear_policy_routing(bed, node)
    # Routes over mn-b count only while it has link, in every run (mpa-mobile sets this
    # itself; set here it is the same for every method, whichever ran first).
    keys = [f"net.{v}.conf.mn-b.ignore_routes_with_linkdown=1" for v in ("ipv4", "ipv6")]
    # ARP answered on mn-b only for mn-b's own addresses: the nGW's on-link route to B
    # covers its pool, and an answer for a virtual IP on charon's TUN device would let
    # the flow through in clear while a re-authentication has no CHILD SA.
    keys.append("net.ipv4.conf.mn-b.arp_ignore=1")
    bed.exec("mn", ["sysctl", "-qw", *keys])


DEFAULT_RULES = {0, 32766, 32767}  # local, main, default
DEFAULT_TABLES = {"local", "main", "default", "255", "254", "253"}


def clear_policy_routing(bed: Testbed, node: str) -> None:
    """Rules and tables a daemon of an earlier run left behind (charon's ``lookup 220``
    survives its SIGKILL) go, so that every run starts from the same routing."""
    for flag in ("-4", "-6"):
        rules = json.loads(bed.ip(node, flag, "-j", "rule", "show") or "[]")
        for rule in rules:
            if rule.get("priority") not in DEFAULT_RULES:
                with contextlib.suppress(RuntimeError):
                    bed.ip(node, flag, "rule", "del", "priority", str(rule["priority"]))
        routes = json.loads(bed.ip(node, flag, "-j", "route", "show", "table", "all") or "[]")
        tables = {str(r["table"]) for r in routes if "table" in r} - DEFAULT_TABLES
        for table in sorted(tables):
            with contextlib.suppress(RuntimeError):
                bed.ip(node, flag, "route", "flush", "table", table)


class ConnectionManager:
    """What a connection manager does on the link event for a MN that relies on the OS
    for its addresses: A's addresses go with A's carrier, the static address of B comes
    with B's.

    Both at once after the event, through an ``ip -batch`` process started beforehand
    (it runs each line as it reads it): a millisecond or two; a method's reaction to
    the link (reactive's ``connect``) starts once they are made. charon needs both: it
    ignores a carrier loss on an interface still administratively up, and picks its
    source address from routes itself, which would take a route over a link without
    carrier.
    """

    def __init__(self, ctx: Context, name: str = "cm") -> None:
        self.cidr = ctx.static_b()
        self.dhcp = ctx.dhcp
        self.client: DhcpClient | None = None
        if ctx.dhcp and ctx.b_version == 4:
            workdir = ctx.workdir / f"dhcp-{name}"
            self.client = DhcpClient(ctx.bed, "mn", "mn-b", workdir).prepare()
        self._proc = subprocess.Popen(
            ["ip", "-o", "-force", "-n", ctx.bed.ns("mn"), "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a route already gone; the answer is what counts
            text=True,
        )

    def link_event(self) -> bool:
        """Both changes; returns once they are made (whether the address is there).
        With DHCP: the client started first, A's addresses removed; True."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        if self.dhcp:
            if self.client is not None:
                self.client.start()
            # A's default routes go too: charon picks routes itself, ignoring carrier, and
            # would take A's, with A's link-local address as its source (IPv6).
            self._proc.stdin.write(
                "addr flush dev mn-a scope global\n"
                "route del 0.0.0.0/0 dev mn-a\nroute del ::/0 dev mn-a\nlink show dev lo\n"
            )
            self._proc.stdin.flush()
            for line in self._proc.stdout:
                if line.startswith("1: lo"):
                    break
            return True
        extra = " nodad" if ":" in self.cidr else ""
        self._proc.stdin.write("addr flush dev mn-a scope global\n")
        self._proc.stdin.write(f"addr add {self.cidr} dev mn-b{extra}\n")
        # What mn-b has now, then lo's line as the end of that answer.
        self._proc.stdin.write("addr show dev mn-b\nlink show dev lo\n")
        self._proc.stdin.flush()
        address = f" {self.cidr} "
        present = False
        for line in self._proc.stdout:
            present = present or address in line
            if line.startswith("1: lo"):
                break
        return present

    def close(self) -> None:
        if self.client is not None:
            self.client.stop()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# -- one handover, whatever the method ------------------------------------------------


@dataclass
class LinkEvent:
    """The link event of one run, for a method's ``done``: its time, the run's deadline,
    and the MN's address events (with ``--dhcp``)."""

    t0: float
    deadline: float
    version: int
    watch: AddressWatch | None = None
    routes: Callable[[str], None] | None = None  # for an IPv6 address once usable

    def address(self) -> str | None:
        """The OS's address on B, waited for until usable (None: none in time); an
        IPv6 one gets its routes then (``routes``), as a host's configuration does."""
        if self.watch is None:
            return None
        event = self.watch.wait_usable("mn-b", self.version, self.t0, self.deadline)
        if event is None:
            return None
        if self.routes is not None and self.version == 6:
            self.routes(event.address)
            self.routes = None
        return event.address.split("/")[0]

    def usable(self) -> float | None:
        """When the OS's address on B became usable, if it did (monotonic)."""
        if self.watch is None:
            return None
        event = self.watch.usable("mn-b", self.version, self.t0)
        return None if event is None else event.time


def handover(
    ctx: Context,
    method: str,
    run: int,
    targets: list[str],
    *,
    arm: Callable[[], None] | None = None,
    done: Callable[[LinkEvent], str | None],
    static_b: bool = False,
) -> Sample:
    """Flows to ``targets`` (two are joined: see ``merge_flows``), a capture, the link
    event, then ``done(event)`` (an error text, or None when the method finished).
    ``static_b``: the method relies on the OS for its address on B (the connection
    manager's; acquired by DHCP or SLAAC with ``--dhcp``)."""
    from mpa_harness.pcap import read_udp

    pcap = ctx.workdir / f"{method}-{run}.pcap"
    routes = None
    if ctx.dhcp and ctx.b_version == 6:
        router = router_link_local(ctx.bed, "ngw", "ngw-b")
        routes = functools.partial(host_routes, ctx.bed, "mn", "mn-b", router=router)
    radius_pcap = ctx.workdir / f"{method}-{run}-radius.pcap"
    offset = clock_offset()
    logs: list[FlowLog] = []
    with contextlib.ExitStack() as stack:
        address = ConnectionManager(ctx, f"{method}-{run}") if static_b else None
        if address is not None:
            stack.callback(address.close)
        # The address events are read only for a method whose address B gives: the
        # watcher (``ip monitor`` and a thread of ours) wakes at every address change in
        # the MN, the nCoA's moves included, and would take a CPU from what is measured.
        watch = AddressWatch(ctx.bed, "mn", offset) if ctx.dhcp and static_b else None
        if watch is not None:
            stack.callback(watch.close)
        stack.enter_context(capture(ctx.bed, "mn", pcap))
        if ctx.aaa == "radius":
            stack.enter_context(capture(ctx.bed, "ngw", radius_pcap, RADIUS_FILTER))
        flows: list[ProbeFlow] = []
        for n, target in enumerate(targets):
            flow = ctx.bed.probe(
                "cn",
                "mn",
                target,
                port=PROBE_PORT + n,
                interval=ctx.interval,
                linger=0.3,
                heartbeat=HEARTBEAT,
            )
            stack.enter_context(flow)  # killed on the way out if something fails
            flows.append(flow)
        time.sleep(PRE)
        if arm is not None:
            arm()
        t0, t_up = ctx.bed.switch("a", "b")  # the emulator's times: A cut, B's carrier
        if address is not None and not address.link_event():
            raise RuntimeError(f"{address.cidr} could not be put on mn-b")
        event = LinkEvent(t0, t0 + ctx.timeout, ctx.b_version, watch, routes)
        error = done(event)
        if error is None:
            wait_for_flow(flows, time.monotonic(), t0 + ctx.timeout)
        time.sleep(POST + ctx.settle)
        catch_up(flows, TAIL + ctx.settle, CATCH_UP_LIMIT)
        stopped = time.monotonic()
        logs = [trim(flow.stop(), stopped - TAIL - ctx.settle) for flow in flows]
        usable = event.usable() if ctx.b_version == 6 else None
    offset = (offset + clock_offset()) / 2
    messages = ike_messages(read_udp(pcap), ctx.gateway_addresses(), offset)
    addressing = address_messages(frames(pcap), offset)
    pcap.unlink(missing_ok=True)
    radius = None
    if ctx.aaa == "radius":
        radius = radius_round_trips(read_udp(radius_pcap), offset)
        radius_pcap.unlink(missing_ok=True)
    log = merge_flows(logs[0], logs[1]) if len(logs) == 2 else logs[0]
    return measure(
        method,
        run,
        log,
        t0,
        t_up,
        messages,
        error=error,
        addressing=addressing,
        usable=usable,
        radius=radius,
    )


def wait_for_flow(flows: list[ProbeFlow], since: float, deadline: float) -> bool:
    """Until an echo of one of ``flows`` arrives after ``since`` (the method said it was
    done): a flow that comes back only after a retransmission is measured, not cut off."""
    while time.monotonic() < deadline:
        if any((flow.last_echo() or 0.0) > since for flow in flows):
            return True
        time.sleep(HEARTBEAT)
    return False


def catch_up(flows: list[ProbeFlow], lag: float, limit: float) -> bool:
    """Until one of ``flows`` has had echoes for its probes up to ``lag`` seconds ago,
    at most ``limit`` seconds. A machine that stalls (a user-mode kernel) holds echoes
    back for longer than the tail left out when a flow stops: they would count as lost,
    and a flow that came back as one that did not. A flow that died waits the limit."""
    deadline = time.monotonic() + limit
    while True:
        now = time.monotonic()
        if any((flow.echoed_probe() or 0.0) >= now - lag for flow in flows):
            return True
        if now >= deadline:
            return False
        time.sleep(HEARTBEAT)


@contextlib.contextmanager
def capture(bed: Testbed, node: str, path: Path, what: str = CAPTURE_FILTER) -> Iterator[Path]:
    """``what`` (IKE, DHCP and ND) on every interface of ``node`` (``tcpdump -i any``)
    into ``path``, flushed on exit."""
    from mpa_harness.pcap import tcpdump_argv, tcpdump_listening

    proc = bed.popen(node, tcpdump_argv("any", path, what), stderr=subprocess.PIPE)
    with tcpdump_listening(proc):
        yield path


# -- our programs ----------------------------------------------------------------------


@contextlib.contextmanager
def mpa_programs(ctx: Context, run: int, **options: Any) -> Iterator[MpaPrograms]:
    programs = MpaPrograms(
        ctx.bed,
        ctx.workdir / f"mpa-{run}",
        family=ctx.family,
        eap=ctx.eap,
        datapath=ctx.datapath,
        extra_gateway=ctx.gateway_eap(),
        **options,
    )
    try:
        programs.start()
        yield programs
    finally:
        programs.stop()


def _socket(programs: MpaPrograms) -> Path:
    return programs.control_socket("mn")


def _ask(programs: MpaPrograms, command: str, timeout: float) -> str:
    """A command on mpa-mobile's control socket; ``Unavailable`` if not implemented."""
    try:
        return str(call(_socket(programs), command, {"name": "ngw"}, timeout=timeout))
    except Exception as error:  # the daemon's refusal comes back as its text
        text = str(error)
        if "not implemented" in text or "not yet" in text:
            raise Unavailable(f"mpa-mobile {command}: {text}") from None
        raise ProgramError(f"mpa-mobile {command}: {text}") from None


class Background:
    """A control-socket request running in a thread: its answer, error and time."""

    def __init__(self, action: Callable[[], str]) -> None:
        self.answer: str | None = None
        self.error: str | None = None
        self.answered: float | None = None
        self._thread = threading.Thread(target=self._run, args=(action,), daemon=True)

    def _run(self, action: Callable[[], str]) -> None:
        try:
            self.answer = action()
        except Exception as error:
            self.error = str(error)
        self.answered = time.monotonic()

    def start(self) -> Background:
        self._thread.start()
        return self

    def wait(self, deadline: float) -> str | None:
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return "no answer within the time limit"
        return self.error


def run_mpa(ctx: Context, run: int) -> Sample:
    reset_mn(ctx)
    with mpa_programs(ctx, run) as programs:
        with ctx.lossless():
            _ask(programs, "preauth", ctx.timeout)
        ncoa = programs.ncoa("ngw")
        request = Background(lambda: _ask(programs, "handover", ctx.timeout + 5))

        before: list[dict[str, Any]] = []

        def arm() -> None:
            if ctx.datapath == "xfrm":  # the states carrying the flow on A, before the move
                before.extend(xfrm_states(ctx.bed, "ngw"))
            request.start()
            time.sleep(0.2)  # the request is in the daemon, waiting for mn-b's link

        sample = handover(
            ctx, "mpa", run, [ncoa], arm=arm, done=lambda event: request.wait(event.deadline)
        )
        sample.extra.update(ncoa=ncoa, answer=request.answer)
        if request.answered is not None:
            sample.extra["command_answered_s"] = request.answered - sample.t0
        if ctx.datapath == "xfrm":
            sample.extra["xfrm_states"] = {"before": before, "after": xfrm_states(ctx.bed, "ngw")}
        return sample


_XFRM_STATE = re.compile(
    r"^src (\S+) dst (\S+)\n\s+proto esp spi 0x([0-9a-f]+).*?"
    r"lifetime current:\n\s+(\d+)\(bytes\), (\d+)\(packets\)",
    re.MULTILINE | re.DOTALL,
)


def xfrm_states(bed: Testbed, node: str) -> list[dict[str, Any]]:
    """The ESP states in ``node``'s kernel (``ip -s xfrm state``) with ``--datapath
    xfrm``: a move keeps the SPIs and the counters, and changes the outer addresses."""
    text = bed.ip(node, "-s", "xfrm", "state")
    return [
        {"src": m[1], "dst": m[2], "spi": int(m[3], 16), "bytes": int(m[4]), "packets": int(m[5])}
        for m in _XFRM_STATE.finditer(text)
    ]


def mobile_command() -> tuple[list[str], str]:
    """How a hook runs ``mpa-mobile``: the console script installed beside this
    interpreter, else the one on ``PATH`` (a version manager's shim on ``PATH`` is a
    shell script of its own, hence the interpreter's first), else the module."""
    beside = Path(sys.executable).parent / "mpa-mobile"
    if beside.is_file():
        return [str(beside)], "console script"
    found = shutil.which("mpa-mobile")
    if found is not None:
        return [found], "console script"
    return [sys.executable, "-m", "mobile.cli"], "python -m mobile.cli"


def run_mpa_cli(ctx: Context, run: int) -> Sample:
    reset_mn(ctx)
    command, kind = mobile_command()
    with mpa_programs(ctx, run) as programs:
        with ctx.lossless():
            _ask(programs, "preauth", ctx.timeout)
        ncoa = programs.ncoa("ngw")
        # The socket named as a hook finds it (the default path, no -c): reading the
        # YAML file only to find the socket is not what a hook's command does.
        argv = [*command, "--socket", str(_socket(programs)), "handover", "ngw"]
        ran: dict[str, Any] = {}

        def done(event: LinkEvent) -> str | None:
            ran["started"] = time.monotonic()
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=max(1.0, event.deadline - time.monotonic()),
                check=False,
            )
            ran["ended"] = time.monotonic()
            ran["answer"] = proc.stdout.strip()
            if proc.returncode != 0:
                lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
                return f"mpa-mobile handover: exit {proc.returncode}: {lines[-1]}"
            return None

        sample = handover(ctx, "mpa-cli", run, [ncoa], done=done)
        sample.extra.update(ncoa=ncoa, command=argv, command_kind=kind, answer=ran.get("answer"))
        if "started" in ran:
            sample.extra["command_started_s"] = ran["started"] - sample.t0
            sample.extra["command_answered_s"] = ran["ended"] - sample.t0
        return sample


def run_mobike(ctx: Context, run: int) -> Sample:
    reset_mn(ctx, acquire=True)
    if not ctx.dhcp:
        # The OS's address of B is there before the link (its route is ignored until
        # then); charon, which picks routes itself and would use it, gets it at link up.
        cidr = ctx.static_b()
        extra = ["nodad"] if ":" in cidr else []
        ctx.bed.ip("mn", "addr", "add", cidr, "dev", "mn-b", *extra)
    with mpa_programs(ctx, run, address_policy="any") as programs:
        with ctx.lossless():
            _ask(programs, "connect", ctx.timeout)
        inner = programs.ncoa("ngw")
        request = Background(lambda: _ask(programs, "handover", ctx.timeout + 5))

        def arm() -> None:
            request.start()
            time.sleep(0.2)

        def done(event: LinkEvent) -> str | None:
            if ctx.dhcp:  # the request comes with the address (a DHCP client's hook)
                if event.address() is None:
                    return "no address on mn-b in time"
                request.start()
            return request.wait(event.deadline)

        sample = handover(
            ctx,
            "mobike",
            run,
            [inner],
            arm=None if ctx.dhcp else arm,
            done=done,
            static_b=ctx.dhcp,
        )
        sample.extra.update(address=inner, answer=request.answer)
        if request.answer is not None and "moved to" not in request.answer:
            sample.ok = False
            sample.error = f"not a MOBIKE move: {request.answer}"
        return sample


def run_reactive(ctx: Context, run: int) -> Sample:
    reset_mn(ctx, acquire=True)
    # With split the MN reaches the nGW only on B, by its IPv6 address.
    with mpa_programs(ctx, run, gateway_on_b=True) as programs:
        old = ctx.bed.addr("mn", "mn-a", ctx.outer)
        new = ctx.first_of_pool()
        request = Background(lambda: _ask(programs, "connect", ctx.timeout + 5))

        def done(event: LinkEvent) -> str | None:
            deadline = event.deadline
            if ctx.dhcp and event.address() is None:
                return "no address on mn-b in time"
            # At once when the link (with --dhcp: the address) is up: a link-up handler.
            request.start()
            error = request.wait(deadline)
            if error is None or "still trying" not in error:
                return error
            while time.monotonic() < deadline:  # the daemon retransmits on its own
                with contextlib.suppress(ProgramError):
                    if programs.ike_sa("ngw") is not None:
                        return None
                time.sleep(0.2)
            return error

        sample = handover(ctx, "reactive", run, [old, new], done=done, static_b=True)
        got = None
        with contextlib.suppress(ProgramError):
            got = programs.ncoa("ngw")
        sample.extra.update(old=old, new=new, assigned=got, answer=request.answer)
        if got is not None and got != new:
            sample.ok = False
            sample.error = f"the gateway gave {got}, not the first address {new}"
        return sample


# -- charon on both ends -----------------------------------------------------------------


def charon_available() -> str | None:
    from mpa_harness.charon import charon_available as available

    return available()


def _charon_configs(ctx: Context, mobike: bool) -> tuple[Any, Any]:
    from mpa_harness.charon import AuthRound, Child, Connection, Pool, Secret, SwanctlConfig

    gateway = ctx.gateway_address()
    remote_addrs = [gateway]
    local_addrs = [gateway]
    if ctx.family == "split":
        b6 = ctx.bed.addr("ngw", "ngw-b", 6)
        remote_addrs.append(b6)
        local_addrs.append(b6)
    eap = f"eap-{ctx.eap}"
    # With RADIUS charon asks the identity itself (eap_id %any), then relays the rest.
    gateway_eap = "eap-radius" if ctx.aaa == "radius" else eap
    cn_net = CN_NETWORKS[ctx.inner]
    secrets = [Secret("eap", EAP_PASSWORD, [EAP_USER])]
    responder = Connection(
        local_addrs=local_addrs,
        remote_addrs=["%any"],
        local=[AuthRound("pubkey", id=GATEWAY_ID, certs=["gw.pem"])],
        remote=[AuthRound(gateway_eap, id=CLIENT_ID, eap_id="%any")],
        children={"net": Child(local_ts=[cn_net], esp_proposals=[CHARON_ESP])},
        proposals=[CHARON_IKE],
        pools=["poolb"],
        mobike=mobike,
    )
    initiator = Connection(
        local_addrs=["%any"],
        remote_addrs=remote_addrs,
        local=[AuthRound(eap, id=CLIENT_ID, eap_id=EAP_USER)],
        remote=[AuthRound("pubkey", id=GATEWAY_ID)],
        children={"net": Child(remote_ts=[cn_net], esp_proposals=[CHARON_ESP])},
        proposals=[CHARON_IKE],
        vips=["0.0.0.0" if ctx.inner == 4 else "::"],
        encap=True,
        mobike=mobike,
    )
    pool = {"poolb": Pool(ctx.bed.pool("ngw", ctx.inner))}
    return (
        SwanctlConfig({"bench": responder}, secrets, pool),
        SwanctlConfig({"bench": initiator}, secrets),
    )


def _charon_aaa(ctx: Context) -> dict[str, Any]:
    """The nGW's settings with ``aaa="radius"``: eap-radius loaded, FreeRADIUS its server."""
    if ctx.aaa != "radius":
        return {}
    from mpa_harness.charon import PLUGINS

    server = {"address": ctx.radius_address(), "secret": RADIUS_SECRET, "auth_port": 1812}
    return {
        "load": f"{PLUGINS} eap-radius",
        "plugins": {"eap-radius": {"servers": {"aaa": server}}},
    }


def _last_host(network: str) -> str:
    net = ipaddress.ip_network(network)
    return f"{net[-2]}/{net.max_prefixlen}"


@contextlib.contextmanager
def charon_pair(ctx: Context, run: int, mobike: bool) -> Iterator[tuple[Any, Any]]:
    """charon as nGW in ``ngw`` and as MN in ``mn``, configurations loaded; killed on exit
    (kernel-libipsec's TUN device and its routes go with the process)."""
    from mpa_harness.charon import Charon
    from mpa_harness.netns import Netns
    from mpa_harness.pki import make_ca, make_cert

    if "pki" not in ctx.cache:
        ca = make_ca(key_type="ecdsa")
        sans = ctx.gateway_addresses()
        ctx.cache["pki"] = (ca, make_cert(ca, GATEWAY_ID, "ecdsa", san_ip=sans))
    ca, cert = ctx.cache["pki"]
    # kernel-libipsec routes the pool into its TUN device with a source address in the
    # local traffic selector (the CN's network): the nGW gets one on lo while it runs.
    anchor = [str(ipaddress.ip_interface(_last_host(net))) for net in CN_NETWORKS.values()]
    for cidr in anchor:
        ctx.bed.ip("ngw", "addr", "add", cidr, "dev", "lo")
    base = ctx.workdir / f"charon-{'mobike' if mobike else 'reauth'}-{run}"
    gw = Charon(
        Netns(ctx.bed.ns("ngw")), base / "ngw", log_levels=CHARON_LOG, settings=_charon_aaa(ctx)
    )
    mn = Charon(Netns(ctx.bed.ns("mn")), base / "mn", log_levels=CHARON_LOG)
    try:
        gw.add_cert(cert, "gw")
        gw.add_cacert(ca)
        mn.add_cacert(ca)
        responder, initiator = _charon_configs(ctx, mobike)
        gw.configure(responder)
        mn.configure(initiator)
        gw.start()
        mn.start()
        gw.load()
        mn.load()
        yield gw, mn
    finally:
        mn.kill()
        gw.kill()
        for cidr in anchor:
            with contextlib.suppress(RuntimeError):
                ctx.bed.ip("ngw", "addr", "del", cidr, "dev", "lo")


def _charon_done(mn: Any, static: str | None, previous: str) -> Callable[[LinkEvent], str | None]:
    """Done when the MN's IKE SA runs from ``static`` (with ``--dhcp``: the address
    acquired) with its CHILD SA installed."""

    def done(event: LinkEvent) -> str | None:
        deadline = event.deadline
        address = static if static is not None else event.address()
        if address is None:
            return "no address on mn-b in time"
        time.sleep(0.3)
        while time.monotonic() < deadline:
            for sa in mn.list_sas():
                installed = any(c.state == "INSTALLED" for c in sa.children)
                if sa.state == "ESTABLISHED" and sa.local_host == address and installed:
                    return None
            time.sleep(0.2)
        return f"charon did not move from {previous} to {address} in time"

    return done


def run_charon(ctx: Context, run: int, *, mobike: bool) -> Sample:
    reason = charon_available()
    if reason is not None:
        raise Unavailable(reason)
    name = "charon-mobike" if mobike else "charon-reauth"
    reset_mn(ctx, acquire=True)
    with charon_pair(ctx, run, mobike) as (_gw, mn):
        with ctx.lossless():
            mn.initiate("net", ike="bench", timeout=10)
            sa = mn.wait_established("net", timeout=10)
        vip = str(ipaddress.ip_interface(sa.local_vips[0]).ip)
        address = None if ctx.dhcp else ctx.static_b().split("/")[0]
        sample = handover(
            ctx, name, run, [vip], done=_charon_done(mn, address, sa.local_host), static_b=True
        )
        sample.extra.update(vip=vip, ike_sas=[s.raw for s in mn.list_sas()])
        return sample


RUNNERS: dict[str, Callable[[Context, int], Sample]] = {
    "mpa": run_mpa,
    "mpa-cli": run_mpa_cli,
    "mobike": run_mobike,
    "reactive": run_reactive,
    "charon-mobike": lambda ctx, run: run_charon(ctx, run, mobike=True),
    "charon-reauth": lambda ctx, run: run_charon(ctx, run, mobike=False),
}
