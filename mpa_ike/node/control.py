"""The control socket between a daemon and its CLI, shared by mpa-gateway and mpa-mobile.

Newline-delimited JSON over a Unix stream socket. A request is one line
``{"cmd": "status", "args": {...}}``; the answer is one line, ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": "one line"}``. A client may send several requests
on one connection; each is answered in order.
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
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
DEFAULT_TIMEOUT = 5.0
# Longer lines are refused: nothing legitimate comes near it.
MAX_LINE = 1 << 20


class CommandError(Exception):
    """A command failed in a way to report to the client as is (one line)."""


class ControlError(Exception):
    """A CLI could not get an answer, or the daemon refused the command (one line)."""

    def __init__(self, message: str, *, from_daemon: bool = False) -> None:
        super().__init__(message)
        self.from_daemon = from_daemon


class ControlServer:
    """Serves registered async handlers on a Unix socket; use ``async with``.

    A socket file left behind by a dead daemon is replaced; one a live daemon answers on
    is not (ControlError). On close the socket file is removed if it is still ours.
    """

    def __init__(self, path: Path, handlers: Mapping[str, Handler], *, mode: int = 0o600) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.mode = mode
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
        sock = _bind(self.path, self.mode)
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
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
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


def _bind(path: Path, mode: int) -> socket.socket:
    try:
        _remove_stale_socket(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ControlError(f"cannot create control socket {path}: {error.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Before listen(), so nobody can connect while the mode is still too open.
        os.chmod(path, mode)
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


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


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
        raise ControlError(_unreachable(path, error)) from None
    except ValueError:  # readline() past MAX_LINE
        raise ControlError("the daemon's answer is too long") from None
    return _result(line)


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


def _unreachable(path: Path, error: OSError) -> str:
    if isinstance(error, FileNotFoundError | ConnectionRefusedError):
        reason = "no such socket" if isinstance(error, FileNotFoundError) else "connection refused"
        return f"cannot reach the daemon at {path}: {reason} (is it running?)"
    return f"cannot reach the daemon at {path}: {error.strerror or error}"


def _result(line: bytes) -> Any:
    if not line:
        raise ControlError("the daemon closed the connection without answering")
    try:
        reply = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ControlError("the daemon sent a malformed answer") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError("the daemon sent a malformed answer")
    if not reply["ok"]:
        raise ControlError(one_line(str(reply.get("error", ""))), from_daemon=True)
    return reply.get("result")


def call(
    path: Path, cmd: str, args: Mapping[str, Any] | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    """:func:`request` for synchronous callers such as the CLIs."""
    return asyncio.run(request(path, cmd, args, timeout=timeout))
