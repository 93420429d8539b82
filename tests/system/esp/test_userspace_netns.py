"""End to end: two userspace ESP datapaths with hand-installed SAs, in namespaces.

Topology (names carry the harness's per-process tag)::

    mn [tun 10.9.0.1, fd00:9::1] --veth 192.0.2.0/24, 2001:db8:1::/64-- gw [tun]
    gw --veth 10.1.0.0/24, fd00:1::/64-- lan 10.1.0.1, fd00:1::1

Each of mn and gw runs ``tests/system/esp/esp_node.py`` (TUN device, UDP 4500 socket,
one SA pair carrying both inner families). UDP echoes go both ways between lan
and the MN's inner addresses; then crafted ESP packets (a replay, a tampered
one, one with an unknown SPI) are sent to the gateway from a plain UDP socket.
Needs root; skips elsewhere, fails when CI=true.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mpa_harness import guards
from mpa_harness.netns import Netns, add_veth, netns
from mpa_ike.constants import EncrId, IntegId
from mpa_ike.esp import OutboundSa, make_transform

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
NODE = str(HERE / "esp_node.py")
ECHO = str(HERE / "udp_echo.py")
COUNT = 5

SPI_TO_GW = "c0000001"
SPI_TO_MN = "c0000002"
OUTER = {
    4: ("192.0.2.1", "192.0.2.2", "192.0.2.1/24", "192.0.2.2/24"),
    6: ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::1/64", "2001:db8:1::2/64"),
}
MN_INNER = {4: "10.9.0.1", 6: "fd00:9::1"}
LAN_HOST = {4: "10.1.0.1", 6: "fd00:1::1"}
LAN_TS = [["10.1.0.0", "10.1.0.255"], ["fd00:1::", "fd00:1::ffff:ffff:ffff:ffff"]]
MN_TS = [["10.9.0.1", "10.9.0.1"], ["fd00:9::1", "fd00:9::1"]]

SUITES = {
    "gcm128": (EncrId.AES_GCM_16, 128, None, 20, 0),
    "cbc-sha256": (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, 16, 32),
}


def require_netns() -> None:
    guards.require(guards.namespaces_unavailable(), "the userspace ESP tests")


def keys(suite: str) -> dict[str, Any]:
    encr_id, bits, integ_id, ek_len, ik_len = SUITES[suite]
    return {
        "encr_id": int(encr_id),
        "encr_key_bits": bits,
        "integ_id": None if integ_id is None else int(integ_id),
        "mn_gw_encr": bytes(range(1, 1 + ek_len)).hex(),
        "mn_gw_integ": bytes(range(101, 101 + ik_len)).hex(),
        "gw_mn_encr": bytes(range(51, 51 + ek_len)).hex(),
        "gw_mn_integ": bytes(range(151, 151 + ik_len)).hex(),
    }


def sa_config(k: dict[str, Any], side: str, outer: int, plain: bool) -> dict[str, Any]:
    mn_addr, gw_addr = OUTER[outer][:2]
    to_gw = {"encr": k["mn_gw_encr"], "integ": k["mn_gw_integ"]}
    to_mn = {"encr": k["gw_mn_encr"], "integ": k["gw_mn_integ"]}
    mine, theirs = (to_mn, to_gw) if side == "mn" else (to_gw, to_mn)
    return {
        "spi_in": SPI_TO_MN if side == "mn" else SPI_TO_GW,
        "spi_out": SPI_TO_GW if side == "mn" else SPI_TO_MN,
        "encr_id": k["encr_id"],
        "encr_key_bits": k["encr_key_bits"],
        "integ_id": k["integ_id"],
        "encr_key_in": mine["encr"],
        "integ_key_in": mine["integ"],
        "encr_key_out": theirs["encr"],
        "integ_key_out": theirs["integ"],
        "esn": False,
        "encap": not plain,
        "local": [mn_addr if side == "mn" else gw_addr, 4500],
        "remote": [gw_addr if side == "mn" else mn_addr, 4500],
        "local_ts": MN_TS if side == "mn" else LAN_TS,
        "remote_ts": LAN_TS if side == "mn" else MN_TS,
    }


class Node:
    """An esp_node.py process inside a namespace, driven over its stdin/stdout."""

    def __init__(self, ns: Netns, config: dict[str, Any]) -> None:
        self.proc = ns.popen(
            [sys.executable, NODE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = self._readline(10.0)
        if line != "ready":
            self.close()
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"esp_node did not start: {line!r}\n{err}")

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode().strip()

    def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._readline(10.0))
        return answer

    def wait_for(
        self, done: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Poll the counters until ``done`` holds (or time out); the last report."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.command("counters")
            if done(report) or time.monotonic() > deadline:
                return report
            time.sleep(0.05)

    def sa(self, spi_in: str) -> dict[str, Any]:
        report: dict[str, Any] = self.command("counters")["sas"][spi_in]
        return report

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Topology:
    mn: Netns
    gw: Netns
    lan: Netns
    outer: int
    keys: dict[str, Any]
    mn_node: Node
    gw_node: Node
    mn_dev: str


@contextlib.contextmanager
def topology(
    outer: int, suite: str, mn_bind: str | None = None, plain: bool = False
) -> Iterator[Topology]:
    with netns("mn") as mn, netns("gw") as gw, netns("lan") as lan:
        mn_addr, gw_addr = OUTER[outer][:2]
        for ns in (mn, gw, lan):
            # Link-local addresses in DAD delay neighbour discovery by a second or more.
            ns.run(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])
            ns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])
        uplink = add_veth(mn, gw, [OUTER[4][2], OUTER[6][2]], [OUTER[4][3], OUTER[6][3]])
        add_veth(gw, lan, ["10.1.0.254/24", "fd00:1::fe/64"], ["10.1.0.1/24", "fd00:1::1/64"])
        lan.ip("route", "add", "default", "via", "10.1.0.254")
        lan.ip("-6", "route", "add", "default", "via", "fd00:1::fe")
        gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        k = keys(suite)
        mn_node = Node(
            mn,
            {
                "inner_addresses": [MN_INNER[4], MN_INNER[6]],
                "bind": [mn_bind or mn_addr],
                "plain": plain,
                "sas": [sa_config(k, "mn", outer, plain)],
            },
        )
        try:
            gw_node = Node(
                gw,
                {"bind": [gw_addr], "plain": plain, "sas": [sa_config(k, "gw", outer, plain)]},
            )
            try:
                yield Topology(mn, gw, lan, outer, k, mn_node, gw_node, uplink.a.dev)
            finally:
                gw_node.close()
        finally:
            mn_node.close()


def echo(server_ns: Netns, server: str, client_ns: Netns, src: str, count: int) -> int:
    """Run an echo server and a client; the number of echoes the client got."""
    srv = server_ns.popen(
        [sys.executable, ECHO, "serve", server, "7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert srv.stdout is not None
        ready, _, _ = select.select([srv.stdout], [], [], 10.0)
        assert ready and srv.stdout.readline().strip() == b"ready"
        out = client_ns.run([sys.executable, ECHO, "client", server, "7", str(count), src]).stdout
        return int(out.strip())
    finally:
        srv.kill()
        srv.wait()


def udp_packet(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4 UDP packet (checksums zero: it is only checked by the ESP layer here)."""
    import ipaddress

    udp = (4321).to_bytes(2, "big") + (9).to_bytes(2, "big")
    udp += (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    total = 20 + len(udp)
    header = bytes([0x45, 0]) + total.to_bytes(2, "big") + b"\0\0\0\0" + bytes([64, 17, 0, 0])
    return header + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + udp


def inject(ns: Netns, dst: str, payloads: list[bytes], plain: bool = False) -> None:
    """Send each payload to dst from inside ``ns``: UDP to port 4500, or raw ESP."""
    script = (
        "import socket,sys\n"
        "fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
        "plain = sys.argv[2] == 'plain'\n"
        "s = socket.socket(fam, socket.SOCK_RAW, 50) if plain else "
        "socket.socket(fam, socket.SOCK_DGRAM)\n"
        "for h in sys.argv[3:]: s.sendto(bytes.fromhex(h), (sys.argv[1], 0 if plain else 4500))\n"
    )
    mode = "plain" if plain else "udp"
    ns.run([sys.executable, "-c", script, dst, mode, *(p.hex() for p in payloads)])


@pytest.mark.parametrize(
    ("outer", "suite", "plain"),
    [(outer, suite, False) for outer in (4, 6) for suite in sorted(SUITES)]
    + [(4, "gcm128", True), (6, "cbc-sha256", True)],
)
def test_userspace_esp_echo(outer: int, suite: str, plain: bool) -> None:
    """Echoes both ways, exact counters, forged packets dropped (ESP in UDP or plain)."""
    require_netns()
    with topology(outer, suite, plain=plain) as topo:
        for inner in (4, 6):
            got = echo(topo.lan, LAN_HOST[inner], topo.mn, MN_INNER[inner], COUNT)
            assert got == COUNT, f"MN -> lan echo, inner IPv{inner}"
            got = echo(topo.mn, MN_INNER[inner], topo.lan, LAN_HOST[inner], COUNT)
            assert got == COUNT, f"lan -> MN echo, inner IPv{inner}"
        # Each family: COUNT requests and COUNT echoes each way, so 4 * COUNT per
        # direction in total, and not one packet more (nothing else matches the TS).
        expected = 4 * COUNT
        mn, gw = topo.mn_node.sa(SPI_TO_MN), topo.gw_node.sa(SPI_TO_GW)
        assert (mn["packets_out"], mn["packets_in"]) == (expected, expected), mn
        assert (gw["packets_out"], gw["packets_in"]) == (expected, expected), gw
        assert mn["bytes_out"] == gw["bytes_in"] and gw["bytes_out"] == mn["bytes_in"]
        assert mn["drops"] == {} and gw["drops"] == {}

        # Crafted packets from the MN's side to the gateway's inbound SA.
        k = topo.keys
        transform = make_transform(
            k["encr_id"],
            k["encr_key_bits"],
            k["integ_id"],
            bytes.fromhex(k["mn_gw_encr"]),
            bytes.fromhex(k["mn_gw_integ"]),
        )
        forger = OutboundSa(bytes.fromhex(SPI_TO_GW), transform)
        crafted = udp_packet(MN_INNER[4], LAN_HOST[4], b"crafted")
        replayed = forger.encrypt(crafted)  # sequence number 1, long since received
        forger.seq = 1_000_000
        fresh = forger.encrypt(crafted)
        tampered = fresh[:-20] + bytes([fresh[-20] ^ 1]) + fresh[-19:]
        wrong_spi = bytes.fromhex("c0000099") + fresh[4:]
        gw_outer = OUTER[outer][1]
        inject(topo.mn, gw_outer, [replayed, tampered, wrong_spi], plain)

        # The node reads stdin and the socket on one loop: wait until it has seen all three.
        report = topo.gw_node.wait_for(
            lambda r: (
                sum(r["sas"][SPI_TO_GW]["drops"].values()) + r["drops"].get("unknown-spi", 0) >= 3
            )
        )
        gw = report["sas"][SPI_TO_GW]
        assert gw["drops"] == {"replay": 1, "bad-icv": 1}, gw
        # "no-sa" counts the kernel's own IPv6 multicast (MLD, RS) sent into the TUN.
        others = {k: v for k, v in report["drops"].items() if k != "no-sa"}
        assert others == {"unknown-spi": 1}, report
        assert gw["packets_in"] == expected

        # The tunnel still works after the attempts (the window did not move).
        assert echo(topo.lan, LAN_HOST[4], topo.mn, MN_INNER[4], 2) == 2
        assert topo.gw_node.sa(SPI_TO_GW)["packets_in"] == expected + 2


def test_userspace_esp_address_move() -> None:
    """move_child_sa (MOBIKE, RFC 4555 §3.5) keeps sequence numbers and replay state."""
    require_netns()
    with topology(4, "gcm128", mn_bind="0.0.0.0") as topo:
        assert echo(topo.lan, LAN_HOST[4], topo.mn, MN_INNER[4], 3) == 3
        # The MN's outer address changes; its wildcard socket now sends from the new one.
        new_addr = "192.0.2.11"
        topo.mn.run(["sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"])
        topo.mn.add_addr(topo.mn_dev, f"{new_addr}/24")
        topo.mn.del_addr(topo.mn_dev, "192.0.2.1/24")
        gw_addr = OUTER[4][1]
        assert topo.mn_node.command(f"update {SPI_TO_MN} {SPI_TO_GW} {new_addr} {gw_addr}")["ok"]
        assert topo.gw_node.command(f"update {SPI_TO_GW} {SPI_TO_MN} {gw_addr} {new_addr}")["ok"]
        assert echo(topo.lan, LAN_HOST[4], topo.mn, MN_INNER[4], 3) == 3
        gw = topo.gw_node.sa(SPI_TO_GW)
        assert gw["remote"] == [new_addr, 4500]
        assert (gw["packets_in"], gw["packets_out"], gw["drops"]) == (6, 6, {})
        mn = topo.mn_node.sa(SPI_TO_MN)
        assert (mn["packets_in"], mn["packets_out"], mn["drops"]) == (6, 6, {})
