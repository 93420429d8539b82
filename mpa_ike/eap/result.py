"""Outcome of an EAP conversation."""

from __future__ import annotations

from enum import Enum


class EapResult(Enum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
