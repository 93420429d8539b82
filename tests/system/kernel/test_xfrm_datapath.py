"""The project's XFRM datapath in a kernel with ESP: install, carry, count, move, remove.

Two namespaces each run an ``XfrmDatapath`` with one side of a tunnel-mode CHILD SA
pair (the left one keyed as the initiator, RFC 7296 §2.17). Datagrams between the
inner addresses cross as ESP; the states' counters, read both through the datapath and
with ``ip -s xfrm state``, count them. Then the left side moves to a new outer address
(RFC 4555 §3.5) with ``move_child_sa`` on both ends: same SPIs, counters and sequence
numbers carried on, traffic still crossing. ``remove_child_sa`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.io.xfrm import XfrmDatapath
from tests.system.kernel.conftest import INNER_LEFT, INNER_RIGHT, OUTER_LEFT, OUTER_RIGHT
from tests.system.kernel.kernelhelp import (
    Link,
    ip_batch,
    ns_socket,
    parse_sa_counters,
    udp_exchange,
)

SPI_LEFT_IN, SPI_RIGHT_IN = bytes.fromhex("c1a55e01"), bytes.fromhex("0ddba112")
MOVED_LEFT = {4: "192.0.2.11", 6: "2001:db8::11"}
UDP_ENCAP, UDP_ENCAP_ESPINUDP = 100, 2
# The kernel's lifetime timers first run 1 s after a state or policy is added; UML is
# slow to fire them, so a CHILD SA must still be whole this much later.
OUTLIVE_TIMERS = 3.0


@dataclass(frozen=True)
class Case:
    version: int
    encr_id: EncrId
    integ_id: IntegId | None
    encap: bool

    def keys(self) -> tuple[bytes, bytes, bytes, bytes]:
        """Encryption and integrity keys, left to right then right to left."""
        if self.integ_id is None:  # AES-GCM-16: 128-bit key and 4-byte salt
            return bytes(range(20)), b"", bytes(range(40, 60)), b""
        return bytes(range(16)), bytes(range(16, 48)), bytes(range(64, 80)), bytes(range(80, 112))


CASES = {
    "v4-gcm-udp-encap": Case(4, EncrId.AES_GCM_16, None, True),
    "v6-cbc-sha256-esp": Case(6, EncrId.AES_CBC, IntegId.HMAC_SHA2_256_128, False),
}


def side_params(case: Case, left: bool, local: str, remote: str) -> ChildSaParams:
    enc_lr, integ_lr, enc_rl, integ_rl = case.keys()
    port = 4500 if case.encap else 500
    inner_local, inner_remote = (INNER_LEFT, INNER_RIGHT) if left else (INNER_RIGHT, INNER_LEFT)
    return ChildSaParams(
        spi_in=SPI_LEFT_IN if left else SPI_RIGHT_IN,
        spi_out=SPI_RIGHT_IN if left else SPI_LEFT_IN,
        encr_id=case.encr_id,
        encr_key_bits=128,
        integ_id=case.integ_id,
        encr_key_in=enc_rl if left else enc_lr,
        integ_key_in=integ_rl if left else integ_lr,
        encr_key_out=enc_lr if left else enc_rl,
        integ_key_out=integ_lr if left else integ_rl,
        esn=False,
        local=(local, port),
        remote=(remote, port),
        encap=case.encap,
        local_ts=(TsRange(inner_local[case.version], inner_local[case.version]),),
        remote_ts=(TsRange(inner_remote[case.version], inner_remote[case.version]),),
    )


@contextlib.contextmanager
def espinudp_sockets(hosts: Link, case: Case) -> Iterator[None]:
    """The UDP 4500 sockets that hand ESP in UDP to the kernel (the IKE daemon's, normally)."""
    if not case.encap:
        yield
        return
    family = socket.AF_INET6 if case.version == 6 else socket.AF_INET
    socks = [ns_socket(ns, family) for ns in (hosts.left, hosts.right)]
    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
            sock.bind(("::" if case.version == 6 else "0.0.0.0", 4500))
        yield
    finally:
        for sock in socks:
            sock.close()


def exchange(hosts: Link, case: Case, to_right: int, to_left: int) -> None:
    v = case.version
    there = [b"to the right %d" % i for i in range(to_right)]
    back = [b"to the left %d" % i for i in range(to_left)]
    assert udp_exchange(hosts.left, INNER_LEFT[v], hosts.right, INNER_RIGHT[v], there) == there
    assert udp_exchange(hosts.right, INNER_RIGHT[v], hosts.left, INNER_LEFT[v], back) == back


def check_counters(
    hosts: Link,
    dps: tuple[XfrmDatapath, XfrmDatapath],
    packets: tuple[int, int],
    outer: tuple[str, str],
) -> None:
    """Each side's datapath and ip agree; ``packets`` = (left to right, right to left)."""
    to_right, to_left = packets
    left, right = dps[0].counters(SPI_LEFT_IN), dps[1].counters(SPI_RIGHT_IN)
    assert (left.packets_out, left.packets_in) == (to_right, to_left)
    assert (right.packets_out, right.packets_in) == (to_left, to_right)
    assert left.bytes_out == right.bytes_in and left.bytes_in == right.bytes_out
    spi_left, spi_right = int.from_bytes(SPI_LEFT_IN), int.from_bytes(SPI_RIGHT_IN)
    for ns, out_spi, in_spi, (local, remote), (sent, received), dp_says in (
        (hosts.left, spi_right, spi_left, outer, (to_right, to_left), left),
        (hosts.right, spi_left, spi_right, outer[::-1], (to_left, to_right), right),
    ):
        text = ns.ip("-s", "xfrm", "state").stdout
        shown = parse_sa_counters(text)
        assert set(shown) == {out_spi, in_spi}, text
        assert (shown[out_spi].src, shown[out_spi].dst) == (local, remote), text
        assert (shown[in_spi].src, shown[in_spi].dst) == (remote, local), text
        assert (shown[out_spi].packets, shown[in_spi].packets) == (sent, received), text
        assert (shown[out_spi].bytes, shown[in_spi].bytes) == (dp_says.bytes_out, dp_says.bytes_in)


@contextlib.contextmanager
def xfrm_monitor(hosts: Link) -> Iterator[list[str]]:
    """What the kernel announces on XFRM (expiries above all) in both namespaces meanwhile."""
    procs = [
        subprocess.Popen(
            ["ip", "-n", ns.name, "xfrm", "monitor"], stdout=subprocess.PIPE, text=True
        )
        for ns in (hosts.left, hosts.right)
    ]
    seen: list[str] = []
    try:
        yield seen
    finally:
        for proc in procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            seen.append(out)


def install_pair(hosts: Link, case: Case, dps: tuple[XfrmDatapath, XfrmDatapath]) -> None:
    v = case.version
    dps[0].install_child_sa(side_params(case, True, OUTER_LEFT[v], OUTER_RIGHT[v]))
    dps[1].install_child_sa(side_params(case, False, OUTER_RIGHT[v], OUTER_LEFT[v]))


def open_datapaths(hosts: Link, move_method: str = "readd") -> tuple[XfrmDatapath, XfrmDatapath]:
    return (
        XfrmDatapath(netns=hosts.left.name, move_method=move_method),
        XfrmDatapath(netns=hosts.right.name, move_method=move_method),
    )


def test_child_sa_outlives_the_kernel_lifetime_timers(hosts: Link) -> None:
    """States and policies stay until removed: IKE rekeys and deletes them, not the kernel."""
    case = CASES["v4-gcm-udp-encap"]
    dps = open_datapaths(hosts)
    try:
        with xfrm_monitor(hosts) as announced:
            install_pair(hosts, case, dps)
            time.sleep(OUTLIVE_TIMERS)
            states = [
                ns.ip("xfrm", "state").stdout.count("proto esp") for ns in (hosts.left, hosts.right)
            ]
            policies = [
                ns.ip("xfrm", "policy").stdout.count("dir ") for ns in (hosts.left, hosts.right)
            ]
        assert (states, policies) == ([2, 2], [3, 3]), "".join(announced)
        assert "Expired" not in "".join(announced)
    finally:
        for dp in dps:
            dp.close()


@pytest.mark.parametrize("move_method", ["readd", "migrate"])
@pytest.mark.parametrize("name", list(CASES))
def test_child_sa_pair_carries_moves_and_goes(hosts: Link, name: str, move_method: str) -> None:
    case, v = CASES[name], CASES[name].version
    dps = open_datapaths(hosts, move_method)
    try:
        with espinudp_sockets(hosts, case):
            install_pair(hosts, case, dps)
            time.sleep(OUTLIVE_TIMERS)  # a CHILD SA lives longer than a second
            exchange(hosts, case, 3, 2)
            check_counters(hosts, dps, (3, 2), (OUTER_LEFT[v], OUTER_RIGHT[v]))

            # The left node moves to a new address on the same link.
            nodad = " nodad" if v == 6 else ""
            prefix = 64 if v == 6 else 24
            ip_batch([f"addr add {MOVED_LEFT[v]}/{prefix} dev {hosts.dev[0]}{nodad}"], hosts.left)
            port = 4500 if case.encap else 500
            new_left, right_addr = (MOVED_LEFT[v], port), (OUTER_RIGHT[v], port)
            dps[0].move_child_sa(SPI_LEFT_IN, SPI_RIGHT_IN, new_left, right_addr, case.encap)
            dps[1].move_child_sa(SPI_RIGHT_IN, SPI_LEFT_IN, right_addr, new_left, case.encap)
            exchange(hosts, case, 2, 4)
            check_counters(hosts, dps, (5, 6), (MOVED_LEFT[v], OUTER_RIGHT[v]))

            dps[0].remove_child_sa(SPI_LEFT_IN, SPI_RIGHT_IN)
            dps[1].remove_child_sa(SPI_RIGHT_IN, SPI_LEFT_IN)
            for ns in (hosts.left, hosts.right):
                assert ns.ip("xfrm", "state").stdout == ""
                assert ns.ip("xfrm", "policy").stdout == ""
    finally:
        for dp in dps:
            dp.close()
