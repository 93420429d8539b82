"""What a daemon's command line is, and how it sends a command to the daemon.

A :class:`Program` describes one command line (``mpa-gateway``, ``mpa-mobile``): its
defaults, how to run the daemon and check its configuration, and the commands it sends
to a running one (:class:`DaemonCommand`). :func:`send` sends one and prints the
answer. Both ways of reading a command line, by hand (:mod:`mpa_ike.node.cli`) and by
argparse (:mod:`mpa_ike.node.cli_parser`), stand on this module, which imports nothing
the interpreter has not loaded at start-up but the control client.

Failures end with one line on stderr and a non-zero exit, never a traceback:
:data:`EXIT_USAGE` for bad arguments, :data:`EXIT_FAILURE` for a bad configuration, an
unreachable daemon or a refused command.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod

from mpa_ike.node.control_client import DEFAULT_TIMEOUT, ControlError, call

# typing, collections.abc, pathlib and argparse cost milliseconds each to import; at run
# time the annotations need none of them (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The commands every daemon has beside the Program's own.
RUN, CHECK_CONFIG, STATUS = "run", "check-config", "status"


class CliError(Exception):
    """Ends the command with this one-line message and exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class DaemonCommand:
    """A command sent to the running daemon, with one ``NAME`` argument or none.

    ``format`` turns its result into lines (the command then has ``--json`` too);
    without it a result is printed as it is. (A plain class: a NamedTuple or a
    dataclass would import typing or dataclasses.)"""

    __slots__ = ("argument", "format", "help", "timeout")

    def __init__(
        self,
        help: str,
        argument: str | None = None,  # the help of its NAME argument
        timeout: float = DEFAULT_TIMEOUT,
        format: Callable[[Any], list[str]] | None = None,
    ) -> None:
        self.help = help
        self.argument = argument
        self.timeout = timeout
        self.format = format


class Program(ABC):
    """One daemon's command line; each daemon's is a subclass.

    ``name`` makes the program's name (``mpa-NAME``) and its default configuration file
    and control socket (paths as text: pathlib is imported only where a path is used
    for more than its name). ``run`` starts the daemon from the parsed arguments (and
    imports it: nothing else does); ``check_config`` reads a configuration file and
    returns its problems and warnings (one line each, naming the key);
    ``format_status`` turns a ``status`` result into lines.
    """

    name: str
    description: str
    commands: Mapping[str, DaemonCommand] = {}

    @property
    def prog(self) -> str:
        return f"mpa-{self.name}"

    @property
    def default_config(self) -> str:
        return f"/etc/mpa-ike/{self.name}.yaml"

    @property
    def default_socket(self) -> str:
        return f"/run/mpa-ike/{self.name}.sock"

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int: ...

    @abstractmethod
    def check_config(self, file: Path) -> tuple[Sequence[str], Sequence[str]]: ...

    def format_status(self, result: dict[str, Any]) -> list[str]:
        return format_ike_sas(result.get("ike_sas", []))

    def daemon_command(self, name: str) -> DaemonCommand | None:
        """A command to the running daemon (``status`` or one of ``commands``)."""
        if name == STATUS:
            return DaemonCommand("show the daemon's SAs", format=self.format_status)
        return self.commands.get(name)


def send(
    program: Program, socket: str | Path, command: str, name: str | None, as_json: bool
) -> int:
    """Send a command to the daemon at ``socket`` and print its result."""
    daemon_command = program.daemon_command(command)
    assert daemon_command is not None
    arguments = {"name": name} if daemon_command.argument is not None else {}
    result = ask(socket, command, arguments, daemon_command.timeout)
    if daemon_command.format is not None:
        if as_json:
            import json

            print(json.dumps(result, indent=2))
        else:
            print("\n".join(daemon_command.format(result)))
    elif result is not None:
        print(result)
    return EXIT_OK


def ask(
    socket: str | Path,
    cmd: str,
    args: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    try:
        return call(socket, cmd, args, timeout=timeout)
    except ControlError as error:
        raise CliError(str(error)) from None


def execute(prog: str, command: Callable[[], int]) -> int:
    """Run a subcommand, turning failures into one line on stderr and an exit code."""
    try:
        return command()
    except CliError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def format_ike_sas(ike_sas: list[dict[str, Any]]) -> list[str]:
    """Human-readable lines for the ``ike_sas`` of a status result."""
    if not ike_sas:
        return ["no IKE SAs"]
    lines = []
    for sa in ike_sas:
        address = f", address {sa['address']}" if sa.get("address") else ""
        lines.append(f"{sa['name']}: {sa['state']}, {sa['local']} === {sa['remote']}{address}")
        for child in sa.get("child_sas", []):
            lines.append(
                f"  {child['name']}: {child['state']}, "
                f"SPIs {child['spi_in']}_i {child['spi_out']}_o, "
                f"{' '.join(child['local_ts'])} === {' '.join(child['remote_ts'])}"
            )
    return lines


def format_memory(result: dict[str, Any]) -> list[str]:
    """The lines of a ``memory`` result."""
    lines = [f"resident {result['rss_kib'] / 1024:.1f} MiB"]
    if result.get("traced_kib") is None:
        lines.append("allocations not traced (the daemon runs without python -X tracemalloc)")
    else:
        lines.append(
            f"traced {result['traced_kib'] / 1024:.1f} MiB"
            f" (peak {result['traced_peak_kib'] / 1024:.1f} MiB)"
        )
    return lines


MEMORY = DaemonCommand(
    "show the daemon's memory (and its traced allocations under python -X tracemalloc)",
    format=format_memory,
)
