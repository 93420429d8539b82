"""A minimal pcap writer (libpcap format, LINKTYPE_RAW: IPv4 packets without a link header)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

LINKTYPE_RAW = 101
_GLOBAL_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
NON_ESP_MARKER = bytes(4)


@dataclass(frozen=True)
class UdpPacket:
    source: tuple[IPv4Address, int]
    destination: tuple[IPv4Address, int]
    payload: bytes


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def ipv4_udp(packet: UdpPacket, ident: int) -> bytes:
    (src, sport), (dst, dport) = packet.source, packet.destination
    udp_length = 8 + len(packet.payload)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, udp_length)
    udp = struct.pack("!HHHH", sport, dport, udp_length, 0) + packet.payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + udp_length, ident, 0x4000, 64, 17, 0, src.packed, dst.packed
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def write_pcap(path: Path, packets: Iterable[UdpPacket], start: int = 1_700_000_000) -> None:
    records = [_GLOBAL_HEADER]
    for index, packet in enumerate(packets):
        frame = ipv4_udp(packet, index + 1)
        records.append(struct.pack("<IIII", start + index, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(records))
