"""Known-answer data for the crypto tests, each block with its source named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_VECTORS = Path(__file__).with_name("crypto_known_answers.json")


@pytest.fixture(scope="session")
def known_answers() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_VECTORS.read_text())
    return data
