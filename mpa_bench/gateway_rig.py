"""The rig of ``mpa-bench flood`` and ``mpa-bench fuzz``: a live mpa-gateway in a
namespace and mobile nodes built from our core in another (as root).

Two namespaces on one veth link: ``gw`` (192.0.2.2, its LAN address 10.1.0.1 on lo)
runs ``mpa-gateway`` with a throw-away ECDSA certificate, EAP-MSCHAPv2 users ``mn0``,
``mn1``, ..., a CP pool, the userspace datapath and its leases file in the work
directory; the other holds the mobile nodes (:mod:`mpa_bench.fuzz_mobile`, on
192.0.2.10, .11, ...) and whatever the tool sends from. :func:`rig` yields once the
gateway listens; :func:`mobile_node` adds one mobile node, its socket open.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mpa_bench.fuzz_mobile import MobileNode
from mpa_harness import daemon
from mpa_ike.node.control_client import ControlError, call

if TYPE_CHECKING:
    from cryptography import x509

    from mpa_ike.ike_config import InitiatorConfig

MN_NET = "192.0.2.0/24"
MN_SIDE = "192.0.2.1"
GW = "192.0.2.2"
MN_FIRST = 10  # the mobile nodes: 192.0.2.10, .11, ...
GW_LAN = "10.1.0.1"
PROTECTED_NET = "10.1.0.0/24"
POOL = "10.3.0.0/24"
GATEWAY_ID = "gw.mpa-ike.test"
IKE = "aes128-sha256-x25519"
ESP = "aes128gcm16"


@dataclass
class Check:
    """One line of a verdict."""

    name: str
    passed: bool
    detail: str = ""


def user_of(k: int) -> str:
    return f"mn{k}"


def password_of(k: int) -> str:
    return f"bench-Pw-{k}!"


@dataclass
class Rig:
    """The namespaces, the gateway and its files."""

    mn: Any  # mpa_harness.netns.Netns
    gw: Any
    workdir: Path
    control: Path
    log_file: Path
    process: Any  # subprocess.Popen[bytes]
    ca_file: Path

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = call(self.control, "status", timeout=10)
        return found

    def alive(self) -> bool:
        return bool(self.process.poll() is None)

    def rss_kib(self) -> int:
        """VmRSS of the gateway process (``ip netns exec`` execs it: same pid)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """utime + stime of the gateway, every thread (``/proc/PID/stat``)."""
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def run_queue_wait(self) -> float:
        """Seconds the gateway's main thread waited runnable for a core (schedstat): on a
        busy machine it answers less of a flood than its CPU time would."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(Path(f"/proc/{self.process.pid}/schedstat").read_text().split()[1]) / 1e9
        return 0.0

    def udp_counters(self) -> dict[str, int]:
        """The gateway namespace's UDP counters (/proc/net/snmp): RcvbufErrors are
        datagrams the gateway did not read in time."""
        text = self.gw.run(["cat", "/proc/net/snmp"]).stdout
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)} if rows else {}


@contextlib.contextmanager
def rig(
    workdir: Path,
    users: int,
    *,
    settings: Mapping[str, Any] | None = None,
    mtu: int | None = None,
    route: str | None = None,
    launcher: Sequence[str] = (),
) -> Iterator[Rig]:
    """The namespaces and a listening gateway with ``users`` EAP users; ``settings``
    add to (or replace) keys of its configuration, ``mtu`` is the link's, ``route`` a
    subnet the gateway routes back over the link, ``launcher`` goes before its command
    (``nice``, ``taskset``)."""
    from mpa_harness.netns import two_hosts
    from mpa_harness.pki import make_ca, make_cert

    with two_hosts(left_addrs=(f"{MN_SIDE}/24",), right_addrs=(f"{GW}/24",)) as hosts:
        mn, gw = hosts.left, hosts.right
        if mtu is not None:
            for end in (hosts.link.a, hosts.link.b):
                end.ns.ip("link", "set", end.dev, "mtu", str(mtu))
        gw.add_addr("lo", f"{GW_LAN}/32")
        if route is not None:
            gw.add_route(route, via=MN_SIDE)
        ca = make_ca(key_type="ecdsa")
        make_cert(ca, GATEWAY_ID, "ecdsa", san_ip=[GW]).write(
            workdir / "gw.pem", workdir / "gw.key"
        )
        ca.write(workdir / "ca.pem")
        config = workdir / "gateway.yaml"
        config.write_text(yaml.safe_dump(gateway_config(workdir, users) | dict(settings or {})))
        control, log_file = workdir / "gw.sock", workdir / "gateway.log"
        argv = [*launcher, *gw.exec_args(daemon.command("gateway.cli", config))]
        with daemon.running(argv, control, log_file) as process:
            found = Rig(mn, gw, workdir, control, log_file, process, workdir / "ca.pem")
            wait(lambda: bool(found.status().get("listening")), 10, "the gateway never listened")
            yield found


def gateway_config(workdir: Path, users: int) -> dict[str, Any]:
    return {
        "listen": [GW],
        "id": GATEWAY_ID,
        "certificate": "gw.pem",
        "private_key": "gw.key",
        "ike": [IKE],
        "esp": [ESP],
        "pool": [POOL],
        "local_ts": [PROTECTED_NET],
        "eap": {
            "method": "mschapv2",
            "users": {user_of(k): password_of(k) for k in range(users)},
        },
        "control_socket": "gw.sock",
        "leases": str(workdir / "leases.sqlite3"),
        "datapath": "userspace",
        "log_level": "warning",
    }


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ControlError, OSError):
            if condition():
                return
        time.sleep(0.05)
    raise RuntimeError(what)


def mobile_node(rig: Rig, k: int) -> MobileNode:
    """Mobile node ``k`` on its own address, its sockets open; not started."""
    from mpa_ike.node.credentials import load_certificates

    address = str(ipaddress.ip_network(MN_NET)[MN_FIRST + k])
    rig.mn.add_addr(rig.mn.links[0], f"{address}/32")
    config = initiator_config(k, load_certificates(rig.ca_file, "ca"))
    node = MobileNode(f"mn{k}", address, GW, config)
    node.open(rig.mn.name)
    return node


def initiator_config(k: int, ca: tuple[x509.Certificate, ...]) -> InitiatorConfig:
    """Mobile node ``k``'s initiator: user ``mn<k>`` (EAP-MSCHAPv2), the gateway's
    proposals, a CHILD SA to the protected network."""
    from mpa_ike.child_sa import ChildSaConfig
    from mpa_ike.constants import ProtocolId
    from mpa_ike.eap import EapType
    from mpa_ike.ike_config import InitiatorConfig
    from mpa_ike.node.service import proposal_specs, wall_clock

    return InitiatorConfig(
        name=f"mn{k}",
        identity=f"{user_of(k)}@mpa-ike.test",
        eap_password=password_of(k),
        remote_id=GATEWAY_ID,
        ike_proposals=proposal_specs([IKE], ProtocolId.IKE),
        child=ChildSaConfig(
            proposal_specs([ESP], ProtocolId.ESP),
            remote_ts=(ipaddress.ip_network(PROTECTED_NET),),
        ),
        ca=ca,
        wall_clock=wall_clock,
        eap_methods=(EapType.MSCHAPV2,),
        eap_identity=user_of(k),
    )
