"""The command line both daemons share: ``run``, ``check-config``, ``status`` and
commands to a daemon.

:func:`main` runs a :class:`~mpa_ike.node.cli_program.Program`'s command line. A command
that only talks to the daemon (``status``, ``handover NAME``, ...) with the socket by its
default path or ``--socket PATH`` is read here, by hand (:func:`quick_request`), and sent
by :mod:`mpa_ike.node.control_client`: on that path nothing is imported that the
interpreter has not loaded at start-up but ``_socket``, until the request is on the
wire. A handover triggered from a shell pays the interpreter's start-up and little more.
Every other command line (``run``, ``check-config``, ``-c FILE``, ``--help``, a mistake)
goes to argparse, in :mod:`mpa_ike.node.cli_parser`, which accepts the same syntax and
says what is wrong; ``run`` imports the daemon when it is asked for, ``check-config``
the configuration modules.
"""

from __future__ import annotations

import sys

from mpa_ike.node.cli_program import (
    CHECK_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    MEMORY,
    RUN,
    STATUS,
    CliError,
    DaemonCommand,
    Program,
    execute,
    format_ike_sas,
    send,
)

TYPE_CHECKING = False  # typing and collections.abc are not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any, Protocol

    from mpa_ike.node.cli_parser import Parser

    class Main(Protocol):
        def __call__(self, argv: Sequence[str] | None = None) -> int: ...


__all__ = [
    "CHECK_CONFIG",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MEMORY",
    "RUN",
    "STATUS",
    "CliError",
    "DaemonCommand",
    "Parser",
    "Program",
    "entry",
    "execute",
    "format_ike_sas",
    "main",
    "module_paths",
    "quick_request",
]


def __getattr__(name: str) -> Any:
    """:class:`~mpa_ike.node.cli_parser.Parser` is imported when asked for (PEP 562):
    it is argparse's, which a command to a running daemon does not import."""
    if name == "Parser":
        from mpa_ike.node.cli_parser import Parser

        return Parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(program: Program, argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    request = quick_request(program, words)
    if request is None:
        from mpa_ike.node import cli_parser

        return cli_parser.main(program, words)
    socket, command, name, as_json = request
    return execute(program.prog, lambda: send(program, socket, command, name, as_json))


def quick_request(
    program: Program, words: Sequence[str]
) -> tuple[str, str, str | None, bool] | None:
    """``(socket, command, NAME or None, --json)`` of a command line that only talks to
    the daemon, read as :mod:`mpa_ike.node.cli_parser` reads it; None for anything else,
    which that parser then takes: ``run``, ``check-config``, ``-c`` (the socket is in the
    file), ``--help``, an abbreviated option, ``--``, a word after the command's own,
    and every mistake (argparse words the error).

    ``--socket PATH`` (or ``--socket=PATH``) may stand before or after the command and
    its NAME, the last one counting; ``--json`` after the command if it has it."""
    socket = program.default_socket
    command: str | None = None
    positionals: list[str] = []
    as_json = False
    rest = iter(words)
    for word in rest:
        if not word.startswith("-"):
            positionals.append(word)
            command = positionals[0]
        elif word == "--socket" or word.startswith("--socket="):
            value = word[len("--socket=") :] if "=" in word else next(rest, "-")
            if value.startswith("-") and "=" not in word:
                return None  # argparse: expected one argument
            if not plain_path(value):
                return None  # pathlib would write it otherwise in messages
            socket = value
        elif word == "--json" and command is not None:
            as_json = True
        else:
            return None
    daemon_command = None if command is None else program.daemon_command(command)
    if command is None or daemon_command is None:
        return None
    if as_json and daemon_command.format is None:
        return None
    if len(positionals) != (1 if daemon_command.argument is None else 2):
        return None
    name = positionals[1] if daemon_command.argument is not None else None
    return socket, command, name, as_json


def plain_path(text: str) -> bool:
    """Whether ``str(Path(text)) == text``: no empty or ``.`` part, no ``/`` at the end
    (argparse's ``type=Path`` path writes the socket as pathlib does)."""
    head, *parts = text.split("/")
    return text != "" and head != "." and all(part not in ("", ".") for part in parts)


def entry(program: Program) -> Main:
    """The ``main`` of a program's module (its console script's entry point)."""

    def run(argv: Sequence[str] | None = None) -> int:
        return main(program, argv)

    return run


def module_paths(program: Program, module: str) -> Callable[[str], Path]:
    """The ``__getattr__`` (PEP 562) of a program's module: its ``DEFAULT_CONFIG`` and
    ``DEFAULT_CONTROL_SOCKET`` as paths, made when asked for (pathlib is not imported by
    a command to the daemon)."""

    defaults = {
        "DEFAULT_CONFIG": program.default_config,
        "DEFAULT_CONTROL_SOCKET": program.default_socket,
    }

    def paths(name: str) -> Path:
        if name not in defaults:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        from pathlib import Path

        return Path(defaults[name])

    return paths
