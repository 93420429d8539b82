"""The control socket in process: requests, answers, failures and the socket file."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mpa_ike.node.control import CommandError, ControlServer, Handler, request
from mpa_ike.node.control_client import ControlError


async def echo(args: dict[str, Any]) -> Any:
    return args


async def refuse(args: dict[str, Any]) -> Any:
    raise CommandError("no such\nthing")


async def crash(args: dict[str, Any]) -> Any:
    raise RuntimeError("boom")


async def sleepy(args: dict[str, Any]) -> Any:
    await asyncio.sleep(10)


async def unserializable(args: dict[str, Any]) -> Any:
    return {1, 2}


HANDLERS: dict[str, Handler] = {
    "echo": echo,
    "refuse": refuse,
    "crash": crash,
    "sleepy": sleepy,
    "unserializable": unserializable,
}


def with_server(path: Path, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with ControlServer(path, HANDLERS):
            await body()

    asyncio.run(main())


def test_round_trip(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"

    async def body() -> None:
        assert await request(path, "echo", {"name": "ngw", "n": [1, 2]}) == {
            "name": "ngw",
            "n": [1, 2],
        }
        assert await request(path, "echo") == {}

    with_server(path, body)
    assert not path.exists()


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("refuse", "no such thing"),
        ("crash", "internal error: RuntimeError('boom')"),
        ("unserializable", "internal error: TypeError("),
        ("nothing", "unknown command 'nothing'"),
    ],
)
def test_failures_come_back_as_one_line(short_dir: Path, cmd: str, message: str) -> None:
    path = short_dir / "ctl.sock"

    async def body() -> None:
        with pytest.raises(ControlError) as caught:
            await request(path, cmd)
        assert str(caught.value).startswith(message)
        assert caught.value.from_daemon

    with_server(path, body)


def test_timeout(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"

    async def body() -> None:
        with pytest.raises(ControlError, match=r"^no answer from the daemon at .* within 0.2 s$"):
            await request(path, "sleepy", timeout=0.2)

    with_server(path, body)


def test_several_requests_and_bad_ones_on_one_connection(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"

    async def body() -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        lines = [b"not json\n", b'["cmd"]\n', b'{"cmd": "echo", "args": 3}\n']
        lines.append(b'{"cmd": "echo", "args": {"a": 1}}\n')
        writer.write(b"".join(lines))
        answers = [await reader.readline() for _ in lines]
        writer.close()
        assert answers == [
            b'{"ok":false,"error":"bad request: not JSON"}\n',
            b'{"ok":false,"error":"bad request: expected {\\"cmd\\": NAME, \\"args\\": {...}}"}\n',
            b'{"ok":false,"error":"bad request: args must be an object"}\n',
            b'{"ok":true,"result":{"a":1}}\n',
        ]

    with_server(path, body)


def test_daemon_not_running(short_dir: Path) -> None:
    path = short_dir / "none.sock"
    with pytest.raises(ControlError, match=r"no such socket \(is it running\?\)$"):
        asyncio.run(request(path, "status"))


def test_dead_daemon_socket(short_dir: Path) -> None:
    path = short_dir / "dead.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    with pytest.raises(ControlError, match=r"connection refused \(is it running\?\)$"):
        asyncio.run(request(path, "status"))

    async def body() -> None:  # a new daemon replaces the stale socket file
        assert await request(path, "echo", {"x": 1}) == {"x": 1}

    with_server(path, body)


def test_a_live_daemon_keeps_its_socket(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"

    async def body() -> None:
        with pytest.raises(ControlError, match=r"in use by a running daemon$"):
            await ControlServer(path, HANDLERS).start()
        assert await request(path, "echo") == {}

    with_server(path, body)


def test_refuses_to_replace_a_file(short_dir: Path) -> None:
    path = short_dir / "file"
    path.write_text("x")
    with pytest.raises(ControlError, match=r"exists and is not a socket$"):
        asyncio.run(ControlServer(path, HANDLERS).start())
    assert path.read_text() == "x"


def test_socket_mode_and_parent_directory(short_dir: Path) -> None:
    path = short_dir / "run" / "ctl.sock"

    async def body() -> None:
        assert os.stat(path).st_mode & 0o777 == 0o600

    with_server(path, body)


def test_close_with_a_client_connected(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"

    async def main() -> None:
        server = ControlServer(path, HANDLERS)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"cmd": "sleepy"}\n')
        await writer.drain()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 2)
        assert await reader.read() == b""
        writer.close()

    asyncio.run(main())
    assert not path.exists()


def test_socket_in_an_impossible_place(short_dir: Path) -> None:
    (short_dir / "file").write_text("x")
    path = short_dir / "file" / "ctl.sock"
    with pytest.raises(ControlError, match=r"^cannot create control socket .*: Not a directory$"):
        asyncio.run(ControlServer(path, HANDLERS).start())
