"""UDP echo for the namespace tests.

python3 tests/esp/udp_echo.py serve HOST PORT     # echo until killed; prints "ready"
python3 tests/esp/udp_echo.py client HOST PORT COUNT [SRC]
    # sends COUNT datagrams one at a time, waits up to 2 s for each echo,
    # prints the number of echoes received
"""

from __future__ import annotations

import socket
import sys


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(host: str, port: int) -> None:
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _family(host) == socket.AF_INET6:
        # The inner address may be added just before; bind anyway.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(data, addr)


def client(host: str, port: int, count: int, src: str | None) -> None:
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    if src:
        sock.bind((src, 0))
    sock.settimeout(2.0)
    sent: set[bytes] = set()
    received: set[bytes] = set()
    for i in range(count):
        payload = f"mpa-ike esp echo {i}".encode()
        sent.add(payload)
        sock.sendto(payload, (host, port))
        # Wait for this echo; a late one for an earlier datagram counts too.
        try:
            while payload not in received:
                received.add(sock.recv(65535))
        except TimeoutError:
            pass
    print(len(received & sent), flush=True)


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "serve":
        serve(host, port)
    else:
        client(host, port, int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
