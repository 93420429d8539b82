"""Fixtures for the handover benchmark's tests: the testbed's, plus tcpdump."""

from __future__ import annotations

import shutil

import pytest

from mpa_harness import guards


@pytest.fixture(scope="session")
def netns_env() -> None:
    """Skip when the benchmark's testbed cannot be built; fail instead when CI=true."""
    reason = guards.namespaces_unavailable()
    if reason is None and shutil.which("tcpdump") is None:
        reason = "needs tcpdump"
    guards.require(reason, "the handover benchmark")
