"""The daemon's life cycle for an operator: sd_notify, the order of start-up (IKE
bound before the control socket exists, READY=1 after), and who may use the control
socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mpa_harness import guards
from mpa_ike.node import daemon, privileges, systemd
from mpa_ike.node.control import ControlServer, Handler, Peer
from mpa_ike.node.control_client import ControlError, call


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose paths fit in sun_path, unlike pytest's tmp_path."""
    with tempfile.TemporaryDirectory(prefix="mpa-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def notify_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_dir / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "notify"))
    yield sock
    sock.close()


def test_notify_a_path(notify_socket: socket.socket) -> None:
    assert systemd.notify(systemd.READY, "STATUS=up")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mpa-ike-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify(systemd.STOPPING)
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify(systemd.READY)


@pytest.mark.parametrize("value", ["/nonexistent/notify", "vsock:2:1234", "relative"])
def test_notify_failures_are_not_raised(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not systemd.notify(systemd.READY)


class FakeService:
    """Records what it saw of the control socket when it started and stopped."""

    def __init__(self, control_socket: Path, *, fail: bool = False) -> None:
        self.control_socket = control_socket
        self.fail = fail
        self.seen: list[str] = []

    def handlers(self) -> Mapping[str, Handler]:
        async def status(args: dict[str, Any]) -> str:
            return "fine"

        return {"status": status}

    async def start(self) -> None:
        self.seen.append(f"start, socket exists: {self.control_socket.exists()}")
        if self.fail:
            raise ControlError("cannot listen on 192.0.2.1:500: Address already in use")

    async def stop(self) -> None:
        self.seen.append("stop")


def test_control_socket_and_ready_come_after_start(
    short_dir: Path, notify_socket: socket.socket
) -> None:
    path = short_dir / "control.sock"
    service = FakeService(path)

    async def scenario() -> str:
        serving = asyncio.create_task(daemon.serve(service, path))
        message = await asyncio.to_thread(notify_socket.recv, 4096)
        answer = await asyncio.to_thread(call, path, "status")
        os.kill(os.getpid(), signal.SIGTERM)
        await serving
        assert await asyncio.to_thread(notify_socket.recv, 4096) == b"STOPPING=1"
        return f"{message.decode()}, status: {answer}"

    result = asyncio.run(scenario())
    assert result == f"READY=1\nSTATUS=control socket {path}, status: fine"
    assert service.seen == ["start, socket exists: False", "stop"]
    assert not path.exists()


def test_a_failed_start_creates_no_socket(short_dir: Path, notify_socket: socket.socket) -> None:
    path = short_dir / "control.sock"
    service = FakeService(path, fail=True)
    with pytest.raises(ControlError, match="Address already in use"):
        asyncio.run(daemon.serve(service, path))
    assert service.seen == ["start, socket exists: False"]
    assert not path.exists()
    notify_socket.settimeout(0.1)
    with pytest.raises(TimeoutError):
        notify_socket.recv(4096)


def test_a_busy_control_socket_is_found_before_start(short_dir: Path) -> None:
    path = short_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen()
        service = FakeService(path)
        with pytest.raises(ControlError, match="in use by a running daemon"):
            asyncio.run(daemon.serve(service, path))
    assert service.seen == []


def test_an_unknown_user_stops_before_start(short_dir: Path) -> None:
    service = FakeService(short_dir / "control.sock")
    run_as = daemon.RunAs(user="no-such-user-of-mpa-ike")
    with pytest.raises(ControlError, match=r"no such user or group: .*no-such-user-of-mpa-ike"):
        asyncio.run(daemon.serve(service, short_dir / "control.sock", run_as))
    assert service.seen == []


class Glue:
    def __init__(self, kind: str, raw: object = None) -> None:
        self.kind = kind
        self.raw = raw


class WithDatapath(FakeService):
    def __init__(self, glue: Glue) -> None:
        super().__init__(Path("/nonexistent"))
        self.glue = glue


@pytest.mark.parametrize(
    ("glue", "always", "needed"),
    [
        (Glue("none"), (), set()),
        (Glue("none"), (privileges.CAP_NET_BIND_SERVICE,), {privileges.CAP_NET_BIND_SERVICE}),
        (Glue("xfrm"), (), {privileges.CAP_NET_ADMIN}),
        (Glue("userspace"), (), {privileges.CAP_NET_ADMIN}),
        (Glue("userspace", object()), (), {privileges.CAP_NET_ADMIN, privileges.CAP_NET_RAW}),
    ],
)
def test_capabilities_the_datapath_needs(
    glue: Glue, always: tuple[int, ...], needed: set[int]
) -> None:
    assert daemon.needed_capabilities(WithDatapath(glue), always) == needed


@pytest.mark.parametrize(
    ("peer", "group", "allowed"),
    [
        (Peer(1, 0, 0), None, True),
        (Peer(1, os.geteuid(), 12345), None, True),
        (Peer(1, 54321, 54321), None, False),
        (Peer(1, 54321, 777), 777, True),
        (Peer(1, 54321, 54321, (5, 777)), 777, True),
        (Peer(1, 54321, 54321, (5, 6)), 777, False),
    ],
)
def test_who_may_use_the_control_socket(peer: Peer, group: int | None, allowed: bool) -> None:
    server = ControlServer(Path("/nonexistent"), {}, group=group)
    assert server.allowed(peer) is allowed


def test_the_socket_file_mode(short_dir: Path) -> None:
    async def modes() -> list[int]:
        found = []
        for group in (None, os.getegid()):
            path = short_dir / f"{group}.sock"
            async with ControlServer(path, {}, group=group):
                found.append(stat.S_IMODE(path.stat().st_mode))
        return found

    assert asyncio.run(modes()) == [0o600, 0o660]


def unprivileged_ids() -> tuple[int, int]:
    guards.require(None if os.geteuid() == 0 else "needs root to switch users", "peer checks")
    return 65534, 65534  # nobody, nogroup


def ask_as(uid: int, gid: int, path: Path) -> bytes:
    """The answer to a status request sent by a child process running as uid/gid."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become uid/gid, ask, write the answer to the pipe
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(b'{"cmd": "status"}\n')
                os.write(writing, sock.makefile("rb").readline())
        except OSError as error:
            os.write(writing, f"{error.strerror}\n".encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return data


def serve_and_ask(path: Path, group: int | None, uid: int, gid: int) -> bytes:
    handlers = FakeService(path).handlers()

    async def scenario() -> bytes:
        async with ControlServer(path, handlers, group=group):
            path.chmod(0o666)  # opened up by hand: the peer check still holds
            return await asyncio.to_thread(ask_as, uid, gid, path)

    return asyncio.run(scenario())


def test_another_user_is_refused(short_dir: Path) -> None:
    uid, gid = unprivileged_ids()
    short_dir.chmod(0o755)
    answer = serve_and_ask(short_dir / "control.sock", None, uid, gid)
    assert answer == (
        b'{"ok":false,"error":"permission denied: uid 65534 may not use this control socket"}\n'
    )


def test_the_control_group_is_let_in(short_dir: Path) -> None:
    uid, gid = unprivileged_ids()
    short_dir.chmod(0o755)
    answer = serve_and_ask(short_dir / "control.sock", gid, uid, gid)
    assert answer == b'{"ok":true,"result":"fine"}\n'


def test_capabilities_after_becoming_a_user() -> None:
    """In a child: become nobody keeping CAP_NET_ADMIN and CAP_NET_RAW, then read CapEff."""
    unprivileged_ids()
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            who = privileges.Identity("nobody", 65534, 65534, ())
            privileges.become(who, [privileges.CAP_NET_ADMIN, privileges.CAP_NET_RAW])
            status = Path("/proc/self/status").read_text()
            uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
            report = f"{uid.split()[1:]} {privileges.effective_capabilities():x}"
            os.write(writing, report.encode())
        except BaseException as error:
            os.write(writing, repr(error).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as answer:
        data = answer.read().decode()
    os.waitpid(pid, 0)
    expected = (1 << privileges.CAP_NET_ADMIN) | (1 << privileges.CAP_NET_RAW)
    assert data == f"['65534', '65534', '65534', '65534'] {expected:x}"


def test_becoming_a_user_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getresuid", lambda: (1000, 1000, 1000))
    who = privileges.Identity("root", 0, 0, ())
    with pytest.raises(privileges.PrivilegeError, match="not started as root"):
        privileges.become(who, [])


def test_a_started_daemon_leaves_its_start_up_objects_out_of_collections() -> None:
    """In a process of its own: settling freezes what exists and raises the youngest
    generation's threshold, and later garbage is still collected."""
    import subprocess
    import sys

    program = """
import gc
from mpa_ike.node import daemon
assert gc.get_freeze_count() == 0
daemon.settle_heap()
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
assert gc.get_threshold()[0] == daemon.YOUNG_COLLECTION_THRESHOLD
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a
del a, b
assert gc.collect() >= 2
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
