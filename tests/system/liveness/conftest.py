"""Fixtures of the liveness and recovery tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir with a short path: control sockets must fit in sun_path (108 bytes)."""
    return tmp_path_factory.mktemp("lv", numbered=True)
