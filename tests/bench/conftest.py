"""Fixtures for the handover benchmark's tests: root, network namespaces, /dev/net/tun."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# deploy/ and tests/harness live at the repository root; make them importable when
# pytest is started as `pytest` rather than `python -m pytest`.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def netns_unavailable() -> str | None:
    """Why the testbed cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and TAP devices"
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture(scope="session")
def netns_env() -> None:
    """Skip when the testbed cannot be built; fail instead when CI=true."""
    reason = netns_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the testbed cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
