"""Errors specific to the crypto package."""

from __future__ import annotations

from mpa_ike.errors import ConfigError


class UnsupportedAlgorithm(ConfigError):
    """A transform id this implementation cannot compute.

    A local error: the configuration (or the caller's selection) named an
    algorithm that is not in the registries of :mod:`mpa_ike.crypto`.
    """
