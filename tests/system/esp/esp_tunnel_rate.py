"""Packets per second through a hand-keyed userspace ESP tunnel (a measurement, not a test).

    sudo python3 tests/esp/esp_tunnel_rate.py [--suite gcm128] [--size 64] [--rates 20000,40000]

Builds the namespace topology of ``test_userspace_netns.py`` (lan -- gw == ESP == mn)
and, for each offered rate, sends UDP datagrams of ``--size`` bytes from the lan
host to the MN's inner address for ``--seconds``, counting what arrives. The
gateway's datapath reads the TUN device, encrypts and sends; the MN's receives,
decrypts and writes its TUN device. Drops at the gateway's TUN queue (the
datapath not keeping up) are reported from ``ip -s link``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from test_userspace_netns import MN_INNER, SUITES, topology

RECEIVER = r"""
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
u.bind((sys.argv[1], 9))
u.settimeout(2.0)
print("ready", flush=True)
n, first, last = 0, 0.0, 0.0
try:
    while True:
        u.recv(65535)
        last = time.perf_counter()
        first = first or last
        n += 1
except TimeoutError:
    pass
print(n, last - first, flush=True)
"""

SENDER = r"""
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, size, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
payload = bytes(size - 28)
start = time.perf_counter()
for i in range(count):
    u.sendto(payload, (dst, 9))
    if i % 50 == 0:
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
"""


def tun_tx_dropped(text: str) -> int:
    """TX dropped of the mpa TUN device in ``ip -s link`` output."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if ": mpa" in line:
            tx = next(j for j in range(i, len(lines)) if lines[j].strip().startswith("TX:"))
            return int(lines[tx + 1].split()[3])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=sorted(SUITES), default="gcm128")
    parser.add_argument("--size", type=int, default=64, help="inner IP packet size")
    parser.add_argument("--rates", default="20000,40000,80000")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    with topology(4, args.suite) as topo:
        dropped_before = 0
        for rate in (int(r) for r in args.rates.split(",")):
            receiver = topo.mn.popen(
                [sys.executable, "-c", RECEIVER, MN_INNER[4]], stdout=subprocess.PIPE
            )
            assert receiver.stdout is not None
            receiver.stdout.readline()
            count = int(rate * args.seconds)
            cmd = [sys.executable, "-c", SENDER, MN_INNER[4], str(args.size), str(count), str(rate)]
            topo.lan.run(cmd, timeout=120)
            got_text, span_text = receiver.stdout.readline().decode().split()
            receiver.wait()
            got, span = int(got_text), float(span_text)
            dropped = tun_tx_dropped(topo.gw.ip("-s", "link").stdout)
            print(
                f"{args.suite} {args.size} B, offered {rate}/s: received {got}/{count} "
                f"({got / count:.1%}) at {got / span if span else 0:.0f}/s; "
                f"gateway TUN queue drops {dropped - dropped_before}",
                flush=True,
            )
            dropped_before = dropped


if __name__ == "__main__":
    main()
