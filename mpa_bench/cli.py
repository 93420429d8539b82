"""``mpa-bench``: benchmarks of the handover agent, each beside charon in the same run.

Subcommands are thin: each hands its arguments, untouched, to its module's
``main(argv)`` (``mpa-bench handover --help`` is the handover benchmark's own help).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from mpa_ike.node.cli import EXIT_FAILURE, EXIT_OK, Parser

PROG = "mpa-bench"
# command -> (module, help)
COMMANDS = {
    "micro": ("mpa_bench.micro", "micro-benchmarks of the protocol core"),
    "connect": (
        "mpa_bench.connect",
        "time from connect to CHILD SA established, against charon and mpa-gateway",
    ),
    "esp": ("mpa_bench.esp", "UDP through the tunnel, mpa-gateway against charon"),
    "handover": (
        "mpa_bench.handover",
        "handover outage: mpa against reactive, MOBIKE and charon, on the testbed",
    ),
    "setup-rate": ("mpa_bench.setup_rate", "IKE SAs per second, CPU and memory per SA, vs charon"),
    "fuzz": ("mpa_bench.fuzz", "malformed datagrams against a live mpa-gateway, MNs connected"),
    "flood": ("mpa_bench.flood", "IKE_SA_INIT flood against mpa-gateway, MNs pre-authenticating"),
}


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Benchmarks of mpa-ike.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        commands.add_parser(
            name, help=help_text, description=f"The arguments are passed to {module}."
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A subcommand's options go to its module as they are: argparse would reorder them.
    if argv[:1] and argv[0] in COMMANDS:
        return delegate(argv[0], COMMANDS[argv[0]][0], argv[1:])
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return EXIT_OK


def delegate(command: str, module_name: str, argv: list[str]) -> int:
    """Call ``module_name.main(argv)``, which returns an exit code."""
    if importlib.util.find_spec(module_name) is None:
        print(f"{PROG}: {command}: not available ({module_name} is missing)", file=sys.stderr)
        return EXIT_FAILURE
    module = importlib.import_module(module_name)
    code = module.main(argv)
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
