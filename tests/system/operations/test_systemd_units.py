"""The systemd units of deploy/systemd: ``systemd-analyze verify`` accepts them without a
word, and they hold what the daemons need and nothing they lack.

verify refuses a unit whose ExecStart program is missing, and looks it up on the host;
under ``--root`` it looks in a directory instead: the test builds one with the host's
system units (for the targets the units depend on), the units, and executable stand-ins
at the scripts' paths, so that the shipped files are checked as they are.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpa_harness import guards

ROOT = Path(__file__).resolve().parents[3]
UNITS = ROOT / "deploy" / "systemd"
NAMES = ("mpa-gateway.service", "mpa-mobile.service")
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def directives(unit: str) -> list[tuple[str, str]]:
    """The ``Key=value`` lines of a unit file, in order."""
    found = []
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def values(unit: str, key: str) -> list[str]:
    return [value for name, value in directives(unit) if name == key]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root directory for ``systemd-analyze verify --root``."""
    reason = None if shutil.which("systemd-analyze") else "needs systemd-analyze (systemd)"
    system = next((path for path in SYSTEM_UNITS if (path / "sysinit.target").exists()), None)
    if reason is None and system is None:
        reason = "needs the host's systemd units (sysinit.target)"
    guards.require(reason, "the systemd unit check")
    assert system is not None
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in NAMES:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
        commands = values(name, "ExecStart") + values(name, "ExecStartPre")
        for command in commands + values(name, "ExecReload"):
            program = root / command.split()[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    yield root


@pytest.mark.parametrize("name", NAMES)
def test_systemd_analyze_verify_is_silent(image: Path, name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={image}", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_speaks_up(image: Path, tmp_path: Path) -> None:
    """The check above would see a typo or a missing program: verify is not mute here."""
    broken = image / "etc/systemd/system/mpa-broken.service"
    text = (UNITS / "mpa-gateway.service").read_text()
    broken.write_text(text.replace("ProtectHome=", "ProtectHom=").replace("/usr/local", "/opt"))
    try:
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", f"--root={image}", broken.name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        broken.unlink()
    assert result.returncode != 0
    assert "Unknown key 'ProtectHom'" in result.stderr
    assert "Command /opt/bin/mpa-gateway is not executable" in result.stderr


@pytest.mark.parametrize(
    ("name", "program", "config"),
    [
        ("mpa-gateway.service", "mpa-gateway", "gateway"),
        ("mpa-mobile.service", "mpa-mobile", "mobile"),
    ],
)
def test_what_the_units_run(name: str, program: str, config: str) -> None:
    assert values(name, "Type") == ["notify"]
    assert values(name, "ExecStart") == [
        f"/usr/local/bin/{program} run -c /etc/mpa-ike/{config}.yaml"
    ]
    assert values(name, "ExecStartPre") == [
        f"/usr/local/bin/{program} check-config -c /etc/mpa-ike/{config}.yaml"
    ]
    # The gateway reloads on SIGHUP; the mobile node has no reload (SIGHUP stops it).
    reload = ["/bin/kill -HUP $MAINPID"] if program == "mpa-gateway" else []
    assert values(name, "ExecReload") == reload
    assert values(name, "Restart") == ["on-failure"]


@pytest.mark.parametrize("name", NAMES)
def test_the_hardening(name: str) -> None:
    capabilities = "CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW"
    expected = {
        "User": "mpa-ike",
        "Group": "mpa-ike",
        "CapabilityBoundingSet": capabilities,
        "AmbientCapabilities": capabilities,
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RuntimeDirectory": "mpa-ike",
        "ReadWritePaths": "/proc/sys/net",
        "DevicePolicy": "closed",
        "DeviceAllow": "/dev/net/tun rw",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX AF_PACKET",
        "SystemCallFilter": "@system-service",
    }
    found = {key: values(name, key) for key in expected}
    assert found == {key: [value] for key, value in expected.items()}


def test_the_control_sockets_are_in_the_runtime_directory() -> None:
    """The programs' default sockets are where RuntimeDirectory= lets the daemons write."""
    from gateway.cli import DEFAULT_CONTROL_SOCKET as GATEWAY_SOCKET
    from mobile.cli import DEFAULT_CONTROL_SOCKET as MOBILE_SOCKET

    assert GATEWAY_SOCKET.parent == MOBILE_SOCKET.parent == Path("/run/mpa-ike")
    for example in ("gateway.yaml", "mobile.yaml"):
        text = (ROOT / "deploy/examples" / example).read_text()
        assert f"control_socket: /run/mpa-ike/{example.replace('yaml', 'sock')}" in text
