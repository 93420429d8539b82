"""mpa-bench: help, and the hand-over of ``micro`` to mpa_bench.micro."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Iterator

import pytest

from mpa_bench import cli as bench


@pytest.fixture
def fake_micro() -> Iterator[list[list[str]]]:
    """A stand-in mpa_bench.micro that records the arguments it is given."""
    calls: list[list[str]] = []
    module = types.ModuleType(bench.COMMANDS["micro"][0])
    module.__spec__ = importlib.machinery.ModuleSpec(bench.COMMANDS["micro"][0], None)

    def main(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    setattr(module, "main", main)  # noqa: B010 - a module has no declared attributes
    saved = sys.modules.get(bench.COMMANDS["micro"][0])
    sys.modules[bench.COMMANDS["micro"][0]] = module
    yield calls
    if saved is None:
        del sys.modules[bench.COMMANDS["micro"][0]]
    else:
        sys.modules[bench.COMMANDS["micro"][0]] = saved


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([]) == 0
    assert "micro" in capsys.readouterr().out


def test_micro_passes_its_arguments(fake_micro: list[list[str]]) -> None:
    assert bench.main(["micro", "--rounds", "5", "codec"]) == 0
    assert fake_micro == [["--rounds", "5", "codec"]]


def test_micro_without_its_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(bench.COMMANDS, "micro", ("mpa_bench.no_such_module", ""))
    assert bench.main(["micro"]) == 1
    assert capsys.readouterr().err == (
        "mpa-bench: micro: not available (mpa_bench.no_such_module is missing)\n"
    )


def test_connect_passes_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpa_bench import connect as bench_connect

    calls: list[list[str]] = []
    monkeypatch.setattr(bench_connect, "main", lambda argv: calls.append(argv) or 0)
    assert bench.main(["connect", "--runs", "3", "--key", "ecdsa"]) == 0
    assert calls == [["--runs", "3", "--key", "ecdsa"]]


def test_connect_options() -> None:
    from mpa_bench import connect as bench_connect

    args = bench_connect.build_parser().parse_args(["--method", "eap-md5"])
    assert (args.runs, args.method, args.ike, args.key) == (
        7,
        "eap-md5",
        "aes128-sha256-modp2048",
        "rsa",
    )
