"""The control socket's protocol, and the client the command lines use.

Newline-delimited JSON over a Unix stream socket. A request is one line
``{"cmd": "status", "args": {...}}``; the answer is one line, ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": "one line"}``. A client may send several requests
on one connection; each is answered in order.

The client is a blocking socket, not asyncio: ``mpa-mobile handover NAME`` run by a
network manager at link-up is part of the handover, and its start-up should cost
milliseconds, not the half second that importing the daemon would. Until its request is
on the wire it imports nothing that the interpreter has not already loaded but
``_socket``: the ``socket`` module around it turns its constants into enums when
imported (``enum``, ``selectors``), and ``json`` brings ``re``, each several
milliseconds on a busy host. A request of plain strings is written by hand, as
``json.dumps`` would write it; ``json`` is imported to read the answer. The server side
is :mod:`mpa_ike.node.control`.
"""

from __future__ import annotations

import _socket
import os
import time

# typing and collections.abc cost milliseconds to import; annotations need neither at
# run time (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
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
    import json

    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _plain(text: object) -> bool:
    """A string that JSON writes as it is, between quotes (ensure_ascii: printable
    ASCII but the quote and the backslash)."""
    return (
        isinstance(text, str)
        and text.isascii()
        and text.isprintable()
        and '"' not in text
        and "\\" not in text
    )


def request_line(cmd: str, args: Mapping[str, Any] | None = None) -> bytes:
    """The request's line: the bytes of :func:`encode`, without importing ``json`` when
    the command and its arguments are plain strings (``handover NAME``)."""
    fields = dict(args or {})
    if not (_plain(cmd) and all(_plain(key) and _plain(value) for key, value in fields.items())):
        return encode({"cmd": cmd, "args": fields})
    inner = ",".join(f'"{key}":"{value}"' for key, value in fields.items())
    return f'{{"cmd":"{cmd}","args":{{{inner}}}}}\n'.encode()


def one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def call(
    path: str | os.PathLike[str],
    cmd: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """Send one command to the daemon at ``path`` and return its result.

    Raises ControlError with a one-line message if the daemon is not running, does not
    answer within ``timeout`` seconds, or refuses the command.
    """
    request = request_line(cmd, args)
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(request)
        line = _read_line(sock, deadline)
    except TimeoutError:
        raise ControlError(f"no answer from the daemon at {path} within {timeout:g} s") from None
    except OSError as error:
        raise ControlError(unreachable(path, error)) from None
    finally:
        sock.close()
    return result(line)


def _read_line(sock: _socket.socket, deadline: float) -> bytes:
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


def unreachable(path: str | os.PathLike[str], error: OSError) -> str:
    if isinstance(error, FileNotFoundError | ConnectionRefusedError):
        reason = "no such socket" if isinstance(error, FileNotFoundError) else "connection refused"
        return f"cannot reach the daemon at {path}: {reason} (is it running?)"
    return f"cannot reach the daemon at {path}: {error.strerror or error}"


def result(line: bytes) -> Any:
    """The result of an answer line; ControlError for a refusal or a malformed answer."""
    import json

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
