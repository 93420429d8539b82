"""Fixtures for the handover benchmark's tests: the testbed's, plus tcpdump."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.system.testbed.conftest import netns_unavailable as testbed_unavailable


def netns_unavailable() -> str | None:
    """Why the benchmark's testbed cannot be built here, or None."""
    reason = testbed_unavailable()
    if reason is None and shutil.which("tcpdump") is None:
        return "needs tcpdump"
    return reason


@pytest.fixture(scope="session")
def netns_env() -> None:
    """Skip when the testbed cannot be built; fail instead when CI=true."""
    reason = netns_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the testbed cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
