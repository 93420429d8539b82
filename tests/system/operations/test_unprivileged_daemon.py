"""mpa-gateway started as root with ``user:`` in its configuration: it binds IKE on port
500 and opens its userspace datapath (TUN device, raw ESP sockets) as root, then runs as
that user with CAP_NET_ADMIN and CAP_NET_RAW only; its control socket serves root and
the control group, not another user. In a network namespace, with throwaway users
created for the test and removed afterwards."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from mpa_harness import guards
from mpa_harness.daemon import start, stop
from mpa_harness.netns import Netns, netns
from mpa_ike.node.control_client import ControlError, call
from mpa_ike.node.privileges import CAP_NET_ADMIN, CAP_NET_RAW

REPO = Path(__file__).resolve().parents[3]
DAEMON_USER = "mpa-ike-test"
OTHER_USER = "mpa-ike-other"
CONTROL_GROUP = "mpa-ike-ctl"


class Accounts(NamedTuple):
    daemon: pwd.struct_passwd
    other: pwd.struct_passwd
    control_gid: int


@contextlib.contextmanager
def system_user(name: str) -> Iterator[pwd.struct_passwd]:
    """The user ``name``, created for the test if missing and then removed again."""
    created = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        created = True
    try:
        yield pwd.getpwnam(name)
    finally:
        if created:
            subprocess.run(["userdel", name], check=False, capture_output=True)


@contextlib.contextmanager
def system_group(name: str) -> Iterator[int]:
    created = False
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
        created = True
    try:
        yield grp.getgrnam(name).gr_gid
    finally:
        if created:
            subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    reason = guards.namespaces_unavailable()
    if reason is None and not (shutil.which("useradd") and shutil.which("groupadd")):
        reason = "needs useradd and groupadd (passwd)"
    guards.require(reason, "the unprivileged daemon test")
    with (
        system_user(DAEMON_USER) as daemon,
        system_user(OTHER_USER) as other,
        system_group(CONTROL_GROUP) as control_gid,
    ):
        yield Accounts(daemon, other, control_gid)


class Running(NamedTuple):
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path


@pytest.fixture
def gateway(accounts: Accounts) -> Iterator[Running]:
    base = Path(tempfile.mkdtemp(prefix="mpa-op-", dir="/tmp"))
    base.chmod(0o755)
    run = base / "run"  # what RuntimeDirectory= would be: the daemon's own
    run.mkdir()
    os.chown(run, accounts.daemon.pw_uid, accounts.daemon.pw_gid)
    config = base / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": ["127.0.0.1"],  # ports 500 and 4500: bound before the change
                "id": "ngw.example.net",
                "psk": "secret",
                "pool": ["10.9.0.0/24"],
                "eap": {"method": "md5", "users": {"alice": "alice-secret"}},
                "datapath": "userspace",
                "control_socket": str(run / "gw.sock"),
                "leases": str(run / "leases.sqlite3"),
                "user": DAEMON_USER,
                "control_group": CONTROL_GROUP,
                "log_level": "debug",
            }
        )
    )
    config.chmod(0o600)
    try:
        with netns("op") as ns:
            yield _start(ns, config, run / "gw.sock", base / "gateway.log")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start(ns: Netns, config: Path, socket: Path, log: Path) -> Running:
    argv = ns.exec_args([sys.executable, "-m", "gateway.cli", "run", "-c", str(config)])
    return Running(start(argv, socket, log), socket, log)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def ask_as(uid: int, gid: int, groups: list[int], socket: Path) -> str:
    """``status`` sent by a child process that runs as uid/gid with ``groups``, through
    the command lines' client; its result or error, as one line."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            result: Any = call(socket, "status")
            answer = f"ok: {sorted(result)}"
        except ControlError as error:
            answer = f"error: {error}"
        except BaseException as error:
            answer = f"crashed: {error!r}"
        os.write(writing, answer.encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(pid, 0)
    return data


def test_runs_as_the_user_with_net_admin(gateway: Running, accounts: Accounts) -> None:
    status = proc_status(gateway.process.pid)
    uid, gid = accounts.daemon.pw_uid, accounts.daemon.pw_gid
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    effective = int(status["CapEff"], 16)
    assert effective & (1 << CAP_NET_ADMIN), status["CapEff"]
    assert effective & ~((1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)) == 0, status["CapEff"]
    assert int(status["CapPrm"], 16) == effective
    assert int(status["CapInh"], 16) == 0


def test_the_control_socket_file(gateway: Running, accounts: Accounts) -> None:
    info = gateway.socket.stat()
    assert (info.st_uid, info.st_gid) == (accounts.daemon.pw_uid, accounts.control_gid)
    assert stat.S_IMODE(info.st_mode) == 0o660


def test_status_for_root_and_the_control_group_only(gateway: Running, accounts: Accounts) -> None:
    root = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--socket", str(gateway.socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert root.returncode == 0, root.stderr
    assert root.stdout.splitlines()[:2] == ["no IKE SAs", "no leases"]
    other = accounts.other
    refused = ask_as(other.pw_uid, other.pw_gid, [], gateway.socket)
    assert refused == f"error: cannot reach the daemon at {gateway.socket}: Permission denied"
    member = ask_as(other.pw_uid, other.pw_gid, [accounts.control_gid], gateway.socket)
    assert member.startswith("ok: ['counters', 'datapath'"), member
    # The socket file opened up by hand: the daemon's peer check still refuses.
    gateway.socket.chmod(0o666)
    refused = ask_as(other.pw_uid, other.pw_gid, [], gateway.socket)
    assert (
        refused == f"error: permission denied: uid {other.pw_uid} may not use this control socket"
    )


def test_stops_cleanly_without_root(gateway: Running) -> None:
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=20) == 0
    stop(gateway.process)
    log = gateway.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "running as user mpa-ike-test" in log
    assert "capabilities: cap_net_admin" in log
    assert not gateway.socket.exists()
