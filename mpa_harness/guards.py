"""What a test needs of the host: skip where it is missing, fail where it must run.

Tests that need root, network namespaces, charon, FreeRADIUS or the UML kernel skip with
the reason elsewhere, but never in CI: with ``CI=true`` a missing piece is a failure.
"""

from __future__ import annotations

import os
import shutil


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(reason: str | None, what: str) -> None:
    """Skip the calling test with ``reason`` (None: all there); fail instead in CI."""
    if reason is None:
        return
    import pytest  # a test extra: the harness is also used by mpa-bench without it

    if in_ci():
        pytest.fail(f"CI=true but {what} cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def namespaces_unavailable() -> str | None:
    """Why network namespaces with TUN/TAP devices cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and TUN/TAP devices"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None
