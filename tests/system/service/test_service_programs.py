"""The programs end to end: daemons in subprocesses, their CLIs, exit codes, signals."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servicehelp import DELETE, Daemon, cli, edited, write_yaml

GATEWAY = "gateway.cli"
MOBILE = "mobile.cli"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def gateway_config(short_dir: Path, gateway_data: dict[str, Any]) -> Path:
    # An unprivileged port, so that the daemon can bind without root (IP_FREEBIND lets it
    # bind addresses this host does not have).
    port = free_udp_port()
    data = edited(gateway_data, "listen", [f"192.0.2.1:{port}", f"[2001:db8::1]:{port}"])
    return write_yaml(short_dir / "gateway.yaml", data)


@pytest.fixture
def mobile_config(short_dir: Path, mobile_data: dict[str, Any]) -> Path:
    return write_yaml(short_dir / "mobile.yaml", mobile_data)


@pytest.fixture
def gateway(gateway_config: Path, short_dir: Path) -> Iterator[Daemon]:
    daemon = Daemon(GATEWAY, short_dir / "gw.sock", "-c", gateway_config)
    yield daemon
    daemon.stop()


@pytest.fixture
def mobile(mobile_config: Path, short_dir: Path) -> Iterator[Daemon]:
    daemon = Daemon(MOBILE, short_dir / "mn.sock", "-c", mobile_config)
    yield daemon
    daemon.stop()


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_gateway_status_json(gateway: Daemon, gateway_config: Path) -> None:
    result = cli(GATEWAY, "status", "--json", "-c", gateway_config)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["ike_sas"] == []
    assert status["leases"] == []
    assert status["pool"]["ipv4"] == {"size": 253, "available": 253}  # .53 is the DNS server


def test_gateway_status_text(gateway: Daemon) -> None:
    result = cli(GATEWAY, "--socket", gateway.socket, "status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["no IKE SAs", "no leases"]


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("option", ["-c", "--config", "--socket"])
def test_options_before_or_after_the_subcommand(
    gateway: Daemon, gateway_config: Path, where: str, option: str
) -> None:
    value = str(gateway.socket if option == "--socket" else gateway_config)
    command = ["status", "--json"]
    args = [option, value, *command] if where == "before" else [*command, option, value]
    result = cli(GATEWAY, *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ike_sas"] == []


def test_socket_option_overrides_the_config(gateway: Daemon, gateway_config: Path) -> None:
    wrong = gateway.socket.with_name("other.sock")
    result = cli(GATEWAY, "-c", gateway_config, "status", "--socket", wrong)
    assert result.returncode == 1
    assert one_line(result.stderr).endswith("no such socket (is it running?)")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_gateway_cleanly(gateway: Daemon, signum: int) -> None:
    assert gateway.signal(signum) == 0
    assert not gateway.socket.exists()
    assert "Traceback" not in gateway.stop()


def test_second_daemon_on_the_same_socket(gateway: Daemon, gateway_config: Path) -> None:
    result = cli(GATEWAY, "run", "-c", gateway_config)
    assert result.returncode == 1
    assert one_line(result.stderr).endswith("is in use by a running daemon")
    assert cli(GATEWAY, "status", "-c", gateway_config).returncode == 0


def test_gateway_refuses_a_busy_port(short_dir: Path, gateway_data: dict[str, Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        file = write_yaml(
            short_dir / "busy.yaml", edited(gateway_data, "listen", [f"127.0.0.1:{port}"])
        )
        result = cli(GATEWAY, "run", "-c", file)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"mpa-gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert not (short_dir / "gw.sock").exists()


def test_run_with_socket_override(gateway_config: Path, short_dir: Path) -> None:
    daemon = Daemon(
        GATEWAY, short_dir / "x.sock", "--socket", short_dir / "x.sock", "-c", gateway_config
    )
    try:
        assert cli(GATEWAY, "status", "--socket", daemon.socket).returncode == 0
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
        daemon.stop()


def test_status_without_a_daemon(gateway_config: Path) -> None:
    result = cli(GATEWAY, "status", "-c", gateway_config)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("mpa-gateway: cannot reach the daemon at ")
    assert line.endswith("gw.sock: no such socket (is it running?)")


@pytest.mark.parametrize(
    ("module", "path", "value", "message"),
    [
        (GATEWAY, "pool", ["10.0.0.1/8"], "pool[0]: host bits set in '10.0.0.1/8'"),
        (GATEWAY, "eap.method", "tls", "eap.method: expected one of md5, mschapv2"),
        (MOBILE, "gateways.ngw.address", "x", "gateways.ngw.address: not an IP address: 'x'"),
    ],
)
def test_run_refuses_bad_config(
    short_dir: Path,
    gateway_data: dict[str, Any],
    mobile_data: dict[str, Any],
    module: str,
    path: str,
    value: object,
    message: str,
) -> None:
    data = gateway_data if module == GATEWAY else mobile_data
    file = write_yaml(short_dir / "bad.yaml", edited(data, path, value))
    result = cli(module, "run", "-c", file)
    assert result.returncode == 1
    program = "mpa-gateway" if module == GATEWAY else "mpa-mobile"
    assert one_line(result.stderr).startswith(f"{program}: {file}: {message}")


def test_run_with_missing_config(short_dir: Path) -> None:
    result = cli(GATEWAY, "run", "-c", short_dir / "nothing.yaml")
    assert result.returncode == 1
    assert one_line(result.stderr).endswith("nothing.yaml': No such file or directory")


def test_status_with_broken_config(short_dir: Path) -> None:
    file = short_dir / "broken.yaml"
    file.write_text("control_socket: [\n")
    result = cli(MOBILE, "status", "-c", file)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"mpa-mobile: {file}: line 2, column 1: ")


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (GATEWAY, [], "mpa-gateway: the following arguments are required: COMMAND"),
        (GATEWAY, ["stop"], "mpa-gateway: argument COMMAND: invalid choice: 'stop'"),
        (GATEWAY, ["status", "--jsn"], "mpa-gateway: unrecognized arguments: --jsn"),
        (GATEWAY, ["-c"], "mpa-gateway: argument -c/--config: expected one argument"),
        (MOBILE, ["connect"], "mpa-mobile connect: the following arguments are required: NAME"),
        (MOBILE, ["handover", "a", "b"], "mpa-mobile: unrecognized arguments: b"),
    ],
)
def test_usage_errors_exit_2(module: str, args: list[str], message: str) -> None:
    result = cli(module, *args)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(message)


def test_help_exits_0() -> None:
    for module in (GATEWAY, MOBILE):
        result = cli(module, "--help")
        assert result.returncode == 0
        assert "status" in result.stdout


def test_mobile_status_json(mobile: Daemon, mobile_config: Path) -> None:
    result = cli(MOBILE, "-c", mobile_config, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["ike_sas"] == []
    assert status["gateways"] == [
        {
            "name": "ngw",
            "address": "192.0.2.1",
            "interface": "eth1",
            "preauth": True,
            "handover": "manual",
        }
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_mobile_handover_to_a_missing_interface(
    mobile: Daemon, mobile_config: Path, where: str
) -> None:
    options = ["-c", str(mobile_config)]
    args = [*options, "handover", "ngw"] if where == "before" else ["handover", "ngw", *options]
    result = cli(MOBILE, *args)
    assert result.returncode == 1
    interface = yaml.safe_load(mobile_config.read_text())["gateways"]["ngw"]["interface"]
    assert one_line(result.stderr) == f"mpa-mobile: handover ngw: no interface {interface}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_mobile_disconnect_when_not_connected(
    mobile: Daemon, mobile_config: Path, where: str
) -> None:
    options = ["-c", str(mobile_config)]
    args = [*options, "disconnect", "ngw"] if where == "before" else ["disconnect", "ngw", *options]
    result = cli(MOBILE, *args)
    assert result.returncode == 1
    assert one_line(result.stderr) == "mpa-mobile: disconnect ngw: not connected"


def test_mobile_unknown_gateway(mobile: Daemon) -> None:
    result = cli(MOBILE, "preauth", "nowhere", "--socket", mobile.socket)
    assert result.returncode == 1
    assert one_line(result.stderr) == "mpa-mobile: unknown gateway 'nowhere'"


def test_mobile_stops_cleanly(mobile: Daemon) -> None:
    assert mobile.signal(signal.SIGTERM) == 0
    assert not mobile.socket.exists()


def test_gateway_refuses_a_key_of_another_certificate(
    short_dir: Path, gateway_data: dict[str, Any]
) -> None:
    from mpa_harness.pki import make_ca, make_cert

    ca = make_ca(key_type="ecdsa")
    make_cert(ca, "ngw.example.net", "ecdsa").write(short_dir / "gw.pem")
    make_cert(ca, "other.example.net", "ecdsa").write(short_dir / "x.pem", short_dir / "gw.key")
    data = edited(gateway_data, "psk", DELETE)
    data = edited(data, "certificate", "gw.pem")
    data = edited(data, "private_key", "gw.key")
    result = cli(GATEWAY, "run", "-c", write_yaml(short_dir / "key.yaml", data))
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        "mpa-gateway: private_key: does not match the certificate's public key"
    )
