"""Telling systemd how the daemon is doing (``Type=notify`` units), with the standard
library alone.

The protocol is sd_notify(3): one datagram of ``KEY=VALUE`` lines to the Unix socket
named by ``$NOTIFY_SOCKET``, a path or, starting with ``@``, a name in the abstract
namespace. Without the variable (not started by systemd) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify_address(value: str) -> str | bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None if it names none we can use."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock addresses (vsock:CID:PORT) are for virtual machines' managers


def notify(*lines: str) -> bool:
    """Send ``lines`` (``READY=1``, ``STATUS=...``) to systemd; whether it was sent.

    A failure is logged, never raised: the daemon works without systemd.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = notify_address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s: not a Unix socket, systemd not notified", value)
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as error:
        log.warning("cannot notify systemd at %s: %s", value, error.strerror or error)
        return False
    return True
