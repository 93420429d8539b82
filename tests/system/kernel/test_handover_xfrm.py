"""The MPA handover on the testbed with the kernel's XFRM as both daemons' datapath.

The mobile node pre-authenticates with the gateway of B through A, a probe flow runs
between the correspondent and the nCoA through the proactive handover tunnel (kernel
ESP), then A goes down and B comes up: the CHILD SA's states move in place in both
kernels (XFRM_MSG_MIGRATE: the same SPIs, the counters going on) and the flow goes on.

No packet of the flow leaves in clear during the move: what the mobile node sends on
``mn-a`` and ``mn-b``, and what the gateway and A's router send towards it on ``ngw-b``
and ``ara-a``, is captured (outgoing only: a kernel hands the decrypted inbound packet
to the capture again on the device it came in on) and every packet to or from the
correspondent must be inside ESP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from mpa_testbed.probe import analyse
from mpa_testbed.programs import MpaPrograms, ProgramError
from mpa_testbed.topology import Testbed, TestbedSpec
from tests.system.kernel.kernelhelp import parse_sa_counters

FLOW_LIMIT = 60.0
# A probe every 10 ms: at the default 1 ms a user-mode kernel's one CPU falls behind.
PROBE_INTERVAL = 0.01
PREAUTH_TIMEOUT = 60.0
# Where a packet of the flow could leave in clear: the mobile node's outer interfaces,
# and the devices that send towards it (outgoing direction only).
WATCHED = (("mn", "mn-a"), ("mn", "mn-b"), ("ngw", "ngw-b"), ("ara", "ara-a"))
ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
IPPROTO_UDP, IPPROTO_ESP = 17, 50
NAT_T_PORT = 4500


def preauth(programs: MpaPrograms) -> None:
    """``preauth ngw``, waiting on when UML outlasts the command's wait (still trying)."""
    try:
        programs.preauth("ngw")
    except ProgramError as error:
        if "still trying" not in str(error):
            raise
        deadline = time.monotonic() + PREAUTH_TIMEOUT
        while programs.ike_sa("ngw") is None:
            assert time.monotonic() < deadline, f"{error}\n{programs.log_tail('ngw')}"
            time.sleep(0.5)


@contextlib.contextmanager
def outgoing(bed: Testbed, where: Sequence[tuple[str, str]], workdir: Path) -> Iterator[list[Path]]:
    """Every frame each (node, device) of ``where`` sends (tcpdump -Q out), one file
    each; the captures start together (tcpdump is slow to start under UML)."""
    cmd = ["tcpdump", "-Q", "out", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0"]
    paths = [workdir / f"{node}-{dev}.pcap" for node, dev in where]
    procs = [
        bed.popen(node, [*cmd, "-i", dev, "-w", str(path)], stderr=subprocess.PIPE)
        for (node, dev), path in zip(where, paths, strict=True)
    ]
    try:
        for proc, (node, dev) in zip(procs, where, strict=True):
            assert proc.stderr is not None
            line = proc.stderr.readline().decode(errors="replace")
            assert "listening on" in line, f"tcpdump on {node} {dev}: {line}"
        yield paths
        time.sleep(0.2)  # the last frames into the files
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ip_packets(path: Path) -> Iterator[tuple[str, str, int, bytes]]:
    """(src, dst, protocol, payload) of each IP packet in an Ethernet capture."""
    data = path.read_bytes()
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    (linktype,) = struct.unpack(order + "I", data[20:24])
    assert linktype == 1, f"{path}: link type {linktype}, not Ethernet"
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[offset + 8 : offset + 12])[0]
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        ethertype, rest = struct.unpack("!H", frame[12:14])[0], frame[14:]
        if ethertype == ETH_VLAN:
            ethertype, rest = struct.unpack("!H", rest[2:4])[0], rest[4:]
        if ethertype == ETH_IPV4 and len(rest) >= 20:
            header = (rest[0] & 0x0F) * 4
            src, dst = ipaddress.ip_address(rest[12:16]), ipaddress.ip_address(rest[16:20])
            yield str(src), str(dst), rest[9], rest[header:]
        elif ethertype == ETH_IPV6 and len(rest) >= 40:
            src, dst = ipaddress.ip_address(rest[8:24]), ipaddress.ip_address(rest[24:40])
            yield str(src), str(dst), rest[6], rest[40:]


def kind(protocol: int, payload: bytes) -> str:
    if protocol == IPPROTO_ESP:
        return "esp"
    if protocol == IPPROTO_UDP and len(payload) >= 8:
        sport, dport = struct.unpack("!HH", payload[:4])
        if NAT_T_PORT in (sport, dport):
            return "udp-encap" if payload[8:12] != b"\0\0\0\0" else "ike"
        if 500 in (sport, dport):
            return "ike"
    return "clear"


def test_handover_moves_kernel_sas_in_place(tmp_path: Path) -> None:
    bed = Testbed(TestbedSpec(family="dual")).up()
    try:
        programs = bed.start_programs(tmp_path / bed.prefix, family=4, datapath="xfrm")
        preauth(programs)
        ncoa = programs.ncoa("ngw")
        cn = programs.cn_address()
        flow = bed.probe("cn", "mn", ncoa, duration=FLOW_LIMIT, interval=PROBE_INTERVAL).start()
        time.sleep(1.0)
        before = parse_sa_counters(bed.ip("ngw", "-s", "xfrm", "state"))
        with outgoing(bed, WATCHED, tmp_path) as paths:
            files = dict(zip(WATCHED, paths, strict=True))
            time.sleep(0.3)  # the flow on A into the captures
            proc = programs.begin_handover("ngw", timeout=40)
            down = bed.handover("a", "b")
            answer = programs.end_handover(proc)
            time.sleep(2.0)
        report = analyse(flow.stop())
        after = parse_sa_counters(bed.ip("ngw", "-s", "xfrm", "state"))
        print(f"{answer}\nbefore {before}\nafter {after}")
        print(f"forward {report.forward.longest:.3f} s, reverse {report.reverse.longest:.3f} s")
        assert answer.startswith(f"ngw: moved to {ncoa} on mn-b")
        assert set(after) == set(before)  # the same SPIs
        for spi, sa in after.items():
            assert sa.packets > before[spi].packets  # the counters went on
            assert ncoa in (sa.src, sa.dst)  # the mobile node's end is the nCoA now
        for direction in (report.forward, report.reverse):
            assert direction.timeline and direction.timeline[-1].received > down + 0.5

        seen: dict[tuple[str, str], Counter[str]] = {}
        for where, path in files.items():
            kinds: Counter[str] = Counter()
            for src, dst, protocol, payload in ip_packets(path):
                if cn in (src, dst):  # the flow's inner packet, in clear on this wire
                    kinds["clear"] += 1
                elif (what := kind(protocol, payload)) != "clear":
                    kinds[what] += 1
            seen[where] = kinds
        print(f"captured (outgoing): {seen}")
        assert all(kinds["clear"] == 0 for kinds in seen.values()), seen
        # The captures saw the flow: ESP from the mobile node on A before the move and on
        # B after it, and from the gateway on B after it (A's router forwarded it before).
        for where in (("mn", "mn-a"), ("mn", "mn-b"), ("ngw", "ngw-b"), ("ara", "ara-a")):
            assert seen[where]["esp"] + seen[where]["udp-encap"] > 10, (where, seen)
    finally:
        bed.down()
