"""``mpa-mobile``: run the mobile node's daemon, or tell it what to do.

Only ``run`` imports the daemon (:mod:`mobile.service`); ``status``, ``connect``,
``preauth``, ``handover`` and the rest talk to it over its control socket with the
standard library alone, so that a handover run from a network manager's hook at link-up
is on the wire within milliseconds of the command's start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobile.waits import HANDOVER_TIMEOUT
from mpa_ike.node import cli

DEFAULT_CONFIG = Path("/etc/mpa-ike/mobile.yaml")
DEFAULT_CONTROL_SOCKET = Path("/run/mpa-ike/mobile.sock")
GATEWAY = "a gateway of the configuration"
COMMANDS = {
    "connect": cli.DaemonCommand("establish an IKE SA and CHILD SA with a gateway", GATEWAY),
    "disconnect": cli.DaemonCommand("delete the SAs with a gateway", GATEWAY),
    "preauth": cli.DaemonCommand(
        "pre-authenticate with a candidate gateway over the current network", GATEWAY
    ),
    "handover": cli.DaemonCommand(
        "move to a pre-authenticated gateway's network", GATEWAY, HANDOVER_TIMEOUT
    ),
}


def run(args: argparse.Namespace) -> int:
    from mobile.config import load_config
    from mobile.service import MobileService
    from mpa_ike.node.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE

    # Without root, the mobile node still binds IKE ports at each connect and moves its
    # addresses at each handover.
    keep = (CAP_NET_BIND_SERVICE, CAP_NET_ADMIN)
    return cli.run_daemon(args, DEFAULT_CONFIG, load_config, MobileService, keep)


def check_config(file: Path) -> tuple[list[str], list[str]]:
    from mobile.config import check_config

    return check_config(file)


def format_status(result: dict[str, Any]) -> list[str]:
    return cli.format_ike_sas(result.get("ike_sas", []))


PROGRAM = cli.Program(
    prog="mpa-mobile",
    description="IKEv2/MOBIKE mobile node with pre-authentication handover.",
    default_config=DEFAULT_CONFIG,
    default_socket=DEFAULT_CONTROL_SOCKET,
    run=run,
    check_config=check_config,
    format_status=format_status,
    commands=COMMANDS,
)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
