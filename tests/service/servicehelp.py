"""Helpers of the service tests: paths, and editing configuration dictionaries by key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"

DELETE = object()


def edited(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``data`` with ``path`` (dot-separated) set to ``value`` or DELETEd."""
    result = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = result
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return result
