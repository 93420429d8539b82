"""The network managers' hooks (deploy/hooks) run the commands they should: the hook
scripts themselves, with ``mpa-mobile`` replaced by a recorder on their path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[3] / "deploy" / "hooks"


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "ran"
    program = tmp_path / "mpa-mobile"
    program.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" != preauth ] || [ "$2" != bad ]\n')
    program.chmod(0o755)
    conf = tmp_path / "hooks.conf"
    conf.write_text("# interface gateway\neth1 ngw\nwlan0 cgw\nwlan0 bad\n")
    env = {
        "PATH": os.environ["PATH"],
        "MPA_MOBILE": str(program),
        "MPA_HOOKS_CONF": str(conf),
        "MPA_MOBILE_HOOK": str(HOOKS / "mpa-mobile-hook"),
    }
    return env, log


def ran(log: Path) -> list[str]:
    return sorted(log.read_text().splitlines()) if log.exists() else []


def run(argv: list[str], env: dict[str, str]) -> None:
    assert subprocess.run(argv, env=env, timeout=10).returncode == 0


def test_networkmanager_up_hands_over_then_preauthenticates_the_others(
    recorder: tuple[dict[str, str], Path],
) -> None:
    env, log = recorder
    run([str(HOOKS / "networkmanager" / "90-mpa-mobile"), "eth1", "up"], env)
    assert ran(log) == ["handover ngw", "preauth bad", "preauth cgw"]


def test_networkmanager_other_interface_and_down(recorder: tuple[dict[str, str], Path]) -> None:
    env, log = recorder
    run([str(HOOKS / "networkmanager" / "90-mpa-mobile"), "eth0", "up"], env)
    assert ran(log) == ["preauth bad", "preauth cgw", "preauth ngw"]
    log.unlink()
    run([str(HOOKS / "networkmanager" / "90-mpa-mobile"), "eth1", "down"], env)
    run([str(HOOKS / "networkmanager" / "90-mpa-mobile"), "eth1", "hostname"], env)
    assert ran(log) == []


def test_networkd_dispatcher_carrier_and_off(recorder: tuple[dict[str, str], Path]) -> None:
    env, log = recorder
    script = str(HOOKS / "networkd-dispatcher" / "50-mpa-mobile")
    run([script], {**env, "IFACE": "wlan0", "STATE": "carrier"})
    assert ran(log) == ["handover bad", "handover cgw", "preauth ngw"]
    log.unlink()
    run([script], {**env, "IFACE": "wlan0", "STATE": "off"})
    assert ran(log) == []


def test_without_a_map_the_hook_does_nothing(recorder: tuple[dict[str, str], Path]) -> None:
    env, log = recorder
    run([str(HOOKS / "mpa-mobile-hook"), "eth1", "up"], {**env, "MPA_HOOKS_CONF": "/nonexistent"})
    assert ran(log) == []


def test_the_socket_is_named_not_read_from_a_file(recorder: tuple[dict[str, str], Path]) -> None:
    env, log = recorder
    env = {**env, "MPA_MOBILE_SOCKET": "/run/mpa-ike/other.sock"}
    run([str(HOOKS / "mpa-mobile-hook"), "eth1", "up"], env)
    assert ran(log) == [
        "--socket /run/mpa-ike/other.sock handover ngw",
        "--socket /run/mpa-ike/other.sock preauth bad",
        "--socket /run/mpa-ike/other.sock preauth cgw",
    ]
