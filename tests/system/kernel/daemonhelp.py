"""mpa-mobile and mpa-gateway with the XFRM datapath in three namespaces, and a UDP echo.

The mobile node ``mn`` reaches the gateway ``gw`` over 192.0.2.0/24 (2001:db8::/64);
behind the gateway the correspondent ``cn`` sits on 10.0.9.0/24 (fd00:9::/64), the
gateway's local traffic selector. The gateway leases from 10.9.0.0/24 (fd00:99::/120).
No route of the tunnel is set up here: the daemons' XFRM glue routes the peer's
selectors itself (the mobile node the correspondent's network with its leased address
as source, the gateway the leased addresses towards the mobile node), in a table of its
own behind a rule, as charon does in table 220.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpa_harness.daemon import answers
from mpa_harness.netns import Netns, delete_netns, unique_name
from mpa_ike.node.control_client import ControlError, call
from tests.system.kernel.kernelhelp import SaCounters, ip_batch, ns_socket, parse_sa_counters

GATEWAY_ID = "gw.mpa-ike.test"
PSK = "mpa-ike kernel group key"
USER, PASSWORD = "alice", "alice-kernel-secret"
MN_OUTER = {4: "192.0.2.2", 6: "2001:db8::2"}
GW_OUTER = {4: "192.0.2.1", 6: "2001:db8::1"}
CN = {4: "10.0.9.2", 6: "fd00:9::2"}
CN_NET = {4: "10.0.9.0/24", 6: "fd00:9::/64"}
POOL = {4: "10.9.0.0/24", 6: "fd00:99::/120"}
ECHO_PORT = 7007
START_TIMEOUT = 40.0  # Python starts slowly under UML
CONNECT_TIMEOUT = 60.0
OUR_REQIDS = range(0x6D70_0000, 0x6E70_0000)  # every slot's


@dataclass
class Site:
    mn: Netns
    gw: Netns
    cn: Netns
    mn_dev: str
    gw_dev: str
    workdir: Path
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def ns(self, node: str) -> Netns:
        return {"mn": self.mn, "gw": self.gw, "cn": self.cn}[node]

    def log(self, node: str) -> str:
        path = self.workdir / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def socket_path(self, node: str) -> Path:
        return self.workdir / f"{node}.sock"


@contextlib.contextmanager
def site(workdir: Path) -> Iterator[Site]:
    """The three namespaces, linked and routed; every daemon and namespace gone on exit."""
    mn, gw, cn = Netns(unique_name("km")), Netns(unique_name("kg")), Netns(unique_name("kc"))
    mn_dev, gw_dev, gc_dev, cn_dev = (unique_name(p) for p in ("vm", "vg", "vh", "vc"))
    workdir.mkdir(parents=True, exist_ok=True)
    here = Site(mn, gw, cn, mn_dev, gw_dev, workdir)
    try:
        ip_batch(
            [
                *(f"netns add {ns.name}" for ns in (mn, gw, cn)),
                f"link add {mn_dev} netns {mn.name} type veth peer {gw_dev} netns {gw.name}",
                f"link add {gc_dev} netns {gw.name} type veth peer {cn_dev} netns {cn.name}",
            ]
        )
        ip_batch(
            [
                "link set lo up",
                f"link set {mn_dev} up",
                f"addr add {MN_OUTER[4]}/24 dev {mn_dev}",
                f"addr add {MN_OUTER[6]}/64 dev {mn_dev} nodad",
            ],
            mn,
        )
        ip_batch(
            [
                "link set lo up",
                f"link set {gw_dev} up",
                f"link set {gc_dev} up",
                f"addr add {GW_OUTER[4]}/24 dev {gw_dev}",
                f"addr add {GW_OUTER[6]}/64 dev {gw_dev} nodad",
                f"addr add 10.0.9.1/24 dev {gc_dev}",
                f"addr add fd00:9::1/64 dev {gc_dev} nodad",
            ],
            gw,
        )
        ip_batch(
            [
                "link set lo up",
                f"link set {cn_dev} up",
                f"addr add {CN[4]}/24 dev {cn_dev}",
                f"addr add {CN[6]}/64 dev {cn_dev} nodad",
                "route add default via 10.0.9.1",
                "route add default via fd00:9::1",
            ],
            cn,
        )
        yield here
    finally:
        for node in list(here.daemons):
            stop(here, node, signal.SIGKILL)
        for ns in (cn, gw, mn):
            delete_netns(ns)


def gateway_config(here: Site, datapath: str = "auto", **extra: Any) -> Path:
    """The gateway's file; ``extra``: more top-level keys (``children: {...}``)."""
    data: dict[str, Any] = {
        "listen": [GW_OUTER[4], GW_OUTER[6]],
        "id": GATEWAY_ID,
        "psk": PSK,
        "ike": ["aes128-sha256-x25519"],
        "esp": ["aes128gcm16"],
        "pool": [POOL[4], POOL[6]],
        "local_ts": [CN_NET[4], CN_NET[6]],
        "eap": {"method": "md5", "users": {USER: PASSWORD}},
        "control_socket": str(here.socket_path("gw")),
        "leases": str(here.workdir / "leases.sqlite3"),
        "datapath": datapath,
        "log_level": "info",
        **extra,
    }
    path = here.workdir / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mobile_config(here: Site, version: int = 4, datapath: str = "xfrm") -> Path:
    data: dict[str, Any] = {
        "identity": USER,
        "eap": {"method": "md5", "password": PASSWORD},
        "control_socket": str(here.socket_path("mn")),
        "datapath": datapath,
        "log_level": "info",
        "gateways": {
            "gw": {
                "address": GW_OUTER[version],
                "id": GATEWAY_ID,
                "psk": PSK,
                "ike": ["aes128-sha256-x25519"],
                "esp": ["aes128gcm16"],
                "remote_ts": [CN_NET[version]],
            }
        },
    }
    path = here.workdir / "mn.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(here: Site, node: str, config: Path, env: dict[str, str] | None = None) -> None:
    """``mpa-gateway run`` (node gw) or ``mpa-mobile run`` (mn) in its namespace, logging
    to ``node.log`` (appended: a restarted daemon's log follows the last one's)."""
    module = "gateway.cli" if node == "gw" else "mobile.cli"
    with (here.workdir / f"{node}.log").open("ab") as log:
        proc = here.ns(node).popen(
            [sys.executable, "-m", module, "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    here.daemons[node] = proc
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(here.socket_path(node)):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(here, node, signal.SIGKILL)
            raise AssertionError(f"{module} did not start:\n{here.log(node)[-3000:]}")
        time.sleep(0.1)


def stop(here: Site, node: str, signum: int = signal.SIGTERM) -> int:
    proc = here.daemons.pop(node)
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def command(here: Site, node: str, cmd: str, **args: Any) -> Any:
    return call(here.socket_path(node), cmd, args, timeout=30)


def established(here: Site, node: str) -> dict[str, Any]:
    """The one established IKE SA of ``node``'s status."""
    sas = [sa for sa in command(here, node, "status")["ike_sas"] if sa["state"] == "ESTABLISHED"]
    assert len(sas) == 1, sas
    return dict(sas[0])


def connect(here: Site, version: int = 4) -> str:
    """Connect the mobile node; its leased (inner) address of ``version``.

    Under UML on a loaded host the first exchange may outlast the command's own wait
    (the daemons import their crypto on first use): the IKE SA keeps trying, so wait on.
    """
    try:
        command(here, "mn", "connect", name="gw")
    except ControlError as error:
        if "still trying" not in str(error):
            raise
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not [
            s for s in command(here, "mn", "status")["ike_sas"] if s["state"] == "ESTABLISHED"
        ]:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{error}\n{here.log('gw')[-2000:]}\n{here.log('mn')[-2000:]}"
                ) from None
            time.sleep(0.2)
    addresses = [a.strip() for a in established(here, "mn")["address"].split(",")]
    (inner,) = [a for a in addresses if (":" in a) == (version == 6)]
    return str(inner)


def ours(ns: Netns) -> tuple[dict[int, SaCounters], str]:
    """The ESP states of ``ns`` that carry one of the project's reqids, and the policies'
    text (``ip xfrm policy``) of those that do."""
    states_text = ns.ip("-s", "xfrm", "state").stdout
    reqids = {
        int(spi, 16): int(reqid)
        for spi, reqid in re.findall(
            r"proto esp spi 0x([0-9a-f]+)(?:\(\d+\))? reqid (\d+)", states_text
        )
    }
    states = {
        spi: sa for spi, sa in parse_sa_counters(states_text).items() if reqids[spi] in OUR_REQIDS
    }
    policies = [
        block
        for block in re.split(r"\n(?=src )", ns.ip("xfrm", "policy").stdout)
        if any(int(r) in OUR_REQIDS for r in re.findall(r"reqid (\d+)", block))
    ]
    return states, "\n".join(policies)


@contextlib.contextmanager
def echo_server(ns: Netns, address: str) -> Iterator[None]:
    """A UDP echo on ``address``:ECHO_PORT inside ``ns``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = ns_socket(ns, family)
    sock.bind((address, ECHO_PORT))
    sock.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        sock.close()


def echo(
    ns: Netns,
    src: str,
    dst: str,
    count: int,
    size: int = 100,
    retries: int = 0,
    wait: float = 1.0,
) -> tuple[int, int]:
    """``count`` datagrams from ``src`` to the echo at ``dst``, one at a time: (answered,
    sent). ``retries``: sends again what got no answer (a rekey under way); ``wait``:
    seconds an answer may take."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = ns_socket(ns, family)
    sent = answered = 0
    try:
        sock.bind((src, 0))
        sock.settimeout(wait)
        for i in range(count):
            payload = (b"%06d " % i).ljust(size, b"e")
            for _ in range(retries + 1):
                sock.sendto(payload, (dst, ECHO_PORT))
                sent += 1
                try:
                    while sock.recv(65536) != payload:
                        pass  # a late answer to an earlier try
                    answered += 1
                    break
                except TimeoutError:
                    continue
        return answered, sent
    finally:
        sock.close()
