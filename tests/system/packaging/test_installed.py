"""What a normal install ships: ``pip install .`` (not editable) into a fresh virtual
environment, and the commands run from a directory outside the checkout.

The checkout is copied first (only the files git tracks), so that nothing it holds
beside the package, and no editable install of it, can stand in for what is shipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpa_harness import guards

ROOT = Path(__file__).resolve().parents[3]


def _copy_checkout(target: Path) -> None:
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            (target / name.decode()).write_bytes(source.read_bytes())


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the project installed from a copy of the checkout."""
    if not (ROOT / ".git").exists():
        guards.require("needs a git checkout to copy", "the packaging test")
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    _copy_checkout(source)
    env = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    installed = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield env


def run(venv: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command of the venv, from a directory that is not the checkout."""
    command = [str(venv / "bin" / argv[0]), *argv[1:]]
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        command, capture_output=True, text=True, cwd="/", env=environment, timeout=timeout
    )


@pytest.mark.parametrize("program", ["mpa-gateway", "mpa-mobile", "mpa-bench"])
def test_commands_answer_help(venv: Path, program: str) -> None:
    result = run(venv, program, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_shipped_packages_import_from_the_install(venv: Path) -> None:
    modules = [
        "mpa_ike.node.service",
        "gateway.service",
        "mobile.service",
        "mpa_bench.handover",
        "mpa_bench.connect",
        "mpa_bench.esp",
        "mpa_testbed.topology",
        "mpa_harness.charon",
    ]
    code = "import importlib, sys\n" + "".join(
        f"m = importlib.import_module({name!r}); assert 'site-packages' in m.__file__, m.__file__\n"
        for name in modules
    )
    result = run(venv, "python", "-c", code)
    assert result.returncode == 0, result.stderr


def test_status_without_a_daemon_is_one_line(venv: Path, tmp_path: Path) -> None:
    result = run(venv, "mpa-mobile", "--socket", str(tmp_path / "none.sock"), "status")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "is it running?" in result.stderr


def test_micro_benchmark_runs(venv: Path) -> None:
    result = run(venv, "mpa-bench", "micro", "--quick", "--signatures", "none")
    assert result.returncode == 0, result.stderr
    assert "IKE_SA_INIT" in result.stdout


def test_control_commands_start_fast(venv: Path, tmp_path: Path) -> None:
    """The thin CLI: a command that only talks to a daemon imports little (the figure is
    measured by the closing notes; this bounds it loosely for a loaded machine)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run(venv, "mpa-mobile", "--socket", str(tmp_path / "none.sock"), "status")
        times.append(time.perf_counter() - start)
    heavy = "{'asyncio', 'cryptography', 'pyroute2', 'yaml', 'dataclasses'}"
    code = f"import sys, mobile.cli; print(sorted(m for m in sys.modules if m in {heavy}))"
    result = run(venv, "python", "-c", code)
    assert result.stdout.strip() == "[]", result.stdout
    assert sorted(times)[2] < 0.5, times


def test_handover_benchmark_runs(venv: Path) -> None:
    guards.require(guards.namespaces_unavailable(), "the handover benchmark")
    result = run(venv, "mpa-bench", "handover", "--runs", "1", "--methods", "mpa", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mpa " in result.stdout and "1/1" in result.stdout, result.stdout
