"""Helpers of the kernel group: sockets inside a namespace, ESP counters as ip shows them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mpa_harness.netns import Netns, delete_netns, unique_name

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip_batch(lines: Sequence[str], ns: Netns | None = None) -> None:
    """Several ``ip`` commands in one process (each process costs ~0.1 s under UML)."""
    where = ["-n", ns.name] if ns is not None else []
    proc = subprocess.run(
        ["ip", *where, "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssertionError(f"ip -batch failed: {proc.stderr.strip()}\n" + "\n".join(lines))


@dataclass(frozen=True)
class Link:
    """Two namespaces joined by one veth pair, ``dev`` the ends' names (left, right)."""

    left: Netns
    right: Netns
    dev: tuple[str, str]


@contextlib.contextmanager
def linked_namespaces(
    left_lines: Sequence[str] = (), right_lines: Sequence[str] = ()
) -> Iterator[Link]:
    """Two fresh namespaces on one veth link, lo and the link up, deleted on exit.

    ``left_lines`` and ``right_lines`` are further ``ip`` commands for each side, where
    ``{dev}`` stands for that side's end of the link.
    """
    left, right = Netns(unique_name("kl")), Netns(unique_name("kr"))
    dev = (unique_name("kva"), unique_name("kvb"))
    try:
        ip_batch(
            [
                f"netns add {left.name}",
                f"netns add {right.name}",
                f"link add {dev[0]} netns {left.name} type veth peer {dev[1]} netns {right.name}",
            ]
        )
        for ns, end, lines in ((left, dev[0], left_lines), (right, dev[1], right_lines)):
            ip_batch(
                ["link set lo up", f"link set {end} up", *(x.format(dev=end) for x in lines)], ns
            )
        yield Link(left, right, dev)
    finally:
        delete_netns(right)
        delete_netns(left)


def ns_socket(ns: Netns, family: int, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket created inside ``ns``; it stays there whatever thread uses it.

    Only a short-lived thread enters the namespace (setns acts on the calling thread),
    so the test process itself never leaves its own.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns.name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def udp_exchange(
    tx_ns: Netns, src: str, rx_ns: Netns, dst: str, payloads: list[bytes], port: int = 7000
) -> list[bytes]:
    """Send each payload from ``src`` in ``tx_ns`` to ``dst`` in ``rx_ns``; what arrived."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    rx = ns_socket(rx_ns, family)
    tx = ns_socket(tx_ns, family)
    try:
        rx.bind((dst, port))
        rx.settimeout(2.0)
        tx.bind((src, 0))
        got = []
        for payload in payloads:
            tx.sendto(payload, (dst, port))
            try:
                got.append(rx.recv(65536))
            except TimeoutError:
                break
        return got
    finally:
        rx.close()
        tx.close()


@dataclass(frozen=True)
class SaCounters:
    """One ESP state as ``ip -s xfrm state`` shows it."""

    src: str
    dst: str
    spi: int
    bytes: int
    packets: int


_STATE = re.compile(
    r"^src (\S+) dst (\S+)\n\s+proto esp spi 0x([0-9a-f]+).*?"
    r"lifetime current:\n\s+(\d+)\(bytes\), (\d+)\(packets\)",
    re.MULTILINE | re.DOTALL,
)


def ip_sa_counters(ns: Netns) -> dict[int, SaCounters]:
    """The ESP states of ``ns`` by SPI, read with ``ip -s xfrm state``."""
    return parse_sa_counters(ns.ip("-s", "xfrm", "state").stdout)


def parse_sa_counters(text: str) -> dict[int, SaCounters]:
    """The ESP states in ``ip -s xfrm state`` output, by SPI."""
    out = {}
    for m in _STATE.finditer(text):
        sa = SaCounters(m[1], m[2], int(m[3], 16), int(m[4]), int(m[5]))
        out[sa.spi] = sa
    return out
