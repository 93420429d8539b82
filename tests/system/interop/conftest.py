"""Fixtures for end-to-end tests against strongSwan's charon in network namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpa_harness.charon import require_charon


@pytest.fixture
def charon_env() -> None:
    """Skip when charon cannot run here (not root, not installed); fail when CI=true."""
    require_charon()


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir with a short path: vici sockets must fit in sun_path (108 bytes)."""
    return tmp_path_factory.mktemp("ch", numbered=True)
