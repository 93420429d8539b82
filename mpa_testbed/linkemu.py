"""Userspace link emulation between network namespaces over TAP devices.

The kernel here has no netem, so a link with delay or loss is a process: it creates two
TAP devices, moves one into each namespace (keeping their file descriptors), and carries
Ethernet frames between them. Each direction has its own one-way delay, jitter, random
loss (seeded), and rate (serialization delay behind a byte-limited tail-drop queue).

A link can be taken down and up at run time: frames in flight are dropped and the TAP
carrier goes off, so the namespace side sees NO-CARRIER and a netlink link event while
the interface stays administratively UP with its addresses: a layer-2 handover.
``switch`` takes one link down and another up in the same turn of the loop, and says
when: a handover with no pause between the two links has none, however busy the
machine (two requests would put two control round trips between them).

One ``Emulator`` carries any number of links in a single ``select`` loop with a heap of
due times on ``time.monotonic``; with no impairment a frame is written as soon as it is
read. ``select`` takes a microsecond timeout, and the loop asks for a 1 us timer slack,
so scheduled frames leave within tens of microseconds of their due time.

Run it embedded (``Emulator.start()`` runs the loop in a thread) or as a process:

    python3 -m mpa_testbed.linkemu --link l1 nsA:eth0 nsB:eth0 --delay 20ms --loss 1%
    python3 -m mpa_testbed.linkemu ctl SOCKET down l1

The process answers line-delimited JSON on its control socket (``Control``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import heapq
import itertools
import json
import os
import queue
import random
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

TUNSETIFF = 0x400454CA
TUNSETCARRIER = 0x400454E2  # _IOW('T', 226, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
PR_SET_TIMERSLACK = 29

_READ_SIZE = 65536
_BATCH = 64  # frames read from one TAP before looking at the others
_tap_counter = itertools.count(1)

Carrier = Literal["both", "a", "b", "none"]
Direction = Literal["a2b", "b2a", "both"]


# -- units -------------------------------------------------------------------------------

_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Z%/]*)\s*$")
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_RATE_UNITS = {
    "": 1.0,
    "bit": 1.0,
    "bps": 1.0,
    "k": 1e3,
    "kbit": 1e3,
    "m": 1e6,
    "mbit": 1e6,
    "g": 1e9,
    "gbit": 1e9,
}


def _split(text: str) -> tuple[float, str]:
    match = _UNIT.match(text)
    if not match:
        raise ValueError(f"not a number with a unit: {text!r}")
    return float(match.group(1)), match.group(2).lower()


def parse_time(value: str | float) -> float:
    """Seconds from ``0.02``, ``"20ms"``, ``"500us"``, ``"1.5s"``; a bare number is seconds."""
    if isinstance(value, int | float):
        return float(value)
    number, unit = _split(value)
    if unit not in _TIME_UNITS:
        raise ValueError(f"unknown time unit in {value!r}")
    return number * _TIME_UNITS[unit]


def parse_rate(value: str | float) -> float:
    """Bits per second from ``1e6``, ``"10mbit"``, ``"512kbit"``, ``"1g"``; 0 is unlimited."""
    if isinstance(value, int | float):
        return float(value)
    number, unit = _split(value)
    if unit not in _RATE_UNITS:
        raise ValueError(f"unknown rate unit in {value!r}")
    return number * _RATE_UNITS[unit]


def parse_loss(value: str | float) -> float:
    """A probability from ``0.01`` or ``"1%"``."""
    if isinstance(value, int | float):
        return float(value)
    number, unit = _split(value)
    if unit == "%":
        return number / 100.0
    if unit:
        raise ValueError(f"loss is a fraction or a percentage: {value!r}")
    return number


# -- configuration -----------------------------------------------------------------------


@dataclass
class Impairment:
    """What one direction of a link does to frames.

    ``delay`` and ``jitter`` are seconds (jitter is uniform in +-jitter, never reorders),
    ``loss`` a probability, ``rate`` bits per second (0: unlimited), ``queue`` the bytes
    that may wait for serialization before tail drop.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: float = 0.0
    queue: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0 or self.rate < 0 or self.queue < 0:
            raise ValueError(f"negative impairment: {self}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be in [0, 1]: {self.loss}")

    @property
    def transparent(self) -> bool:
        return self.delay == 0 and self.jitter == 0 and self.loss == 0 and self.rate == 0

    def updated(self, **changes: Any) -> Impairment:
        """A copy with ``changes`` parsed from numbers or strings with units."""
        parsers: dict[str, Callable[[Any], float]] = {
            "delay": parse_time,
            "jitter": parse_time,
            "loss": parse_loss,
            "rate": parse_rate,
            "queue": float,
        }
        values = asdict(self)
        for key, raw in changes.items():
            if key not in parsers:
                raise ValueError(f"unknown impairment {key!r}")
            values[key] = parsers[key](raw)
        values["queue"] = int(values["queue"])
        return Impairment(**values)


