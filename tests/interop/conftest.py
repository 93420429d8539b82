"""Fixtures for end-to-end tests against strongSwan's charon in network namespaces."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The harness lives in tests/harness; make the repository root importable when pytest
# is started as `pytest` rather than `python -m pytest`.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.harness.charon import require_charon  # noqa: E402


@pytest.fixture
def charon_env() -> None:
    """Skip when charon cannot run here (not root, not installed); fail when CI=true."""
    require_charon()


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir with a short path: vici sockets must fit in sun_path (108 bytes)."""
    return tmp_path_factory.mktemp("ch", numbered=True)
