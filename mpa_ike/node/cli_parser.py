"""The full command line of :mod:`mpa_ike.node.cli`, on argparse: ``run`` (and the
daemon's life from its configuration), ``check-config``, ``-c FILE``, ``--help``, and
the one-line usage errors.

:func:`mpa_ike.node.cli.main` reads a plain command to a running daemon by hand and
brings every other command line here; what this parser accepts, and what it says of a
mistake, is the command line's definition.
"""

from __future__ import annotations

import argparse

from mpa_ike.node.cli_program import (
    CHECK_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    RUN,
    STATUS,
    CliError,
    Program,
    execute,
    send,
)
from mpa_ike.node.control_client import ControlError

# ``--help`` imports argparse and no more: typing, collections.abc and pathlib cost
# milliseconds each (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any, ClassVar, NoReturn, Protocol, TypeVar

    T = TypeVar("T")

    class Configured(Protocol):
        """What a daemon's configuration (a dataclass) holds for :func:`run_daemon`."""

        __dataclass_fields__: ClassVar[dict[str, Any]]

        @property
        def control_socket(self) -> Path: ...

        @property
        def log_level(self) -> str: ...

        @property
        def log_format(self) -> str: ...

        @property
        def metrics(self) -> Any: ...  # a MetricsConfig, or None

        @property
        def user(self) -> str | None: ...

        @property
        def group(self) -> str | None: ...

        @property
        def control_group(self) -> str | None: ...

    C = TypeVar("C", bound=Configured)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def build_parser(program: Program) -> Parser:
    common = location_options()
    parser = Parser(prog=program.prog, parents=[common], description=program.description)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        RUN, parents=[common], help=f"run the daemon (default config {program.default_config})"
    )
    commands.add_parser(
        CHECK_CONFIG,
        parents=[common],
        help="check the configuration file, every problem on a line of its own",
    )
    status = commands.add_parser(STATUS, parents=[common], help="show the daemon's SAs")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    for name, command in program.commands.items():
        sub = commands.add_parser(name, parents=[common], help=command.help)
        if command.argument is not None:
            sub.add_argument("name", metavar="NAME", help=command.argument)
        if command.format is not None:
            sub.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(program: Program, argv: Sequence[str] | None = None) -> int:
    args = build_parser(program).parse_args(argv)
    if args.command == RUN:
        return execute(program.prog, lambda: program.run(args))
    if args.command == CHECK_CONFIG:
        return execute(program.prog, lambda: check_config(program, args))
    return execute(
        program.prog,
        lambda: send(
            program,
            control_socket(args, as_path(program.default_socket)),
            args.command,
            getattr(args, "name", None),
            getattr(args, "json", False),
        ),
    )


def location_options() -> Parser:
    """``-c FILE`` and ``--socket PATH``, for the main parser and every subcommand alike,
    so that they work before or after the subcommand. SUPPRESS keeps a subcommand's
    parser from overwriting a value given before it with its default."""
    parent = Parser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        type=as_path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="configuration file (the control socket is its control_socket)",
    )
    parent.add_argument(
        "--socket",
        type=as_path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="control socket of the daemon (overrides the configuration)",
    )
    return parent


def as_path(text: str) -> Path:
    """argparse's ``type`` of -c and --socket: pathlib is imported when one is given."""
    from pathlib import Path

    return Path(text)


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
    from mpa_ike.node.config import read_control_socket  # YAML, only when -c is given

    return load(config, lambda file: read_control_socket(file, default))


def check_config(program: Program, args: argparse.Namespace) -> int:
    """``check-config``: each warning and problem on a line starting with the file, then
    ``FILE: OK`` and exit 0, or exit 1 if there was a problem."""
    file = config_file(args, as_path(program.default_config))
    problems, warnings = program.check_config(file)
    for warning in warnings:
        print(f"{file}: warning: {warning}")
    for problem in problems:
        print(f"{file}: {problem}")
    if problems:
        return EXIT_FAILURE
    print(f"{file}: OK")
    return EXIT_OK


def load(file: Path, loader: Callable[[Path], T]) -> T:
    """Load a configuration file; a ConfigError becomes a CliError naming the file."""
    from mpa_ike.errors import ConfigError

    try:
        return loader(file)
    except ConfigError as error:
        raise CliError(f"{file}: {error}") from None


def run_daemon(
    args: argparse.Namespace,
    default_config: str,
    load_config: Callable[[Path], C],
    make_service: Callable[[C], Any],
    capabilities: Sequence[int] = (),
) -> int:
    """``run``: load the configuration, serve until SIGTERM or SIGINT, then exit 0.

    ``capabilities`` are kept after becoming the configured ``user`` whatever the
    datapath (:func:`mpa_ike.node.daemon.needed_capabilities` adds the datapath's).
    With ``metrics:`` the metrics server runs beside the service (only then is
    prometheus_client imported); a service with a ``reload`` method is given the file
    again on SIGHUP."""
    import dataclasses

    from mpa_ike.node import daemon

    file = config_file(args, as_path(default_config))
    override = socket_override(args)

    def adjust(config: C) -> C:
        if override is not None:
            config = dataclasses.replace(config, control_socket=override)
        return config

    config = adjust(load(file, load_config))
    daemon.configure_logging(config.log_level, config.log_format)
    run_as = daemon.RunAs(config.user, config.group, config.control_group, tuple(capabilities))
    service = make_service(config)
    companions = []
    if config.metrics is not None:
        from mpa_ike.node.metrics import attach

        listen = config.metrics.listen
        companions.append(attach(service, (str(listen.address), listen.port)))
    reload = None
    if hasattr(service, "reload"):
        from mpa_ike.node.reload import reloader

        reload = reloader(service, file, load_config, adjust)
    try:
        daemon.run(service, config.control_socket, run_as, companions=companions, reload=reload)
    except ControlError as error:
        raise CliError(str(error)) from None
    return EXIT_OK
