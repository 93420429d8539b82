"""Fixtures for the testbed tests: root, network namespaces and /dev/net/tun."""

from __future__ import annotations

import pytest

from mpa_harness import guards


@pytest.fixture(scope="session")
def netns_env() -> None:
    """Skip when namespaces cannot be built; fail instead when CI=true."""
    guards.require(guards.namespaces_unavailable(), "the testbed")
