"""``mpa-gateway``: run the gateway, or ask a running one for its status, its lease
table, or to terminate or re-authenticate a peer's IKE SAs.

Only ``run`` imports the gateway itself (:mod:`gateway.service`); the other commands
talk to the daemon over its control socket with the standard library alone
(:mod:`mpa_ike.node.cli`).
"""

from __future__ import annotations

import sys

from mpa_ike.node import cli

TYPE_CHECKING = False  # typing and pathlib are not imported by a command to the daemon
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any


def format_leases(rows: list[dict[str, Any]]) -> list[str]:
    """The lease table: address, identity, IKE SA, state, since."""
    if not rows:
        return ["no leases"]
    table = [("ADDRESS", "IDENTITY", "IKE SA", "STATE", "SINCE")]
    for row in rows:
        state = row["state"]
        if row.get("ike_sa_state"):
            state = f"{state} ({row['ike_sa_state']})"
        elif row.get("until"):
            state = f"{state} until {row['until']}"
        table.append(
            (
                row["address"],
                row.get("identity") or "-",
                row["ike_sa"],
                state,
                row.get("since") or "-",
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + line[4]
        for line in table
    ]


PEER = "an identity, or an outer or leased address"
COMMANDS = {
    "terminate": cli.DaemonCommand("delete the IKE SAs of a peer, with DELETE", PEER),
    "leases": cli.DaemonCommand("show the lease table", format=format_leases),
    "reauth": cli.DaemonCommand(
        "make a peer authenticate again (IKEv2 lets a gateway only delete its IKE SA)", PEER
    ),
    "memory": cli.MEMORY,
}


class Gateway(cli.Program):
    name = "gateway"
    description = "IKEv2/MOBIKE gateway with pre-authentication handover support."
    commands = COMMANDS

    def run(self, args: argparse.Namespace) -> int:
        from gateway.config import load_config
        from gateway.service import GatewayService
        from mpa_ike.node.cli_parser import run_daemon

        return run_daemon(args, self.default_config, load_config, GatewayService)

    def check_config(self, file: Path) -> tuple[list[str], list[str]]:
        from gateway.config import check_config

        return check_config(file)

    def format_status(self, result: dict[str, Any]) -> list[str]:
        lines = super().format_status(result)
        leases = result.get("leases", [])
        lines.append("leases:" if leases else "no leases")
        lines.extend(f"  {lease['address']} {lease['ike_sa']}" for lease in leases)
        for family, usage in result.get("pool", {}).items():
            if usage["size"]:
                lines.append(f"pool {family}: {usage['available']} of {usage['size']} available")
        return lines


PROGRAM = Gateway()
main = cli.entry(PROGRAM)
__getattr__ = cli.module_paths(PROGRAM, __name__)  # DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET


if __name__ == "__main__":
    sys.exit(main())
