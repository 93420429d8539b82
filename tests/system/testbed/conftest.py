"""Fixtures for the testbed tests: root, network namespaces and /dev/net/tun."""

from __future__ import annotations

import os
import shutil

import pytest


def netns_unavailable() -> str | None:
    """Why namespaces with TAP devices cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and TAP devices"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture(scope="session")
def netns_env() -> None:
    """Skip when namespaces cannot be built; fail instead when CI=true."""
    reason = netns_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the testbed cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