@dataclass
class LinkSpec:
    """A link between device ``a_dev`` in namespace ``a_ns`` and ``b_dev`` in ``b_ns``."""

    name: str
    a_ns: str
    a_dev: str
    b_ns: str
    b_dev: str
    a2b: Impairment = field(default_factory=Impairment)
    b2a: Impairment = field(default_factory=Impairment)
    up: bool = True
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkSpec:
        data = dict(data)
        a2b = Impairment(**data.pop("a2b", {}))
        b2a = Impairment(**data.pop("b2a", {}))
        return cls(a2b=a2b, b2a=b2a, **data)


# -- TAP devices -------------------------------------------------------------------------


def open_tap(name: str) -> int:
    """Create a TAP device ``name`` (no packet-info header); return its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_carrier(fd: int, on: bool) -> None:
    """Carrier on or off (TUNSETCARRIER): the namespace side sees NO-CARRIER while off."""
    fcntl.ioctl(fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))


def move_to_netns(tmp_name: str, ns: str, name: str) -> None:
    """Move a host device into ``ns`` under ``name`` and bring it up there."""
    _ip("link", "set", "dev", tmp_name, "netns", ns, "name", name)
    _ip("-n", ns, "link", "set", "dev", name, "up")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _fine_timer_slack() -> None:
    # The default 50 us slack would blur sub-millisecond scheduling.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def set_realtime(priority: int = 10) -> None:
    """Run under SCHED_FIFO so that a loaded machine delays frames less.

    The loop sleeps in ``select`` whenever nothing is due, so it only holds a CPU while
    traffic needs it (and the kernel's real-time throttling still bounds that).
    """
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


# -- the emulation -----------------------------------------------------------------------


@dataclass
class DirectionStats:
    frames: int = 0
    bytes: int = 0
    delivered: int = 0
    lost: int = 0
    queue_drops: int = 0
    down_drops: int = 0
    write_errors: int = 0


class LinkDirection:
    """One direction of a link: admission (loss, queue, rate), then delay."""

    def __init__(self, name: str, src: int, dst: int, imp: Impairment, seed: int) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.imp = imp
        self.rng = random.Random(f"{seed}/{name}")
        self.stats = DirectionStats()
        self.busy_until = 0.0  # end of serialization of the last admitted frame
        self.last_due = 0.0  # keeps frames in order whatever the jitter
        self.pending = 0  # frames in the heap
        self.epoch = 0  # bumped when the link goes down: frames of older epochs are dropped

    def admit(self, size: int, now: float) -> float | None:
        """The due time of a frame of ``size`` bytes read at ``now``, or None to drop it."""
        imp = self.imp
        self.stats.frames += 1
        self.stats.bytes += size
        if imp.loss and self.rng.random() < imp.loss:
            self.stats.lost += 1
            return None
        sent = now
        if imp.rate:
            start = max(now, self.busy_until)
            if (start - now) * imp.rate / 8.0 > imp.queue:
                self.stats.queue_drops += 1
                return None
            sent = start + size * 8.0 / imp.rate
            self.busy_until = sent
        due = sent + imp.delay
        if imp.jitter:
            due = max(sent, due + self.rng.uniform(-imp.jitter, imp.jitter))
        due = max(due, self.last_due)
        self.last_due = due
        return due


class EmuLink:
    """A running link: two TAP fds and two directions."""

    def __init__(self, spec: LinkSpec, fd_a: int, fd_b: int) -> None:
        self.spec = spec
        self.fd_a = fd_a
        self.fd_b = fd_b
        self.a2b = LinkDirection(f"{spec.name}/a2b", fd_a, fd_b, spec.a2b, spec.seed)
        self.b2a = LinkDirection(f"{spec.name}/b2a", fd_b, fd_a, spec.b2a, spec.seed)
        self.up = True
        self.gone = False

    @property
    def name(self) -> str:
        return self.spec.name

    def directions(self, which: Direction) -> list[LinkDirection]:
        return {"a2b": [self.a2b], "b2a": [self.b2a], "both": [self.a2b, self.b2a]}[which]

    def state(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "gone": self.gone,
            "a": f"{self.spec.a_ns}:{self.spec.a_dev}",
            "b": f"{self.spec.b_ns}:{self.spec.b_dev}",
            "a2b": {"impairment": asdict(self.a2b.imp), **asdict(self.a2b.stats)},
            "b2a": {"impairment": asdict(self.b2a.imp), **asdict(self.b2a.stats)},
        }


_Entry = tuple[float, int, LinkDirection, int, bytes]


class Emulator:
    """Carries frames for any number of links in one loop; thread-safe control methods.

    ``add_link`` before ``run``/``start``. The control methods (``set_down``, ``set_up``,
    ``configure``, ``stats``) may be called from any thread while the loop runs; with a
    ``control_path`` the same operations are served on a Unix socket.
    """

    def __init__(self, control_path: str | None = None, *, tap_prefix: str = "lemu") -> None:
        self.links: dict[str, EmuLink] = {}
        self.tap_prefix = tap_prefix[:8]
        self.control_path = control_path
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._by_fd: dict[int, LinkDirection] = {}
        self._link_of_fd: dict[int, EmuLink] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], _Reply]] = queue.SimpleQueue()
        self._listener: socket.socket | None = None
        self._clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self._running = False
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None

    # setup

    def add_link(self, spec: LinkSpec) -> EmuLink:
        """Create both TAP devices, move them into their namespaces, up; carrier per spec."""
        if spec.name in self.links:
            raise ValueError(f"duplicate link {spec.name}")
        fds: list[int] = []
        try:
            for ns, dev in ((spec.a_ns, spec.a_dev), (spec.b_ns, spec.b_dev)):
                tmp = f"{self.tap_prefix}{os.getpid() % 10000}{next(_tap_counter)}"[:15]
                fds.append(open_tap(tmp))
                move_to_netns(tmp, ns, dev)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        link = EmuLink(spec, fds[0], fds[1])
        self.links[spec.name] = link
        self._by_fd[link.fd_a] = link.a2b
        self._by_fd[link.fd_b] = link.b2a
        self._link_of_fd[link.fd_a] = link
        self._link_of_fd[link.fd_b] = link
        if spec.up:
            # A fresh TAP reports operstate UNKNOWN; a carrier cycle makes it UP like a NIC.
            for fd in fds:
                set_carrier(fd, False)
                set_carrier(fd, True)
        else:
            self._set_down(link, "both")
        return link

    # control (any thread)

    def set_down(self, name: str, carrier: Carrier = "both") -> None:
        """Drop everything on the link, in flight too; carrier off on the chosen ends."""
        self._call(lambda: self._set_down(self.links[name], carrier))

    def set_up(self, name: str) -> None:
        """Carry frames again; carrier on at both ends."""
        self._call(lambda: self._set_up(self.links[name]))

    def switch(self, old: str, new: str, carrier: Carrier = "both") -> tuple[float, float]:
        """``old`` down (carrier off at ``carrier``) and ``new`` up at once: the
        monotonic times ``old`` stopped carrying and ``new``'s carrier came."""
        times: tuple[float, float] = self._call(
            lambda: self._switch(self.links[old], self.links[new], carrier)
        )
        return times

    def configure(self, name: str, direction: Direction = "both", **changes: Any) -> None:
        """Change impairments (``delay="20ms"``, ``loss=0.1``, ``rate="1mbit"``...)."""

        def apply() -> None:
            for d in self.links[name].directions(direction):
                d.imp = d.imp.updated(**changes)

        self._call(apply)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            lambda: {name: link.state() for name, link in self.links.items()}
        )
        return result

    def _call(self, fn: Callable[[], Any]) -> Any:
        if not self._running or self._loop_thread == threading.get_ident():
            return fn()
        reply = _Reply()
        self._calls.put((fn, reply))
        os.write(self._wake_w, b"x")
        return reply.wait()

    def _set_down(self, link: EmuLink, carrier: Carrier) -> None:
        link.up = False
        for d in (link.a2b, link.b2a):
            d.epoch += 1
            d.busy_until = d.last_due = 0.0
        ends = {"both": (link.fd_a, link.fd_b), "a": (link.fd_a,), "b": (link.fd_b,), "none": ()}
        for fd in ends[carrier]:
            set_carrier(fd, False)

    def _set_up(self, link: EmuLink) -> None:
        for fd in (link.fd_a, link.fd_b):
            set_carrier(fd, True)
        link.up = True

    def _switch(self, old: EmuLink, new: EmuLink, carrier: Carrier) -> tuple[float, float]:
        down = time.monotonic()
        self._set_down(old, carrier)
        self._set_up(new)
        return down, time.monotonic()

    # the loop

    def start(self) -> None:
        """Run the loop in a daemon thread (embedded use); ``stop`` ends it."""
        self._thread = threading.Thread(target=self.run, name="linkemu", daemon=True)
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        if self._running and self._loop_thread != threading.get_ident():
            self._call(self._halt)
            if self._thread is not None:
                self._thread.join(5)
        self._running = False

    def _halt(self) -> None:
        self._running = False

    def close(self) -> None:
        """Stop and close everything; the TAP devices vanish with their fds."""
        self.stop()
        for link in self.links.values():
            for fd in (link.fd_a, link.fd_b):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.links.clear()
        for sock, _ in self._clients.values():
            sock.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.control_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.control_path)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def listen(self) -> None:
        """Open the control socket (called by ``run`` when a path was given)."""
        if self.control_path is None or self._listener is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.control_path)
        sock.listen(8)
        sock.setblocking(False)
        self._listener = sock

    def run(self) -> None:
        """The loop: read what is ready, deliver what is due, sleep until the next due time."""
        _fine_timer_slack()
        self.listen()
        self._running = True
        self._loop_thread = threading.get_ident()
        try:
            while self._running:
                fds = [self._wake_r, *self._by_fd, *self._clients]
                if self._listener is not None:
                    fds.append(self._listener.fileno())
                timeout = None
                if self._heap:
                    timeout = max(0.0, self._heap[0][0] - time.monotonic())
                ready, _, _ = select.select(fds, [], [], timeout)
                for fd in ready:
                    self._readable(fd)
                self._deliver(time.monotonic())
                if self.links and all(link.gone for link in self.links.values()):
                    break  # every namespace is gone: nothing left to carry
        finally:
            self._running = False
            self._loop_thread = None

    def _readable(self, fd: int) -> None:
        if fd == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            while not self._calls.empty():
                fn, reply = self._calls.get()
                reply.run(fn)
        elif self._listener is not None and fd == self._listener.fileno():
            conn, _ = self._listener.accept()
            conn.setblocking(False)
            self._clients[conn.fileno()] = (conn, bytearray())
        elif fd in self._clients:
            self._client_readable(fd)
        elif fd in self._by_fd:
            self._tap_readable(self._by_fd[fd])

    def _tap_readable(self, d: LinkDirection) -> None:
        link = self._link_of_fd[d.src]
        for _ in range(_BATCH):
            try:
                frame = os.read(d.src, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                    self._forget(link)
                    return
                raise
            if not link.up:
                d.stats.frames += 1
                d.stats.down_drops += 1
                continue
            now = time.monotonic()
            due = d.admit(len(frame), now)
            if due is None:
                continue
            if due <= now and d.pending == 0:
                self._write(d, frame)
            else:
                d.pending += 1
                heapq.heappush(self._heap, (due, next(self._seq), d, d.epoch, frame))

    def _deliver(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, d, epoch, frame = heapq.heappop(heap)
            d.pending -= 1
            if epoch != d.epoch:
                d.stats.down_drops += 1
                continue
            self._write(d, frame)

    def _write(self, d: LinkDirection, frame: bytes) -> None:
        try:
            os.write(d.dst, frame)
            d.stats.delivered += 1
        except OSError:
            # EIO when the far interface is administratively down: as on a wire, lost.
            d.stats.write_errors += 1

    def _forget(self, link: EmuLink) -> None:
        link.gone = True
        for fd in (link.fd_a, link.fd_b):
            self._by_fd.pop(fd, None)

    # control socket

    def _client_readable(self, fd: int) -> None:
        sock, buf = self._clients[fd]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            del self._clients[fd]
            sock.close()
            return
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            answer = self._handle(line)
            with contextlib.suppress(OSError):
                sock.setblocking(True)
                sock.sendall(json.dumps(answer).encode() + b"\n")
                sock.setblocking(False)

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            cmd = req.pop("cmd")
            if cmd == "down":
                self._set_down(self.links[req["link"]], req.get("carrier", "both"))
            elif cmd == "up":
                self._set_up(self.links[req["link"]])
            elif cmd == "switch":
                old, new = self.links[req["old"]], self.links[req["new"]]
                down, up = self._switch(old, new, req.get("carrier", "both"))
                return {"ok": True, "down": down, "up": up}
            elif cmd == "set":
                name, direction = req.pop("link"), req.pop("dir", "both")
                for d in self.links[name].directions(direction):
                    d.imp = d.imp.updated(**req)
            elif cmd == "stats":
                return {"ok": True, "links": {n: lk.state() for n, lk in self.links.items()}}
            elif cmd == "quit":
                self._running = False
            elif cmd != "ping":
                raise ValueError(f"unknown command {cmd!r}")
            return {"ok": True}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


class _Reply:
    """A result handed from the loop thread to a caller."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except Exception as exc:
            self._error = exc
        self._done.set()

    def wait(self) -> Any:
        if not self._done.wait(10):
            raise TimeoutError("link emulator loop did not answer")
        if self._error is not None:
            raise self._error
        return self._value


# -- control client and process ----------------------------------------------------------


class Control:
    """Client of an emulator process's control socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, **req: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        answer: dict[str, Any] = json.loads(buf)
        if not answer.get("ok"):
            raise RuntimeError(f"linkemu: {answer.get('error')}")
        return answer

    def set_down(self, link: str, carrier: Carrier = "both") -> None:
        self.request(cmd="down", link=link, carrier=carrier)

    def set_up(self, link: str) -> None:
        self.request(cmd="up", link=link)

    def switch(self, old: str, new: str, carrier: Carrier = "both") -> tuple[float, float]:
        """``Emulator.switch`` in the emulator's process (the same monotonic clock)."""
        answer = self.request(cmd="switch", old=old, new=new, carrier=carrier)
        return float(answer["down"]), float(answer["up"])

    def configure(self, link: str, direction: Direction = "both", **changes: Any) -> None:
        self.request(cmd="set", link=link, dir=direction, **changes)

    def stats(self) -> dict[str, Any]:
        links: dict[str, Any] = self.request(cmd="stats")["links"]
        return links

    def quit(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, json.JSONDecodeError):
            self.request(cmd="quit")


class EmulatorProcess:
    """``python3 -m mpa_testbed.linkemu`` carrying ``links``, driven through ``Control``."""

    def __init__(
        self,
        links: Sequence[LinkSpec],
        control_path: str,
        *,
        tap_prefix: str = "lemu",
        tag: str = "",
        realtime: bool = False,
        detach: bool = False,
        log_path: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.control = Control(control_path)
        config = {
            "control": control_path,
            "tap_prefix": tap_prefix,
            "links": [spec.to_json() for spec in links],
        }
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "mpa_testbed.linkemu", "--config", "-"]
        if tag:
            argv += ["--tag", tag]
        if realtime:
            argv.append("--realtime")
        # A detached emulator outlives its parent: it must not hold the parent's stderr.
        stderr = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=root,
                start_new_session=detach,
            )
        finally:
            if stderr is not None:
                stderr.close()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(config).encode())
        self.proc.stdin.close()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b"ready"):
            self.terminate()
            raise RuntimeError(f"linkemu did not start: {line.decode(errors='replace')}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.control.quit()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def emulator(links: Sequence[LinkSpec]) -> Iterator[Emulator]:
    """An embedded emulator running in a thread, closed on exit."""
    emu = Emulator()
    try:
        for spec in links:
            emu.add_link(spec)
        emu.start()
        yield emu
    finally:
        emu.close()


# -- command line ------------------------------------------------------------------------


def _impairment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay", default="0", help="one-way delay, e.g. 20ms")
    parser.add_argument("--jitter", default="0", help="uniform jitter, e.g. 2ms")
    parser.add_argument("--loss", default="0", help="random loss, e.g. 1%% or 0.01")
    parser.add_argument("--rate", default="0", help="rate, e.g. 10mbit (0: unlimited)")


def _end(text: str) -> tuple[str, str]:
    ns, sep, dev = text.partition(":")
    if not sep or not ns or not dev:
        raise argparse.ArgumentTypeError(f"expected NS:DEV, got {text!r}")
    return ns, dev


def _serve(args: argparse.Namespace) -> int:
    if args.config:
        raw = sys.stdin.read() if args.config == "-" else Path(args.config).read_text()
        config = json.loads(raw)
        specs = [LinkSpec.from_json(item) for item in config["links"]]
        control = args.control or config.get("control")
        tap_prefix = config.get("tap_prefix", "lemu")
    else:
        if not args.link:
            raise SystemExit("give --link NAME NS:DEV NS:DEV or --config FILE")
        imp = Impairment().updated(
            delay=args.delay, jitter=args.jitter, loss=args.loss, rate=args.rate
        )
        (a_ns, a_dev), (b_ns, b_dev) = _end(args.link[1]), _end(args.link[2])
        specs = [LinkSpec(args.link[0], a_ns, a_dev, b_ns, b_dev, imp, imp, seed=args.seed)]
        control = args.control
        tap_prefix = "lemu"
    if args.realtime:
        set_realtime()
    emu = Emulator(control, tap_prefix=tap_prefix)
    try:
        for spec in specs:
            emu.add_link(spec)
        emu.listen()
        print("ready", json.dumps({"pid": os.getpid(), "links": list(emu.links)}), flush=True)
        emu.run()
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    return 0


def _ctl(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="linkemu ctl")
    parser.add_argument("socket")
    parser.add_argument("command", choices=["down", "up", "set", "stats", "quit"])
    parser.add_argument("link", nargs="?")
    parser.add_argument("--dir", default="both", choices=["a2b", "b2a", "both"])
    parser.add_argument("--carrier", default="both", choices=["both", "a", "b", "none"])
    for name in ("delay", "jitter", "loss", "rate", "queue"):
        parser.add_argument(f"--{name}")
    args = parser.parse_args(argv)
    ctl = Control(args.socket)
    if args.command == "stats":
        print(json.dumps(ctl.stats(), indent=2))
    elif args.command == "quit":
        ctl.quit()
    elif args.link is None:
        parser.error(f"{args.command} needs a link name")
    elif args.command == "down":
        ctl.set_down(args.link, args.carrier)
    elif args.command == "up":
        ctl.set_up(args.link)
    else:
        names = ("delay", "jitter", "loss", "rate", "queue")
        changes = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        ctl.configure(args.link, args.dir, **changes)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        return _ctl(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python3 -m mpa_testbed.linkemu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--link", nargs=3, metavar=("NAME", "NS_A:DEV", "NS_B:DEV"))
    parser.add_argument("--config", help="JSON file with links (- for stdin)")
    parser.add_argument("--control", help="Unix socket for run-time control")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="free text, lets a testbed find its process")
    parser.add_argument(
        "--realtime", action="store_true", help="SCHED_FIFO: steadier timing on a busy machine"
    )
    _impairment_args(parser)
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
