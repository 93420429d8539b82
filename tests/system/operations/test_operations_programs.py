"""The programs as an operator runs them: ``check-config`` in a subprocess, and ``run``
telling systemd it is ready only once IKE listens and the control socket answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mpa_harness import guards
from mpa_harness.daemon import answers
from mpa_harness.netns import Netns, netns

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "deploy" / "examples"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mpa-", dir="/tmp") as path:
        yield Path(path)


def program(module: str, *args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("module", "example"), [("gateway.cli", "gateway.yaml"), ("mobile.cli", "mobile.yaml")]
)
def test_check_config_of_the_examples(short_dir: Path, module: str, example: str) -> None:
    file = short_dir / example
    file.write_text((EXAMPLES / example).read_text())
    file.chmod(0o600)
    result = program(module, "check-config", "-c", file)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{file}: OK\n", "")
    file.chmod(0o644)
    result = program(module, "check-config", "-c", file)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{file}: warning: holds secrets and is readable by group/others (mode 0644; chmod 600)",
        f"{file}: OK",
    ]


def test_check_config_lists_every_problem(short_dir: Path) -> None:
    data = yaml.safe_load((EXAMPLES / "mobile.yaml").read_text())
    data["eap"]["method"] = "tls"
    data["gateways"]["ngw"]["address"] = "x"
    data["gateways"]["cgw"]["esp"] = ["aes128-sha999"]
    data["log_level"] = "loud"
    file = short_dir / "mobile.yaml"
    file.write_text(yaml.safe_dump(data))
    file.chmod(0o600)
    result = program("mobile.cli", "check-config", "-c", file)
    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{file}: eap.method: expected one of md5, mschapv2, got 'tls'",
        f"{file}: gateways.cgw.esp[0]: algorithm 'sha999' not recognized in proposal "
        "'aes128-sha999'",
        f"{file}: gateways.ngw.address: not an IP address: 'x'",
        f"{file}: log_level: expected one of debug, info, warning, error, got 'loud'",
    ]
    # run stops at the first, as before
    run = program("mobile.cli", "run", "-c", file)
    assert run.returncode == 1
    assert (
        run.stderr == f"mpa-mobile: {file}: eap.method: expected one of md5, mschapv2, got 'tls'\n"
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def udp_ports(pid: int) -> set[int]:
    """The local UDP ports bound in the network namespace of process ``pid``."""
    lines = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    return {int(line.split()[1].rpartition(":")[2], 16) for line in lines}


@pytest.fixture
def namespace() -> Iterator[Netns | None]:
    """A namespace for the daemon when there are namespaces (as root, its datapath would
    otherwise create a TUN device on the host); none without root, where it has none."""
    if guards.namespaces_unavailable() is not None:
        yield None
        return
    with netns("rd") as ns:
        yield ns


def test_ready_once_ike_listens(short_dir: Path, namespace: Netns | None) -> None:
    """READY=1 on $NOTIFY_SOCKET once the IKE port is bound and the control socket
    answers; STOPPING=1 on SIGTERM."""
    port = free_udp_port()
    data = yaml.safe_load((EXAMPLES / "gateway.yaml").read_text())
    data |= {"listen": [f"127.0.0.1:{port}"], "control_socket": str(short_dir / "gw.sock")}
    data |= {"leases": str(short_dir / "leases")}
    config = short_dir / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    argv = [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)]
    if namespace is not None:
        argv = namespace.exec_args(argv)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(short_dir / "notify"))
        notify.settimeout(30)
        environment = dict(os.environ, NOTIFY_SOCKET=str(short_dir / "notify"))
        daemon = subprocess.Popen(
            argv, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            message = notify.recv(4096)
            assert port in udp_ports(daemon.pid)
            assert answers(short_dir / "gw.sock")
            daemon.send_signal(signal.SIGTERM)
            stopping = notify.recv(4096)
            assert daemon.wait(timeout=20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
            _, stderr = daemon.communicate()
    assert message == f"READY=1\nSTATUS=control socket {short_dir / 'gw.sock'}".encode()
    assert stopping == b"STOPPING=1"
    assert "Traceback" not in stderr
