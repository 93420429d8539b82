"""``mpa-bench``: benchmarks of the handover agent.

Subcommands are thin: ``micro`` hands its arguments to :mod:`mobile.bench_micro`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from gateway.commandline import EXIT_FAILURE, EXIT_OK, Parser

PROG = "mpa-bench"
MICRO_MODULE = "mobile.bench_micro"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Benchmarks of mpa-ike.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    micro = commands.add_parser(
        "micro",
        help="micro-benchmarks of the protocol core",
        description=f"Micro-benchmarks; the arguments are passed to {MICRO_MODULE}.",
    )
    micro.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of {MICRO_MODULE}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["micro"]:
        # argparse.REMAINDER drops leading options, so micro's arguments skip the parser.
        return micro(argv[1:])
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return EXIT_OK


def micro(argv: list[str]) -> int:
    """Call ``mobile.bench_micro.main(argv)``, which returns an exit code."""
    if importlib.util.find_spec(MICRO_MODULE) is None:
        print(f"{PROG}: micro: not available yet ({MICRO_MODULE} is missing)", file=sys.stderr)
        return EXIT_FAILURE
    module = importlib.import_module(MICRO_MODULE)
    code = module.main(argv)
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
