"""``mpa-mobile``: run the mobile node's daemon, or tell it what to do.

Only ``run`` imports the daemon (:mod:`mobile.service`); ``status``, ``connect``,
``preauth``, ``handover`` and the rest talk to it over its control socket with the
standard library alone (:mod:`mpa_ike.node.cli`), so that a handover run from a network
manager's hook at link-up is on the wire within milliseconds of the command's start.
"""

from __future__ import annotations

import sys

from mobile.waits import HANDOVER_TIMEOUT
from mpa_ike.node import cli

TYPE_CHECKING = False  # typing and pathlib are not imported by a command to the daemon
if TYPE_CHECKING:
    import argparse
    from pathlib import Path

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
    "memory": cli.MEMORY,
}


class Mobile(cli.Program):
    name = "mobile"
    description = "IKEv2/MOBIKE mobile node with pre-authentication handover."
    commands = COMMANDS

    def run(self, args: argparse.Namespace) -> int:
        from mobile.config import load_config
        from mobile.service import MobileService
        from mpa_ike.node.cli_parser import run_daemon
        from mpa_ike.node.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE

        # Without root, the mobile node still binds IKE ports at each connect and moves
        # its addresses at each handover.
        keep = (CAP_NET_BIND_SERVICE, CAP_NET_ADMIN)
        return run_daemon(args, self.default_config, load_config, MobileService, keep)

    def check_config(self, file: Path) -> tuple[list[str], list[str]]:
        from mobile.config import check_config

        return check_config(file)


PROGRAM = Mobile()
main = cli.entry(PROGRAM)
__getattr__ = cli.module_paths(PROGRAM, __name__)  # DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET


if __name__ == "__main__":
    sys.exit(main())
