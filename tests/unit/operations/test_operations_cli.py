"""The thin command line: a command to a running daemon is read by hand exactly as the
argparse parser reads it, its request is the bytes ``json`` would write, and it imports
next to nothing before the request is on the wire."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cli as gateway_cli
from mobile import cli as mobile_cli
from mpa_ike.node import cli
from mpa_ike.node.cli_parser import build_parser
from mpa_ike.node.control_client import encode, request_line

ROOT = Path(__file__).resolve().parents[3]
S = "/tmp/mpa/mobile.sock"

# Read by hand: the same result as argparse's.
QUICK = [
    ["handover", "ngw"],
    ["--socket", S, "handover", "ngw"],
    ["handover", "--socket", S, "ngw"],
    ["handover", "ngw", "--socket", S],
    [f"--socket={S}", "preauth", "ngw"],
    ["--socket", "x.sock", "--socket", S, "connect", "ngw"],
    ["--socket", S, "disconnect", ""],
    ["--socket", S, "handover", 'a "b" \\ ü'],
    ["--socket", S, "handover", "status"],
    ["status"],
    ["status", "--json", "--socket", S],
    ["--socket=-x", "status"],
]
# Left to argparse: its own commands, -c, help, what it abbreviates or words as an error.
FULL = [
    [],
    ["run"],
    ["check-config"],
    ["-c", "mobile.yaml", "handover", "ngw"],
    ["handover", "ngw", "--config=mobile.yaml"],
    ["--help"],
    ["handover", "-h"],
    ["--sock", S, "handover", "ngw"],
    ["status", "--js"],
    ["handover", "--", "ngw"],
    ["--json", "status"],
    ["handover", "--json", "ngw"],
    ["handover"],
    ["handover", "ngw", "more"],
    ["bogus"],
    ["ngw", "handover"],
    ["--socket"],
    ["--socket", "-1", "status"],
    ["--socket", "", "status"],
    ["--socket", "./mobile.sock", "status"],
    ["--socket", "/run//mobile.sock", "status"],
    ["--socket", "/run/mobile.sock/", "status"],
    ["handover", "-ngw"],
]


def parsed(argv: list[str]) -> tuple[str, str, str | None, bool]:
    args = build_parser(mobile_cli.PROGRAM).parse_args(argv)
    where = getattr(args, "socket", Path(mobile_cli.PROGRAM.default_socket))
    return str(where), args.command, getattr(args, "name", None), getattr(args, "json", False)


@pytest.mark.parametrize("argv", QUICK)
def test_a_command_to_the_daemon_is_read_as_argparse_reads_it(argv: list[str]) -> None:
    assert cli.quick_request(mobile_cli.PROGRAM, argv) == parsed(argv)


@pytest.mark.parametrize("argv", FULL)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert cli.quick_request(mobile_cli.PROGRAM, argv) is None


def test_gateway_commands_with_json() -> None:
    program = gateway_cli.PROGRAM
    assert cli.quick_request(program, ["leases", "--json"]) == (
        "/run/mpa-ike/gateway.sock",
        "leases",
        None,
        True,
    )
    assert cli.quick_request(program, ["terminate", "--json", "x"]) is None
    assert cli.quick_request(program, ["handover", "ngw"]) is None


WORDS = ["handover", "status", "ngw", "run", "--socket", "--socket=/s", "/s", "-c", "x", "--json"]
WORDS += ["--", "-h", "--so", "", "-1", "./s", "/s/", "a b"]


@given(st.lists(st.sampled_from(WORDS), max_size=6))
def test_any_command_line_read_by_hand_is_read_alike_by_argparse(argv: list[str]) -> None:
    """What is read by hand parses with argparse to the same request (a line argparse
    refuses is never read by hand)."""
    quick = cli.quick_request(mobile_cli.PROGRAM, argv)
    if quick is not None:
        assert quick == parsed(argv)


@given(st.text(alphabet="/.a", max_size=8))
def test_a_plain_path_is_written_by_pathlib_as_it_is(text: str) -> None:
    if cli.plain_path(text):
        assert str(Path(text)) == text


@given(st.text(), st.text())
def test_a_request_line_is_what_json_writes(cmd: str, name: str) -> None:
    assert request_line(cmd, {"name": name}) == encode({"cmd": cmd, "args": {"name": name}})
    assert request_line(cmd) == encode({"cmd": cmd, "args": {}})


def test_default_paths_are_paths() -> None:
    paths = [
        mobile_cli.DEFAULT_CONTROL_SOCKET,
        mobile_cli.DEFAULT_CONFIG,
        gateway_cli.DEFAULT_CONTROL_SOCKET,
    ]
    assert paths == [
        Path("/run/mpa-ike/mobile.sock"),
        Path("/etc/mpa-ike/mobile.yaml"),
        Path("/run/mpa-ike/gateway.sock"),
    ]
    with pytest.raises(AttributeError):
        mobile_cli.NOTHING  # noqa: B018


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A control socket that answers every request with its command and NAME."""
    path = str(short_dir / "mn.sock")
    seen: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                line = lines.readline()
                seen.append(line)
                request = json.loads(line)
                answer = f"{request['cmd']} {request['args'].get('name')}"
                conn.sendall(encode({"ok": True, "result": answer}))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, seen
    server.shutdown(socket.SHUT_RDWR)
    server.close()


