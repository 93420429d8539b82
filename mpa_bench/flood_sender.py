"""The sender of ``mpa-bench flood``: IKE_SA_INIT requests from random SPIs and random
source addresses of a subnet, as fast as one process can (or at ``--rate``), through a
raw socket (the IP header is ours: any source address).

Run inside the flooding namespace (``ip netns exec NS python -m mpa_bench.flood_sender
...``); prints one JSON line at the end: ``{"sent": N, "seconds": S, "errors": E}``.
The request is a real one of our initiator core (SA, KE x25519, Ni, NAT-D, the
capability notifies); each copy gets its own SPIi and source address, the UDP checksum
0 (none, RFC 768) and the IP checksum from the kernel.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time

from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import ProtocolId
from mpa_ike.endpoint import Endpoint
from mpa_ike.ike_config import InitiatorConfig

IKE_PORT = 500
IP_HEADER = 20
UDP_HEADER = 8
SPI_AT = IP_HEADER + UDP_HEADER  # the IKE header's SPIi
SOURCE_AT = 12  # the IP header's source address
BATCH = 256  # packets between clock reads at full speed
PACED_BATCHES = 1000  # a second at --rate in this many bursts, not a receive queue's worth


def init_request(gateway: str, ike: str) -> bytes:
    """One IKE_SA_INIT request as our initiator builds it."""
    from mpa_ike.node.service import proposal_specs

    config = InitiatorConfig(
        name="flood",
        identity="flood",
        eap_password="",
        remote_id="gateway",
        ike_proposals=proposal_specs([ike], ProtocolId.IKE),
        child=ChildSaConfig(proposal_specs(["aes128gcm16"], ProtocolId.ESP)),
        psk=b"flood",
    )
    node = Endpoint(random=os.urandom)
    node.initiate(config, ("192.0.2.1", IKE_PORT), (gateway, IKE_PORT), 0.0)
    (datagram,) = node.datagrams_to_send(0.0)
    return datagram.data


def packet_template(gateway: str, ike_message: bytes) -> bytearray:
    length = IP_HEADER + UDP_HEADER + len(ike_message)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length,
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        bytes(4),
        ipaddress.IPv4Address(gateway).packed,
    )
    udp = struct.pack("!HHHH", IKE_PORT, IKE_PORT, UDP_HEADER + len(ike_message), 0)
    return bytearray(ip + udp + ike_message)


def flood(
    gateway: str, subnet: str, seconds: float, rate: float, seed: int, ike: str
) -> dict[str, float]:
    network = ipaddress.IPv4Network(subnet)
    base, span = int(network.network_address), network.num_addresses
    packet = packet_template(gateway, init_request(gateway, ike))
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    destination = (gateway, 0)
    sent = errors = 0
    start = time.monotonic()
    end = start + seconds
    now = start
    getrandbits, sendto = rng.getrandbits, sock.sendto
    batch = BATCH if rate <= 0 else max(1, min(BATCH, int(rate / PACED_BATCHES)))
    while now < end:
        for _ in range(batch):
            packet[SOURCE_AT : SOURCE_AT + 4] = (base + getrandbits(32) % span).to_bytes(4, "big")
            packet[SPI_AT : SPI_AT + 8] = getrandbits(64).to_bytes(8, "big")
            try:
                sendto(packet, destination)
            except OSError:  # ENOBUFS: the device queue is full; count and go on
                errors += 1
            else:
                sent += 1
        now = time.monotonic()
        if rate > 0:
            ahead = sent / rate - (now - start)
            if ahead > 0:
                time.sleep(ahead)
                now = time.monotonic()
    sock.close()
    return {"sent": sent, "errors": errors, "seconds": now - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpa_bench.flood_sender")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--subnet", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="per second (0: at once)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ike", default="aes128-sha256-x25519")
    args = parser.parse_args(argv)
    result = flood(args.gateway, args.subnet, args.seconds, args.rate, args.seed, args.ike)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
