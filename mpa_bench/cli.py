"""``mpa-bench``: benchmarks of the handover agent.

Subcommands are thin: ``micro`` hands its arguments to :mod:`mpa_bench.micro`,
``connect`` to :mod:`mpa_bench.connect`, ``esp`` to :mod:`mpa_bench.esp`,
``handover`` to :mod:`mpa_bench.handover`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from mpa_ike.node.cli import EXIT_FAILURE, EXIT_OK, Parser

PROG = "mpa-bench"
MICRO_MODULE = "mpa_bench.micro"
CONNECT_MODULE = "mpa_bench.connect"
ESP_MODULE = "mpa_bench.esp"
HANDOVER_MODULE = "mpa_bench.handover"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Benchmarks of mpa-ike.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    micro = commands.add_parser(
        "micro",
        help="micro-benchmarks of the protocol core",
        description=f"Micro-benchmarks; the arguments are passed to {MICRO_MODULE}.",
    )
    micro.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {MICRO_MODULE}")
    connect = commands.add_parser(
        "connect",
        help="time from connect to CHILD SA established, against charon and mpa-gateway",
        description=f"Connection set-up times; the arguments are passed to {CONNECT_MODULE}.",
    )
    connect.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {CONNECT_MODULE}")
    esp = commands.add_parser(
        "esp",
        help="UDP through the tunnel, mpa-gateway against charon's kernel-libipsec",
        description=f"ESP throughput; the arguments are passed to {ESP_MODULE}.",
    )
    esp.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {ESP_MODULE}")
    handover = commands.add_parser(
        "handover",
        help="handover outage: mpa against reactive, MOBIKE and charon, on the testbed",
        description=f"Handover outage; the arguments are passed to {HANDOVER_MODULE}.",
    )
    handover.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {HANDOVER_MODULE}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["micro"]:
        # argparse.REMAINDER drops leading options, so micro's arguments skip the parser.
        return micro(argv[1:])
    if argv[:1] == ["connect"]:
        return delegate("connect", CONNECT_MODULE, argv[1:])
    if argv[:1] == ["esp"]:
        return delegate("esp", ESP_MODULE, argv[1:])
    if argv[:1] == ["handover"]:
        return delegate("handover", HANDOVER_MODULE, argv[1:])
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return EXIT_OK


def micro(argv: list[str]) -> int:
    """Call ``mpa_bench.micro.main(argv)``, which returns an exit code."""
    return delegate("micro", MICRO_MODULE, argv)


def delegate(command: str, module_name: str, argv: list[str]) -> int:
    """Call ``module_name.main(argv)``, which returns an exit code."""
    if importlib.util.find_spec(module_name) is None:
        print(f"{PROG}: {command}: not available yet ({module_name} is missing)", file=sys.stderr)
        return EXIT_FAILURE
    module = importlib.import_module(module_name)
    code = module.main(argv)
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