@pytest.mark.parametrize("socket_option", ["--socket", "--sock"])  # by hand, by argparse
def test_both_paths_send_and_print_alike(
    daemon: tuple[str, list[bytes]], socket_option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, seen = daemon
    assert mobile_cli.main([socket_option, path, "handover", "ngw"]) == 0
    assert seen == [b'{"cmd":"handover","args":{"name":"ngw"}}\n']
    assert capsys.readouterr().out == "handover ngw\n"


@pytest.mark.parametrize("argv", [["handover", "ngw"], ["--sock", "{}", "handover", "ngw"]])
def test_an_unreachable_daemon_is_one_line(
    short_dir: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    where = str(short_dir / "none.sock")
    argv = [word.format(where) for word in argv]
    if "--sock" not in argv:
        argv = ["--socket", where, *argv]
    assert mobile_cli.main(argv) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == (
        f"mpa-mobile: cannot reach the daemon at {where}: no such socket (is it running?)\n"
    )


# What site imports in any interpreter (-S leaves it out).
SITE = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}


def test_a_command_to_the_daemon_imports_little(short_dir: Path) -> None:
    """Without site (which may load much itself), the modules a handover loads: its own
    and _socket, no argparse, pathlib, typing, re, json or socket."""
    code = (
        "import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
        "import mobile.cli; "
        "mobile.cli.main(['--socket', sys.argv[2], 'handover', 'ngw']); "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    ran = subprocess.run(
        [sys.executable, "-S", "-c", code, str(ROOT), str(short_dir / "none.sock")],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(ran.stdout.split())
    ours = {m for m in loaded if m.split(".")[0] in ("mobile", "mpa_ike")}
    assert loaded - ours <= {"_socket", "__future__", *SITE}, sorted(loaded - ours)
    assert "is it running?" in ran.stderr


def test_memory_is_a_command_of_both_daemons_with_its_lines() -> None:
    assert gateway_cli.COMMANDS["memory"] is mobile_cli.COMMANDS["memory"] is cli.MEMORY
    format_memory = cli.MEMORY.format
    assert format_memory is not None
    assert format_memory({"rss_kib": 46080, "traced_kib": None, "traced_peak_kib": None}) == [
        "resident 45.0 MiB",
        "allocations not traced (the daemon runs without python -X tracemalloc)",
    ]
    traced = {"rss_kib": 46080, "traced_kib": 19456, "traced_peak_kib": 20480}
    assert format_memory(traced) == ["resident 45.0 MiB", "traced 19.0 MiB (peak 20.0 MiB)"]
