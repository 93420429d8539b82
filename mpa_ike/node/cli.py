"""What the mpa-gateway and mpa-mobile command lines share.

Failures end with one line on stderr and a non-zero exit, never a traceback:
:data:`EXIT_USAGE` for bad arguments, :data:`EXIT_FAILURE` for a bad configuration, an
unreachable daemon or a refused command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from mpa_ike.node import daemon
from mpa_ike.node.config import ConfigError, read_control_socket
from mpa_ike.node.control import ControlError, call

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
T = TypeVar("T")


class CliError(Exception):
    """Ends the command with this one-line message and exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def location_options() -> Parser:
    """``-c FILE`` and ``--socket PATH``, for the main parser and every subcommand alike,
    so that they work before or after the subcommand. SUPPRESS keeps a subcommand's
    parser from overwriting a value given before it with its default."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="configuration file (the control socket is its control_socket)",
    )
    parent.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="control socket of the daemon (overrides the configuration)",
    )
    return parent


def config_file(args: argparse.Namespace, default: Path) -> Path:
    path: Path = getattr(args, "config", default)
    return path


def socket_override(args: argparse.Namespace) -> Path | None:
    path: Path | None = getattr(args, "socket", None)
    return path


def control_socket(args: argparse.Namespace, default: Path) -> Path:
    """Where the daemon listens: ``--socket``, else ``-c``'s control_socket, else default."""
    override = socket_override(args)
    if override is not None:
        return override
    config: Path | None = getattr(args, "config", None)
    if config is None:
        return default
    return load(config, lambda file: read_control_socket(file, default))


def load(file: Path, loader: Callable[[Path], T]) -> T:
    """Load a configuration file; a ConfigError becomes a CliError naming the file."""
    try:
        return loader(file)
    except ConfigError as error:
        raise CliError(f"{file}: {error}") from None


def ask(
    socket: Path, cmd: str, args: Mapping[str, Any] | None = None, timeout: float | None = None
) -> Any:
    try:
        if timeout is None:
            return call(socket, cmd, args)
        return call(socket, cmd, args, timeout=timeout)
    except ControlError as error:
        raise CliError(str(error)) from None


def run_daemon(service: daemon.Service, socket: Path, log_level: str) -> int:
    """``run``: serve until SIGTERM or SIGINT, then exit 0."""
    daemon.configure_logging(log_level)
    try:
        daemon.run(service, socket)
    except ControlError as error:
        raise CliError(str(error)) from None
    return EXIT_OK


def execute(prog: str, command: Callable[[], int]) -> int:
    """Run a subcommand, turning failures into one line on stderr and an exit code."""
    try:
        return command()
    except CliError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def print_json(result: object) -> None:
    print(json.dumps(result, indent=2))


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
