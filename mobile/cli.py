"""``mpa-mobile``: run the mobile node's daemon, or tell it what to do."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from mobile.config import DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET, load_config
from mobile.mpa import ANSWER_WAIT, LINK_WAIT
from mobile.service import MobileService
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

PROG = "mpa-mobile"
# A handover waits for the link, then for the answer through retransmissions.
HANDOVER_TIMEOUT = LINK_WAIT + ANSWER_WAIT + 5.0
GATEWAY_COMMANDS = {
    "connect": "establish an IKE SA and CHILD SA with a gateway",
    "disconnect": "delete the SAs with a gateway",
    "preauth": "pre-authenticate with a candidate gateway over the current network",
    "handover": "move to a pre-authenticated gateway's network",
}


def build_parser() -> Parser:
    common = location_options()
    parser = Parser(
        prog=PROG,
        parents=[common],
        description="IKEv2/MOBIKE mobile node with pre-authentication handover.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", parents=[common], help=f"run the daemon (default config {DEFAULT_CONFIG})"
    )
    for name, help_text in GATEWAY_COMMANDS.items():
        command = commands.add_parser(name, parents=[common], help=help_text)
        command.add_argument("name", metavar="NAME", help="a gateway of the configuration")
    status = commands.add_parser("status", parents=[common], help="list IKE SAs")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return execute(PROG, lambda: run(args))
    if args.command == "status":
        return execute(PROG, lambda: status(args))
    return execute(PROG, lambda: gateway_command(args))


def run(args: argparse.Namespace) -> int:
    config = load(config_file(args, DEFAULT_CONFIG), load_config)
    override = socket_override(args)
    if override is not None:
        config = dataclasses.replace(config, control_socket=override)
    return run_daemon(MobileService(config), config.control_socket, config.log_level)


def gateway_command(args: argparse.Namespace) -> int:
    timeout = HANDOVER_TIMEOUT if args.command == "handover" else None
    socket = control_socket(args, DEFAULT_CONTROL_SOCKET)
    result = ask(socket, args.command, {"name": args.name}, timeout)
    if result is not None:
        print(result)
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    result = ask(control_socket(args, DEFAULT_CONTROL_SOCKET), "status")
    if args.json:
        print_json(result)
    else:
        print("\n".join(format_status(result)))
    return EXIT_OK


def format_status(result: dict[str, Any]) -> list[str]:
    return format_ike_sas(result.get("ike_sas", []))


if __name__ == "__main__":
    sys.exit(main())
