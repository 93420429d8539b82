"""Netlink: messages, attributes and a request socket, typed like the wire codec.

The one netlink layer of the I/O glue: rtnetlink's addresses, routes, rules, links and
neighbours (:mod:`mpa_ike.io.rtnl`), the link watcher (:mod:`mpa_ike.io.links`) and the
kernel's IPsec (:mod:`mpa_ike.io.xfrm`) build their messages as dataclasses with paired
``pull`` / ``push`` functions on this module's codec, and send them through
:class:`NetlinkSocket`.

A request is one ``send()`` and its answer one or a few ``recv()`` in the caller's
thread: the kernel carries out an rtnetlink or XFRM request inside ``send()`` and has
queued its acknowledgement before ``send()`` returns, so a request costs some tens of
microseconds and never waits on anything but the kernel (bounded all the same, by
:data:`ANSWER_TIMEOUT`). A refusal comes back as one typed error,
:class:`NetlinkError`, with the errno and the kernel's extended ack text.

pyroute2 is used here for one cold-path thing only, opening a socket inside a named
network namespace (``pyroute2.netns.create_socket``), and is imported on that path
alone: importing it costs about 170 ms, which a daemon's start-up and the CLI need not
pay. It ships no type information, hence the import by name.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import secrets
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mpa_ike.records import quick_init

NLMSG_HEADER = struct.Struct("=IHHII")
NLA_HEADER = struct.Struct("=HH")
_I32 = struct.Struct("=i")

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
# Flags of an NLMSG_ERROR (acknowledgement).
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_ROUTE = 0
NETLINK_XFRM = 6

ANSWER_TIMEOUT = 5.0
"""Longest wait for one datagram of the kernel's answer: it answers at once, never hang."""
RECEIVE_SIZE = 1 << 16


def align(length: int) -> int:
    """Netlink's 4-byte alignment of messages and attributes."""
    return (length + 3) & ~3


class NetlinkCodecError(ValueError):
    """Bytes that are not the netlink structure they should be (truncated, bad length)."""


class NetlinkError(OSError):
    """The kernel refused a request: its errno, the extended ack's text, the message.

    ``code`` is the errno too, as pyroute2's ``NetlinkError`` has it, so callers written
    against either need not care.
    """

    names: ClassVar[Mapping[int, str]] = {}
    """Names of the message types of the family, for the error's text."""

    def __init__(self, err: int, msg_type: int = 0, detail: str = "", what: str = "") -> None:
        self.code = err
        self.msg_type = msg_type
        self.msg_name = self.names.get(msg_type, f"netlink message {msg_type}")
        self.detail = detail
        self.what = what
        text = f"{self.msg_name} failed: {os.strerror(err)} (errno {err})"
        if detail:
            text += f": {detail}"
        if what:
            text += f" [{what}]"
        super().__init__(err, text)


# --- messages ----------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message: the header's fields and the body after it."""

    kind: int
    flags: int = 0
    seq: int = 0
    pid: int = 0
    body: bytes = b""


def push_message(msg: Message) -> bytes:
    size = NLMSG_HEADER.size + len(msg.body)
    header = NLMSG_HEADER.pack(size, msg.kind, msg.flags, msg.seq, msg.pid)
    return header + msg.body + b"\0" * (align(size) - size)


def pull_messages(data: bytes) -> Iterator[Message]:
    """The messages of one datagram, up to a broken header (the rest is not trusted)."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, flags, seq, pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            return
        body = data[offset + NLMSG_HEADER.size : offset + length]
        yield Message(kind, flags, seq, pid, body)
        offset += align(length)


def pull_message(data: bytes) -> Message:
    """Exactly one message (a request as built, in tests and fakes)."""
    if len(data) < NLMSG_HEADER.size:
        raise NetlinkCodecError(f"netlink header truncated: {len(data)} bytes")
    length = NLMSG_HEADER.unpack_from(data)[0]
    if length != len(data) and align(length) != len(data):
        raise NetlinkCodecError(f"netlink length {length}, {len(data)} bytes")
    return next(pull_messages(data))


def pull_error(msg: Message) -> tuple[int, str]:
    """(errno, extended ack text) of an NLMSG_ERROR; errno 0 is an acknowledgement."""
    if len(msg.body) < _I32.size:
        raise NetlinkCodecError("NLMSG_ERROR without its error code")
    err = -_I32.unpack_from(msg.body)[0]
    if not err or not msg.flags & NLM_F_ACK_TLVS:
        return err, ""
    # The request follows (its header alone when capped), then the attributes.
    offset = _I32.size + NLMSG_HEADER.size
    if not msg.flags & NLM_F_CAPPED and len(msg.body) >= offset:
        offset = _I32.size + align(NLMSG_HEADER.unpack_from(msg.body, _I32.size)[0])
    text = pull_attributes(msg.body, offset).get(NLMSGERR_ATTR_MSG) or b""
    return err, text.rstrip(b"\0").decode(errors="replace")


# --- attributes --------------------------------------------------------------------------


def push_attribute(kind: int, payload: bytes) -> bytes:
    length = NLA_HEADER.size + len(payload)
    return NLA_HEADER.pack(length, kind) + payload + b"\0" * (align(length) - length)


def push_u8(kind: int, value: int) -> bytes:
    return push_attribute(kind, struct.pack("=B", value))


def push_u32(kind: int, value: int) -> bytes:
    return push_attribute(kind, struct.pack("=I", value))


def push_u64(kind: int, value: int) -> bytes:
    return push_attribute(kind, struct.pack("=Q", value))


def push_nested(kind: int, parts: Iterable[bytes]) -> bytes:
    return push_attribute(kind | NLA_F_NESTED, b"".join(parts))


@quick_init
@dataclass(frozen=True, slots=True)
class Attributes:
    """The attributes after a message's fixed part, in order (a type may repeat)."""

    items: tuple[tuple[int, bytes], ...] = ()

    def get(self, kind: int) -> bytes | None:
        """The payload of the first attribute of that type."""
        for at, payload in self.items:
            if at == kind:
                return payload
        return None

    def all(self, kind: int) -> list[bytes]:
        return [payload for at, payload in self.items if at == kind]

    def u32(self, kind: int) -> int | None:
        payload = self.get(kind)
        if payload is None:
            return None
        if len(payload) < 4:
            raise NetlinkCodecError(f"attribute {kind}: {len(payload)} bytes for a u32")
        value: int = struct.unpack_from("=I", payload)[0]
        return value

    def nested(self, kind: int) -> Attributes | None:
        payload = self.get(kind)
        return None if payload is None else pull_attributes(payload)

    def kinds(self) -> list[int]:
        return [at for at, _ in self.items]

    def __contains__(self, kind: object) -> bool:
        return any(at == kind for at, _ in self.items)


