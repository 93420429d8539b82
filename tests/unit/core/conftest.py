"""Fixtures of the core tests: the test PKI (built once per session) and an address pool."""

from __future__ import annotations

import pytest
from core_harness import POOL
from core_pki import Pki, build_pki

from gateway.pool import AddressPool


@pytest.fixture(scope="session")
def pki() -> Pki:
    return build_pki()


@pytest.fixture
def pool() -> AddressPool[object]:
    return AddressPool([POOL])
