"""Two receive queues on one IKE port, so that a flood of IKE_SA_INIT delays only the
first message of a handshake (RFC 7296 §2.6, RFC 8019 §4).

A flood of IKE_SA_INIT from random SPIs and spoofed sources fills a socket's receive
queue faster than a responder answers it with COOKIEs, and the kernel drops what does
not fit, whatever it is. The first IKE_SA_INIT of a real initiator cannot be told
from the flood's; what follows it can: a request that returns a COOKIE carries it as
its first payload (§2.6), and every later message names the responder's SPI. On
Linux, two UDP sockets in one SO_REUSEPORT group share the address and port, and a
classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF) picks the socket
of each datagram: :data:`PRIORITY` for those, :data:`BULK` for the rest, each queue
with its own budget in the kernel. The transport reads the priority lane first.

On the NAT-T port (4500) the program looks behind the non-ESP marker; ESP in UDP
(RFC 3948: a non-zero SPI where the marker would be) is a set-up's datapath and goes
to the priority lane too. A NAT keepalive, shorter than a load, goes to the bulk lane.

The lanes are a matter of order only: whatever lands on either socket is handled the
same. A kernel that refuses the program leaves one socket and a log line.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from mpa_ike.constants import ExchangeType, NotifyType, PayloadType
from mpa_ike.datagram import uses_non_esp_marker

log = logging.getLogger(__name__)

__all__ = ["BULK", "PRIORITY", "Lanes", "open_lanes", "steering_program"]

BULK, PRIORITY = 0, 1
# <asm-generic/socket.h>; Python's socket module lacks it.
SO_ATTACH_REUSEPORT_CBPF = 51
MARKER_LENGTH = 4  # RFC 3948 §2.2: the non-ESP marker on port 4500

# Classic BPF (<linux/filter.h>): absolute loads from the UDP payload (the kernel
# pulls the UDP header before it runs a reuseport program), a jump on equality with a
# constant, a return of a constant. A load beyond the datagram ends the program with 0,
# which is the bulk lane.
_LD_W, _LD_H, _LD_B = 0x20, 0x28, 0x30
_JEQ = 0x15  # jump if the accumulator equals k
_RET = 0x06
_INSTRUCTION = struct.Struct("=HBBI")

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k
Step = tuple[str, int | None, int | str]  # what steering_program writes, see _assemble


@dataclass
class Lanes:
    """The sockets of one local address and port: ``bulk`` always, ``priority`` where
    the kernel took the steering program."""

    bulk: socket.socket
    priority: socket.socket | None


def steering_program(marker: bool) -> list[Instruction]:
    """The program for port 500 (``marker`` False) or 4500: 1 (the priority lane) for
    a message that names the responder's SPI, an IKE_SA_INIT whose first payload is
    a COOKIE notify, and on 4500 ESP; 0 (the bulk lane) for anything else."""
    at = MARKER_LENGTH if marker else 0
    esp: list[Step] = [("load", 4, 0), ("if_zero", None, "priority")] if marker else []
    source: list[Step] = [
        *esp,  # a non-zero first word on 4500 is an ESP SPI, zero the non-ESP marker
        ("load", 4, at + 8),  # SPIr
        ("if_zero", None, "priority"),
        ("load", 4, at + 12),
        ("if_zero", None, "priority"),
        ("load", 1, at + 18),  # the exchange type
        ("if_equal", int(ExchangeType.IKE_SA_INIT), "bulk"),
        ("load", 1, at + 16),  # the first payload's type
        ("if_equal", int(PayloadType.NOTIFY), "bulk"),
        ("load", 2, at + 28 + 6),  # its notify type
        ("if_equal", int(NotifyType.COOKIE), "bulk"),
        ("priority", None, 0),
    ]
    return _assemble(source)


def _assemble(source: list[Step]) -> list[Instruction]:
    """``load`` (size, offset); ``if_zero``/``if_equal`` (value, where to go otherwise,
    on to the next if it holds); then ``priority``, and the ``bulk`` return after it."""
    loads = {4: _LD_W, 2: _LD_H, 1: _LD_B}
    end = len(source)  # the index of RET bulk; RET priority is end - 1
    targets = {"priority": end - 1, "bulk": end}
    program: list[Instruction] = []
    for pc, (op, value, arg) in enumerate(source):
        if op == "load":
            assert isinstance(value, int) and isinstance(arg, int)
            program.append((loads[value], 0, 0, arg))
        elif op in ("if_zero", "if_equal"):
            assert isinstance(arg, str)
            program.append((_JEQ, 0, targets[arg] - pc - 1, value or 0))
        else:
            program.append((_RET, 0, 0, PRIORITY))
    program.append((_RET, 0, 0, BULK))
    return program


def open_lanes(
    local: tuple[str, int], family: int, prepare: Callable[[socket.socket], None]
) -> Lanes:
    """A bulk and, if the kernel lets us, a priority socket bound to ``local``;
    ``prepare`` sets a socket's options before its bind (and raises OSError for
    the caller to report). A socket already on ``local`` makes the bind fail with
    EADDRINUSE, as without lanes: a probe without SO_REUSEPORT goes first, so that
    neither an older socket nor a second program of ours ends up sharing the port."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        prepare(probe)
        probe.bind(local)
        local = probe.getsockname()[:2]
    bulk = _reusable(family, prepare)
    try:
        bulk.bind(local)
    except OSError:
        bulk.close()
        raise
    try:
        priority = _priority_lane(bulk, family, prepare, local)
    except OSError as error:
        log.warning(
            "one receive queue on %s:%d (a flood may delay every message): %s",
            *local,
            error.strerror or error,
        )
        return Lanes(bulk, None)
    return Lanes(bulk, priority)


def _priority_lane(
    bulk: socket.socket,
    family: int,
    prepare: Callable[[socket.socket], None],
    local: tuple[str, int],
) -> socket.socket:
    priority = _reusable(family, prepare)
    try:
        priority.bind(local)
        attach(bulk, steering_program(marker=uses_non_esp_marker(local[1])))
    except OSError:
        priority.close()
        raise
    return priority


def _reusable(family: int, prepare: Callable[[socket.socket], None]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        prepare(sock)
    except OSError:
        sock.close()
        raise
    return sock


def attach(sock: socket.socket, program: list[Instruction]) -> None:
    """SO_ATTACH_REUSEPORT_CBPF: ``program`` picks the socket of the group (by the
    order they joined) for every datagram to it."""
    code = b"".join(_INSTRUCTION.pack(*instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def run_program(program: list[Instruction], payload: bytes) -> int:
    """What the kernel does with ``program`` on ``payload`` (the loads, jumps and returns
    this module uses), for tests of the program without a kernel."""
    pc, accumulator = 0, 0
    sizes = {_LD_W: 4, _LD_H: 2, _LD_B: 1}
    while True:
        code, true, false, k = program[pc]
        if code in sizes:
            if k + sizes[code] > len(payload):
                return 0
            accumulator = int.from_bytes(payload[k : k + sizes[code]], "big")
            pc += 1
        elif code == _JEQ:
            pc += 1 + (true if accumulator == k else false)
        elif code == _RET:
            return k
        else:
            raise ValueError(f"instruction {code:#x} not simulated")
