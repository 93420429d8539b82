"""``mpa-gateway``: run the gateway, or ask a running one for its status, its lease
table, or to terminate or re-authenticate a peer's IKE SAs.

Only ``run`` imports the gateway itself (:mod:`gateway.service`); the other commands
talk to the daemon over its control socket with the standard library alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpa_ike.node import cli

DEFAULT_CONFIG = Path("/etc/mpa-ike/gateway.yaml")
DEFAULT_CONTROL_SOCKET = Path("/run/mpa-ike/gateway.sock")


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.service import GatewayService

    return cli.run_daemon(args, DEFAULT_CONFIG, load_config, GatewayService)


def check_config(file: Path) -> tuple[list[str], list[str]]:
    from gateway.config import check_config

    return check_config(file)


def format_status(result: dict[str, Any]) -> list[str]:
    lines = cli.format_ike_sas(result.get("ike_sas", []))
    leases = result.get("leases", [])
    lines.append("leases:" if leases else "no leases")
    lines.extend(f"  {lease['address']} {lease['ike_sa']}" for lease in leases)
    for family, usage in result.get("pool", {}).items():
        if usage["size"]:
            lines.append(f"pool {family}: {usage['available']} of {usage['size']} available")
    return lines


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
}


PROGRAM = cli.Program(
    prog="mpa-gateway",
    description="IKEv2/MOBIKE gateway with pre-authentication handover support.",
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
