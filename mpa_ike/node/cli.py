"""The command line both daemons share: ``run``, ``check-config``, ``status`` and
commands to a daemon.

A :class:`Program` describes one command line (``mpa-gateway``, ``mpa-mobile``): its
defaults, how to run the daemon and check its configuration, and the commands it sends
to a running one. :func:`main` parses the arguments and runs the command.

Everything a command that only talks to a daemon needs is imported here, and only the
standard library is (and of it only what starts fast: no dataclasses, no asyncio):
``run`` imports the daemon when it is asked for, ``check-config`` the configuration
modules. A handover triggered from a shell pays the interpreter's start-up and little
more.

Failures end with one line on stderr and a non-zero exit, never a traceback:
:data:`EXIT_USAGE` for bad arguments, :data:`EXIT_FAILURE` for a bad configuration, an
unreachable daemon or a refused command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, NoReturn, Protocol, TypeVar

from mpa_ike.node.control_client import DEFAULT_TIMEOUT, ControlError, call

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


class DaemonCommand(NamedTuple):
    """A command sent to the running daemon, with one ``NAME`` argument or none.

    ``format`` turns its result into lines (the command then has ``--json`` too);
    without it a result is printed as it is."""

    help: str
    argument: str | None = None  # the help of its NAME argument
    timeout: float = DEFAULT_TIMEOUT
    format: Callable[[Any], list[str]] | None = None


class Program(NamedTuple):
    """One daemon's command line.

    ``run`` starts the daemon from the parsed arguments (and imports it: nothing else
    does); ``check_config`` reads a configuration file and returns its problems and
    warnings (one line each, naming the key); ``format_status`` turns a ``status``
    result into lines.
    """

    prog: str
    description: str
    default_config: Path
    default_socket: Path
    run: Callable[[argparse.Namespace], int]
    check_config: Callable[[Path], tuple[Sequence[str], Sequence[str]]]
    format_status: Callable[[dict[str, Any]], list[str]]
    commands: Mapping[str, DaemonCommand] = {}


def build_parser(program: Program) -> Parser:
    common = location_options()
    parser = Parser(prog=program.prog, parents=[common], description=program.description)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", parents=[common], help=f"run the daemon (default config {program.default_config})"
    )
    commands.add_parser(
        "check-config",
        parents=[common],
        help="check the configuration file, every problem on a line of its own",
    )
    status = commands.add_parser("status", parents=[common], help="show the daemon's SAs")
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
    if args.command == "run":
        return execute(program.prog, lambda: program.run(args))
    if args.command == "check-config":
        return execute(program.prog, lambda: check_config(program, args))
    if args.command == "status":
        return execute(program.prog, lambda: status(program, args))
    return execute(program.prog, lambda: daemon_command(program, args))


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
    from mpa_ike.node.config import read_control_socket  # YAML, only when -c is given

    return load(config, lambda file: read_control_socket(file, default))


def load(file: Path, loader: Callable[[Path], T]) -> T:
    """Load a configuration file; a ConfigError becomes a CliError naming the file."""
    from mpa_ike.errors import ConfigError

    try:
        return loader(file)
    except ConfigError as error:
        raise CliError(f"{file}: {error}") from None


def ask(
    socket: Path, cmd: str, args: Mapping[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    try:
        return call(socket, cmd, args, timeout=timeout)
    except ControlError as error:
        raise CliError(str(error)) from None


def check_config(program: Program, args: argparse.Namespace) -> int:
    """``check-config``: each warning and problem on a line starting with the file, then
    ``FILE: OK`` and exit 0, or exit 1 if there was a problem."""
    file = config_file(args, program.default_config)
    problems, warnings = program.check_config(file)
    for warning in warnings:
        print(f"{file}: warning: {warning}")
    for problem in problems:
        print(f"{file}: {problem}")
    if problems:
        return EXIT_FAILURE
    print(f"{file}: OK")
    return EXIT_OK


def status(program: Program, args: argparse.Namespace) -> int:
    result = ask(control_socket(args, program.default_socket), "status")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(program.format_status(result)))
    return EXIT_OK


def daemon_command(program: Program, args: argparse.Namespace) -> int:
    command = program.commands[args.command]
    arguments = {"name": args.name} if command.argument is not None else {}
    socket = control_socket(args, program.default_socket)
    result = ask(socket, args.command, arguments, command.timeout)
    if command.format is not None:
        print(json.dumps(result, indent=2) if args.json else "\n".join(command.format(result)))
    elif result is not None:
        print(result)
    return EXIT_OK


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


def run_daemon(
    args: argparse.Namespace,
    default_config: Path,
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

    file = config_file(args, default_config)
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
