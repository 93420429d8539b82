"""The daemon's side of the control socket, shared by mpa-gateway and mpa-mobile.

The protocol (newline-delimited JSON) and the command lines' blocking client are in
:mod:`mpa_ike.node.control_client`; this module serves registered async handlers on the
event loop, and :func:`request` asks a daemon from inside a loop.

Who may use the socket: root, the daemon's own user, and the members of its control
group if it has one. The socket file's owner and mode (0600, or 0660 with the control
group as its group) keep others from connecting; the peer credentials of every accepted
connection (SO_PEERCRED, SO_PEERGROUPS) are checked too, so that a socket file opened
up by hand or reached through another mount opens nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from mpa_ike.node.control_client import (
    DEFAULT_TIMEOUT,
    MAX_LINE,
    ControlError,
    encode,
    one_line,
    result,
    unreachable,
)

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# <asm-generic/socket.h>; Python's socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# How long a refused client has to send its request before it is answered anyway.
REFUSAL_WAIT = 1.0


class Peer(NamedTuple):
    """The credentials of the process at the other end of a connection."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class CommandError(Exception):
    """A command failed in a way to report to the client as is (one line)."""


class ControlServer:
    """Serves registered async handlers on a Unix socket; use ``async with``.

    A socket file left behind by a dead daemon is replaced; one a live daemon answers on
    is not (ControlError). On close the socket file is removed if it is still ours.

    ``owner`` (uid, gid) is given to the socket file: the user the daemon will run as.
    ``group`` is the control group: its members may use the socket, whose mode is then
    0660 with that group; without one it is 0600.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        owner: tuple[int, int] | None = None,
        group: int | None = None,
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.group = group
        self.mode = 0o600 if group is None else 0o660
        uid, gid = owner if owner is not None else (-1, -1)
        self.owner = (uid, gid if group is None else group)
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind the socket and serve; raises ControlError if that is impossible."""
        sock = _bind(self.path, self.mode, self.owner)
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(
            self._serve_client, sock=sock, limit=MAX_LINE
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        # Another daemon may have replaced a socket file we were told was stale.
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except PermissionError:
            # A daemon that dropped root may not write the socket's directory; the next
            # one replaces the file, which no daemon answers on.
            log.info("control socket %s left behind: its directory is not ours", self.path)

    def allowed(self, peer: Peer) -> bool:
        """Root, the daemon's own user (whatever it runs as now), the control group."""
        if peer.uid in (0, os.geteuid()):
            return True
        return self.group is not None and self.group in (peer.gid, *peer.groups)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
            if not self.allowed(peer):
                await self._refuse(peer, reader, writer)
                return
            await self._answer_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels connected clients; ending normally keeps asyncio's
            # stream callback from logging the cancellation as an error.
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _refuse(
        self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One error line, as the answer to the first request: closing before it came
        would fail the client's send with EPIPE instead of telling it why."""
        log.warning("control connection of uid %d (pid %d) refused", peer.uid, peer.pid)
        with contextlib.suppress(TimeoutError, ValueError):
            async with asyncio.timeout(REFUSAL_WAIT):
                await reader.readline()
        error = f"permission denied: uid {peer.uid} may not use this control socket"
        writer.write(encode({"ok": False, "error": error}))
        await writer.drain()

    async def _answer_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_LINE
                writer.write(encode({"ok": False, "error": "request too long"}))
                await writer.drain()
                return
            if not line:
                return
            writer.write(encode(await self.dispatch(line)))
            await writer.drain()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line."""
        try:
            cmd, args = parse_request(line)
        except ValueError as error:
            return {"ok": False, "error": f"bad request: {error}"}
        handler = self.handlers.get(cmd)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            result = await handler(args)
            json.dumps(result)  # fail here, not half-way through writing
        except CommandError as error:
            return {"ok": False, "error": one_line(str(error))}
        except Exception as error:
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": one_line(f"internal error: {error!r}")}
        return {"ok": True, "result": result}


def peer_credentials(sock: Any) -> Peer:
    """SO_PEERCRED (as the peer was at connect()) and SO_PEERGROUPS of a Unix socket."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid, _peer_groups(sock))


def _peer_groups(sock: Any) -> tuple[int, ...]:
    for count in (64, 65536):  # NGROUPS_MAX is 65536
        try:
            data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * count)
        except OSError as error:
            if error.errno == errno.ERANGE:
                continue
            return ()  # a kernel before 4.13: the primary group only
        return struct.unpack(f"{len(data) // 4}I", data)
    return ()


def claim(path: Path) -> None:
    """Make sure the control socket ``path`` can be created: remove a file left behind
    by a dead daemon; ControlError if a live one answers there. A daemon calls it before
    it starts, so that a second daemon of one configuration ends before binding IKE."""
    try:
        _remove_stale_socket(path)
    except OSError as error:
        raise ControlError(f"cannot create control socket {path}: {error.strerror}") from None


def _bind(path: Path, mode: int, owner: tuple[int, int]) -> socket.socket:
    claim(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ControlError(f"cannot create control socket {path}: {error.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Before listen(), so nobody can connect while the mode is still too open.
        os.chmod(path, mode)
        if owner != (-1, -1):
            os.chown(path, *owner)
    except OSError as error:
        sock.close()
        raise ControlError(f"cannot create control socket {path}: {error.strerror}") from None
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"cannot create control socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as error:
        if error.errno != errno.ECONNREFUSED:
            raise ControlError(f"cannot create control socket {path}: {error.strerror}") from None
        path.unlink()  # left behind by a daemon that died
        return
    finally:
        probe.close()
    raise ControlError(f"control socket {path} is in use by a running daemon")


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """``cmd`` and ``args`` of a request line; ValueError if it is malformed."""
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ValueError('expected {"cmd": NAME, "args": {...}}')
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ValueError("args must be an object")
    return request["cmd"], args


async def request(
    path: Path,
    cmd: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """Send one command to the daemon at ``path`` and return its result.

    Raises ControlError with a one-line message if the daemon is not running, does not
    answer within ``timeout`` seconds, or refuses the command.
    """
    try:
        async with asyncio.timeout(timeout):
            line = await _exchange(path, encode({"cmd": cmd, "args": dict(args or {})}))
    except TimeoutError:
        raise ControlError(f"no answer from the daemon at {path} within {timeout:g} s") from None
    except OSError as error:
        raise ControlError(unreachable(path, error)) from None
    except ValueError:  # readline() past MAX_LINE
        raise ControlError("the daemon's answer is too long") from None
    return result(line)


async def _exchange(path: Path, message: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    try:
        writer.write(message)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