def pull_attributes(data: bytes, offset: int = 0, end: int | None = None) -> Attributes:
    """The attributes in ``data[offset:end]``, up to a broken one; the nested and
    byte-order flags are dropped from the types."""
    end = len(data) if end is None else min(end, len(data))
    found = []
    while offset + NLA_HEADER.size <= end:
        length, kind = NLA_HEADER.unpack_from(data, offset)
        if length < NLA_HEADER.size or offset + length > end:
            break
        payload = bytes(data[offset + NLA_HEADER.size : offset + length])
        found.append((kind & NLA_TYPE_MASK, payload))
        offset += align(length)
    return Attributes(tuple(found))


def pull_struct(layout: struct.Struct, data: bytes, offset: int = 0) -> tuple[Any, ...]:
    """A fixed part, or :class:`NetlinkCodecError` when the bytes stop short of it."""
    if offset + layout.size > len(data):
        raise NetlinkCodecError(f"{len(data) - offset} bytes for a {layout.size}-byte structure")
    return layout.unpack_from(data, offset)


# --- the socket --------------------------------------------------------------------------


def _open(protocol: int, netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    netns_module = importlib.import_module("pyroute2.netns")
    sock: socket.socket = netns_module.create_socket(
        netns=netns,
        family=socket.AF_NETLINK,
        socket_type=socket.SOCK_RAW,
        proto=protocol,
        flags=0,
    )
    return sock


class NetlinkSocket:
    """One netlink socket of a family: requests answered in the caller's thread, or
    (bound to multicast ``groups``) events read by :meth:`receive`.

    ``error`` is the :class:`NetlinkError` subclass a refusal raises (it names the
    family's messages). Requests are serialised by a lock: the datapath may be driven
    from more than one thread.
    """

    def __init__(
        self,
        protocol: int,
        *,
        groups: int = 0,
        netns: str | None = None,
        timeout: float | None = ANSWER_TIMEOUT,
        error: type[NetlinkError] = NetlinkError,
    ) -> None:
        self.sock = _open(protocol, netns)
        try:
            if timeout is None:
                self.sock.setblocking(False)
            else:
                self.sock.settimeout(timeout)
            with contextlib.suppress(OSError):  # older kernels: errors without their text
                self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self.error = error
        self._sequence = itertools.count(secrets.randbelow(1 << 20) + 1)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, kind: int, flags: int, body: bytes, what: str = "") -> list[Message]:
        """Send one request and return its answers: none for an acknowledged change,
        the messages of a dump up to NLMSG_DONE, or the one answer of a get.

        A refusal raises ``error``; a kernel that does not answer within the timeout,
        ``TimeoutError``.
        """
        with self._lock:
            seq = next(self._sequence)
            self.sock.send(push_message(Message(kind, NLM_F_REQUEST | flags, seq, 0, body)))
            return self._answers(seq, kind, flags, what)

    def _answers(self, seq: int, kind: int, flags: int, what: str) -> list[Message]:
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        answers: list[Message] = []
        while True:
            for msg in pull_messages(self.sock.recv(RECEIVE_SIZE)):
                if msg.seq != seq:
                    continue  # the late answer of a request given up on
                if msg.kind == NLMSG_ERROR:
                    err, detail = pull_error(msg)
                    if err:
                        raise self.error(err, kind, detail, what)
                    return answers
                if msg.kind == NLMSG_DONE:
                    err = -_I32.unpack_from(msg.body)[0] if len(msg.body) >= 4 else 0
                    if err > 0:
                        raise self.error(err, kind, "", what)
                    return answers
                answers.append(msg)
                if not (dump or flags & NLM_F_ACK or msg.flags & NLM_F_MULTI):
                    return answers

    def receive(self) -> list[Message]:
        """The messages of one datagram (an event socket's); ``BlockingIOError`` when
        none is waiting on a non-blocking socket."""
        return list(pull_messages(self.sock.recv(RECEIVE_SIZE)))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
