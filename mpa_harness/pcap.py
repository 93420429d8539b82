"""Packet capture in a namespace (tcpdump) and a minimal pcap reader for UDP datagrams.

The reader knows the classic pcap format (micro- and nanosecond variants, both byte
orders), Ethernet / Linux cooked (v1, v2) / raw IP link types, IPv4 and IPv6 (no
extension headers, no fragments: IKE fragmentation happens above UDP).
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .netns import Netns

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_T_PORT = 4500


@dataclass(frozen=True)
class UdpDatagram:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def _ip_payload(packet: bytes) -> tuple[str, str, int, bytes] | None:
    """(src, dst, protocol, payload) of an IPv4/IPv6 packet, None if not unfragmented IP."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        frag = struct.unpack_from("!H", packet, 6)[0]
        if frag & 0x3FFF:  # MF set or non-zero offset
            return None
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        return src, dst, packet[9], packet[ihl:total]
    if version == 6:
        plen = struct.unpack_from("!H", packet, 4)[0]
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        return src, dst, packet[6], packet[40 : 40 + plen]
    return None


def _link_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:  # Ethernet, possibly one 802.1Q tag
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        offset = 14
        if ethertype == 0x8100:
            ethertype = struct.unpack_from("!H", frame, 16)[0]
            offset = 18
        return frame[offset:] if ethertype in (0x0800, 0x86DD) else None
    if linktype == 113:  # Linux cooked v1
        return frame[16:]
    if linktype == 276:  # Linux cooked v2
        return frame[20:]
    if linktype in (12, 101):  # raw IP
        return frame
    raise ValueError(f"unsupported pcap link type {linktype}")


def read_udp(path: Path) -> list[UdpDatagram]:
    """All UDP datagrams of a pcap file, in capture order."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a classic pcap file (pcapng is not supported)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    out: list[UdpDatagram] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frame = data[offset : offset + incl]
        offset += incl
        ip = _link_payload(linktype, frame)
        parsed = _ip_payload(ip) if ip else None
        if parsed is None or parsed[2] != 17 or len(parsed[3]) < 8:
            continue
        src, dst, _, udp = parsed
        sport, dport, ulen = struct.unpack_from("!HHH", udp, 0)
        ts = sec + frac / (1e9 if nano else 1e6)
        out.append(UdpDatagram(ts, src, sport, dst, dport, udp[8:ulen]))
    return out


Kind = Literal["ike", "esp", "keepalive"]


def classify(dgram: UdpDatagram) -> tuple[Kind, bytes, bool]:
    """(kind, data, marker_stripped): IKE with its non-ESP marker removed, or ESP, or keepalive.

    RFC 3948: on port 4500 a payload starting with four zero bytes is IKE, a single
    0xFF byte is a NAT-keepalive, anything else is ESP.
    """
    p = dgram.payload
    if NAT_T_PORT in (dgram.sport, dgram.dport):
        if p == b"\xff":
            return "keepalive", p, False
        if p.startswith(NON_ESP_MARKER):
            return "ike", p[4:], True
        return "esp", p, False
    return "ike", p, False


@contextlib.contextmanager
def capture(ns: Netns, dev: str, path: Path, bpf: str = "udp") -> Iterator[Path]:
    """tcpdump on ``dev`` inside ``ns`` writing ``path``; stopped (SIGINT) and flushed on exit."""
    proc = ns.popen(tcpdump_argv(dev, path, bpf), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with tcpdump_listening(proc):
        yield path


def tcpdump_argv(dev: str, path: Path, bpf: str) -> list[str]:
    """tcpdump writing what ``bpf`` passes on ``dev`` (``any``: every interface) to
    ``path``, each packet as it comes."""
    # --immediate-mode: with TPACKET_V3 buffering, tcpdump 4.99/libpcap 1.10 on this kernel
    # counted packets "received by filter" but wrote none to the file.
    cmd = ["tcpdump", "-i", dev, "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0"]
    return [*cmd, "-w", str(path), bpf]


@contextlib.contextmanager
def tcpdump_listening(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Once the tcpdump ``proc`` (its stderr a pipe) says it listens (on ``any`` it first
    names the link type); on exit the last packets are flushed and it is stopped."""
    try:
        assert proc.stderr is not None
        seen = []
        while True:  # tcpdump either says it listens or exits (end of file)
            line = proc.stderr.readline().decode(errors="replace")
            seen.append(line)
            if "listening on" in line:
                break
            if not line:
                raise RuntimeError(f"tcpdump did not start: {''.join(seen)}")
        yield
        time.sleep(0.1)  # let the last packets reach the capture buffer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
