"""A probe flow for outage measurements: a paced UDP sender, a reflector, and gap analysis.

The sender emits one datagram per ``interval`` (1 ms by default) carrying a sequence
number and its send time; the reflector logs every arrival and echoes each datagram back
with its own send time, so both directions are measured by one flow. All namespaces share
the host's ``CLOCK_MONOTONIC``, so one-way delays are read directly off the logs.

    python3 -m mpa_testbed.probe reflect --port 9000 --out refl.json
    python3 -m mpa_testbed.probe send 10.2.0.130 9000 --count 2000 --out send.json

``gaps`` turns arrivals into the longest gap, the lost packets and the timeline;
``analyse`` does it for both directions of a ``FlowLog``; ``ProbeFlow`` runs the two
processes (inside namespaces through an exec prefix such as ``ip netns exec NS``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

MAGIC = b"MPAp"
_HEADER = struct.Struct("!4sIBdd")  # magic, seq, kind, sender's time, reflector's time
KIND_PROBE = 0
KIND_ECHO = 1
MIN_SIZE = _HEADER.size


# -- analysis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """Packet ``seq`` sent at ``sent`` and received at ``received`` (monotonic seconds)."""

    seq: int
    sent: float
    received: float

    @property
    def delay(self) -> float:
        return self.received - self.sent


@dataclass(frozen=True)
class Gap:
    """A silence between two consecutive arrivals."""

    before: Arrival
    after: Arrival

    @property
    def duration(self) -> float:
        return self.after.received - self.before.received

    @property
    def lost(self) -> int:
        """Sequence numbers skipped across the gap (0 if the packets came out of order)."""
        return max(0, self.after.seq - self.before.seq - 1)


@dataclass(frozen=True)
class GapReport:
    """One direction of a flow.

    ``longest`` is the outage seen by the receiver: the longest time between consecutive
    arrivals (``longest_gap``) or the ``trailing`` silence of a flow that never
    recovered; ``gaps`` every inter-arrival time above ``threshold``; ``lost_seqs`` the
    expected sequence numbers that never arrived; ``timeline`` the arrivals in order.
    """

    interval: float
    threshold: float
    expected: int
    received: int
    lost_seqs: tuple[int, ...]
    longest: float
    longest_gap: Gap | None
    trailing: float
    gaps: tuple[Gap, ...]
    timeline: tuple[Arrival, ...]
    delay_median: float | None
    delay_p95: float | None

    @property
    def lost(self) -> int:
        return len(self.lost_seqs)

    def summary(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "longest_gap_ms": round(self.longest * 1e3, 3),
            "trailing_ms": round(self.trailing * 1e3, 3),
            "gaps_ms": [round(g.duration * 1e3, 3) for g in self.gaps],
            "delay_median_ms": _ms(self.delay_median),
            "delay_p95_ms": _ms(self.delay_p95),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def gaps(
    arrivals: Iterable[Arrival],
    interval: float,
    *,
    expected: Iterable[int] | None = None,
    threshold: float | None = None,
    last_sent: float | None = None,
) -> GapReport:
    """Longest gap, lost packets and timeline of one direction.

    ``expected`` are the sequence numbers that were sent (default ``0..max seq``);
    ``threshold`` the inter-arrival time above which a gap is listed (default two
    intervals). Duplicates count once. With ``last_sent`` (when the last expected packet
    left), a flow that never recovers shows its trailing silence: from the last arrival
    to when the last packet would have arrived (``last_sent`` plus the median delay).
    """
    threshold = 2 * interval if threshold is None else threshold
    seen: dict[int, Arrival] = {}
    for arrival in arrivals:
        seen.setdefault(arrival.seq, arrival)
    timeline = tuple(sorted(seen.values(), key=lambda a: (a.received, a.seq)))
    if expected is None:
        expected_set = set(range(max(seen) + 1)) if seen else set()
    else:
        expected_set = set(expected)
    lost = tuple(sorted(expected_set - seen.keys()))
    listed: list[Gap] = []
    longest_gap: Gap | None = None
    for before, after in itertools.pairwise(timeline):
        gap = Gap(before, after)
        if longest_gap is None or gap.duration > longest_gap.duration:
            longest_gap = gap
        if gap.duration > threshold:
            listed.append(gap)
    delays = sorted(a.delay for a in timeline)
    median = statistics.median(delays) if delays else None
    trailing = 0.0
    if last_sent is not None and timeline and lost and lost[-1] > max(seen):
        trailing = max(0.0, last_sent + (median or 0.0) - timeline[-1].received)
    between = longest_gap.duration if longest_gap else 0.0
    return GapReport(
        interval=interval,
        threshold=threshold,
        expected=len(expected_set),
        received=len(timeline),
        lost_seqs=lost,
        longest=max(between, trailing),
        longest_gap=longest_gap,
        trailing=trailing,
        gaps=tuple(listed),
        timeline=timeline,
        delay_median=median,
        delay_p95=_percentile(delays, 0.95) if delays else None,
    )


@dataclass
class FlowLog:
    """What both ends of a flow logged.

    ``sent``: (seq, time) per datagram sent; ``forward``: arrivals at the reflector;
    ``reverse``: echoes back at the sender (``sent`` is the reflector's echo time).
    """

    interval: float
    sent: list[tuple[int, float]] = field(default_factory=list)
    forward: list[Arrival] = field(default_factory=list)
    reverse: list[Arrival] = field(default_factory=list)
    send_errors: int = 0

    def to_json(self) -> dict[str, Any]:
        """Every raw sample, for a benchmark's ``--json`` output."""
        return {
            "interval": self.interval,
            "sent": self.sent,
            "forward": [(a.seq, a.sent, a.received) for a in self.forward],
            "reverse": [(a.seq, a.sent, a.received) for a in self.reverse],
            "send_errors": self.send_errors,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlowLog:
        return cls(
            interval=data["interval"],
            sent=[(s, t) for s, t in data["sent"]],
            forward=[Arrival(*a) for a in data["forward"]],
            reverse=[Arrival(*a) for a in data["reverse"]],
            send_errors=data.get("send_errors", 0),
        )


@dataclass(frozen=True)
class FlowReport:
    forward: GapReport
    reverse: GapReport

    def summary(self) -> dict[str, Any]:
        return {"forward": self.forward.summary(), "reverse": self.reverse.summary()}


def analyse(log: FlowLog, *, threshold: float | None = None) -> FlowReport:
    """Both directions: forward against what was sent, reverse against what was reflected."""
    forward = gaps(
        log.forward,
        log.interval,
        expected=(s for s, _ in log.sent),
        threshold=threshold,
        last_sent=max((t for _, t in log.sent), default=None),
    )
    reverse = gaps(
        log.reverse,
        log.interval,
        expected=(a.seq for a in log.forward),
        threshold=threshold,
        last_sent=max((a.received for a in log.forward), default=None),
    )
    return FlowReport(forward, reverse)


# -- the two ends ------------------------------------------------------------------------


class _Stop:
    """Set by SIGINT/SIGTERM so a loop ends and still writes its log."""

    def __init__(self) -> None:
        self.flag = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.flag = True


def _socket_for(host: str) -> tuple[socket.socket, tuple[Any, ...]]:
    info = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(info[0], socket.SOCK_DGRAM)
    return sock, info[4]


def _pack(seq: int, kind: int, t_send: float, t_reflect: float, size: int) -> bytes:
    header = _HEADER.pack(MAGIC, seq & 0xFFFFFFFF, kind, t_send, t_reflect)
    return header + bytes(max(0, size - len(header)))


def run_sender(
    host: str,
    port: int,
    *,
    interval: float = 0.001,
    count: int | None = None,
    duration: float | None = None,
    size: int = 64,
    linger: float = 0.5,
    started: Any = None,
    heartbeat: float | None = None,
) -> FlowLog:
    """Send paced probes (``interval`` 0 floods) and collect echoes until done or signalled.

    The schedule is absolute; a sender that falls more than one interval behind
    re-anchors instead of bursting. A failed send (no route during a handover) is logged
    as sent: that packet is lost. With ``heartbeat``, every so many seconds a line
    ``echo <time> <sent>`` on stdout tells when the newest echo arrived and when its
    probe left (when it is new): the flow works both ways since then, and has carried
    what was sent until then.
    """
    stop = _Stop()
    sock, addr = _socket_for(host)
    addr = (addr[0], port, *addr[2:])
    sock.setblocking(False)
    log = FlowLog(interval)
    if started is not None:
        started()
    start = time.monotonic()
    end = start + duration if duration is not None else None
    beat = _Heartbeat(heartbeat, log)
    seq = 0
    while not stop.flag and (count is None or seq < count):
        now = time.monotonic()
        beat.tick(now)
        if end is not None and now >= end:
            break
        due = start + seq * interval
        if now >= due:
            try:
                sock.sendto(_pack(seq, KIND_PROBE, now, 0.0, size), addr)
            except BlockingIOError:
                if interval == 0:
                    _drain(sock, log, 0.0001, addr[0])
                    continue
                log.send_errors += 1
            except OSError:
                log.send_errors += 1
            log.sent.append((seq, now))
            seq += 1
            if now - due > interval:
                start = now - (seq - 1) * interval
            continue
        _drain(sock, log, due - now, addr[0])
    deadline = time.monotonic() + linger
    while not stop.flag and time.monotonic() < deadline:
        _drain(sock, log, deadline - time.monotonic(), addr[0])
    sock.close()
    return log


class _Heartbeat:
    """The ``echo <time> <sent>`` lines of :func:`run_sender`."""

    def __init__(self, every: float | None, log: FlowLog) -> None:
        self.every, self.log = every, log
        self.next = 0.0
        self.told = 0

    def tick(self, now: float) -> None:
        if self.every is None or now < self.next:
            return
        self.next = now + self.every
        if len(self.log.reverse) > self.told:
            self.told = len(self.log.reverse)
            newest = self.log.reverse[-1]
            sent = self.log.sent[newest.seq][1] if newest.seq < len(self.log.sent) else 0.0
            print(f"echo {newest.received!r} {sent!r}", flush=True)


def _drain(sock: socket.socket, log: FlowLog, timeout: float, peer: str) -> None:
    """Collect echoes that come from ``peer``: an echo from any other address (the
    reflector answering from the wrong source) would not reach a connected application."""
    ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
    if not ready:
        return
    while True:
        try:
            data, source = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # ICMP errors surface here on some paths
        now = time.monotonic()
        if len(data) < MIN_SIZE or source[0] != peer:
            continue
        magic, seq, kind, _t_send, t_reflect = _HEADER.unpack_from(data)
        if magic == MAGIC and kind == KIND_ECHO:
            log.reverse.append(Arrival(seq, t_reflect, now))


IP_PKTINFO = 8  # Linux; not exported by the socket module


def _reflector_socket(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((bind, port))
    sock.settimeout(0.1)
    return sock


def _reply_from(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Ancillary data that sends the echo from the address the probe was sent to.

    A wildcard-bound socket would otherwise answer from whatever source the route
    prefers, e.g. the old care-of address rather than the nCoA being probed.
    """
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return [(level, kind, data[:16] + struct.pack("=I", 0))]
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return [(level, kind, struct.pack("=I", 0) + data[8:12] + bytes(4))]
    return []


def run_reflector(
    port: int, *, bind: str = "::", echo: bool = True, ready: Any = None
) -> list[Arrival]:
    """Log every probe received (and echo it from the probed address) until signalled."""
    stop = _Stop()
    sock = _reflector_socket(bind, port)
    if ready is not None:
        ready()
    arrivals: list[Arrival] = []
    space = socket.CMSG_SPACE(20)
    while not stop.flag:
        try:
            data, ancillary, _, peer = sock.recvmsg(65536, space)
        except (TimeoutError, InterruptedError):
            continue
        now = time.monotonic()
        if len(data) < MIN_SIZE:
            continue
        magic, seq, kind, t_send, _ = _HEADER.unpack_from(data)
        if magic != MAGIC or kind != KIND_PROBE:
            continue
        arrivals.append(Arrival(seq, t_send, now))
        if echo:
            reply = _pack(seq, KIND_ECHO, t_send, time.monotonic(), len(data))
            with contextlib.suppress(OSError):
                sock.sendmsg([reply], _reply_from(ancillary), 0, peer)
    sock.close()
    return arrivals


# -- running a flow between namespaces ---------------------------------------------------


class ProbeFlow:
    """A reflector and a sender, each a process started through an exec prefix.

    ``ProbeFlow(["ip", "netns", "exec", "cn"], ["ip", "netns", "exec", "mn"], "10.2.0.130")``
    then ``start()``, and ``wait()`` (bounded flow) or ``stop()`` for the ``FlowLog``.
    """

    def __init__(
        self,
        sender_prefix: Sequence[str],
        reflector_prefix: Sequence[str],
        target: str,
        *,
        port: int = 9000,
        interval: float = 0.001,
        count: int | None = None,
        duration: float | None = None,
        size: int = 64,
        linger: float = 0.5,
        echo: bool = True,
        workdir: str | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self.sender_prefix = list(sender_prefix)
        self.reflector_prefix = list(reflector_prefix)
        self.target = target
        self.port = port
        self.interval = interval
        self.count = count
        self.duration = duration
        self.size = size
        self.linger = linger
        self.echo = echo
        self.heartbeat = heartbeat
        self._last_echo: float | None = None
        self._echoed_probe: float | None = None
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="probe")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.sender: subprocess.Popen[bytes] | None = None
        self.reflector: subprocess.Popen[bytes] | None = None

    def _module(self) -> list[str]:
        return [sys.executable, "-m", "mpa_testbed.probe"]

    def start(self, timeout: float = 10.0) -> ProbeFlow:
        """Start the reflector, then the sender; return once the first probe is due."""
        refl = [*self._module(), "reflect", "--port", str(self.port)]
        refl += ["--out", str(self.workdir / "reflector.json")]
        if not self.echo:
            refl.append("--no-echo")
        self.reflector = subprocess.Popen([*self.reflector_prefix, *refl], stdout=subprocess.PIPE)
        assert self.reflector.stdout is not None
        ready, _, _ = select.select([self.reflector.stdout], [], [], timeout)
        if not ready or not self.reflector.stdout.readline().startswith(b"ready"):
            self._kill()
            raise RuntimeError("probe reflector did not start")
        send = [*self._module(), "send", self.target, str(self.port)]
        send += ["--interval", repr(self.interval), "--size", str(self.size)]
        send += ["--linger", repr(self.linger)]
        if self.count is not None:
            send += ["--count", str(self.count)]
        if self.duration is not None:
            send += ["--duration", repr(self.duration)]
        send += ["--out", str(self.workdir / "sender.json")]
        if self.heartbeat is not None:
            send += ["--heartbeat", repr(self.heartbeat)]
        self.sender = subprocess.Popen([*self.sender_prefix, *send], stdout=subprocess.PIPE)
        assert self.sender.stdout is not None
        ready, _, _ = select.select([self.sender.stdout], [], [], timeout)
        if not ready or not self.sender.stdout.readline().startswith(b"sending"):
            self._kill()
            raise RuntimeError("probe sender did not start")
        return self

    def last_echo(self) -> float | None:
        """When the newest echo reached the sender, as its heartbeat has told so far
        (``heartbeat`` set; monotonic clock, shared by the namespaces)."""
        self._read_heartbeat()
        return self._last_echo

    def echoed_probe(self) -> float | None:
        """When the probe of the newest echo left the sender, as its heartbeat has told
        so far: what was sent before has had its chance to come back."""
        self._read_heartbeat()
        return self._echoed_probe

    def _read_heartbeat(self) -> None:
        stdout = self.sender.stdout if self.sender is not None else None
        if stdout is None or stdout.closed:
            return
        while select.select([stdout], [], [], 0)[0]:
            line = stdout.readline()
            if not line:
                break
            if line.startswith(b"echo "):
                fields = line.split()
                self._last_echo = float(fields[1])
                self._echoed_probe = float(fields[2])

    def wait(self, timeout: float | None = None) -> FlowLog:
        """Wait for a bounded sender to finish, then stop the reflector."""
        assert self.sender is not None
        self.sender.wait(timeout)
        return self._collect()

    def stop(self) -> FlowLog:
        """Stop the sender now (it still waits briefly for echoes), then the reflector."""
        if self.sender is not None and self.sender.poll() is None:
            self.sender.send_signal(signal.SIGINT)
            self.sender.wait(10)
        return self._collect()

    def _collect(self) -> FlowLog:
        assert self.reflector is not None
        if self.sender is not None and self.sender.stdout is not None:
            self.sender.stdout.close()
        if self.reflector.poll() is None:
            self.reflector.send_signal(signal.SIGINT)
            self.reflector.wait(10)
        if self.reflector.stdout is not None:
            self.reflector.stdout.close()
        sender = json.loads((self.workdir / "sender.json").read_text())
        reflector = json.loads((self.workdir / "reflector.json").read_text())
        log = FlowLog(
            interval=sender["interval"],
            sent=[(s, t) for s, t in sender["sent"]],
            forward=[Arrival(*a) for a in reflector["arrivals"]],
            reverse=[Arrival(*a) for a in sender["echoes"]],
            send_errors=sender["send_errors"],
        )
        if self._tmp is not None:
            self._tmp.cleanup()
        return log

    def _kill(self) -> None:
        for proc in (self.sender, self.reflector):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def __enter__(self) -> ProbeFlow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._kill()


# -- ICMP echo (no ping binary needed) ---------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(
    host: str, *, count: int = 3, interval: float = 0.05, timeout: float = 1.0
) -> list[float | None]:
    """ICMP echo round-trip times in seconds (None when unanswered); needs root (raw socket).

    IPv4 and IPv6 alike: the kernel computes the ICMPv6 checksum, ours covers ICMP.
    """
    info = socket.getaddrinfo(host, None, type=socket.SOCK_RAW)[0]
    v6 = info[0] == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request, reply = (128, 129) if v6 else (8, 0)
    ident = os.getpid() & 0xFFFF
    rtts: list[float | None] = []
    with socket.socket(info[0], socket.SOCK_RAW, proto) as sock:
        for seq in range(count):
            if seq:
                time.sleep(interval)
            sent = time.monotonic()
            body = struct.pack("!HHd", ident, seq, sent)
            csum = 0 if v6 else _checksum(struct.pack("!BBH", request, 0, 0) + body)
            sock.sendto(struct.pack("!BBH", request, 0, csum) + body, info[4])
            rtts.append(_await_echo(sock, v6, reply, ident, seq, sent + timeout))
    return rtts


def _await_echo(
    sock: socket.socket, v6: bool, reply: int, ident: int, seq: int, deadline: float
) -> float | None:
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data = sock.recv(65536)
        now = time.monotonic()
        if not v6:
            data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the IP header
        if len(data) < 8:
            continue
        kind, _, _, got_ident, got_seq = struct.unpack_from("!BBHHH", data)
        if kind == reply and got_ident == ident and got_seq == seq:
            sent: float = struct.unpack_from("!d", data, 8)[0] if len(data) >= 16 else now
            return now - sent
    return None


# -- command line ------------------------------------------------------------------------


def _write(path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m mpa_testbed.probe")
    sub = parser.add_subparsers(dest="role", required=True)
    send = sub.add_parser("send", help="paced probes with sequence numbers and times")
    send.add_argument("host")
    send.add_argument("port", type=int)
    send.add_argument("--interval", type=float, default=0.001, help="seconds (0: flood)")
    send.add_argument("--count", type=int)
    send.add_argument("--duration", type=float)
    send.add_argument("--size", type=int, default=64, help=f"UDP payload bytes (>= {MIN_SIZE})")
    send.add_argument("--linger", type=float, default=0.5, help="wait for echoes at the end")
    send.add_argument("--out", default="-")
    send.add_argument(
        "--heartbeat", type=float, help="print 'echo <time>' of the newest echo this often"
    )
    refl = sub.add_parser("reflect", help="log arrivals and echo them")
    refl.add_argument("--port", type=int, default=9000)
    refl.add_argument("--bind", default="::")
    refl.add_argument("--no-echo", action="store_true")
    refl.add_argument("--out", default="-")
    echo = sub.add_parser("ping", help="ICMP echo (IPv4 or IPv6); exit 1 if any is lost")
    echo.add_argument("host")
    echo.add_argument("--count", type=int, default=3)
    echo.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.role == "ping":
        rtts = ping(args.host, count=args.count, timeout=args.timeout)
        for seq, rtt in enumerate(rtts):
            print(f"seq={seq} " + (f"time={rtt * 1e3:.3f} ms" if rtt is not None else "lost"))
        return 0 if all(rtt is not None for rtt in rtts) else 1
    if args.role == "send":
        log = run_sender(
            args.host,
            args.port,
            interval=args.interval,
            count=args.count,
            duration=args.duration,
            size=args.size,
            linger=args.linger,
            started=None if args.out == "-" else lambda: print("sending", flush=True),
            heartbeat=args.heartbeat,
        )
        echoes = [(a.seq, a.sent, a.received) for a in log.reverse]
        data = {"interval": log.interval, "sent": log.sent, "echoes": echoes}
        _write(args.out, {**data, "send_errors": log.send_errors})
    else:
        arrivals = run_reflector(
            args.port,
            bind=args.bind,
            echo=not args.no_echo,
            ready=lambda: print("ready", flush=True),
        )
        _write(args.out, {"arrivals": [(a.seq, a.sent, a.received) for a in arrivals]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
