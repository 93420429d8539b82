"""``mpa-gateway``: run the gateway, or ask a running one for its status."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from gateway.config import DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET, load_config
from gateway.service import GatewayService
from mpa_ike.node.cli import (
    EXIT_OK,
    Parser,
    ask,
    config_file,
    control_socket,
    execute,
    format_ike_sas,
    load,
    location_options,
    print_json,
    run_daemon,
    socket_override,
)

PROG = "mpa-gateway"


def build_parser() -> Parser:
    common = location_options()
    parser = Parser(
        prog=PROG,
        parents=[common],
        description="IKEv2/MOBIKE gateway with pre-authentication handover support.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", parents=[common], help=f"run the gateway (default config {DEFAULT_CONFIG})"
    )
    status = commands.add_parser("status", parents=[common], help="list IKE SAs and leases")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return execute(PROG, lambda: run(args))
    return execute(PROG, lambda: status(args))


def run(args: argparse.Namespace) -> int:
    config = load(config_file(args, DEFAULT_CONFIG), load_config)
    override = socket_override(args)
    if override is not None:
        config = dataclasses.replace(config, control_socket=override)
    return run_daemon(GatewayService(config), config.control_socket, config.log_level)


def status(args: argparse.Namespace) -> int:
    result = ask(control_socket(args, DEFAULT_CONTROL_SOCKET), "status")
    if args.json:
        print_json(result)
    else:
        print("\n".join(format_status(result)))
    return EXIT_OK


def format_status(result: dict[str, Any]) -> list[str]:
    lines = format_ike_sas(result.get("ike_sas", []))
    leases = result.get("leases", [])
    lines.append("leases:" if leases else "no leases")
    lines.extend(f"  {lease['address']} {lease['ike_sa']}" for lease in leases)
    for family, usage in result.get("pool", {}).items():
        if usage["size"]:
            lines.append(f"pool {family}: {usage['available']} of {usage['size']} available")
    return lines


if __name__ == "__main__":
    sys.exit(main())
