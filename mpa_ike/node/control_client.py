"""The control socket's protocol, and the client the command lines use.

Newline-delimited JSON over a Unix stream socket. A request is one line
``{"cmd": "status", "args": {...}}``; the answer is one line, ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": "one line"}``. A client may send several requests
on one connection; each is answered in order.

This module imports the standard library only, and the client is a blocking socket,
not asyncio: ``mpa-mobile handover NAME`` run by a network manager at link-up is part of
the handover, and its start-up should cost milliseconds, not the half second that
importing the daemon would. The server side is :mod:`mpa_ike.node.control`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 5.0
# Longer lines are refused: nothing legitimate comes near it.
MAX_LINE = 1 << 20


class ControlError(Exception):
    """A CLI could not get an answer, or the daemon refused the command (one line)."""

    def __init__(self, message: str, *, from_daemon: bool = False) -> None:
        super().__init__(message)
        self.from_daemon = from_daemon


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def call(
    path: Path, cmd: str, args: Mapping[str, Any] | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    """Send one command to the daemon at ``path`` and return its result.

    Raises ControlError with a one-line message if the daemon is not running, does not
    answer within ``timeout`` seconds, or refuses the command.
    """
    request = encode({"cmd": cmd, "args": dict(args or {})})
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(request)
            line = _read_line(sock, deadline)
    except TimeoutError:
        raise ControlError(f"no answer from the daemon at {path} within {timeout:g} s") from None
    except OSError as error:
        raise ControlError(unreachable(path, error)) from None
    return result(line)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """One answer line (without waiting past ``deadline``); b"" if the daemon hung up."""
    received = bytearray()
    while b"\n" not in received:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(received) if received.endswith(b"\n") else b""
        received += chunk
        if len(received) > MAX_LINE:
            raise ControlError("the daemon's answer is too long")
    return bytes(received[: received.index(b"\n") + 1])


def unreachable(path: Path, error: OSError) -> str:
    if isinstance(error, FileNotFoundError | ConnectionRefusedError):
        reason = "no such socket" if isinstance(error, FileNotFoundError) else "connection refused"
        return f"cannot reach the daemon at {path}: {reason} (is it running?)"
    return f"cannot reach the daemon at {path}: {error.strerror or error}"


def result(line: bytes) -> Any:
    """The result of an answer line; ControlError for a refusal or a malformed answer."""
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
